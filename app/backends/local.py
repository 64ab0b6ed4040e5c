"""In-process ``ChatBackend``: a Hugging Face Qwen2.5-VL (optionally with a LoRA adapter) on CPU/GPU.

Decoding is defined entirely by each request's ``Sampling``: the checkpoint's ``generation_config``
contributes only its stop and pad token ids; its sampling defaults (``top_k``, ``repetition_penalty``,
a low default temperature...) are overridden so that the same ``Sampling`` means the same thing here
as in the other backends.

``Completion.logprobs`` are the *raw* model log-probabilities of the chosen tokens: log-softmax of the
unprocessed logits (``output_logits=True``), i.e. at temperature 1 and before top-p filtering. This is
the quantity vLLM reports by default and the policy log-probability GRPO works with; it does not
depend on the sampling parameters.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.backends.batcher import MicroBatcher
from graph.protocol import BackendError, ChatRequest, Completion, Sampling

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_DTYPES = ("float32", "bfloat16", "float16")


def _looks_like_local_path(name: str) -> bool:
    """Whether ``name`` is meant as a filesystem path rather than a hub id like ``Qwen/Qwen2.5-VL-3B``."""
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def _check_image_count(request: ChatRequest) -> None:
    """Each image block needs its image: in a batch a missing one would silently take a neighbour's."""
    blocks = sum(
        1
        for message in request.messages
        if isinstance(message.get("content"), list)
        for block in message["content"]
        if isinstance(block, dict) and block.get("type") == "image"
    )
    if blocks != len(request.images):
        raise BackendError(f"the request has {blocks} image blocks but {len(request.images)} images")


class TransformersBackend:
    """Completes chat batches with ``model.generate`` on a locally loaded Qwen2.5-VL-style model.

    ``model_path`` is a local checkpoint directory or a hub id (honours ``HF_HUB_OFFLINE``);
    ``adapter_path`` an optional PEFT LoRA adapter (needs the ``train`` extra). ``device`` is
    ``"auto"`` (CUDA when available, else CPU) or a torch device string; ``dtype`` is ``"auto"``
    (float32 on CPU, the checkpoint's dtype on GPU) or one of float32/bfloat16/float16.

    Thread-safe: concurrent ``generate`` calls are merged by a ``MicroBatcher`` (``batch_gap_s``,
    ``batch_wait_s``: see app/backends/batcher.py) into ``model.generate`` calls of at most
    ``max_batch`` requests.
    """

    def __init__(
        self,
        model_path: str,
        *,
        adapter_path: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        model_id: str | None = None,
        batch_wait_s: float = 0.05,
        batch_gap_s: float = 0.005,
        max_batch: int = 32,
    ) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if dtype != "auto" and dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {_DTYPES}, got {dtype!r}")
        for label, path in (("model", model_path), ("adapter", adapter_path)):
            if path is not None and _looks_like_local_path(path) and not Path(path).expanduser().exists():
                raise BackendError(f"{label} path does not exist: {Path(path).expanduser()}")

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_device = torch.device(device)
        if dtype != "auto":
            torch_dtype: Any = getattr(torch, dtype)
        else:
            # bf16/fp16 matmuls on CPU are slow and lossy; the checkpoint's own dtype on accelerators.
            torch_dtype = torch.float32 if torch_device.type == "cpu" else "auto"

        started = time.perf_counter()
        try:
            model = AutoModelForImageTextToText.from_pretrained(
                model_path, dtype=torch_dtype, device_map=str(torch_device)
            )
            self.processor = AutoProcessor.from_pretrained(model_path)
        except Exception as exc:
            raise BackendError(f"cannot load model {model_path!r}: {type(exc).__name__}: {exc}") from exc
        if adapter_path is not None:
            try:
                from peft import PeftModel
            except ImportError as exc:
                raise BackendError("a LoRA adapter needs peft: pip install 'mmedagent-rl[train]'") from exc
            try:
                model = PeftModel.from_pretrained(model, adapter_path)
            except Exception as exc:
                raise BackendError(
                    f"cannot load adapter {adapter_path!r}: {type(exc).__name__}: {exc}"
                ) from exc
        # device_map placed the base weights and peft puts adapter weights beside their base layers.
        self.model = model.eval()

        tokenizer = self.processor.tokenizer
        gen_config = self.model.generation_config
        eos = gen_config.eos_token_id if gen_config.eos_token_id is not None else tokenizer.eos_token_id
        self._eos_ids: list[int] = sorted(
            {*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id} - {None}
        )
        if not self._eos_ids:
            raise BackendError(f"model {model_path!r} defines no eos token")
        pad = gen_config.pad_token_id if gen_config.pad_token_id is not None else tokenizer.pad_token_id
        self._pad_id: int = pad if pad is not None else self._eos_ids[0]

        self._model_id = model_id or (f"{model_path}@{adapter_path}" if adapter_path else model_path)
        self.model_calls = 0  # model.generate calls so far, for tests and benchmarks
        self._batcher = MicroBatcher(
            self._run_batch,
            key=self._batch_key,
            max_wait_s=batch_wait_s,
            gap_s=min(batch_gap_s, batch_wait_s),
            max_batch=max_batch,
            name=self._model_id,
        )
        logger.info(
            "loaded %s on %s (%s) in %.1fs",
            self._model_id,
            torch_device,
            self.model.dtype,
            time.perf_counter() - started,
        )

    @property
    def model_id(self) -> str:
        """The checkpoint (``path@adapter`` with an adapter) unless a ``model_id`` was given."""
        return self._model_id

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """Complete ``requests`` in order, batched with whatever other threads submit meanwhile.

        Requests that decode alike share one ``model.generate`` (see ``_batch_key``), including their
        ``max_new_tokens`` (in practice: their role), so short triage rows are not held and padded for
        the length of attending rows (bench/serving.py measures what that does to throughput with
        concurrent cases). ``prompt_tokens`` counts a request's unpadded
        prompt, image placeholder tokens included; ``latency_s`` is the wall time of the
        ``model.generate`` that produced a completion (shared by the requests in that batch). With a
        ``seed``, sampled output depends on the whole batch, so seeded requests are batched only with
        requests of the same call: reproducible for the same call, not per request.
        """
        for request in requests:
            _check_image_count(request)
        return self._batcher.submit(requests)

    def close(self) -> None:
        """Stop batching: queued requests fail with ``BackendError``; the model stays loaded."""
        self._batcher.close()

    @staticmethod
    def _batch_key(request: ChatRequest, caller: int) -> tuple[Any, ...]:
        sampling = request.sampling
        if sampling.temperature <= 0:
            return ("greedy", sampling.max_new_tokens)
        private = caller if sampling.seed is not None else None
        return (
            "sample",
            sampling.max_new_tokens,
            sampling.temperature,
            sampling.top_p,
            sampling.seed,
            private,
        )

    def _run_batch(self, requests: list[ChatRequest]) -> list[Completion]:
        """One ``model.generate`` for requests that share a ``_batch_key`` (the batcher's worker thread)."""
        try:
            return self._generate_batch(requests, requests[0].sampling)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(
                f"{self._model_id}: generation failed for a batch of {len(requests)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _generate_batch(self, requests: list[ChatRequest], sampling: Sampling) -> list[Completion]:
        import torch

        texts = [
            self.processor.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False)
            for r in requests
        ]
        # The processor takes one flat image list for the batch and hands the images to the
        # <|image_pad|> placeholders in order, so requests without images need no special case.
        images = [image for r in requests for image in r.images]
        inputs = self.processor(
            text=texts,
            images=images or None,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        ).to(self.model.device)

        options: dict[str, Any] = {
            "max_new_tokens": sampling.max_new_tokens,
            "eos_token_id": self._eos_ids,
            "pad_token_id": self._pad_id,
            "repetition_penalty": 1.0,
            "return_dict_in_generate": True,
            "output_logits": True,
        }
        if sampling.temperature > 0:
            options |= {
                "do_sample": True,
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "top_k": 0,
            }
        else:
            options["do_sample"] = False

        started = time.perf_counter()
        with self._seeded(sampling.seed):
            self.model_calls += 1
            output = self.model.generate(**inputs, **options)
        latency = time.perf_counter() - started

        prompt_len = inputs["input_ids"].shape[1]
        generated = output.sequences[:, prompt_len:]
        logprobs = torch.stack(
            [
                torch.log_softmax(step.float(), dim=-1).gather(1, generated[:, t : t + 1]).squeeze(1)
                for t, step in enumerate(output.logits)
            ],
            dim=1,
        )
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()

        eos = set(self._eos_ids)
        completions = []
        rows = zip(requests, generated.tolist(), logprobs.tolist(), strict=True)
        for row, (request, ids, row_logprobs) in enumerate(rows):
            # Keep the stop token (it was generated and has a logprob); drop the padding after it, and
            # what a row generated past its own limit in a batch that ran longer for another row.
            limit = min(len(ids), request.sampling.max_new_tokens)
            length = next((i + 1 for i, token in enumerate(ids[:limit]) if token in eos), limit)
            token_ids = ids[:length]
            completions.append(
                Completion(
                    text=self.processor.tokenizer.decode(token_ids, skip_special_tokens=True),
                    model_id=self._model_id,
                    token_ids=token_ids,
                    logprobs=row_logprobs[:length],
                    prompt_tokens=int(prompt_tokens[row]),
                    completion_tokens=length,
                    latency_s=latency,
                )
            )
        logger.debug(
            "%s: %d requests, %d new tokens max, %.3fs",
            self._model_id,
            len(requests),
            generated.shape[1],
            latency,
        )
        return completions

    @contextlib.contextmanager
    def _seeded(self, seed: int | None) -> Iterator[None]:
        """Seed torch's RNG for one call without disturbing the caller's global RNG state."""
        if seed is None:
            yield
            return
        import torch

        device: torch.device = self.model.device
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield
