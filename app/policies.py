"""Identify the weights a role serves, so every stored step names its policy version."""

from __future__ import annotations

import hashlib
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
