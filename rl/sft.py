"""Supervised fine-tuning with TRL's SFTTrainer: the paper's SFT baseline, and the format SFT
(a recipe's ``format_sft`` section, run before GRPO; "warm-up" below).

Both train on the same rows as GRPO (rl/datasets.py), with a completion in the graph's strict
format, ``<think>…</think><answer> X</answer>``:
- ``gold_completions``: X is the gold label (the SFT baseline reviewers asked for).
- ``warmup_completions``: X is drawn at random, freshly for every pass: for triage from the
  specialties, for the attending from the options' texts. The model learns the format and an even
  spread over the choices, but nothing about which one is right: held-out triage accuracy stays
  at chance, and GRPO then sees non-zero rewards from its first step (docs/learning.md). Where a row
  knows what its image shows (the synthetic clinic: ``seen``, the modality and the finding or
  "unclear"; else ``modality``), the ``<think>`` names it: the warm-up then also teaches the model
  to say what it sees, as a pretrained VLM would, and leaves to GRPO which specialist (or which
  answer) follows from it. Measured on the tiny model (seed 1, triage, answer tokens only): with
  this perception in the think GRPO went from 0.143 to 1.000 held-out in 200 steps; runs with a
  fixed ``image`` think stayed below 0.6 after 300.
  Where an attending row also knows what its specialists' majority said (``said``), the think
  names that too, and X is one of the readings at even odds (the image's finding or the
  majority's answer; the majority's alone on an unclear image, which names nothing): the warm-up
  teaches reading both sources and answering with what they say, and nothing about which to trust
  when they disagree. That is what GRPO must learn: overrule the specialists where the image
  shows otherwise, and keep following them where it shows nothing. A synthetic attending run
  warms up on the clinic's own warm-up cases (rl/datasets.py ``iter_attending_warmup_rows``), so
  that the model learns to read rather than learning its training rows by heart.
The space before X keeps every specialty a single token of the tiny tokenizer, and spells an
option's text as the think and the specialists' opinions spell it. The attending answers with the
option's text, not its letter: the tiny model never learned to point from what it sees to a
shuffled letter (docs/learning.md, tiny-attending), while a text it can take over verbatim.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data.answers import match_option, option_letter, option_text
from data.specialties import SPECIALTIES
from rl.datasets import Row, to_dataset
from rl.models import model_init_kwargs, peft_config
from rl.recipe import PolicyModelConfig

log = logging.getLogger(__name__)

THINK = "image"
COMPLETION = "<think>{think}</think><answer> {answer}</answer>"


def completion(answer: str, think: str = THINK) -> list[dict[str, str]]:
    """A conversational completion in the graph's strict format."""
    return [{"role": "assistant", "content": COMPLETION.format(think=think, answer=answer)}]


def choices(row: Row, role: str) -> list[str]:
    """What an answer can name: the specialties (triage) or the options' texts (attending)."""
    if role == "triage":
        return list(SPECIALTIES)
    return [option_text(o) for o in row["options"]]


def gold_label(row: Row, role: str) -> str:
    """The gold answer as the completions spell it: the specialty, or the gold option's text."""
    if role == "triage":
        return row["specialty"]
    letter = match_option(row["answer"], row["options"])
    return next(
        (option_text(o) for o in row["options"] if letter and option_letter(o) == letter), row["answer"]
    )


def think_of(row: Row) -> str:
    """What the warm-up's ``<think>`` says: what the image shows and, where the row knows it, what
    the specialists' majority said (``"ct: Mass; specialists: Fracture"``)."""
    think = row.get("seen") or row.get("modality") or THINK
    return f"{think}; specialists: {row['said']}" if row.get("said") else think


def _sft_row(row: Row, answer: str) -> Row:
    return {"prompt": row["prompt"], "images": row["images"], "completion": completion(answer, think_of(row))}


def warmup_answer(row: Row, role: str, rng: random.Random) -> str:
    """A warm-up answer that knows nothing of which evidence is right.

    Where the row knows what its evidence names (``shown``: the image's finding, None when unclear;
    ``said``: the specialists' majority), one of the readings the evidence gives is drawn with even
    odds: either one where both are readable, the majority's alone where the image is unclear (it
    names nothing); otherwise a random choice.
    """
    if role == "attending" and row.get("said"):
        return rng.choice([x for x in (row.get("shown"), row["said"]) if x])
    return rng.choice(choices(row, role))


def gold_completions(rows: Sequence[Row], role: str) -> list[Row]:
    """SFT rows answering with the gold label."""
    return [_sft_row(r, gold_label(r, role)) for r in rows]


def warmup_completions(rows: Sequence[Row], role: str, n: int, *, seed: int = 0) -> list[Row]:
    """``n`` SFT rows cycling over ``rows``, each answering a freshly drawn random choice."""
    if not rows:
        raise ValueError("no rows for the format warm-up")
    rng = random.Random(f"warmup|{seed}")
    return [_sft_row(rows[i % len(rows)], warmup_answer(rows[i % len(rows)], role, rng)) for i in range(n)]


@dataclass
class SFTResult:
    policy_path: Path
    steps: int
    wall_s: float
    final_loss: float | None

    def summary(self) -> dict[str, Any]:
        return {
            "trainer": "sft",
            "steps": self.steps,
            "wall_s": round(self.wall_s, 2),
            "loss": self.final_loss,
        }


def sft_config(section: Mapping[str, Any], output_dir: Path, *, seed: int, progress_bar: bool) -> Any:
    """TRL's SFTConfig for a recipe's SFT section (rl/recipe.py ``format_sft``): its fields over
    this project's defaults (a constant rate, no checkpoints, no tracker, float32 on CPU)."""
    from trl import SFTConfig

    cpu = not torch.cuda.is_available()
    defaults = {
        "lr_scheduler_type": "constant",
        "seed": seed,
        "use_cpu": cpu,
        "bf16": not cpu and torch.cuda.is_bf16_supported(),
        "report_to": "none",
        "logging_steps": max(1, int(section["max_steps"]) // 10),
        "save_strategy": "no",
        "disable_tqdm": not progress_bar,
        "gradient_checkpointing": True,  # TRL's default
    }
    options = {k: v for k, v in section.items() if k != "use_peft"}
    return SFTConfig(**{**defaults, **options, "output_dir": str(output_dir / "run")})


def train_sft(
    model_args: PolicyModelConfig,
    sft_rows: Sequence[Row],
    output_dir: str | Path,
    section: Mapping[str, Any],
    *,
    init_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    progress_bar: bool = True,
) -> SFTResult:
    """Fine-tune on prompt-completion rows (loss on the completion only), fully or with LoRA
    (``section["use_peft"]``, else the model arguments'), and save a whole checkpoint with its
    processor: a LoRA adapter is merged in (main process)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTTrainer

    from rl.processes import run_state

    out = Path(output_dir)
    args = sft_config(section, out, seed=seed, progress_bar=progress_bar)
    lora = bool(section.get("use_peft", model_args.use_peft))
    start = model_args.model_name_or_path
    model = AutoModelForImageTextToText.from_pretrained(start, **model_init_kwargs(model_args, init_kwargs))
    processor = AutoProcessor.from_pretrained(start)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(sft_rows),
        processing_class=processor,
        peft_config=peft_config(model_args) if lora else None,
    )
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    policy = out / "policy"
    state = run_state()
    if lora:
        if state.is_main_process:
            trainer.model.merge_and_unload().save_pretrained(policy)
    else:
        trainer.save_model(str(policy))  # the main process writes
    if state.is_main_process:
        processor.save_pretrained(policy)
    state.wait_for_everyone()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return SFTResult(policy, trainer.state.global_step, wall, float(losses[-1]) if losses else None)


def format_sft(
    model_args: PolicyModelConfig,
    rows: Sequence[Row],
    role: str,
    output_dir: str | Path,
    section: Mapping[str, Any],
    **options: Any,
) -> SFTResult:
    """The format SFT: random labels (:func:`warmup_completions`), enough for the section's steps on
    every process, trained by :func:`train_sft` (``options``: its keyword arguments). Teaches the
    format (and an even spread over the choices), not the task."""
    return graph_format_sft(model_args, {role: rows}, output_dir, section, **options)


def graph_format_sft(
    model_args: PolicyModelConfig,
    rows_by_role: Mapping[str, Sequence[Row]],
    output_dir: str | Path,
    section: Mapping[str, Any],
    *,
    shares: Mapping[str, float] | None = None,
    **options: Any,
) -> SFTResult:
    """:func:`format_sft` over several roles' rows at once, shuffled together, each role a share of
    the steps (``shares``, relative weights; default even): one model that answers every role's
    prompt in the graph's format, as the learning loop's base serves triage, specialists and
    attending (app/learning_loop.py)."""
    from rl.processes import run_state

    per_step = int(section.get("per_device_train_batch_size", 8)) * int(
        section.get("gradient_accumulation_steps", 1)
    )
    n = int(section["max_steps"]) * per_step * run_state().num_processes
    seed = options.get("seed", 0)
    weights = {role: (shares or {}).get(role, 1.0 if shares is None else 0.0) for role in rows_by_role}
    total = sum(weights.values())
    counts = {role: round(n * w / total) for role, w in weights.items()}
    sft_rows = [
        row
        for role, rows in rows_by_role.items()
        for row in warmup_completions(rows, role, counts[role], seed=seed)
    ]
    if len(rows_by_role) > 1:
        random.Random(f"format-sft|{seed}").shuffle(sft_rows)
    return train_sft(model_args, sft_rows, output_dir, section, **options)
