"""Settings: embedded defaults, then ``mmedagent.toml`` (or ``$MMEDAGENT_CONFIG``), then env vars.

Env vars use the prefix ``MMEDAGENT_`` and ``__`` for nesting, e.g.
``MMEDAGENT_ATTENDING__MODEL=Qwen/Qwen2.5-VL-3B-Instruct`` or ``MMEDAGENT_DB_URL=postgresql+psycopg://…``.
A role's settings from any source (env, TOML, the CLI's ``--triage latest``, keywords) change only the
fields they name; the others keep that role's defaults (``ROLE_DEFAULTS``, then ``RoleSpec``'s).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from data.images import ImageLimits
from graph.protocol import Sampling

BackendKind = Literal["transformers", "openai", "vllm"]


class RoleSpec(BaseModel):
    """Which model plays a role and how it decodes."""

    model: str | None = Field(None, description="local path or hub id; None: the global `model`")
    adapter: str | None = Field(None, description="LoRA adapter directory")
    policy: str | None = Field(
        None,
        description='serve a registered policy version: "latest" or its id (replaces model and adapter)',
        pattern=r"^(latest|[0-9]+)$",
    )
    backend: BackendKind = "transformers"
    # backend = "openai": any /v1/chat/completions server (vllm serve, transformers serve, hosted APIs).
    base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8000/v1 (openai backend)")
    api_key_env: str | None = Field(None, description="name of the env var holding the API key")
    timeout_s: float = Field(120.0, gt=0, description="per HTTP request (openai backend)")
    max_concurrency: int = Field(8, ge=1, le=1024, description="requests in flight (openai backend)")
    retries: int = Field(3, ge=0, le=20, description="openai client: connect, timeout, 408/409/429, 5xx")
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description='extra request fields, e.g. {"return_tokens_as_token_ids": true}'
    )
    max_new_tokens: int = Field(256, ge=1, le=8192)
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)

    def sampling(self) -> Sampling:
        return Sampling(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p)

    @model_validator(mode="after")
    def _openai_needs_base_url(self) -> RoleSpec:
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend 'openai' needs a base_url, e.g. http://127.0.0.1:8000/v1")
        return self


# What each role decodes with unless told otherwise; every other field has RoleSpec's default.
ROLE_DEFAULTS: dict[str, dict[str, Any]] = {
    "triage": {"max_new_tokens": 64},
    "specialist": {"max_new_tokens": 128},
    "attending": {"max_new_tokens": 192},
}


class UISettings(BaseModel):
    """The Gradio app (``mmedagent ui``). Any host other than loopback requires a username and password."""

    host: str = "127.0.0.1"
    port: int = Field(7860, ge=1, le=65535)
    username: str | None = Field(None, description="with `password`: login required (always, when set)")
    password: SecretStr | None = None
    max_images: int = Field(8, ge=1, le=64, description="images per chat message")
    concurrency: int = Field(2, ge=1, le=64, description="cases the app runs at once (others queue)")


class TracingSettings(BaseModel):
    """OpenTelemetry export of every run (app/tracing.py). Off unless ``otlp_endpoint`` is set."""

    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP receiver, e.g. http://127.0.0.1:4318 (…/v1/traces is added)"
    )
    content: bool | None = Field(
        None, description="export prompts and completions; None: only when store_pixels is true"
    )
    service_name: str = "mmedagent"
    timeout_s: float = Field(5.0, gt=0, le=120, description="per export request")
    max_queue: int = Field(4096, ge=16, description="spans waiting for export; more are dropped")


class VLLMSettings(BaseModel):
    """Engine options of the vllm backend (``vllm.LLM``; app/backends/vllm.py). Unset: vLLM's default.

    ``max_model_len`` defaults to 4096 tokens (prompt + completion; a case's attending prompt with 8
    images stays well under it) rather than the checkpoint's 32k, whose KV cache a small GPU or the
    CPU cannot hold. Images per prompt come from ``ui.max_images``.
    """

    max_model_len: int = Field(4096, ge=256, description="tokens per sequence (prompt + completion)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: float32 on CPU (as the transformers backend), the checkpoint's on GPU"
    )
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="GPUs per engine (CUDA only)")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="share of GPU memory for weights + KV cache (CUDA only)"
    )
    kv_cache_space_gb: float | None = Field(
        None, gt=0, description="KV cache size in GiB (CPU: replaces VLLM_CPU_KVCACHE_SPACE)"
    )
    max_num_seqs: int = Field(256, ge=1, le=4096, description="sequences the engine decodes at once")
    max_loras: int = Field(2, ge=1, le=64, description="LoRA adapters in one batch")
    max_lora_rank: int = Field(64, ge=1, le=512)
    enforce_eager: bool = Field(False, description="no CUDA graphs / torch.compile (faster start)")
    enable_prefix_caching: bool | None = Field(None, description="reuse the KV of shared prompt prefixes")
    seed: int = Field(0, description="engine seed (sampled requests without their own seed)")


class Settings(BaseSettings):
    """Everything configurable. Defaults run offline on the tiny model and a SQLite file."""

    model_config = SettingsConfigDict(
        env_prefix="MMEDAGENT_",
        env_nested_delimiter="__",
        toml_file=os.environ.get("MMEDAGENT_CONFIG", "mmedagent.toml"),
        extra="forbid",
    )

    home: Path = Field(Path(".mmedagent"), description="where the DB, checkpoints and tiny model live")
    db_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in `home`")
    model: str | None = Field(None, description="model for every role; default: the tiny model in `home`")
    device: str = "auto"
    cpu_threads: int | None = Field(None, ge=1, description="torch CPU threads; None: torch's default")
    # Micro-batching (transformers, vllm): a batch goes once no request came for batch_gap_ms and every
    # running case has one waiting, or after batch_wait_ms at most (app/backends/batcher.py).
    batch_gap_ms: float = Field(5.0, ge=0, le=1000, description="quiet gap that closes a batch")
    batch_wait_ms: float = Field(50.0, ge=0, le=5000, description="longest wait for companions")
    max_batch: int = Field(
        32, ge=1, le=1024, description="requests per model.generate (transformers; vllm: vllm.max_num_seqs)"
    )
    n_specialists: int = Field(3, ge=1, le=7)
    triage: RoleSpec = RoleSpec(**ROLE_DEFAULTS["triage"])
    specialist: RoleSpec = RoleSpec(**ROLE_DEFAULTS["specialist"])
    attending: RoleSpec = RoleSpec(**ROLE_DEFAULTS["attending"])
    store_pixels: bool = Field(True, description="False: store image hashes only (patient data)")
    max_image_bytes: int = 32 * 1024 * 1024
    max_source_pixels: int = 50_000_000
    max_pixels: int = 1280 * 28 * 28
    max_question_chars: int = 8_000
    max_options: int = 26
    ui: UISettings = UISettings()
    tracing: TracingSettings = TracingSettings()
    vllm: VLLMSettings = VLLMSettings()

    @model_validator(mode="before")
    @classmethod
    def _role_defaults(cls, data: Any) -> Any:
        """Fill the fields a role's settings leave out from that role's defaults, field by field.

        The sources (keywords, env, TOML; merged key by key) give a role as a table of the fields they
        set, e.g. ``{"backend": "vllm"}`` from ``MMEDAGENT_TRIAGE__BACKEND``. Validated alone, that table
        would take RoleSpec's generic defaults for the rest (triage decoding 256 tokens, not 64), so
        switching a backend would change how the role decodes. A RoleSpec passed in counts with the
        fields it was given (``model_fields_set``).
        """
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        for role, defaults in ROLE_DEFAULTS.items():
            given = data.get(role)
            if isinstance(given, RoleSpec):
                given = {name: getattr(given, name) for name in given.model_fields_set}
            if isinstance(given, Mapping):
                data[role] = {**defaults, **given}
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.home / 'mmedagent.db').resolve()}"

    @property
    def checkpoint_path(self) -> Path:
        return self.home / "checkpoints.sqlite"

    @property
    def tiny_model_dir(self) -> Path:
        return self.home / "tiny-qwen2.5-vl"

    def image_limits(self) -> ImageLimits:
        return ImageLimits(self.max_image_bytes, self.max_source_pixels, self.max_pixels)

    def role(self, name: str) -> RoleSpec:
        return {"triage": self.triage, "specialist": self.specialist, "attending": self.attending}[name]

    def model_for(self, role: str) -> str:
        """The model path/id a role loads: its own, else the global one, else the tiny model."""
        return self.role(role).model or self.model or str(self.tiny_model_dir)
