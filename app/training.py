"""``mmedagent train``'s work, shared with the learning loop (app/learning_loop.py): train a role's
policy from what it serves (or ``--model``) and register the result as a new version."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.backends.factory import apply_policy_choices
from app.policies import register_run, resolve_policy

if TYPE_CHECKING:
    from collections.abc import Sequence

    from app.config import Settings
    from data.schema import PolicyVersion
    from data.store import TrajectoryStore
    from rl.grpo import TrainRun, TrainSpec


@dataclass
class Trained:
    """A finished run, the version it started from and the one it was registered as (if it was)."""

    run: TrainRun
    parent_id: int | None
    version: PolicyVersion | None


def train_and_register(
    spec: TrainSpec, settings: Settings, store: TrajectoryStore, *, callbacks: Sequence[object] = ()
) -> Trained:
    """Train ``spec``'s role on the rows its options name and, unless ``--no-register``, register it.

    Without ``--model`` the run starts from what the role serves under ``settings`` (its model and
    adapter, or the version ``--ROLE latest|ID`` chooses), which becomes the new version's parent.
    Raises rl.grpo.TrainError, rl.datasets.DatasetError, graph.protocol.BackendError (an unknown
    chosen version), app.policies.RegisterError and ValueError for what cannot run.
    """
    from rl.grpo import load_rows, train

    role = spec.script.role
    settings, chosen = apply_policy_choices(settings, store)
    own_start = bool(spec.model.model_name_or_path)
    served = (None, None) if own_start else (settings.model_for(role), settings.role(role).adapter)
    parent = None if own_start else chosen.get(role) or resolve_policy(store, role, *served).id
    run = train(spec, load_rows(spec, store), served=served, callbacks=callbacks)
    version = register_run(store, run.result.output_dir, parent) if spec.script.register else None
    return Trained(run, parent, version)
