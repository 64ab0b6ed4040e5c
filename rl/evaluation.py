"""Accuracy scoring in one place: per case, by difficulty, with bootstrap intervals, through a served
backend, an in-memory model, or the live policy of a (possibly sharded) training run.

A case scores 1.0 when the greedy completion is right by the role's reward accuracy (rl/rewards.py:
triage's first named specialty, the attending's chosen option), else 0.0.

In training, :class:`EvalAccuracy` shares the eval rows out among the processes: each rank generates
its share inside TRL's ``unwrap_model_for_generation`` (the context TRL's own transformers
generation uses, so DeepSpeed ZeRO-3 and FSDP see their parameters gathered as during a training
step) and the per-case values are gathered back in row order, so every rank holds the figures one
process would have scored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import TrainerCallback

from graph.protocol import ChatBackend, ChatRequest, Sampling
from rl.datasets import Row, row_images
from rl.rewards import answer_accuracy_value, triage_accuracy_value

if TYPE_CHECKING:
    from trl import GRPOTrainer

log = logging.getLogger(__name__)


def row_value(row: Row, text: str, role: str) -> float:
    """1.0 when ``text`` (a completion for ``row``) is right for ``role``, else 0.0."""
    if role == "triage":
        return triage_accuracy_value(text, row["specialty"])
    return answer_accuracy_value(text, row["answer"], row["options"])


def by_difficulty(rows: Sequence[Row], values: Sequence[float]) -> dict[str, float]:
    """Mean of ``values`` over all rows (``all``) and over each difficulty present among them."""
    right: dict[str, list[float]] = {"all": list(values)}
    for row, value in zip(rows, values, strict=True):
        if row.get("difficulty"):
            right.setdefault(row["difficulty"], []).append(value)
    return {k: sum(v) / len(v) for k, v in right.items() if v}


def bootstrap_ci(
    values: Sequence[float], rng: int | np.random.Generator, n: int = 2000
) -> tuple[float, float, float]:
    """Mean and its 95 % percentile-bootstrap interval (``n`` resamples of the cases), NaNs when empty.

    ``rng``: a seed, or a generator shared by several calls (each call draws from it in turn). Paired
    differences work the same way: pass the per-case differences.
    """
    v = np.asarray(values, dtype=float)
    if not len(v):
        return float("nan"), float("nan"), float("nan")
    gen = np.random.default_rng(rng)  # a Generator is used as it is
    means = v[gen.integers(0, len(v), size=(n, len(v)))].mean(axis=1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def per_case(
    backend: ChatBackend, rows: Sequence[Row], role: str, *, max_new_tokens: int = 24, batch: int = 64
) -> list[float]:
    """1.0 / 0.0 per row, in order: is the backend's greedy completion right for ``role``?"""
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=0.0)
    values: list[float] = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        done = backend.generate([ChatRequest(r["prompt"], row_images(r), sampling) for r in chunk])
        values.extend(row_value(r, c.text, role) for r, c in zip(chunk, done, strict=True))
    return values


def score_policy(
    backend: ChatBackend, rows: Sequence[Row], role: str, *, max_new_tokens: int = 24, batch: int = 64
) -> dict[str, float]:
    """Greedy accuracy of a served policy on held-out rows: ``all`` and per difficulty present."""
    return by_difficulty(rows, per_case(backend, rows, role, max_new_tokens=max_new_tokens, batch=batch))


@torch.no_grad()
def generate_texts(
    model: Any,
    processor: Any,
    rows: Sequence[Row],
    *,
    max_new_tokens: int,
    batch: int = 16,
    device: Any = None,
    synced_gpus: bool | None = None,
) -> list[str]:
    """Greedy completions of an in-memory model for ``rows``, in order, ``batch`` rows a call.

    The prompts go through the processor's chat template (generation prompt added), left padded,
    with the rows' images. ``synced_gpus`` is transformers' (every process steps until all are done);
    ``None`` leaves it to transformers.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    texts: list[str] = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        prompts = [
            processor.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False)
            for r in chunk
        ]
        images = [img for r in chunk for img in row_images(r)]
        inputs = processor(
            text=prompts, images=images or None, padding=True, padding_side="left", return_tensors="pt"
        ).to(device if device is not None else model.device)
        out = model.generate(
            **inputs, do_sample=False, max_new_tokens=max_new_tokens, synced_gpus=synced_gpus
        )
        texts.extend(tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return texts


@contextmanager
def _eval_mode(model: Any) -> Iterator[Any]:
    """``model`` in eval mode (no dropout) inside, its own mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def model_accuracy(
    model: Any, processor: Any, rows: Sequence[Row], role: str, *, max_new_tokens: int, batch: int = 16
) -> dict[str, float]:
    """Greedy accuracy of an in-memory model on ``rows`` in this process: ``all`` and per difficulty."""
    with _eval_mode(model):
        texts = generate_texts(model, processor, rows, max_new_tokens=max_new_tokens, batch=batch)
    return by_difficulty(rows, [row_value(r, t, role) for r, t in zip(rows, texts, strict=True)])


def shard(n: int, rank: int, world: int) -> range:
    """The indices of ``n`` rows that process ``rank`` of ``world`` scores: every ``world``-th one."""
    return range(rank, n, world)


def trainer_per_case(
    trainer: GRPOTrainer, rows: Sequence[Row], role: str, *, max_new_tokens: int, batch: int = 16
) -> list[float]:
    """1.0 / 0.0 per row, in order, for the trainer's live policy; every process must call it together.

    Each process generates :func:`shard` of the rows (greedy, eval mode) inside TRL's
    ``unwrap_model_for_generation`` with the trainer's ``ds3_gather_for_generation`` and gradient
    checkpointing kwargs, and FSDP v1's root parameters summoned, as TRL's transformers generation
    does. Shares are padded (a repeated row, its value dropped) so every process makes the same
    generate calls, with ``synced_gpus`` under several processes: sharded parameters (ZeRO-3, FSDP)
    take collectives at every forward step. The values are gathered (accelerate's ``gather_object``)
    back into row order on every process. ``rows`` must be the same list on every process.

    Under ``use_vllm`` this generates through transformers too: the trainer's vLLM engine samples
    with the training parameters (its temperature, ``num_generations``, the vision-token bias) and
    only sees new weights through TRL's step-keyed sync, so greedy scoring there would need TRL's
    internals; the transformers path scores the same weights in any vLLM mode.
    """
    from accelerate.utils import gather_object
    from trl.distributed import DistributedBackend
    from trl.models.utils import unwrap_model_for_generation

    if not rows:
        return []
    accelerator = trainer.accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = list(shard(len(rows), rank, world))
    padded = -(-len(rows) // world)  # every process's share, padded: the same generate calls everywhere
    share = [rows[i] for i in mine] + [rows[(mine or [0])[-1]]] * (padded - len(mine))
    with (
        unwrap_model_for_generation(
            trainer.model_wrapped,
            accelerator,
            gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
            gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
        ) as model,
        DistributedBackend(accelerator).summon_full_params(trainer.model_wrapped, recurse=False),
        _eval_mode(model),
    ):
        texts = generate_texts(
            model,
            trainer.processing_class,
            share,
            max_new_tokens=max_new_tokens,
            batch=batch,
            device=accelerator.device,
            synced_gpus=world > 1,
        )
    log.debug("eval: process %d of %d generated %d rows (%d its own)", rank, world, len(share), len(mine))
    local = [(i, row_value(rows[i], t, role)) for i, t in zip(mine, texts[: len(mine)], strict=True)]
    return [value for _, value in sorted(gather_object(local))]  # (index, value) of every process


class EvalAccuracy(TrainerCallback):
    """Scores the eval rows every ``every`` steps and at the end: accuracy by difficulty, logged
    (``eval_accuracy/<level>``: TensorBoard/trackio, ``log_history``) and kept in ``results``.

    Scoring is :func:`trainer_per_case`: each process generates its share of the rows, and every
    process ends with the same ``results`` (and ``values``, the last scoring's per-case values).
    """

    def __init__(
        self, trainer: GRPOTrainer, rows: Sequence[Row], role: str, *, max_new_tokens: int, every: int
    ):
        self.trainer, self.rows, self.role = trainer, list(rows), role
        self.max_new_tokens, self.every = max_new_tokens, every
        self.results: list[dict[str, Any]] = []
        self.values: list[float] = []

    def _score(self, state: Any) -> None:
        if self.results and self.results[-1]["step"] == state.global_step:
            return
        self.values = trainer_per_case(self.trainer, self.rows, self.role, max_new_tokens=self.max_new_tokens)
        accuracy = by_difficulty(self.rows, self.values)
        self.results.append({"step": state.global_step, "accuracy": accuracy})
        # TRL's log() files metrics under the mode the model is in: not the train ones
        with _eval_mode(self.trainer.model):
            self.trainer.log({f"eval_accuracy/{k}": v for k, v in accuracy.items()})

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.every > 0 and state.global_step % self.every == 0:
            self._score(state)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._score(state)
