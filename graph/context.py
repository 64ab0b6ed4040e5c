"""Run-scoped settings the graph's nodes read: backends per role, image resolver, sampling."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from graph.protocol import ChatBackend, Sampling

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class GraphContext:
    """Everything a node needs beyond the state. ``backends`` maps each role to its backend."""

    backends: Mapping[str, ChatBackend]
    resolve_image: Callable[[str], Image.Image]
    sampling: Mapping[str, Sampling] = field(default_factory=dict)
    n_specialists: int = 3

    def sampling_for(self, role: str) -> Sampling:
        return self.sampling.get(role, Sampling())
