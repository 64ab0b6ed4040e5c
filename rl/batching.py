"""How many prompts TRL's GRPOTrainer draws per generation batch, across every process.

TRL 1.16 (``GRPOConfig.__post_init__`` and ``GRPOTrainer._get_train_sampler``) generates once per
``steps_per_generation`` micro-steps for ``generation_batch_size`` completions in all, where

    generation_batch_size = per_device_train_batch_size × processes × steps_per_generation

(``steps_per_generation`` defaults to ``gradient_accumulation_steps``; a config may give
``generation_batch_size`` instead). Its ``RepeatSampler`` walks the dataset in chunks of
``generation_batch_size / num_generations`` distinct prompts, in order when ``shuffle_dataset`` is
off, hands each process a slice of the chunk, and drops a last incomplete chunk. A curriculum stage
is therefore one stage per generation batch only when every stage is padded to a multiple of the
chunk, the *global* prompt count, not the per-process one. :func:`generation_batch` computes it
without a running trainer (so the arithmetic can be checked for 8 processes on one CPU), and
rl/trainer.py checks it against the figure the live ``GRPOConfig`` derived.
"""

from __future__ import annotations

from dataclasses import dataclass


class BatchingError(ValueError):
    """The batch settings cannot keep one curriculum stage per generation batch."""


@dataclass(frozen=True)
class GenerationBatch:
    """One generation batch of a run: its size and how many optimizer steps it feeds."""

    processes: int
    completions: int  # generated at once over all processes (TRL's generation_batch_size)
    prompts: int  # distinct prompts in it: what every curriculum stage is padded to a multiple of
    steps_per_generation: int  # micro-steps one generation feeds (per process)
    optimizer_steps: int  # optimizer steps one generation batch feeds (× num_iterations)
    completions_per_step: int  # behind one optimizer step, all processes together (the global batch)


def generation_batch(
    *,
    processes: int,
    per_device_train_batch_size: int,
    gradient_accumulation_steps: int,
    num_generations: int,
    steps_per_generation: int | None = None,
    generation_batch_size: int | None = None,
    num_iterations: int = 1,
) -> GenerationBatch:
    """The generation batch TRL 1.16 builds from these settings (its own validation mirrored).

    Raises :class:`BatchingError` where a generation batch would not end on an optimizer step: then
    one optimizer step would mix two generation batches, and so possibly two stages.
    """
    if min(processes, per_device_train_batch_size, gradient_accumulation_steps, num_iterations) < 1:
        raise BatchingError("processes, batch sizes and steps must be >= 1")
    per_micro_step = per_device_train_batch_size * processes
    if generation_batch_size is not None and steps_per_generation is not None:
        raise BatchingError("'generation_batch_size' and 'steps_per_generation' are exclusive (TRL)")
    if generation_batch_size is not None:
        if generation_batch_size % per_micro_step:
            raise BatchingError(
                f"generation_batch_size ({generation_batch_size}) must be divisible by the global batch "
                f"({per_micro_step})"
            )
        steps_per_generation = generation_batch_size // per_micro_step
    spg = steps_per_generation if steps_per_generation is not None else gradient_accumulation_steps
    completions = per_micro_step * spg
    if completions % num_generations:
        raise BatchingError(
            f"a generation batch of {completions} completions does not hold whole groups of {num_generations}"
        )
    micro_steps = spg * num_iterations  # micro-steps fed by one generation batch
    if micro_steps % gradient_accumulation_steps:
        raise BatchingError(
            f"one generation batch feeds {micro_steps} micro-steps, not a whole number of optimizer steps "
            f"({gradient_accumulation_steps} micro-steps each): an optimizer step would mix two batches"
        )
    return GenerationBatch(
        processes=processes,
        completions=completions,
        prompts=completions // num_generations,
        steps_per_generation=spg,
        optimizer_steps=micro_steps // gradient_accumulation_steps,
        completions_per_step=per_micro_step * gradient_accumulation_steps,
    )
