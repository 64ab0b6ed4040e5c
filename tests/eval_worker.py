"""One process of tests/test_evaluation.py's sharded-evaluation run (under torchrun, gloo on CPU).

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.eval_worker MODEL OUT

Trains TRL's GRPOTrainer one step on the tiny checkpoint with :class:`rl.evaluation.EvalAccuracy`
attached, then writes ``OUT/rank<N>.json``: how many prompts this process generated in eval mode
(counted by a forward hook on the policy), the callback's results and per-case values, and the
same rows scored by this process alone on the trained weights (the single-process reference).

The eval rows are attending prompts scored as triage against one gold specialty: the tiny model's
random completions name that specialty first in some prompts only, so the per-case values mix 1s
and 0s and an out-of-order gather would show.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

EVAL_ROWS = 10
EVAL_TOKENS = 32
GOLD = "Dermatologist"


def eval_rows() -> list[dict[str, Any]]:
    """The eval rows: attending prompts, each with ``GOLD`` as its triage specialty."""
    from rl.datasets import synthetic_attending_rows

    return [{**r, "specialty": GOLD} for r in synthetic_attending_rows(EVAL_ROWS, seed=3, size=56)]


def _count_eval_prompts(model: Any) -> list[int]:
    """A one-item counter of the prompts ``model`` prefills in eval mode (training forwards run in
    train mode; decoding steps feed one token)."""
    seen = [0]

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids")
        if not module.training and ids is not None and ids.shape[1] > 1:
            seen[0] += ids.shape[0]

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def main(model_dir: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import GRPOConfig, GRPOTrainer

    from rl.datasets import synthetic_attending_rows, to_dataset
    from rl.evaluation import EvalAccuracy, generate_texts, model_accuracy, row_value
    from rl.rewards import REWARD_FUNCS

    args = GRPOConfig(
        output_dir=str(out / "run"),
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=6,
        max_steps=1,
        learning_rate=1e-4,
        gradient_checkpointing=True,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    processor = AutoProcessor.from_pretrained(model_dir, padding_side="left")
    trainer = GRPOTrainer(
        model=AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32),
        reward_funcs=REWARD_FUNCS["attending"],
        args=args,
        train_dataset=to_dataset(synthetic_attending_rows(4, seed=0, size=56)),
        processing_class=processor,
    )
    held = eval_rows()
    scorer = EvalAccuracy(trainer, held, "triage", max_new_tokens=EVAL_TOKENS, every=1)
    trainer.add_callback(scorer)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    generated = _count_eval_prompts(policy)
    trainer.train()
    eval_prompts = generated[0]

    checkpointing = policy.is_gradient_checkpointing  # TRL's context restores it after generating
    policy.eval()
    texts = generate_texts(policy, processor, held, max_new_tokens=EVAL_TOKENS, synced_gpus=False)
    record = {
        "rank": trainer.accelerator.process_index,
        "world": trainer.accelerator.num_processes,
        "generated": eval_prompts,
        "gradient_checkpointing": checkpointing,
        "results": scorer.results,
        "values": scorer.values,
        "logged": [h for h in trainer.state.log_history if "eval_accuracy/all" in h],
        "single_values": [row_value(r, t, "triage") for r, t in zip(held, texts, strict=True)],
        "single_accuracy": model_accuracy(policy, processor, held, "triage", max_new_tokens=EVAL_TOKENS),
    }
    (out / f"rank{record['rank']}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
