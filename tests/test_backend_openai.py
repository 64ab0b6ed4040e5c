"""OpenAIBackend against a real ``transformers serve`` process on loopback, serving the tiny checkpoint.

The server is started by these tests (offline, CPU, one torch thread), killed and restarted by them.
What ``transformers serve`` (5.19) does not offer is documented in README "Serving": it ignores
``logprobs`` (no log-probabilities or token ids come back), refuses unknown request fields with 422,
and runs a vision-language model's requests one at a time (its continuous batching is text-only).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from app.backends.factory import build_backends
from app.backends.local import TransformersBackend
from app.backends.openai import OpenAIBackend, parse_chat_completion
from app.config import RoleSpec, Settings
from app.local_serving import TransformersServe, free_port
from app.runtime import CaseRequest, Runtime
from data.schema import ROLES
from data.synthetic import generate_cases
from graph.protocol import BackendError, ChatRequest, Sampling

TOKENS = {"triage": 6, "specialist": 10, "attending": 14}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransformersServe]:
    served = TransformersServe(tiny_model_dir, tmp_path_factory.mktemp("serve") / "serve.log")
    served.start()
    try:
        served.wait_ready()
        yield served
    finally:
        served.kill()


def _settings(home: Path, model_dir: Path, base_url: str, **client: object) -> Settings:
    roles = {
        role: RoleSpec(backend="openai", base_url=base_url, max_new_tokens=n, **client)  # type: ignore[arg-type]
        for role, n in TOKENS.items()
    }
    return Settings(home=home, model=str(model_dir), **roles)  # type: ignore[arg-type]


def _case(seed: int) -> CaseRequest:
    (c,) = generate_cases(1, seed=seed)
    return CaseRequest.from_synthetic(c, gold=False, case_id=None)


def _request(text: str, shade: int, max_new_tokens: int = 8) -> ChatRequest:
    return ChatRequest(
        messages=[
            {"role": "system", "content": "You are the Radiologist."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
        ],
        images=[Image.new("RGB", (64 + shade % 50, 64), (shade, 255 - shade, 90))],
        sampling=Sampling(max_new_tokens=max_new_tokens),
    )


_SPECIAL = re.compile(r"<\|[a-z_]+\|>")


def _by_step(steps: list[dict]) -> list[tuple[str, str, str, int]]:
    """Each step's role, specialty, completion and prompt size. ``transformers serve`` decodes with
    special tokens kept (the random tiny model may emit ``<|video_pad|>``) and strips the text; the
    local backend skips them: the same tokens, so compare the text without them."""
    return sorted(
        (s["node"], s.get("specialty") or "", _SPECIAL.sub("", s["completion"]).strip(), s["prompt_tokens"])
        for s in steps
    )


@pytest.mark.slow
def test_a_case_end_to_end_over_http_matches_the_local_model(
    server: TransformersServe, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-test-never-stored-4f7a"
    monkeypatch.setenv("MMEDAGENT_TEST_API_KEY", secret)
    settings = _settings(
        tmp_path / "http", tiny_model_dir, server.base_url, api_key_env="MMEDAGENT_TEST_API_KEY"
    )
    case = _case(seed=4)
    runtime = Runtime(settings)
    try:
        assert len({id(b) for b in runtime.backends.values()}) == 1, "roles on one server share a client"
        result = runtime.ask(case)
    finally:
        runtime.close()
    assert result.status == "ok", result.error
    assert [s["node"] for s in result.steps].count("specialist") == 3
    assert all(s["model_id"] == str(tiny_model_dir) for s in result.steps)
    assert all(s["completion_tokens"] > 0 and s["latency_s"] > 0 for s in result.steps)

    # Greedy decoding on the same weights: the server says what the in-process model says.
    local_roles = {r: RoleSpec(max_new_tokens=n) for r, n in TOKENS.items()}
    in_process = TransformersBackend(str(tiny_model_dir))
    local = Runtime(
        settings.model_copy(update={"home": tmp_path / "local", **local_roles}),
        backends=dict.fromkeys(ROLES, in_process),
    )
    try:
        expected = local.ask(case)
    finally:
        local.close()
        in_process.close()
    assert _by_step(result.steps) == _by_step(expected.steps)
    assert result.answer == expected.answer

    # The API key went to the server in a header and nowhere else.
    for stored in (tmp_path / "http").iterdir():
        assert secret.encode() not in stored.read_bytes(), stored


@pytest.mark.slow
def test_server_killed_mid_run_then_restarted(
    server: TransformersServe, tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, tiny_model_dir, server.base_url, retries=1)
    runtime = Runtime(settings)
    # Kill the server as soon as triage has answered: the specialists find nobody to talk to.
    killed = runtime.ask(
        _case(seed=5), on_event=lambda e: server.kill() if e.get("event") == "step_finished" else None
    )
    runtime.close()
    assert killed.status == "error"
    assert "cannot reach the server" in (killed.error or "") and server.base_url in (killed.error or "")
    assert "gave up after 2 attempts" in (killed.error or "")
    assert [s["node"] for s in killed.steps] == ["triage"]

    # Restart, and ask again before it is up: the retries carry the run over the restart.
    server.start()
    patient = Runtime(_settings(tmp_path, tiny_model_dir, server.base_url, retries=20))
    try:
        revived = patient.ask(_case(seed=6))
        stored = patient.store.get_run(killed.run_id)
    finally:
        patient.close()
        server.wait_ready()  # leave it up for the other tests
    assert revived.status == "ok", revived.error
    assert len(revived.steps) == 5
    assert stored is not None and stored.status == "error" and stored.error == killed.error
    assert [s.node for s in stored.steps] == ["triage"]


@pytest.mark.slow
def test_requests_complete_in_order_within_the_concurrency_limit(
    server: TransformersServe, tiny_model_dir: Path
) -> None:
    backend = OpenAIBackend(server.base_url, str(tiny_model_dir), max_concurrency=2)
    requests = [_request(f"Case {i}: which specialist?", 37 * i, 4 + i) for i in range(4)]
    try:
        together = backend.generate(requests)
        alone = [backend.generate([r])[0] for r in requests]
    finally:
        backend.close()
    assert [c.text for c in together] == [c.text for c in alone]
    assert [c.completion_tokens for c in together] == [c.completion_tokens for c in alone]
    assert len({c.text for c in together}) > 1


@pytest.mark.slow
def test_a_refused_request_is_a_clear_error_without_retries(
    server: TransformersServe, tiny_model_dir: Path
) -> None:
    # vLLM's field for token ids; transformers serve rejects fields it does not know.
    backend = OpenAIBackend(
        server.base_url, str(tiny_model_dir), retries=5, extra_body={"return_tokens_as_token_ids": True}
    )
    with pytest.raises(
        BackendError, match=r"refused the request: HTTP 422.*return_tokens_as_token_ids"
    ) as info:
        backend.generate([_request("Which specialist?", 10)])
    assert "gave up" not in str(info.value)
    backend.close()


@pytest.mark.slow
def test_image_blocks_must_match_images(server: TransformersServe, tiny_model_dir: Path) -> None:
    backend = OpenAIBackend(server.base_url, str(tiny_model_dir))
    request = _request("Which specialist?", 10)
    request.images = []
    with pytest.raises(BackendError, match="image"):
        backend.generate([request])
    backend.close()


def test_unreachable_server_and_missing_key_are_clear_errors(tiny_model_dir: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    backend = OpenAIBackend(url, "m", retries=2)
    with pytest.raises(BackendError, match=r"cannot reach the server.*gave up after 3 attempts"):
        backend.generate([_request("Which specialist?", 10)])
    backend.close()
    with pytest.raises(BackendError, match="MMEDAGENT_NO_SUCH_KEY is not set"):
        OpenAIBackend(url, "m", api_key_env="MMEDAGENT_NO_SUCH_KEY")


def test_openai_roles_need_a_base_url() -> None:
    with pytest.raises(ValueError, match="needs a base_url"):
        RoleSpec(backend="openai")
    remote = RoleSpec(backend="openai", base_url="http://127.0.0.1:9/v1")
    adapted = RoleSpec(backend="openai", base_url="http://127.0.0.1:9/v1", adapter="/lora")
    settings = Settings(triage=remote, specialist=adapted, attending=remote)
    with pytest.raises(BackendError, match="cannot apply adapter"):
        build_backends(settings)


def test_parses_logprobs_token_ids_and_reasoning() -> None:
    # The shape vLLM returns with logprobs=true and return_tokens_as_token_ids=true.
    data = {
        "choices": [
            {
                "message": {"content": "<answer>B</answer>", "reasoning_content": "a nodule"},
                "logprobs": {
                    "content": [
                        {"token": "token_id:17", "logprob": -0.25},
                        {"token": "token_id:4", "logprob": -1.5},
                    ]
                },
            }
        ],
        "usage": {"prompt_tokens": 31, "completion_tokens": 2},
    }
    c = parse_chat_completion(data, "m", 0.5)
    assert c.text == "<think>a nodule</think><answer>B</answer>"
    assert (c.token_ids, c.logprobs, c.prompt_tokens, c.completion_tokens) == ([17, 4], [-0.25, -1.5], 31, 2)
    # Tokens given as text (OpenAI): logprobs yes, ids no.
    data["choices"][0]["logprobs"]["content"][0]["token"] = "B"  # type: ignore[index]
    c = parse_chat_completion(data, "m", 0.5)
    assert c.token_ids is None and c.logprobs == [-0.25, -1.5]
