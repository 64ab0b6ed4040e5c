"""Does GRPO learn? The synthetic clinic on the tiny model, on CPU, per seed.

Triage (per seed): a fresh tiny Qwen2.5-VL (weights seeded) -> random-label SFT format warm-up ->
held-out accuracy ("before") -> GRPO (rl/recipes/tiny-triage.yaml) -> held-out accuracy ("GRPO"),
and the SFT baseline: gold-label SFT from the same warm-up on the same number of training cases.

Attending (per seed): the synthetic clinic's attending cases (rl/simulated.py: opinions right on
every easy case, on some of each medium case, on no hard case, wrong ones on one shared decoy; an
unclear image, its finding hidden, only on easy cases). From one format warm-up (on the clinic's
own warm-up cases, rl/datasets.py ``iter_attending_warmup_rows``):
image-only (curriculum GRPO without opinions, ``single`` mode), gold-label SFT, mixed GRPO,
curriculum GRPO without the entropy bonus and with it (the paper), every GRPO variant on the same
rows for the same number of steps; next to chance, copy-the-majority and the perfect attending's
ceiling. Held-out accuracy overall / per difficulty / per image clarity, each with a 95% bootstrap
CI over held-out cases, and the paired difference curriculum - mixed on hard cases.
``--json FILE`` writes ``{"attending": {seed: {method: {all, easy, medium, hard}}}}`` (and
``{"triage": {seed: {before, grpo}}}``).

Accuracy is greedy decoding through the serving backend (app/backends/local.py), on held-out cases
of another seed. Wall times are measured here, on whatever else the machine is running.

    .venv/bin/python bench/learning.py [--part triage|attending|all] [--seeds 0 1 2] [--steps N]
        [--methods image-only sft mixed curriculum-no-entropy curriculum] [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transformers import TrainerCallback  # noqa: E402

from app.backends.local import TransformersBackend  # noqa: E402
from app.tiny_model import build_tiny_model  # noqa: E402
from graph.protocol import ChatRequest, Completion  # noqa: E402
from rl.curriculum import order_rows  # noqa: E402
from rl.datasets import (  # noqa: E402
    iter_attending_warmup_rows,
    synthetic_attending_rows,
    synthetic_triage_rows,
)
from rl.grpo import score_policy, train_grpo  # noqa: E402
from rl.grpo_config import GRPORecipe  # noqa: E402
from rl.sft import SFTRecipe, format_warmup, gold_completions, train_sft  # noqa: E402
from rl.simulated import majority_answer  # noqa: E402

RECIPES = ROOT / "rl" / "recipes"
# Format warm-up steps per role. The attending's warm-up must also learn to read the finding's mark
# and the specialists' majority (rl/sft.py): after 600 steps on its own 2,400 cases its think named
# the finding of 101 of 103 clear held-out images (seed 0).
WARMUP_STEPS = {"triage": 200, "attending": 600}
LEVELS = ("easy", "medium", "hard")


def accuracy(model: str, rows: list[dict[str, Any]], role: str) -> dict[str, float]:
    return score_policy(TransformersBackend(model), rows, role)


class HeldOutCurve(TrainerCallback):
    """Greedy held-out accuracy of the live policy every ``every`` steps (printed: the learning curve)."""

    def __init__(self, processor: Any, rows: list[dict[str, Any]], role: str, every: int, tokens: int = 24):
        self.processor, self.rows, self.role, self.every, self.tokens = processor, rows, role, every, tokens
        self.curve: list[tuple[int, float]] = []

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
        if self.every and state.global_step % self.every == 0:
            live = LiveBackend(model, self.processor)
            acc = score_policy(live, self.rows, self.role, max_new_tokens=self.tokens)["all"]
            self.curve.append((state.global_step, acc))
            print(f"      step {state.global_step:4d}: held-out {acc:.3f}", flush=True)
            model.train()


class LiveBackend:
    """ChatBackend on an in-memory model (greedy), for evaluating during training."""

    model_id = "live"

    def __init__(self, model: Any, processor: Any):
        self.model, self.processor = model, processor

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        import torch

        self.model.eval()
        texts = [
            self.processor.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False)
            for r in requests
        ]
        images = [im for r in requests for im in r.images]
        inputs = self.processor(
            text=texts, images=images, padding=True, padding_side="left", return_tensors="pt"
        )
        with torch.no_grad():
            out = self.model.generate(
                **inputs, max_new_tokens=requests[0].sampling.max_new_tokens, do_sample=False
            )
        decoded = self.processor.batch_decode(
            out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        return [Completion(text=t, model_id=self.model_id) for t in decoded]


def warmup_key(base: Path, rows: list[dict[str, Any]], role: str, steps: int, seed: int) -> str:
    """What a warm-up checkpoint is made from, hashed: the tiny base's files, the rows (prompts,
    images, answers, what their evidence shows) and the run's settings. A cached warm-up is reused
    only under the same key, so one made from an older clinic or checkpoint is never mistaken for
    this one. (Changes to the SFT code itself are not in the key: clear the cache after them.)"""
    digest = hashlib.sha256(json.dumps({"role": role, "steps": steps, "seed": seed}).encode())
    for f in sorted(base.iterdir()):
        digest.update(f.name.encode() + f.read_bytes())
    for row in rows:
        text = json.dumps(row, sort_keys=True, default=lambda raw: hashlib.sha256(raw).hexdigest())
        digest.update(text.encode())
    return digest.hexdigest()[:12]


def warm_start(
    base_seed: int, rows: list[dict[str, Any]], role: str, work: Path, args: argparse.Namespace
) -> tuple[str, float, int]:
    """The format warm-up checkpoint for (role, seed), reused from ``--cache`` when made from the
    same base, rows and settings (``warmup_key``)."""
    steps = args.warmup or WARMUP_STEPS[role]
    base = build_tiny_model(work / "base", seed=base_seed)
    key = warmup_key(base, rows, role, steps, base_seed)
    root = (args.cache / f"{role}-{base_seed}-warmup{steps}-{key}") if args.cache else work
    policy = root / "warmup" / "policy"
    if (policy / "config.json").is_file():
        return str(policy), 0.0, steps
    t0 = time.perf_counter()
    warm = format_warmup(
        str(base), rows, role, root / "warmup", steps=steps, seed=base_seed, progress_bar=False
    )
    return str(warm.policy_path), time.perf_counter() - t0, warm.steps


def triage(seed: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoProcessor

    recipe = GRPORecipe.from_yaml(args.triage_recipe, seed=seed, max_steps=args.steps)
    rows = synthetic_triage_rows(recipe.prompts_per_step * recipe.max_steps, seed=seed)
    held = synthetic_triage_rows(args.heldout, seed=10_000 + seed)
    warm, warm_s, warm_steps = warm_start(seed, rows, "triage", work, args)
    before = accuracy(warm, held, "triage")
    recipe.model = warm
    curve = HeldOutCurve(
        AutoProcessor.from_pretrained(warm), held[: args.heldout // 2], "triage", args.eval_every
    )
    grpo = train_grpo(recipe, rows, work / "grpo", callbacks=[curve])
    after = accuracy(str(grpo.policy_path), held, "triage")
    sft_acc, sft_steps, sft_s = {"all": float("nan")}, 0, 0.0
    if not args.skip_sft:
        sft = train_sft(SFTRecipe(warm, steps=max(1, len(rows) // 16), seed=seed, progress_bar=False),
                        gold_completions(rows, "triage"), work / "sft")  # fmt: skip
        sft_acc, sft_steps, sft_s = accuracy(str(sft.policy_path), held, "triage"), sft.steps, sft.wall_s
    return {
        "seed": seed, "before": before["all"], "grpo": after["all"], "grpo_steps": grpo.steps,
        "grpo_s": grpo.wall_s, "warm_s": warm_s, "warm_steps": warm_steps, "sft": sft_acc["all"],
        "sft_steps": sft_steps, "sft_s": sft_s, "rows": len(rows),
    }  # fmt: skip


GROUPS = ("all", *LEVELS, "clear", "unclear")
ATTENDING_METHODS = (
    "chance",
    "majority",
    "image-only",
    "sft",
    "mixed",
    "curriculum-no-entropy",
    "curriculum",
)


def per_case(backend: Any, rows: list[dict[str, Any]], max_new_tokens: int, batch: int = 64) -> list[float]:
    """1.0 / 0.0 per held-out row: does the greedy answer name the gold option?"""
    from graph.protocol import Sampling
    from rl.datasets import row_images
    from rl.rewards import answer_accuracy_value

    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=0.0)
    right: list[float] = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        done = backend.generate([ChatRequest(r["prompt"], row_images(r), sampling) for r in chunk])
        right += [
            answer_accuracy_value(c.text, r["answer"], r["options"]) for r, c in zip(chunk, done, strict=True)
        ]
    return right


def majority_per_case(rows: list[dict[str, Any]]) -> list[float]:
    """Per row: does the option most specialists named match the gold one? (copy the majority)"""
    out = []
    for r in rows:
        text = r["prompt"][1]["content"][-1]["text"].split("Specialist opinions:\n", 1)[1]
        opinions = [line.split("] ", 1)[1] for line in text.splitlines()]
        out.append(float(majority_answer(opinions, r["options"]) == r["answer"]))
    return out


def ceiling_per_case(rows: list[dict[str, Any]]) -> list[float]:
    """A perfect attending: right wherever the evidence shown decides the case (a clear image, or
    opinions whose majority is right). The clinic makes that every case: 1.0."""
    return [
        float(r["clarity"] == "clear" or m == 1.0) for r, m in zip(rows, majority_per_case(rows), strict=True)
    ]


def group_of(row: dict[str, Any], group: str) -> bool:
    return group == "all" or group in (row["difficulty"], row["clarity"])


def bootstrap(values: list[float], rng: Any, n: int = 2000) -> tuple[float, float, float]:
    """Mean and its 95% percentile-bootstrap interval over cases."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    if not len(v):
        return float("nan"), float("nan"), float("nan")
    means = v[rng.integers(0, len(v), size=(n, len(v)))].mean(axis=1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(
    right: list[float], rows: list[dict[str, Any]], seed: int
) -> dict[str, tuple[float, float, float]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return {
        g: bootstrap([x for x, r in zip(right, rows, strict=True) if group_of(r, g)], rng) for g in GROUPS
    }


def attending(seed: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every method's per-case held-out correctness for one seed, with steps, completions and wall time."""
    from transformers import AutoProcessor

    paper = GRPORecipe.from_yaml(args.attending_recipe, seed=seed)
    rows = synthetic_attending_rows(args.attending_rows, seed=seed)
    held = synthetic_attending_rows(args.heldout, seed=10_000 + seed)
    warmup = list(iter_attending_warmup_rows(seed))  # the clinic's own warm-up cases, as the CLI's
    warm, warm_s, warm_steps = warm_start(seed, warmup, "attending", work, args)
    tokens = paper.max_completion_length
    out: dict[str, Any] = {
        "rows": held, "warm_s": warm_s, "warm_steps": warm_steps,
        "chance": ([1 / len(r["options"]) for r in held], 0, 0, 0.0),
        "majority": (majority_per_case(held), 0, 0, 0.0),
        "ceiling": (ceiling_per_case(held), 0, 0, 0.0),
        "before": (per_case(TransformersBackend(warm), held, tokens), 0, 0, 0.0),
    }  # fmt: skip
    # Every GRPO variant makes the curriculum's number of steps, so the same number of generated
    # completions: the mixed stage makes as many passes over all rows as the curriculum's stages
    # (each padded to whole batches, with its replayed rows) make together.
    ordered, _ = order_rows(rows, paper.stages, batch=paper.prompts_per_step, curriculum=True)
    steps = len(ordered) // paper.prompts_per_step
    mixed = dataclasses.replace(paper.mixed_stage, epochs=len(ordered) / len(rows))
    no_entropy = [dataclasses.replace(s, gamma=0.0) for s in paper.stages]
    variants = {
        "image-only": ({}, False),
        "mixed": ({"curriculum": False, "mixed_stage": mixed}, True),
        "curriculum-no-entropy": ({"stages": no_entropy}, True),
        "curriculum": ({}, True),
    }
    processor = AutoProcessor.from_pretrained(warm)
    for name in args.methods:
        if name in variants:
            change, with_opinions = variants[name]
            recipe = GRPORecipe(**{**paper.to_dict(), **change, "model": warm, "max_steps": steps})
            train = rows if with_opinions else synthetic_attending_rows(len(rows), seed=seed, opinions=False)
            test = (
                held
                if with_opinions
                else synthetic_attending_rows(len(held), seed=10_000 + seed, opinions=False)
            )
            curve = HeldOutCurve(processor, test[: len(test) // 2], "attending", args.eval_every, tokens)
            run = train_grpo(recipe, train, work / name, callbacks=[curve] if args.eval_every else [])
            completions = run.steps * recipe.completions_per_step
            right = per_case(TransformersBackend(str(run.policy_path)), test, tokens)
            out[name] = (right, run.steps, completions, run.wall_s)
        elif name == "sft":
            epochs = sum(s.epochs for s in paper.stages) / len(paper.stages)
            sft_steps = max(1, round(len(rows) * epochs / 16))
            sft = train_sft(SFTRecipe(warm, steps=sft_steps, seed=seed, progress_bar=False),
                            gold_completions(rows, "attending"), work / "sft")  # fmt: skip
            out["sft"] = (
                per_case(TransformersBackend(str(sft.policy_path)), held, tokens),
                sft.steps,
                0,
                sft.wall_s,
            )
    return out


def cell(stat: tuple[float, float, float]) -> str:
    return f"{stat[0]:.3f} [{stat[1]:.2f},{stat[2]:.2f}]"


def print_attending(seed: int, result: dict[str, Any], report: dict[str, Any]) -> None:
    import numpy as np

    held = result["rows"]
    for name in ("ceiling", "before", *ATTENDING_METHODS):
        if name not in result:
            continue
        right, steps, completions, wall = result[name]
        stats = summarise(right, held, seed)
        print(f"{seed:4d}  {name:21s} " + "  ".join(cell(stats[g]) for g in GROUPS)
              + f"  {steps:5d} {completions:6d} {wall:7.1f}", flush=True)  # fmt: skip
        if name in ATTENDING_METHODS:
            report.setdefault(str(seed), {})[name] = {g: round(stats[g][0], 4) for g in ("all", *LEVELS)}
    if "curriculum" in result and "mixed" in result:
        hard = [i for i, r in enumerate(held) if r["difficulty"] == "hard"]
        diff = [result["curriculum"][0][i] - result["mixed"][0][i] for i in hard]
        mean, lo, hi = bootstrap(diff, np.random.default_rng(seed + 1))
        print(f"{seed:4d}  curriculum - mixed on hard cases (paired, n={len(hard)}): "
              f"{mean:+.3f} [{lo:+.3f},{hi:+.3f}]", flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("triage", "attending", "all"), default="all")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="GRPO steps for triage (default: the recipe's)")
    ap.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="format warm-up SFT steps (default: triage 200, attending 600)",
    )
    ap.add_argument("--heldout", type=int, default=140, help="held-out cases per evaluation")
    ap.add_argument("--attending-rows", type=int, default=384, help="attending training cases")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--triage-recipe", type=Path, default=RECIPES / "tiny-triage.yaml")
    ap.add_argument("--attending-recipe", type=Path, default=RECIPES / "tiny-attending.yaml")
    ap.add_argument("--skip-sft", action="store_true", help="GRPO only (quicker)")
    ap.add_argument("--eval-every", type=int, default=100, help="held-out curve every N GRPO steps (0: off)")
    ap.add_argument(
        "--methods",
        nargs="+",
        default=list(ATTENDING_METHODS[2:]),
        choices=ATTENDING_METHODS[2:],
        help="attending methods to train (chance and majority are always printed)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    ap.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="keep and reuse the warm-up checkpoints here (keyed by their base, rows and settings)",
    )
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    report: dict[str, Any] = {}
    print(
        f"bench/learning.py: tiny Qwen2.5-VL on CPU ({args.threads} thread), seeds {args.seeds}", flush=True
    )
    if args.part in ("triage", "all"):
        print("\ntriage: held-out accuracy (greedy), chance = 1/7 = 0.143", flush=True)
        print("seed  before   GRPO  steps  GRPO s |    SFT  steps  SFT s | warm-up steps  s", flush=True)
        for seed in args.seeds:
            with tempfile.TemporaryDirectory(prefix=f"learn-tri-{seed}-") as tmp:
                r = triage(seed, Path(tmp), args)
            report.setdefault("triage", {})[str(seed)] = {"before": r["before"], "grpo": r["grpo"]}
            print(
                f"{r['seed']:4d}  {r['before']:6.3f} {r['grpo']:6.3f} {r['grpo_steps']:6d} {r['grpo_s']:7.1f}"
                f" | {r['sft']:6.3f} {r['sft_steps']:6d} {r['sft_s']:6.1f}"
                f" | {r['warm_steps']:13d} {r['warm_s']:3.0f}",
                flush=True,
            )
    if args.part in ("attending", "all"):
        print(
            "\nattending: held-out accuracy (greedy) [95% bootstrap CI over cases]; chance = 1/4", flush=True
        )
        print("seed  method                " + "  ".join(f"{g:17s}" for g in GROUPS)
              + "  steps  compl  train s", flush=True)  # fmt: skip
        for seed in args.seeds:
            with tempfile.TemporaryDirectory(prefix=f"learn-att-{seed}-") as tmp:
                result = attending(seed, Path(tmp), args)
            print_attending(seed, result, report.setdefault("attending", {}))
            print(f"{seed:4d}  warm-up {result['warm_steps']} steps {result['warm_s']:.0f} s", flush=True)
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
