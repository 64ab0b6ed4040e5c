"""In-process vLLM (``vllm.LLM``): one engine per base model, a LoRA adapter per role.

For CUDA machines (``pip install 'mmedagent-rl[vllm]'``); ``vllm`` is imported only when an engine
is built, so everything else runs without it. Prompts are rendered with the checkpoint's own chat
template (its ``<|image_pad|>`` placeholders are expanded by vLLM) and the images go in
``multi_modal_data``. ``LLM`` is not thread-safe, so the roles' calls (and concurrent cases) meet in
one ``MicroBatcher`` per engine and reach ``LLM.generate`` together; each request carries its own
``SamplingParams`` and ``LoRARequest``. Decoding follows each request's ``Sampling`` only
(``generation_config="vllm"``: the checkpoint's sampling defaults are ignored, as in the
transformers backend); logprobs are vLLM's default raw log-probabilities of the chosen tokens.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from app.backends.batcher import MicroBatcher
from graph.protocol import BackendError, ChatRequest, Completion

if TYPE_CHECKING:
    from vllm.lora.request import LoRARequest

logger = logging.getLogger(__name__)

_Item = tuple[ChatRequest, "LoRARequest | None"]


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise BackendError(
            "the vllm backend needs vLLM and a CUDA GPU: pip install 'mmedagent-rl[vllm]'"
        ) from exc
    return vllm


class VLLMEngine:
    """One ``vllm.LLM`` on ``model``; ``role_backend`` gives each role its view (adapter, model id).

    ``engine_kwargs`` go to ``vllm.LLM`` (``gpu_memory_utilization``, ``max_model_len``,
    ``tensor_parallel_size``...).
    """

    def __init__(
        self,
        model: str,
        *,
        enable_lora: bool = False,
        max_lora_rank: int = 64,
        max_images_per_prompt: int = 8,
        batch_wait_s: float = 0.05,
        batch_gap_s: float = 0.005,
        max_batch: int = 256,
        **engine_kwargs: Any,
    ) -> None:
        vllm = _import_vllm()
        from transformers import AutoProcessor, GenerationConfig

        self.model = model
        started = time.perf_counter()
        self._llm = vllm.LLM(
            model=model,
            enable_lora=enable_lora,
            max_lora_rank=max_lora_rank,
            limit_mm_per_prompt={"image": max_images_per_prompt},
            generation_config="vllm",
            **engine_kwargs,
        )
        self._processor = AutoProcessor.from_pretrained(model)
        eos = GenerationConfig.from_pretrained(model).eos_token_id
        self._stop_ids: list[int] = [] if eos is None else (eos if isinstance(eos, list) else [eos])
        self._sampling_params = vllm.SamplingParams
        self._loras: dict[str, LoRARequest] = {}
        self._loras_lock = threading.Lock()
        self._batcher: MicroBatcher[_Item] = MicroBatcher(
            self._run,
            key=lambda _item, _caller: 0,
            max_wait_s=batch_wait_s,
            gap_s=min(batch_gap_s, batch_wait_s),
            max_batch=max_batch,
            name=model,
        )
        logger.info("vLLM engine for %s ready in %.1fs", model, time.perf_counter() - started)

    def role_backend(self, adapter_path: str | None = None, model_id: str | None = None) -> VLLMBackend:
        """A ``ChatBackend`` on this engine, with ``adapter_path`` (a LoRA) applied to its requests."""
        lora = self._lora(adapter_path) if adapter_path else None
        return VLLMBackend(
            self, lora, model_id or (f"{self.model}@{adapter_path}" if adapter_path else self.model)
        )

    def submit(self, items: Sequence[_Item]) -> list[Completion]:
        return self._batcher.submit(items)

    def close(self) -> None:
        self._batcher.close()

    def _lora(self, path: str) -> LoRARequest:
        from vllm.lora.request import LoRARequest

        with self._loras_lock:
            if path not in self._loras:
                self._loras[path] = LoRARequest(f"adapter-{len(self._loras) + 1}", len(self._loras) + 1, path)
            return self._loras[path]

    def _run(self, items: list[_Item]) -> list[Completion]:
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
        outputs = self._llm.generate(
            prompts, sampling_params=params, lora_request=[lora for _, lora in items], use_tqdm=False
        )
        latency = time.perf_counter() - started
        completions = []
        for output in outputs:
            result = output.outputs[0]
            token_ids = list(result.token_ids)
            logprobs = (
                [step[token].logprob for step, token in zip(result.logprobs, token_ids, strict=True)]
                if result.logprobs
                else None
            )
            completions.append(
                Completion(
                    text=result.text,
                    model_id=self.model,  # each role's VLLMBackend puts its own id
                    token_ids=token_ids,
                    logprobs=logprobs,
                    prompt_tokens=len(output.prompt_token_ids or []),
                    completion_tokens=len(token_ids),
                    latency_s=latency,
                )
            )
        return completions


class VLLMBackend:
    """One role's ``ChatBackend`` on a shared ``VLLMEngine`` (optionally with its LoRA adapter)."""

    def __init__(self, engine: VLLMEngine, lora: LoRARequest | None, model_id: str) -> None:
        self._engine, self._lora, self._model_id = engine, lora, model_id

    @property
    def model_id(self) -> str:
        return self._model_id

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        completions = self._engine.submit([(r, self._lora) for r in requests])
        for completion in completions:
            completion.model_id = self._model_id
        return completions
