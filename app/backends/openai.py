"""``ChatBackend`` over any OpenAI-compatible ``/v1/chat/completions`` server, through the official
``openai`` client.

``vllm serve``, ``transformers serve`` and hosted APIs all speak it. Images travel as base64 PNG data
URLs in ``image_url`` content blocks. Requests run concurrently (at most ``max_concurrency`` in flight
per backend; ``vllm serve`` batches them, ``transformers serve`` queues them). The client owns the
timeout and the retries (``max_retries``: connection failures, timeouts, 408/409/429 and 5xx, with
exponential backoff that honours ``Retry-After``); any failure left is a ``BackendError`` that names
the server and what it said.

Log-probabilities are requested (``logprobs: true``) and recorded when the server returns them; the
token ids too when it names tokens as ``token_id:N`` (vLLM with ``return_tokens_as_token_ids``, passed
through ``extra_body``). ``extra_body`` is merged last, so ``{"logprobs": false}`` turns them off for
servers that refuse the field. A reply's ``reasoning_content`` (servers that split ``<think>`` blocks
off the answer) is put back in front as ``<think>…</think>``, the format the graph's parsers read.

The API key is read from the environment variable named by ``api_key_env`` when the backend is
built; it lives only in the client (never logged, never stored with a run).
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import threading
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache

from graph.protocol import BackendError, ChatRequest, Completion

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

_TOKEN_ID = re.compile(r"token_id:(\d+)")
_PNG_CACHE_SIZE = 64


def _retried(status: int) -> bool:
    """Whether the ``openai`` client retries a reply with this status (its policy, for our messages)."""
    return status in (408, 409, 429) or status >= 500


class OpenAIBackend:
    """Completes chat requests through ``{base_url}/chat/completions`` (``base_url`` ends in ``/v1``).

    ``model`` is the ``model`` field of each request (a hub id, or for a local ``transformers
    serve`` the checkpoint path); ``model_id`` (default ``model``) is what steps record.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        timeout_s: float = 120.0,
        max_concurrency: int = 8,
        retries: int = 3,
        extra_body: Mapping[str, Any] | None = None,
        model_id: str | None = None,
    ) -> None:
        try:
            import openai
        except ImportError as exc:
            raise BackendError("the openai backend needs openai: pip install 'mmedagent-rl[serve]'") from exc
        if max_concurrency < 1 or retries < 0 or timeout_s <= 0:
            raise ValueError("need max_concurrency >= 1, retries >= 0 and timeout_s > 0")
        key = "EMPTY"  # servers without authentication ignore it (the vLLM convention)
        if api_key_env:
            key = os.environ.get(api_key_env, "")
            if not key:
                raise BackendError(f"the API key variable {api_key_env} is not set (or empty)")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self._model_id = model_id or model
        self._openai = openai
        self._client = openai.OpenAI(
            api_key=key,
            base_url=base_url,
            max_retries=retries,
            timeout=openai.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
        )
        self.timeout_s, self.retries = timeout_s, retries
        self.max_concurrency = max_concurrency
        self._extra_body = dict(extra_body or {})
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        # PNG data URL per image object (by id, checked through a weak reference).
        self._png_cache: LRUCache[int, tuple[weakref.ref[Image.Image], str]] = LRUCache(_PNG_CACHE_SIZE)
        self._png_lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self._model_id

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """Complete ``requests`` concurrently (within ``max_concurrency``); results in order."""
        if len(requests) <= 1:
            return [self._complete(r) for r in requests]
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="openai-backend")
            futures = [self._pool.submit(self._complete, r) for r in requests]
        return [f.result() for f in futures]

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        self._client.close()

    def _messages(self, request: ChatRequest) -> list[dict[str, Any]]:
        """Our content blocks in OpenAI form: each ``{"type": "image"}`` becomes its image's data URL."""
        images = iter(request.images)
        used = 0
        out = []
        for message in request.messages:
            content = message.get("content")
            if isinstance(content, list):
                blocks = []
                for block in content:
                    if isinstance(block, dict) and block.get("type") == "image":
                        image = next(images, None)
                        if image is None:
                            raise BackendError(
                                f"the request has more image blocks than its {len(request.images)} images"
                            )
                        used += 1
                        blocks.append({"type": "image_url", "image_url": {"url": self._data_url(image)}})
                    else:
                        blocks.append(block)
                content = blocks
            out.append({**message, "content": content})
        if used != len(request.images):
            raise BackendError(f"the request has {used} image blocks but {len(request.images)} images")
        return out

    def _data_url(self, image: Image.Image) -> str:
        """PNG data URL, cached per image object: a case sends the same image in all its calls."""
        with self._png_lock:
            hit = self._png_cache.get(id(image))
        if hit is not None and hit[0]() is image:
            return hit[1]
        buffer = io.BytesIO()
        (image if image.mode in ("RGB", "L") else image.convert("RGB")).save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        with self._png_lock:
            self._png_cache[id(image)] = (weakref.ref(image), url)
        return url

    def _complete(self, request: ChatRequest) -> Completion:
        sampling, openai = request.sampling, self._openai
        optional = {"seed": sampling.seed} if sampling.seed is not None else {}
        attempts = f"gave up after {self.retries + 1} attempts"
        try:
            with self._slots:
                raw = self._client.chat.completions.with_raw_response.create(
                    model=self.model,
                    messages=self._messages(request),  # type: ignore[arg-type]
                    # max_tokens, not its newer alias max_completion_tokens: transformers serve
                    # (5.19) ignores the alias and would decode to its own default length
                    max_tokens=sampling.max_new_tokens,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    logprobs=True,
                    extra_body=self._extra_body or None,
                    **optional,
                )
        except openai.APITimeoutError as exc:
            raise BackendError(f"{self.url}: no answer within {self.timeout_s:g}s ({attempts})") from exc
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            problem = f"cannot reach the server ({type(cause).__name__}: {cause})"
            raise BackendError(f"{self.url}: {problem} ({attempts})") from exc
        except openai.APIStatusError as exc:
            problem = f"HTTP {exc.status_code}: {_snippet(exc.response.text)}"
            if _retried(exc.status_code):
                raise BackendError(f"{self.url}: {problem} ({attempts})") from exc
            raise BackendError(f"{self.url} refused the request: {problem}") from exc
        reply = raw.http_response
        try:
            return parse_chat_completion(reply.json(), self._model_id, raw.elapsed.total_seconds())
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BackendError(
                f"{self.url}: unexpected reply ({type(exc).__name__}: {exc}): {_snippet(reply.text)}"
            ) from exc


def parse_chat_completion(data: Mapping[str, Any], model_id: str, latency_s: float) -> Completion:
    """A ``chat.completion`` object (its first choice) as a ``Completion``."""
    choice = data["choices"][0]
    message = choice.get("message") or {}
    text = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning:
        text = f"<think>{reasoning}</think>{text}"
    entries = (choice.get("logprobs") or {}).get("content") or []
    logprobs = [float(e["logprob"]) for e in entries] or None
    matches = [_TOKEN_ID.fullmatch(str(e.get("token", ""))) for e in entries]
    token_ids = [int(m.group(1)) for m in matches if m] if entries and all(matches) else None
    usage = data.get("usage") or {}
    return Completion(
        text=text,
        model_id=model_id,
        token_ids=token_ids,
        logprobs=logprobs,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or len(entries)),
        latency_s=latency_s,
    )


def _snippet(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"
