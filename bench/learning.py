"""Does GRPO learn? The synthetic clinic on the tiny model, on CPU, per seed.

Triage (per seed): a fresh tiny Qwen2.5-VL (weights seeded) -> random-label SFT format warm-up ->
held-out accuracy ("before") -> GRPO (rl/recipes/tiny-triage.yaml) -> held-out accuracy ("GRPO"),
and the SFT baseline: gold-label SFT from the same warm-up on the same number of training cases.

Attending (per seed): warm-up -> GRPO with curriculum (easy -> medium -> hard), GRPO without
(mixed, shuffled), and gold-label SFT, each from the same warm-up; held-out accuracy per difficulty
next to "copy the specialists' majority" and chance. The simulated specialists' opinions are right
on every easy case, on some of each medium case and on no hard case; wrong ones agree on a decoy.

Accuracy is greedy decoding through the serving backend (app/backends/local.py), on held-out cases
of another seed. Wall times are measured here, on whatever else the machine is running.

    .venv/bin/python bench/learning.py [--part triage|attending|all] [--seeds 0 1 2] [--steps N]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.backends.local import TransformersBackend  # noqa: E402
from app.tiny_model import build_tiny_model  # noqa: E402
from rl.datasets import synthetic_attending_rows, synthetic_triage_rows  # noqa: E402
from rl.grpo import score_policy, train_grpo  # noqa: E402
from rl.grpo_config import GRPORecipe  # noqa: E402
from rl.sft import SFTRecipe, format_warmup, gold_completions, train_sft  # noqa: E402
from rl.simulated import majority_answer  # noqa: E402

RECIPES = ROOT / "rl" / "recipes"
LEVELS = ("easy", "medium", "hard")


def accuracy(model: str, rows: list[dict[str, Any]], role: str) -> dict[str, float]:
    return score_policy(TransformersBackend(model), rows, role)


def majority_baseline(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Accuracy of answering what most specialists said, per difficulty."""
    out: dict[str, list[float]] = {"all": []}
    for r in rows:
        text = r["prompt"][1]["content"][-1]["text"].split("Specialist opinions:\n", 1)[1]
        opinions = [line.split("] ", 1)[1] for line in text.splitlines()]
        right = float(majority_answer(opinions, r["options"]) == r["answer"])
        out["all"].append(right)
        out.setdefault(r["difficulty"], []).append(right)
    return {k: sum(v) / len(v) for k, v in out.items()}


def fmt(acc: dict[str, float], keys: tuple[str, ...]) -> str:
    return "  ".join(f"{acc.get(k, float('nan')):6.3f}" for k in keys)


def triage(seed: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    recipe = GRPORecipe.from_yaml(RECIPES / "tiny-triage.yaml", seed=seed, max_steps=args.steps)
    base = str(build_tiny_model(work / "base", seed=seed))
    rows = synthetic_triage_rows(recipe.prompts_per_step * recipe.max_steps, seed=seed)
    held = synthetic_triage_rows(args.heldout, seed=10_000 + seed)
    t0 = time.perf_counter()
    warm = format_warmup(base, rows, "triage", work / "warmup", steps=args.warmup, seed=seed, progress_bar=False)
    warm_s = time.perf_counter() - t0
    before = accuracy(str(warm.policy_path), held, "triage")
    recipe.model = str(warm.policy_path)
    grpo = train_grpo(recipe, rows, work / "grpo")
    after = accuracy(str(grpo.policy_path), held, "triage")
    sft_steps = max(1, len(rows) // 16)
    sft = train_sft(SFTRecipe(recipe.model, steps=sft_steps, seed=seed, progress_bar=False),
                    gold_completions(rows, "triage"), work / "sft")  # fmt: skip
    sft_acc = accuracy(str(sft.policy_path), held, "triage")
    return {
        "seed": seed, "before": before["all"], "grpo": after["all"], "grpo_steps": grpo.steps,
        "grpo_s": grpo.wall_s, "warm_s": warm_s, "warm_steps": warm.steps, "sft": sft_acc["all"],
        "sft_steps": sft.steps, "sft_s": sft.wall_s, "rows": len(rows),
    }  # fmt: skip


def attending(seed: int, work: Path, args: argparse.Namespace) -> list[tuple[str, dict[str, float], int, float]]:
    base = str(build_tiny_model(work / "base", seed=seed))
    curriculum = GRPORecipe.from_yaml(RECIPES / "tiny-attending.yaml", seed=seed)
    rows = synthetic_attending_rows(args.attending_rows, seed=seed)
    held = synthetic_attending_rows(args.heldout, seed=10_000 + seed)
    warm = format_warmup(base, rows, "attending", work / "warmup", steps=args.warmup, seed=seed, progress_bar=False)
    curriculum.model = str(warm.policy_path)
    results = [("majority", majority_baseline(held), 0, 0.0), ("before", accuracy(curriculum.model, held, "attending"), 0, 0.0)]
    for name, use_curriculum in (("curriculum", True), ("mixed", False)):
        recipe = GRPORecipe(**{**curriculum.to_dict(), "curriculum": use_curriculum})
        run = train_grpo(recipe, rows, work / name)
        results.append((f"GRPO {name}", accuracy(str(run.policy_path), held, "attending"), run.steps, run.wall_s))
    sft = train_sft(SFTRecipe(curriculum.model, steps=max(1, len(rows) // 16), seed=seed, progress_bar=False),
                    gold_completions(rows, "attending"), work / "sft")  # fmt: skip
    results.append(("SFT", accuracy(str(sft.policy_path), held, "attending"), sft.steps, sft.wall_s))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("triage", "attending", "all"), default="all")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="GRPO steps for triage (default: the recipe's)")
    ap.add_argument("--warmup", type=int, default=200, help="format warm-up SFT steps")
    ap.add_argument("--heldout", type=int, default=140, help="held-out cases per evaluation")
    ap.add_argument("--attending-rows", type=int, default=384, help="attending training cases")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    print(f"bench/learning.py: tiny Qwen2.5-VL on CPU ({args.threads} thread), seeds {args.seeds}", flush=True)
    if args.part in ("triage", "all"):
        print("\ntriage: held-out accuracy (greedy), chance = 1/7 = 0.143", flush=True)
        print("seed  before   GRPO  steps  GRPO s |    SFT  steps  SFT s | warm-up steps  s", flush=True)
        for seed in args.seeds:
            with tempfile.TemporaryDirectory(prefix=f"learn-tri-{seed}-") as tmp:
                r = triage(seed, Path(tmp), args)
            print(
                f"{r['seed']:4d}  {r['before']:6.3f} {r['grpo']:6.3f} {r['grpo_steps']:6d} {r['grpo_s']:7.1f}"
                f" | {r['sft']:6.3f} {r['sft_steps']:6d} {r['sft_s']:6.1f} | {r['warm_steps']:13d} {r['warm_s']:3.0f}",
                flush=True,
            )
    if args.part in ("attending", "all"):
        print("\nattending: held-out accuracy (greedy) by difficulty; chance = 0.25", flush=True)
        print("seed  method            easy  medium    hard     all  steps  train s", flush=True)
        for seed in args.seeds:
            with tempfile.TemporaryDirectory(prefix=f"learn-att-{seed}-") as tmp:
                for name, acc, steps, wall in attending(seed, Path(tmp), args):
                    print(f"{seed:4d}  {name:15s} {fmt(acc, (*LEVELS, 'all'))}  {steps:5d}  {wall:7.1f}", flush=True)
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
