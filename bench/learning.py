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
``{"triage": {seed: {before, grpo}}}``, ``{"claims": ...}``).

The paper's claims (``--part claims``, docs/learning.md): on the realistic clinic (rl/simulated.py
``CLINICS``: few hard cases, specialists mostly right, the attending's own reading noisy; 256
training cases), from its own format warm-up: gold-label SFT, mixed GRPO, curriculum GRPO with
the policy saved as each stage ends (the stage ablation: easy; easy + medium; all three, in
order), and the curriculum without the entropy bonus. Each is scored on two held-out splits of
140 cases, a third of each level: the realistic clinic (``in``) and the shifted one no method
trains or warms up on (``shifted``: a panel of five worded otherwise). Paired differences with
95% bootstrap CIs (``PAIRED``: curriculum - mixed on hard cases, the stage ablation and the
entropy bonus on hard cases, GRPO - SFT on the shifted split and in distribution), then, per
difference, each seed's figure and on how many seeds its CI lies above zero. ``--json``:
``{"claims": {seed: {"methods": {method: {split: {group: mean}}}, "paired": {label: [mean, lo,
hi]}}}}``.

Accuracy is greedy decoding through the serving backend (app/backends/local.py), on held-out cases
of another seed, scored by rl/evaluation.py (per case, bootstrap intervals; the learning curve
scores the live policy with ``model_accuracy``). Recipes are read by rl/grpo.py ``parse_args``
(``--triage-recipe`` / ``--attending-recipe``: a name in rl/recipes/ or a path), GRPO runs by
``train_grpo`` and the warm-ups and the SFT baseline by rl/sft.py with the recipe's ``format_sft``
section. Wall times are measured here, on whatever else the machine is running.

    .venv/bin/python bench/learning.py [--part triage|attending|claims|all] [--seeds 0 1 2]
        [--steps N] [--methods image-only sft mixed curriculum-no-entropy curriculum] [--json FILE]
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transformers import TrainerCallback  # noqa: E402

from app.backends.local import TransformersBackend  # noqa: E402
from app.tiny_model import build_tiny_model  # noqa: E402
from rl.curriculum import order_rows  # noqa: E402
from rl.datasets import (  # noqa: E402
    iter_attending_warmup_rows,
    synthetic_attending_rows,
    synthetic_triage_rows,
)
from rl.evaluation import bootstrap_ci, model_accuracy, per_case, score_policy  # noqa: E402
from rl.grpo import TrainSpec, parse_args, train_grpo  # noqa: E402
from rl.sft import format_sft, gold_completions, train_sft  # noqa: E402
from rl.simulated import THIRDS, majority_answer  # noqa: E402

# The format warm-up per role is the recipe's format_sft section (tiny-triage: 200 steps,
# tiny-attending: 600). The attending's warm-up must also learn to read the finding's mark and the
# specialists' majority (rl/sft.py): after 600 steps on its own 2,400 cases its think named the
# finding of 101 of 103 clear held-out images (seed 0).
LEVELS = ("easy", "medium", "hard")


def read_recipe(recipe: str, seed: int, *extra: str) -> TrainSpec:
    """A recipe (name or path) as rl/grpo.py's parser reads it, with this seed (and ``extra`` options)."""
    return parse_args(["--recipe", recipe, "--seed", str(seed), *extra])


def starting_from(spec: TrainSpec, model: str) -> Any:
    """The recipe's model arguments, starting from ``model``."""
    return dataclasses.replace(spec.model, model_name_or_path=model)


def accuracy(model: str, rows: list[dict[str, Any]], role: str) -> dict[str, float]:
    return score_policy(TransformersBackend(model), rows, role)


class HeldOutCurve(TrainerCallback):
    """Greedy held-out accuracy of the live policy every ``every`` steps (printed: the learning curve),
    scored by rl/evaluation.py ``model_accuracy`` with the trainer's processor."""

    def __init__(self, rows: list[dict[str, Any]], role: str, every: int, tokens: int = 24):
        self.rows, self.role, self.every, self.tokens = rows, role, every, tokens
        self.curve: list[tuple[int, float]] = []

    def on_step_end(
        self, args: Any, state: Any, control: Any, model: Any = None, processing_class: Any = None, **_: Any
    ) -> None:
        if self.every and state.global_step % self.every == 0:
            acc = model_accuracy(
                model, processing_class, self.rows, self.role, max_new_tokens=self.tokens, batch=64
            )["all"]
            self.curve.append((state.global_step, acc))
            print(f"      step {state.global_step:4d}: held-out {acc:.3f}", flush=True)


def warmup_key(
    base: Path, rows: list[dict[str, Any]], role: str, section: Mapping[str, Any], seed: int
) -> str:
    """What a warm-up checkpoint is made from, hashed: the tiny base's files, the rows (prompts,
    images, answers, what their evidence shows) and the run's settings (the recipe's format_sft
    section as run: steps, learning rate, batch, ...). A cached warm-up is reused only under the
    same key, so one made from an older clinic, checkpoint or section is never mistaken for this
    one. (Changes to the SFT code itself are not in the key: clear the cache after them.)"""
    settings = {"role": role, "section": dict(section), "seed": seed}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for f in sorted(base.iterdir()):
        digest.update(f.name.encode() + f.read_bytes())
    for row in rows:
        text = json.dumps(row, sort_keys=True, default=lambda raw: hashlib.sha256(raw).hexdigest())
        digest.update(text.encode())
    return digest.hexdigest()[:12]


def warm_start(
    spec: TrainSpec,
    base_seed: int,
    rows: list[dict[str, Any]],
    role: str,
    work: Path,
    args: argparse.Namespace,
) -> tuple[str, float, int]:
    """The format warm-up checkpoint for (role, seed): rl/sft.py ``format_sft`` with the recipe's
    format_sft section (``--warmup``: its steps), reused from ``--cache`` when made from the same
    base, rows and settings (``warmup_key``)."""
    if not spec.recipe.format_sft:
        raise SystemExit(f"the {role} recipe has no format_sft section: bench/learning.py needs a warm-up")
    section = {**spec.recipe.format_sft, "max_steps": args.warmup or spec.recipe.format_sft["max_steps"]}
    steps = int(section["max_steps"])
    base = build_tiny_model(work / "base", seed=base_seed)
    key = warmup_key(base, rows, role, section, base_seed)
    root = (args.cache / f"{role}-{base_seed}-warmup{steps}-{key}") if args.cache else work
    policy = root / "warmup" / "policy"
    if (policy / "config.json").is_file():
        return str(policy), 0.0, steps
    t0 = time.perf_counter()
    warm = format_sft(
        starting_from(spec, str(base)), rows, role, root / "warmup", section,
        init_kwargs=spec.recipe.model_init_kwargs, seed=base_seed, progress_bar=False,
    )  # fmt: skip
    return str(warm.policy_path), time.perf_counter() - t0, warm.steps


def gold_sft(
    spec: TrainSpec, warm: str, rows: list[dict[str, Any]], role: str, steps: int, out: Path, seed: int
) -> Any:
    """The SFT baseline: gold labels from the warm-up, the recipe's format_sft section for ``steps``."""
    section = {**spec.recipe.format_sft, "max_steps": steps}
    return train_sft(
        starting_from(spec, warm), gold_completions(rows, role), out, section,
        init_kwargs=spec.recipe.model_init_kwargs, seed=seed, progress_bar=False,
    )  # fmt: skip


def sft_batch(spec: TrainSpec) -> int:
    """Rows per SFT step under the recipe's format_sft section."""
    section = spec.recipe.format_sft
    return int(section.get("per_device_train_batch_size", 8)) * int(
        section.get("gradient_accumulation_steps", 1)
    )


def triage(seed: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    steps = ["--max_steps", str(args.steps)] if args.steps is not None else []
    spec = read_recipe(args.triage_recipe, seed, *steps)
    recipe = spec.recipe
    rows = synthetic_triage_rows(recipe.prompts_per_step * recipe.max_steps, seed=seed)
    held = synthetic_triage_rows(args.heldout, seed=10_000 + seed)
    warm, warm_s, warm_steps = warm_start(spec, seed, rows, "triage", work, args)
    before = accuracy(warm, held, "triage")
    curve = HeldOutCurve(held[: args.heldout // 2], "triage", args.eval_every)
    grpo = train_grpo(recipe, starting_from(spec, warm), "triage", rows, work / "grpo", callbacks=[curve])
    after = accuracy(str(grpo.policy_path), held, "triage")
    sft_acc, sft_steps, sft_s = {"all": float("nan")}, 0, 0.0
    if not args.skip_sft:
        sft = gold_sft(spec, warm, rows, "triage", max(1, len(rows) // sft_batch(spec)), work / "sft", seed)
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


def attending_per_case(model: str, rows: list[dict[str, Any]], tokens: int) -> list[float]:
    """1.0 / 0.0 per held-out row: does the served model's greedy answer name the gold option?"""
    return per_case(TransformersBackend(model), rows, "attending", max_new_tokens=tokens)


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


def in_group(right: list[float], rows: list[dict[str, Any]], group: str) -> list[float]:
    """The per-case values of the rows in ``group``."""
    return [x for x, r in zip(right, rows, strict=True) if group_of(r, group)]


def summarise(
    right: list[float], rows: list[dict[str, Any]], seed: int
) -> dict[str, tuple[float, float, float]]:
    """Each group's mean and 95% bootstrap CI; one generator, drawn from group after group."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {g: bootstrap_ci(in_group(right, rows, g), rng) for g in GROUPS}


@dataclasses.dataclass(frozen=True)
class GRPOPlan:
    """The attending's GRPO variants on one set of rows, all the same length.

    Every variant makes the curriculum's number of steps, so the same number of generated
    completions: the mixed stage makes as many passes over all rows as the curriculum's stages
    (each padded to whole batches, with its replayed rows) make together. ``stage_ends``: the step
    at which each curriculum stage but the last ends (the stage ablation's checkpoints).
    """

    steps: int
    variants: dict[str, dict[str, Any]]
    stage_ends: dict[int, str]

    @classmethod
    def of(cls, paper: Any, rows: list[dict[str, Any]]) -> GRPOPlan:
        batch = paper.prompts_per_step
        ordered, spans = order_rows(rows, paper.stages, batch=batch, curriculum=True)
        mixed = dataclasses.replace(paper.mixed_stage, epochs=len(ordered) / len(rows))
        no_entropy = [dataclasses.replace(s, gamma=0.0) for s in paper.stages]
        names = [sp.stage.name for sp in spans]
        ends = {(sp.start + sp.rows) // batch: "+".join(names[: i + 1]) for i, sp in enumerate(spans[:-1])}
        return cls(
            steps=len(ordered) // batch,
            variants={
                "mixed": {"curriculum": False, "mixed_stage": mixed},
                "curriculum-no-entropy": {"stages": no_entropy},
                "curriculum": {},
            },
            stage_ends=ends,
        )


def sft_steps(spec: TrainSpec, rows: list[dict[str, Any]]) -> int:
    """Gold SFT's steps: as many passes over the rows as the curriculum's stages make on average."""
    epochs = sum(s.epochs for s in spec.recipe.stages) / len(spec.recipe.stages)
    return max(1, round(len(rows) * epochs / sft_batch(spec)))


def attending(seed: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every method's per-case held-out correctness for one seed, with steps, completions and wall time."""
    spec = read_recipe(args.attending_recipe, seed)
    paper = spec.recipe
    rows = synthetic_attending_rows(args.attending_rows, seed=seed)
    held = synthetic_attending_rows(args.heldout, seed=10_000 + seed)
    warmup = list(iter_attending_warmup_rows(seed))  # the clinic's own warm-up cases, as the CLI's
    warm, warm_s, warm_steps = warm_start(spec, seed, warmup, "attending", work, args)
    tokens = paper.max_completion_length
    out: dict[str, Any] = {
        "rows": held, "warm_s": warm_s, "warm_steps": warm_steps,
        "chance": ([1 / len(r["options"]) for r in held], 0, 0, 0.0),
        "majority": (majority_per_case(held), 0, 0, 0.0),
        "ceiling": (ceiling_per_case(held), 0, 0, 0.0),
        "before": (attending_per_case(warm, held, tokens), 0, 0, 0.0),
    }  # fmt: skip
    plan = GRPOPlan.of(paper, rows)
    variants = {"image-only": ({}, False), **{name: (change, True) for name, change in plan.variants.items()}}
    for name in args.methods:
        if name in variants:
            change, with_opinions = variants[name]
            recipe = paper.replace(**change, max_steps=plan.steps)
            train = rows if with_opinions else synthetic_attending_rows(len(rows), seed=seed, opinions=False)
            test = (
                held
                if with_opinions
                else synthetic_attending_rows(len(held), seed=10_000 + seed, opinions=False)
            )
            curve = HeldOutCurve(test[: len(test) // 2], "attending", args.eval_every, tokens)
            run = train_grpo(
                recipe, starting_from(spec, warm), "attending", train, work / name,
                callbacks=[curve] if args.eval_every else [],
            )  # fmt: skip
            completions = run.steps * recipe.completions_per_step
            right = attending_per_case(str(run.policy_path), test, tokens)
            out[name] = (right, run.steps, completions, run.wall_s)
        elif name == "sft":
            sft = gold_sft(spec, warm, rows, "attending", sft_steps(spec, rows), work / "sft", seed)
            out["sft"] = (
                attending_per_case(str(sft.policy_path), held, tokens),
                sft.steps,
                0,
                sft.wall_s,
            )
    return out


# --- the paper's two claims (docs/learning.md "The paper's claims") ---------------------------------

# Held-out splits: the clinic trained on, and the shifted one nobody trains or warms up on; each a
# third easy / medium / hard, so every level is measured on about as many cases.
SPLITS = {"in": "realistic", "shifted": "shifted"}
CLAIM_CELLS = (("in", "all"), *(("in", level) for level in LEVELS), ("shifted", "all"), ("shifted", "hard"))
# (label, method a, method b, split, group): a - b, paired over that group's held-out cases.
PAIRED = (
    ("curriculum - mixed", "curriculum", "mixed", "in", "hard"),
    ("curriculum - stage easy", "curriculum", "stages: easy", "in", "hard"),
    ("curriculum - stages easy+medium", "curriculum", "stages: easy+medium", "in", "hard"),
    ("entropy bonus on - off", "curriculum", "curriculum-no-entropy", "in", "hard"),
    ("curriculum - SFT", "curriculum", "sft", "shifted", "all"),
    ("mixed - SFT", "mixed", "sft", "shifted", "all"),
    ("curriculum - SFT", "curriculum", "sft", "in", "all"),
)


class StageCheckpoints(TrainerCallback):
    """The curriculum run's policy saved as each stage but the last ends: the paper's stage ablation
    (easy; easy + medium; all three) read off one run trained in order."""

    def __init__(self, ends: Mapping[int, str], out: Path):
        self.ends, self.out = ends, out
        self.saved: dict[str, tuple[Path, int]] = {}

    def on_step_end(
        self, args: Any, state: Any, control: Any, model: Any = None, processing_class: Any = None, **_: Any
    ) -> None:
        name = self.ends.get(state.global_step)
        if name:
            path = self.out / name
            model.save_pretrained(path)
            processing_class.save_pretrained(path)
            self.saved[name] = (path, state.global_step)


def claims(seed: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Per-case held-out correctness, in distribution and shifted, of every method the claims
    compare, trained on the realistic clinic from its own format warm-up."""
    spec = read_recipe(args.attending_recipe, seed)
    paper = spec.recipe
    rows = synthetic_attending_rows(args.claims_rows, seed=seed, clinic=SPLITS["in"])
    held = {
        split: synthetic_attending_rows(args.heldout, seed=10_000 + seed, clinic=clinic, mix=THIRDS)
        for split, clinic in SPLITS.items()
    }
    warmup = list(iter_attending_warmup_rows(seed, clinic=SPLITS["in"]))
    warm, warm_s, warm_steps = warm_start(spec, seed, warmup, "attending", work, args)
    tokens = paper.max_completion_length

    def scored(model: str | Path) -> dict[str, list[float]]:
        return {split: attending_per_case(str(model), h, tokens) for split, h in held.items()}

    models: dict[str, tuple[dict[str, list[float]], int, float]] = {
        "chance": ({k: [1 / len(r["options"]) for r in h] for k, h in held.items()}, 0, 0.0),
        "majority": ({k: majority_per_case(h) for k, h in held.items()}, 0, 0.0),
        "ceiling": ({k: ceiling_per_case(h) for k, h in held.items()}, 0, 0.0),
        "before": (scored(warm), 0, 0.0),
    }
    sft = gold_sft(spec, warm, rows, "attending", sft_steps(spec, rows), work / "sft", seed)
    models["sft"] = (scored(sft.policy_path), sft.steps, sft.wall_s)
    plan = GRPOPlan.of(paper, rows)
    for name in ("curriculum", "curriculum-no-entropy", "mixed"):
        stages = StageCheckpoints(plan.stage_ends, work / "stages") if name == "curriculum" else None
        run = train_grpo(
            paper.replace(**plan.variants[name], max_steps=plan.steps), starting_from(spec, warm),
            "attending", rows, work / name, callbacks=[stages] if stages else [],
        )  # fmt: skip
        for stage, (path, step) in (stages.saved if stages else {}).items():
            models[f"stages: {stage}"] = (scored(path), step, 0.0)
        models[name] = (scored(run.policy_path), run.steps, run.wall_s)
    return {"held": held, "models": models, "warm_s": warm_s, "warm_steps": warm_steps}


def paired(result: dict[str, Any], seed: int) -> dict[str, tuple[float, float, float]]:
    """Each PAIRED difference with its 95% bootstrap CI over the cases it is paired on."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    out = {}
    for label, a, b, split, group in PAIRED:
        if a in result["models"] and b in result["models"]:
            right_a, right_b = result["models"][a][0][split], result["models"][b][0][split]
            diff = [x - y for x, y in zip(right_a, right_b, strict=True)]
            held = result["held"][split]
            out[f"{label}, {split}, {group}"] = bootstrap_ci(in_group(diff, held, group), rng)
    return out


def print_claims(seed: int, result: dict[str, Any], report: dict[str, Any]) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    figures: dict[str, Any] = {}
    for name, (right, steps, wall) in result["models"].items():
        stats = {
            (split, group): bootstrap_ci(in_group(right[split], result["held"][split], group), rng)
            for split, group in CLAIM_CELLS
        }
        print(f"{seed:4d}  {name:24s} " + "  ".join(cell(stats[c]) for c in CLAIM_CELLS)
              + f"  {steps:5d} {wall:7.1f}", flush=True)  # fmt: skip
        for (split, group), stat in stats.items():
            figures.setdefault(name, {}).setdefault(split, {})[group] = round(stat[0], 4)
    differences = paired(result, seed)
    for label, (mean, lo, hi) in differences.items():
        print(f"{seed:4d}  {label} (paired): {mean:+.3f} [{lo:+.3f},{hi:+.3f}]", flush=True)
    report[str(seed)] = {
        "methods": figures,
        "paired": {k: list(v) for k, v in differences.items()},  # unrounded: the summary prints them
        "warm_s": round(result["warm_s"], 1),
    }


def print_claims_summary(report: dict[str, Any]) -> None:
    """Per paired difference: each seed's figure and on how many seeds its CI lies above / below 0."""
    seeds = list(report)
    if not seeds:
        return
    print("\nper claim, over seeds " + ", ".join(seeds) + " (95% CI above 0: holds on that seed)", flush=True)
    for label in report[seeds[0]]["paired"]:
        cells = [report[s]["paired"].get(label) for s in seeds]
        shown = [c for c in cells if c]
        above = sum(c[1] > 0 for c in shown)
        below = sum(c[2] < 0 for c in shown)
        print(f"  {label}: " + "; ".join(f"{c[0]:+.3f} [{c[1]:+.3f},{c[2]:+.3f}]" for c in shown)
              + f"  -> above 0 on {above} of {len(shown)}, below 0 on {below}", flush=True)  # fmt: skip


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
        mean, lo, hi = bootstrap_ci(diff, np.random.default_rng(seed + 1))
        print(f"{seed:4d}  curriculum - mixed on hard cases (paired, n={len(hard)}): "
              f"{mean:+.3f} [{lo:+.3f},{hi:+.3f}]", flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("triage", "attending", "claims", "all"), default="all")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="GRPO steps for triage (default: the recipe's)")
    ap.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="format warm-up SFT steps (default: the recipe's format_sft max_steps; tiny: 200 / 600)",
    )
    ap.add_argument("--heldout", type=int, default=140, help="held-out cases per evaluation")
    ap.add_argument("--attending-rows", type=int, default=384, help="attending training cases")
    ap.add_argument(
        "--claims-rows", type=int, default=256, help="training cases of the realistic clinic (--part claims)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--triage-recipe", default="tiny-triage", help="a recipe name in rl/recipes/ or a path")
    ap.add_argument(
        "--attending-recipe", default="tiny-attending", help="a recipe name in rl/recipes/ or a path"
    )
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
    if args.part in ("claims", "all"):
        print(
            "\nthe paper's claims: attending held-out accuracy (greedy) [95% bootstrap CI over cases],"
            " trained on the realistic clinic; held out in distribution and shifted", flush=True,
        )  # fmt: skip
        print("seed  method                   " + "  ".join(f"{s + ' ' + g:17s}" for s, g in CLAIM_CELLS)
              + "  steps train s", flush=True)  # fmt: skip
        claimed = report.setdefault("claims", {})
        for seed in args.seeds:
            with tempfile.TemporaryDirectory(prefix=f"learn-claims-{seed}-") as tmp:
                result = claims(seed, Path(tmp), args)
                print_claims(seed, result, claimed)
            print(f"{seed:4d}  warm-up {result['warm_steps']} steps {result['warm_s']:.0f} s", flush=True)
        print_claims_summary(claimed)
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
