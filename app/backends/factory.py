"""Build the backend each role uses; roles that name the same model share one loaded copy of it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.config import RoleSpec, Settings
from data.schema import ROLES
from graph.protocol import BackendError, ChatBackend

if TYPE_CHECKING:
    from data.store import TrajectoryStore


def _local_key(spec: RoleSpec, model: str) -> tuple[Any, ...]:
    return ("transformers", model, spec.adapter)


def _openai_key(spec: RoleSpec, model: str) -> tuple[Any, ...]:
    # Roles with the same server, model and client settings share one connection pool and one
    # concurrency limit.
    return (
        "openai",
        spec.base_url,
        model,
        spec.api_key_env,
        spec.timeout_s,
        spec.max_concurrency,
        spec.retries,
        tuple(sorted((k, repr(v)) for k, v in spec.extra_body.items())),
    )


def apply_policy_choices(settings: Settings, store: TrajectoryStore) -> tuple[Settings, dict[str, int]]:
    """Settings whose roles with a ``policy`` choice ("latest" or an id) serve that registered
    version's model and adapter, and the chosen version id per such role."""
    updates: dict[str, RoleSpec] = {}
    chosen: dict[str, int] = {}
    for role in ROLES:
        spec = settings.role(role)
        if spec.policy is None:
            continue
        row = store.latest_policy(role) if spec.policy == "latest" else store.get_policy(int(spec.policy))
        if row is None or row.role != role:
            what = "no policy version registered" if spec.policy == "latest" else f"no policy {spec.policy}"
            raise BackendError(f"{role}: {what} for this role (see `mmedagent policies list`)")
        updates[role] = spec.model_copy(update={"model": row.base_model, "adapter": row.adapter_path})
        chosen[role] = row.id
    return (settings.model_copy(update=updates) if updates else settings), chosen


def build_backends(settings: Settings) -> dict[str, ChatBackend]:
    """One backend per role. Local models load once per (model, adapter); vLLM runs one engine per
    base model (options: ``settings.vllm``) with each role's adapter as a LoRA request."""
    if settings.cpu_threads is not None:
        import torch

        torch.set_num_threads(settings.cpu_threads)
    backends = _build_vllm(settings)  # first: it fails fastest when vLLM is missing
    cache: dict[tuple[Any, ...], ChatBackend] = {}
    for role in ROLES:
        spec, model = settings.role(role), settings.model_for(role)
        if spec.backend == "vllm":
            continue
        if spec.backend == "openai" and spec.adapter:
            # A server serves an adapter under a model name of its own (vllm serve --lora-modules NAME=PATH).
            raise BackendError(
                f"{role}: the openai backend cannot apply adapter {spec.adapter!r}; set the role's model to "
                "the name the server gives that adapter"
            )
        key = _local_key(spec, model) if spec.backend == "transformers" else _openai_key(spec, model)
        if key not in cache:
            cache[key] = _build(spec, model, settings)
        backends[role] = cache[key]
    return {role: backends[role] for role in ROLES}


def _build(spec: RoleSpec, model: str, settings: Settings) -> ChatBackend:
    if spec.backend == "transformers":
        from app.backends.local import TransformersBackend

        return TransformersBackend(
            model,
            adapter_path=spec.adapter,
            device=settings.device,
            batch_wait_s=settings.batch_wait_ms / 1000,
            batch_gap_s=settings.batch_gap_ms / 1000,
            max_batch=settings.max_batch,
        )
    from app.backends.openai import OpenAIBackend

    assert spec.base_url is not None  # RoleSpec validates it
    return OpenAIBackend(
        spec.base_url,
        model,
        api_key_env=spec.api_key_env,
        timeout_s=spec.timeout_s,
        max_concurrency=spec.max_concurrency,
        retries=spec.retries,
        extra_body=spec.extra_body,
    )


def _build_vllm(settings: Settings) -> dict[str, ChatBackend]:
    from app.backends.vllm import VLLMEngine

    roles = [r for r in ROLES if settings.role(r).backend == "vllm"]
    engines: dict[str, VLLMEngine] = {}
    out: dict[str, ChatBackend] = {}
    for role in roles:
        model = settings.model_for(role)
        if model not in engines:
            adapters = any(settings.role(r).adapter for r in roles if settings.model_for(r) == model)
            engines[model] = VLLMEngine(
                model,
                settings.vllm,
                enable_lora=adapters,
                max_images_per_prompt=settings.ui.max_images,
                batch_wait_s=settings.batch_wait_ms / 1000,
                batch_gap_s=settings.batch_gap_ms / 1000,
            )
        out[role] = engines[model].role_backend(settings.role(role).adapter)
    return out
