"""Identify the weights a role serves, so every stored step names its policy version."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from data.schema import PolicyVersion
from data.store import TrajectoryStore

# Only safetensors headers (names, shapes, dtypes, offsets) and file sizes are hashed for a base
# model: reading a 7B checkpoint's 15 GB at every start-up would be the wrong price. Adapters are
# small and hashed whole, so two trainings from the same base never collide.
_HEADER_BYTES = 1 << 20


def _hash_files(paths: list[Path], whole: bool) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(str(p.stat().st_size).encode())
        with p.open("rb") as f:
            if whole:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(block)
            else:
                h.update(f.read(_HEADER_BYTES))
    return h.hexdigest()


def weights_hash(model: str, adapter: str | None = None) -> str:
    """A fingerprint of base model (+ adapter) weights; a hub id without local files hashes its name."""
    parts = []
    base = Path(model)
    files = list(base.glob("*.safetensors")) if base.is_dir() else []
    parts.append(_hash_files(files, whole=False) if files else hashlib.sha256(model.encode()).hexdigest())
    if adapter:
        adapter_files = [p for p in Path(adapter).glob("*") if p.is_file()]
        parts.append(_hash_files(adapter_files, whole=True))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def resolve_policy(store: TrajectoryStore, role: str, model: str, adapter: str | None) -> PolicyVersion:
    """The policy version row for what ``role`` serves (registered on first use)."""
    return store.policy_for(role, model, weights_hash(model, adapter), adapter_path=adapter)


class RegisterError(ValueError):
    """A training run folder cannot be registered (one line for the user)."""


def register_run(store: TrajectoryStore, run_dir: str | Path, parent_id: int | None = None) -> PolicyVersion:
    """Register the finished training run in ``run_dir`` (its ``training_run.json``, written by
    ``mmedagent train`` and ``torchrun -m rl.grpo`` alike) as a new policy version of its role; a run
    whose weights are registered already is refused."""
    from rl.grpo import RUN_FILE

    path = Path(run_dir).resolve() / RUN_FILE
    if not path.is_file():
        raise RegisterError(f"{run_dir} holds no finished training run ({RUN_FILE} missing)")
    record = json.loads(path.read_text())
    role, model, adapter = record["role"], record["serving"]["model"], record["serving"]["adapter"]
    digest = weights_hash(model, adapter)
    known = [p for p in store.list_policies(role) if p.weights_hash == digest and p.base_model == model]
    if known:
        raise RegisterError(f"{run_dir} is registered already: {role} policy version {known[0].id}")
    summary = {k: v for k, v in record.items() if k not in ("per_step", "log_history", "serving")}
    return store.register_policy(
        role, model, digest, adapter_path=adapter, parent_id=parent_id, training_run=summary
    )


def policy_name(policy: PolicyVersion | None) -> str:
    """A policy version as users see it (``mmedagent policies list``, the chat): ``v3`` for trained
    version 3 (``--attending 3`` serves it), ``base`` for the untrained checkpoint a role serves
    until it is trained (its row has no training run, parent or adapter)."""
    if policy is None:
        return "unknown"
    trained = bool(policy.training_run) or policy.parent_id is not None or policy.adapter_path is not None
    return f"v{policy.id}" if trained else "base"


def listed_name(policy: PolicyVersion | None) -> str:
    """A policy version as ``mmedagent policies list`` names it: ``v3``, or ``base (1)`` for an
    untrained checkpoint (its id tells the roles' base rows apart)."""
    name = policy_name(policy)
    return f"base ({policy.id})" if policy is not None and name == "base" else name
