"""Supervised fine-tuning with TRL's SFTTrainer: the paper's SFT baseline, and the format warm-up.

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
shuffled letter (rl/recipes/tiny-attending.yaml), while a text it can take over verbatim.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data.answers import match_option, option_letter, option_text
from data.specialties import SPECIALTIES
from rl.datasets import Row, to_dataset

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


@dataclass(frozen=True)
class SFTRecipe:
    """One SFT run: full fine-tuning of ``model`` for ``steps`` steps of ``batch_size`` rows."""

    model: str
    steps: int = 200
    batch_size: int = 16
    learning_rate: float = 3e-3
    seed: int = 0
    progress_bar: bool = True
    report_to: tuple[str, ...] = ("none",)


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


def train_sft(recipe: SFTRecipe, sft_rows: Sequence[Row], output_dir: str | Path) -> SFTResult:
    """Fine-tune on prompt-completion rows (loss on the completion only); save model + processor."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    out = Path(output_dir)
    cpu = not torch.cuda.is_available()
    args = SFTConfig(
        output_dir=str(out / "run"),
        max_steps=recipe.steps,
        per_device_train_batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type="constant",
        seed=recipe.seed,
        use_cpu=cpu,
        bf16=not cpu and torch.cuda.is_bf16_supported(),
        report_to=list(recipe.report_to),
        logging_steps=max(1, recipe.steps // 10),
        save_strategy="no",
        disable_tqdm=not recipe.progress_bar,
        gradient_checkpointing=True,  # TRL's default
    )
    model = AutoModelForImageTextToText.from_pretrained(recipe.model, dtype=torch.float32 if cpu else "auto")
    processor = AutoProcessor.from_pretrained(recipe.model)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=to_dataset(sft_rows), processing_class=processor
    )
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    policy = out / "policy"
    trainer.save_model(str(policy))
    processor.save_pretrained(policy)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return SFTResult(policy, trainer.state.global_step, wall, float(losses[-1]) if losses else None)


def format_warmup(
    model: str,
    rows: Sequence[Row],
    role: str,
    output_dir: str | Path,
    *,
    steps: int = 200,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    seed: int = 0,
    progress_bar: bool = True,
) -> SFTResult:
    """Random-label SFT: teaches the format (and an even spread over the choices), not the task."""
    recipe = SFTRecipe(model, steps, batch_size, learning_rate, seed, progress_bar)
    return train_sft(recipe, warmup_completions(rows, role, steps * batch_size, seed=seed), output_dir)
