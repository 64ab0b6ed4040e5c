"""Build the backend each role uses, sharing one loaded model between roles that name the same one."""

from __future__ import annotations

from app.config import Settings
from graph.protocol import ChatBackend


def build_backends(settings: Settings) -> dict[str, ChatBackend]:
    """One backend per distinct (kind, model, adapter); roles that agree share it."""
    from app.backends.local import TransformersBackend

    cache: dict[tuple[str, str, str | None], ChatBackend] = {}
    backends: dict[str, ChatBackend] = {}
    for role in ("triage", "specialist", "attending"):
        spec = settings.role(role)
        key = (spec.backend, settings.model_for(role), spec.adapter)
        if key not in cache:
            cache[key] = TransformersBackend(key[1], adapter_path=spec.adapter, device=settings.device)
        backends[role] = cache[key]
    return backends
