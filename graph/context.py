"""Run-scoped settings the graph's nodes read: backends per role, image resolver, sampling."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from graph.protocol import ChatBackend, Sampling

if TYPE_CHECKING:
    from PIL import Image


GraphKind = Literal["multi", "static", "single", "vote"]
GRAPH_KINDS: tuple[GraphKind, ...] = ("multi", "static", "single", "vote")


@dataclass(frozen=True)
class GraphMode:
    """Which graph answers a case: the full system or a baseline (graph/build.py).

    ``multi``: triage -> specialists -> attending. ``static``: a fixed panel (``specialists``,
    then the fallback order), no triage. ``single``: the attending alone, no opinions. ``vote``:
    the attending prompt without opinions sampled ``votes`` times (at the attending's sampling
    temperature, which should be > 0), majority answer.
    """

    kind: GraphKind = "multi"
    specialists: tuple[str, ...] = ()
    votes: int = 1

    def __post_init__(self) -> None:
        if self.kind not in GRAPH_KINDS:
            raise ValueError(f"graph mode must be one of {GRAPH_KINDS}, not {self.kind!r}")
        if self.votes < 1:
            raise ValueError(f"votes must be >= 1, got {self.votes}")


@dataclass
class GraphContext:
    """Everything a node needs beyond the state. ``backends`` maps each role to its backend."""

    backends: Mapping[str, ChatBackend]
    resolve_image: Callable[[str], Image.Image]
    sampling: Mapping[str, Sampling] = field(default_factory=dict)
    n_specialists: int = 3
    mode: GraphMode = field(default_factory=GraphMode)

    def sampling_for(self, role: str) -> Sampling:
        return self.sampling.get(role, Sampling())
