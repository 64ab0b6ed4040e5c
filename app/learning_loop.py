"""The learning loop on the embedded defaults (``mmedagent demo``): cases asked, stored, trained on
and answered better, end to end in minutes on a CPU.

1. **Base.** The tiny offline Qwen2.5-VL (app/tiny_model.py) gets a format SFT for every role the
   graph runs (triage, specialists, attending; random answers: the format, not the task, rl/sft.py
   ``graph_format_sft``), so that its answers parse. Built once per seed under
   ``home/loop/``, like the tiny model itself; it is what every role serves (version ``base``).
2. **Clinic.** Synthetic-clinic cases go through the whole graph on the base and are stored, with
   their gold labels, as a clinic whose outcomes are known would store them.
3. **Training.** The triage policy is trained with GRPO on those stored runs: the path of
   ``mmedagent train --role triage --from_db --since <the loop's start>`` (app/training.py), with
   the recipe ``tiny-triage-loop``; the result is registered as a new policy version. Triage is the
   role trained: its label (the gold specialty) is known for every case and it learns within
   minutes on the tiny model (the attending's recipe takes about 25; docs/learning.md).
4. **Held out.** Cases of another seed go through the graph twice, as ``mmedagent eval`` runs them
   (stored runs, one eval id each): on the base, then with triage serving the new version.
5. **Before → after.** Triage accuracy (the first specialty named is the gold one) with 95 %
   bootstrap CIs and the CI of the paired difference, parse rates, the final answer's accuracy,
   the versions, and a learning-curve PNG of the training run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.config import Settings
from app.evaluation.runner import EvalSpec, evaluate
from app.runtime import CaseRequest, Runtime
from app.tiny_model import build_tiny_model
from app.training import Trained, train_and_register
from data.synthetic import generate_cases

LOOP_RECIPE = "tiny-triage-loop"
HELD_OUT_SEED = 10_000  # added to the loop's seed: held-out cases never seen in training
BASE_WARMUP_SEED = 30_000  # added to the loop's seed: the format SFT's own cases
# The base's format SFT (rl/sft.py graph_format_sft), over triage, specialist and attending rows.
BASE_FORMAT_SFT: dict[str, Any] = {
    "max_steps": 200,
    "learning_rate": 3e-3,
    "per_device_train_batch_size": 16,
    "gradient_checkpointing": False,  # nothing to save on a tiny model, and it costs time
}
BASE_ROWS = 1200  # cases per role for the format SFT
# Half of the format SFT's rows are triage's: its think must name what the image shows, which is
# what GRPO then learns to route from (rl/sft.py); the others only need the format.
BASE_SHARES = {"triage": 2.0, "specialist": 1.0, "attending": 1.0}
CASE_SIZE = 56  # the clinic's image size (data/synthetic.py's default), for every case of the loop

Phase = Callable[[str, int | None], Callable[[], None]]  # (label, total) -> advance one


@dataclass(frozen=True)
class LoopOptions:
    seed: int = 0
    cases: int = 512  # stored clinic cases to train on
    held_out: int = 100
    workers: int = 8  # cases in flight (the local backend batches their model calls)
    steps: int | None = None  # GRPO steps; None: the recipe's


@dataclass
class Arm:
    """The held-out evaluation of one configuration (before or after training)."""

    name: str
    versions: dict[str, int]
    report: dict[str, Any]

    def triage_hits(self) -> dict[str, float]:
        return {c["case_id"]: float(c.get("triage_top1", False)) for c in self.report["per_case"]}


@dataclass
class LoopResult:
    options: LoopOptions
    database: str
    base: Path
    trained: Trained
    before: Arm
    after: Arm
    curve: Path | None
    stored_cases: int
    timings: dict[str, float] = field(default_factory=dict)


def base_model(settings: Settings, seed: int, *, progress_bar: bool = True) -> Path:
    """The loop's base checkpoint: the tiny model after a format SFT of every graph role (built on
    first use, then reused)."""
    from rl.datasets import (
        iter_synthetic_attending_rows,
        iter_synthetic_specialist_rows,
        synthetic_triage_rows,
    )
    from rl.recipe import PolicyModelConfig
    from rl.sft import graph_format_sft

    out = settings.home / "loop" / f"base-seed{seed}"
    policy = out / "policy"
    if (policy / "config.json").exists():
        return policy
    tiny = settings.tiny_model_dir
    if not (tiny / "config.json").exists():
        build_tiny_model(tiny)
    size, draw = CASE_SIZE, BASE_WARMUP_SEED + seed
    rows = {
        "triage": synthetic_triage_rows(BASE_ROWS, seed=draw, size=size),
        "specialist": list(iter_synthetic_specialist_rows(BASE_ROWS, seed=draw, size=size)),
        "attending": list(iter_synthetic_attending_rows(BASE_ROWS, seed=draw, size=size)),
    }
    model = PolicyModelConfig(model_name_or_path=str(tiny), use_peft=False)
    graph_format_sft(
        model, rows, out, BASE_FORMAT_SFT, shares=BASE_SHARES, seed=seed, progress_bar=progress_bar
    )
    return policy


def ask_cases(runtime: Runtime, seed: int, n: int, *, workers: int, advance: Callable[[], None]) -> int:
    """``n`` synthetic-clinic cases of ``seed`` through the graph, stored with their gold labels
    (source ``demo``); returns how many ran without error."""
    limits = runtime.settings.image_limits()

    def ask(case: Any) -> bool:
        result = runtime.ask(CaseRequest.from_synthetic(case, limits=limits, source="demo"))
        advance()
        return result.status == "ok"

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="loop") as pool:
        return sum(pool.map(ask, generate_cases(n, seed=seed, size=CASE_SIZE)))


def held_out(settings: Settings, name: str, options: LoopOptions, advance: Callable[[], None]) -> Arm:
    """The held-out cases through the graph as ``mmedagent eval`` runs them, under ``settings``."""
    seed = HELD_OUT_SEED + options.seed
    spec = EvalSpec(benchmark="synthetic", mode="multi", n=options.held_out, seed=seed)
    runtime = Runtime(settings)
    try:
        report = evaluate(
            runtime, spec, spec.load_cases(), workers=options.workers, on_case=lambda _: advance()
        )
        return Arm(name, dict(runtime.policy_ids), report)
    finally:
        runtime.close()


def run_loop(settings: Settings, options: LoopOptions, phase: Phase) -> LoopResult:
    """The whole loop (module docstring); ``phase(label, total)`` opens a progress bar and returns
    the function that advances it (``total`` None: a phase that reports its own progress)."""
    from rl.grpo import parse_args

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    phase("1/5 format warm-up of the base model (once per seed)", None)
    base = base_model(settings, options.seed)
    timings["base"] = time.perf_counter() - t0
    base_settings = settings.model_copy(update={"model": str(base)})

    started = datetime.now(UTC)
    t0 = time.perf_counter()
    advance = phase(f"2/5 clinic: {options.cases} cases through the graph, stored", options.cases)
    runtime = Runtime(base_settings)
    try:
        stored = ask_cases(runtime, options.seed, options.cases, workers=options.workers, advance=advance)
        timings["clinic"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        phase("3/5 GRPO on the stored triage steps", None)
        out = settings.home / "loop" / f"triage-{started:%Y%m%dT%H%M%S}"
        argv = ["--recipe", LOOP_RECIPE, "--role", "triage", "--from_db", "--since", started.isoformat()]
        argv += ["--out", str(out), "--seed", str(options.seed)]
        if options.steps is not None:
            argv += ["--max_steps", str(options.steps)]
        trained = train_and_register(parse_args(argv, prog="mmedagent demo"), base_settings, runtime.store)
        timings["train"] = time.perf_counter() - t0
    finally:
        runtime.close()
    assert trained.version is not None

    t0 = time.perf_counter()
    n = options.held_out
    before = held_out(base_settings, "before", options, phase(f"4/5 held out, base: {n} cases", n))
    trained_triage = base_settings.triage.model_copy(update={"policy": str(trained.version.id)})
    after_settings = base_settings.model_copy(update={"triage": trained_triage})
    after = held_out(after_settings, "after", options, phase(f"5/5 held out, trained triage: {n} cases", n))
    timings["held_out"] = time.perf_counter() - t0
    curve = learning_curve(out)
    return LoopResult(options, settings.database_url, base, trained, before, after, curve, stored, timings)


def paired_difference(before: Arm, after: Arm, seed: int = 0) -> tuple[float, float, float]:
    """The mean of after − before triage hits over the cases both ran, and its 95 % bootstrap CI."""
    from rl.evaluation import bootstrap_ci

    a, b = before.triage_hits(), after.triage_hits()
    return bootstrap_ci([b[c] - a[c] for c in a if c in b], seed)


def learning_curve(run_dir: Path) -> Path | None:
    """A PNG of the run's training triage accuracy (the sampled completions' mean reward) per
    logged step, beside the run; None when the run logged nothing."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rl.grpo import RUN_FILE

    history = json.loads((run_dir / RUN_FILE).read_text()).get("log_history", [])
    key = "rewards/triage_accuracy_reward/mean"
    points = [(h["step"], h[key]) for h in history if key in h]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(*zip(*points, strict=True), marker="o")
    ax.set(xlabel="GRPO step", ylabel="triage accuracy (sampled)", ylim=(0, 1))
    ax.set_title("Triage: training reward")
    ax.grid(alpha=0.3)
    path = run_dir / "learning-curve.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
