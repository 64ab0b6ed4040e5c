"""Training benchmark: the curriculum trainer's overhead per step, and the memory of preparing rows.

(a) One GRPO step of rl/trainer.py's CurriculumGRPOTrainer, built as a run builds it
    (rl/grpo.py ``plan_stages`` and ``build_trainer``), against plain ``trl.GRPOTrainer`` on the
    tiny checkpoint: the same rows (one stage), config and seed, so both generate the same batch.
    Each trains ``--steps`` steps; the median of TRL's own ``step_time`` over the steps after the
    first is compared (ratio curriculum / plain; target <= 1.05).
(b) Peak RSS of a process that prepares N attending rows for training as rl/grpo.py does (rows
    streamed from a generator to a memory-mapped table, then ordered on their difficulties alone
    into an index mapping: rl/curriculum.ordered_dataset), for 5,000 and 50,000 rows, next to a
    process that only imports the same modules (datasets included). Rows hold the images' stored
    bytes, decoded when the trainer reads a row; the synthetic clinic draws 1,000 distinct cases
    (held in memory: the same for every N), copied (bytes included) up to N so that every row
    owns its bytes as rows read from the store do.

(c) One GRPO step generating with TRL's colocated vLLM engine (``use_vllm``; on CPU through
    rl/vllm_sync.py's weight sync) against transformers' ``generate``: the 14M checkpoint (the
    smallest vLLM's CPU attention runs), the same LoRA recipe, rows and seed, the trainer built by
    rl/grpo.py ``build_trainer``; each run in a process
    of its own, one thread. The median of TRL's ``step_time`` (generation, weight sync and the
    update) over the steps after the first is compared (ratio vLLM / transformers).

    .venv/bin/python bench/training.py [--steps 6] [--rows 5000 50000] [--only a|b|c]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DISTINCT = 1000


def prepare(n: int) -> None:
    """Child process: prepare ``n`` attending rows (n = 0: imports only) and print the peak RSS."""
    import datasets  # noqa: F401 (imported by the preparation: part of the baseline)

    from rl.curriculum import ordered_dataset
    from rl.datasets import synthetic_attending_rows
    from rl.recipe import PAPER_STAGES

    if n:
        base = synthetic_attending_rows(min(n, DISTINCT), seed=0)
        rows = (
            {**r, "images": [bytes(bytearray(b)) for b in r["images"]], "case_id": f"{r['case_id']}-{i}"}
            for i in range(n)
            for r in [base[i % len(base)]]
        )
        dataset, _ = ordered_dataset(rows, PAPER_STAGES, batch=16, seed=0)
        assert len(dataset) >= n
    print(json.dumps({"rows": n, "peak_rss_mib": round(_peak_rss_mib(), 1)}))


def _peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it does not inherit the forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(n: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, __file__, "--prepare-child", str(n)], env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def step_times(curriculum: bool, model: str, rows: list, work: Path, steps: int) -> list[float]:
    """TRL's ``step_time`` of each step of a short run. Both arms train on the rows as a run orders
    them (rl/grpo.py ``plan_stages``: one stage) under the plan's config; the curriculum arm's trainer
    is the run's own (``build_trainer``), the plain arm is ``trl.GRPOTrainer`` with the stage's β
    and γ set in its config."""
    from trl import GRPOTrainer

    from rl.grpo import build_trainer, plan_stages
    from rl.models import load_policy_model, model_init_kwargs
    from rl.recipe import GRPORecipe, PolicyModelConfig, Stage
    from rl.rewards import REWARD_FUNCS

    stage = Stage("easy", beta=0.04, gamma=0.0)
    recipe = GRPORecipe(
        learning_rate=1e-4, num_generations=8, completions_per_step=32, max_completion_length=24,
        stages=[stage], max_steps=steps, logging_steps=1, progress_bar=False, seed=0,
        output_dir=str(work / ("curriculum" if curriculum else "plain")),
    )  # fmt: skip
    model_args = PolicyModelConfig(model_name_or_path=model, use_peft=False)
    plan = plan_stages(recipe, "attending", rows)
    if curriculum:
        trainer = build_trainer(plan.args, model_args, "attending", plan.dataset, plan.stages)
    else:
        args = plan.args
        args.beta, args.entropy_coef = stage.beta, stage.gamma
        trainer = GRPOTrainer(
            model=load_policy_model(model_args, model_init_kwargs(model_args, args.model_init_kwargs)),
            reward_funcs=REWARD_FUNCS["attending"], args=args, train_dataset=plan.dataset,
        )  # fmt: skip
    trainer.train()
    return [h["step_time"] for h in trainer.state.log_history if "step_time" in h]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rows", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--vllm-steps", type=int, default=4, help="steps of each run in part (c)")
    parser.add_argument("--only", choices=["a", "b", "c"], help="run only part (a), (b) or (c)")
    parser.add_argument("--prepare-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--generation-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare_child is not None:
        prepare(args.prepare_child)
        return
    if args.generation_child is not None:
        backend, model, steps = args.generation_child
        generation_child(backend, model, int(steps))
        return

    if args.only in (None, "a"):
        step_ratio(args.steps)
    if args.only in (None, "b"):
        prepare_rss(args.rows)
    if args.only in (None, "c"):
        vllm_ratio(args.vllm_steps)


def step_ratio(steps: int) -> None:
    """Part (a): the curriculum trainer's step time over plain TRL's."""
    import logging

    import torch

    from app.tiny_model import build_tiny_model
    from rl.datasets import synthetic_attending_rows

    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = str(build_tiny_model(work / "tiny", size="tiny", seed=0))
        rows = [r for r in synthetic_attending_rows(120, seed=0, size=56) if r["difficulty"] == "easy"]
        times = {}
        for curriculum in (False, True, False, True):  # interleaved: drift hits both alike
            key = "curriculum" if curriculum else "plain"
            times.setdefault(key, []).extend(step_times(curriculum, model, rows, work / key, steps)[1:])
    plain, curr = statistics.median(times["plain"]), statistics.median(times["curriculum"])
    print(f"(a) one GRPO step, tiny model, 4 prompts x 8, median of {len(times['plain'])} steps each")
    print(f"    plain trl.GRPOTrainer      {plain * 1000:8.1f} ms")
    print(f"    CurriculumGRPOTrainer      {curr * 1000:8.1f} ms")
    print(f"    ratio curriculum / plain   {curr / plain:8.3f}   (target <= 1.05)")


def prepare_rss(counts: list[int]) -> None:
    """Part (b): peak RSS of preparing each count of rows, against imports only."""
    base = _child(0)["peak_rss_mib"]
    print("(b) peak RSS preparing attending rows (streamed to a memory-mapped table, ordered by index)")
    print(f"    imports only               {base:8.1f} MiB")
    for n in counts:
        peak = _child(n)["peak_rss_mib"]
        print(f"    {n:>6} rows                {peak:8.1f} MiB   (+{peak - base:.1f} MiB over imports)")


VLLM_BENCH = {"num_generations": 8, "completions_per_step": 32, "max_completion_length": 64}


def generation_child(backend: str, model: str, steps: int) -> None:
    """Child process: ``steps`` GRPO steps generating with ``backend`` (vllm | transformers); prints
    TRL's step times."""
    import logging

    import torch

    from rl.datasets import synthetic_attending_rows
    from rl.grpo import build_trainer, plan_stages
    from rl.recipe import GRPORecipe, PolicyModelConfig, Stage

    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    stage = Stage("easy", beta=0.04, gamma=0.0)
    vllm = {"use_vllm": True, "vllm_mode": "colocate", "vllm_max_model_length": 1024}
    rows = [r for r in synthetic_attending_rows(120, seed=0, size=56) if r["difficulty"] == "easy"]
    model_args = PolicyModelConfig(model_name_or_path=model)  # LoRA (the default)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = GRPORecipe(
            learning_rate=1e-4, stages=[stage], max_steps=steps, logging_steps=1, progress_bar=False,
            seed=0, output_dir=tmp, **VLLM_BENCH, **(vllm if backend == "vllm" else {}),
        )  # fmt: skip
        plan = plan_stages(recipe, "attending", rows)
        trainer = build_trainer(plan.args, model_args, "attending", plan.dataset, plan.stages)
        trainer.train()
    times = [h["step_time"] for h in trainer.state.log_history if "step_time" in h]
    print(json.dumps({"backend": backend, "step_time": times}))


def vllm_ratio(steps: int) -> None:
    """Part (c): a GRPO step generating with vLLM over one generating with transformers."""
    from app.tiny_model import build_tiny_model

    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = str(build_tiny_model(Path(tmp) / "small", size="small", seed=0))
        for backend in ("transformers", "vllm"):
            out = subprocess.run(
                [sys.executable, __file__, "--generation-child", backend, model, str(steps)],
                env=env, capture_output=True, text=True,
            )  # fmt: skip
            if out.returncode:
                raise SystemExit(out.stderr[-3000:])
            times[backend] = json.loads(out.stdout.strip().splitlines()[-1])["step_time"][1:]
    hf, vl = statistics.median(times["transformers"]), statistics.median(times["vllm"])
    g, tokens = VLLM_BENCH["num_generations"], VLLM_BENCH["max_completion_length"]
    prompts = VLLM_BENCH["completions_per_step"] // g
    print(
        f"(c) one GRPO step, 14M checkpoint, LoRA, {prompts} prompts x {g}, up to {tokens} new tokens,"
        f" CPU, one thread; median of {len(times['vllm'])} steps each"
    )
    print(f"    transformers generate      {hf * 1000:8.1f} ms")
    print(f"    vLLM (colocate)            {vl * 1000:8.1f} ms")
    print(f"    ratio vLLM / transformers  {vl / hf:8.3f}")


if __name__ == "__main__":
    main()
