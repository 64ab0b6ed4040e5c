"""rl/evaluation.py: per-case scoring, accuracy by difficulty, bootstrap intervals, and the sharded
in-training evaluation on two real processes (torchrun, gloo, CPU) on the tiny checkpoint."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from graph.protocol import ChatRequest
from rl.datasets import synthetic_attending_rows
from rl.evaluation import bootstrap_ci, by_difficulty, per_case, row_value, score_policy, shard
from tests.scripted import ScriptedBackend, request_text

ROOT = Path(__file__).resolve().parents[1]
SPREAD = [0.1, 0.4, 0.35, 0.8, 0.55, 0.2, 0.9, 0.05]
PAIRED = [1, -1, 0, 0, 1, 1, 0, -1, 1, 0]  # per-case differences of two methods


@pytest.mark.parametrize(
    ("values", "seed", "n", "expected"),
    [
        # figures of bench/learning.py's bootstrap (numpy's default_rng), which bench prints
        (SPREAD, 0, 2000, (0.41875, 0.21875, 0.625)),
        (SPREAD, 0, 100, (0.41875, 0.24046875, 0.65)),
        (PAIRED, 7, 2000, (0.2, -0.3, 0.6025)),
        ([0.25] * 5, 3, 2000, (0.25, 0.25, 0.25)),
        ([1.0], 0, 2000, (1.0, 1.0, 1.0)),
    ],
)
def test_bootstrap_ci_is_the_percentile_bootstrap_of_the_mean(values, seed, n, expected):
    assert bootstrap_ci(values, seed, n) == pytest.approx(expected, abs=1e-12)
    assert bootstrap_ci(values, np.random.default_rng(seed), n) == bootstrap_ci(values, seed, n)


def test_bootstrap_ci_draws_on_from_a_shared_generator_and_is_nan_when_empty():
    rng = np.random.default_rng(0)
    first, second = bootstrap_ci(SPREAD, rng), bootstrap_ci(SPREAD, rng)
    assert first == pytest.approx((0.41875, 0.21875, 0.625))
    assert second == pytest.approx((0.41875, 0.23125, 0.63765625))  # the generator moved on
    assert all(math.isnan(x) for x in bootstrap_ci([], 0))


ROWS = [{"difficulty": d} for d in ("easy", "hard", "easy", None, "medium", "hard")]


@pytest.mark.parametrize(
    ("rows", "values", "expected"),
    [
        (ROWS, [1, 0, 0, 1, 1, 1], {"all": 4 / 6, "easy": 0.5, "hard": 0.5, "medium": 1.0}),
        (ROWS[:2], [1, 1], {"all": 1.0, "easy": 1.0, "hard": 1.0}),
        ([{"difficulty": None}, {}], [0, 1], {"all": 0.5}),  # no difficulty: counted in "all" only
        ([], [], {}),
    ],
)
def test_by_difficulty_averages_all_and_each_difficulty_present(rows, values, expected):
    assert by_difficulty(rows, values) == pytest.approx(expected)


def test_by_difficulty_needs_one_value_per_row():
    with pytest.raises(ValueError):
        by_difficulty(ROWS, [1.0])


@pytest.mark.parametrize(
    ("role", "row", "text", "value"),
    [
        ("triage", {"specialty": "Dermatologist"}, "<think>skin</think><answer>Dermatologist</answer>", 1.0),
        ("triage", {"specialty": "Dermatologist"}, "<answer>Radiologist, Dermatologist</answer>", 0.0),
        ("attending", {"answer": "B", "options": ["A) Mass", "B) Scar"]}, "<answer>B</answer>", 1.0),
        ("attending", {"answer": "B", "options": ["A) Mass", "B) Scar"]}, "<answer>Scar</answer>", 1.0),
        ("attending", {"answer": "B", "options": ["A) Mass", "B) Scar"]}, "<answer>A</answer>", 0.0),
        ("attending", {"answer": "B", "options": ["A) Mass", "B) Scar"]}, "no answer", 0.0),
    ],
)
def test_row_value_is_the_roles_reward_accuracy(role, row, text, value):
    assert row_value(row, text, role) == value


def test_per_case_scores_every_row_in_order_batch_by_batch():
    rows = synthetic_attending_rows(7, seed=0, size=56)
    gold = {request_text(ChatRequest(r["prompt"])): r["answer"] for r in rows}

    def answer(req):  # right on every row whose gold is "A" or "C", wrong elsewhere
        letter = gold[request_text(req)]
        return f"<think>x</think><answer>{letter if letter in 'AC' else 'Z'}</answer>"

    backend = ScriptedBackend(answer)
    values = per_case(backend, rows, "attending", batch=3)
    assert values == [float(r["answer"] in "AC") for r in rows]
    assert 0 < sum(values) < len(rows)
    assert [len(c) for c in backend.calls] == [3, 3, 1]
    assert score_policy(backend, rows, "attending", batch=3) == by_difficulty(rows, values)


@pytest.mark.parametrize(("n", "world"), [(10, 2), (11, 2), (1, 2), (7, 3)])
def test_shards_cover_every_row_once(n, world):
    shares = [list(shard(n, rank, world)) for rank in range(world)]
    assert sorted(i for s in shares for i in s) == list(range(n))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


@pytest.mark.slow
@pytest.mark.timeout(600)  # about 1.5 minutes alone on 2 CPU cores; the global limit is for hangs
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
def test_two_processes_share_the_eval_rows_and_agree_with_one(tiny_model_dir, tmp_path):
    from tests.eval_worker import EVAL_ROWS

    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "tests.eval_worker", str(tiny_model_dir), str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    # each process generated its half of the rows, once (scored at step 1; train end is the same step)
    assert [r["generated"] for r in ranks] == [EVAL_ROWS // 2] * 2
    rank0, rank1 = ranks
    assert len(rank0["results"]) == 1 and rank0["results"][0]["step"] == 1
    assert (rank0["results"], rank0["values"]) == (rank1["results"], rank1["values"])
    # the gathered values, in row order, are one process's alone on the same weights; they mix right
    # and wrong cases, so rows out of order would show
    assert rank0["values"] == rank0["single_values"] == rank1["single_values"]
    assert 0 < sum(rank0["values"]) < EVAL_ROWS
    assert rank0["results"][0]["accuracy"] == rank0["single_accuracy"]
    # logged in eval mode: eval_accuracy/<level> in TRL's log history, the training metrics untouched
    logged = rank0["logged"]
    assert [h["step"] for h in logged] == [1]
    assert {k: v for k, v in logged[0].items() if k.startswith("eval_accuracy/")} == {
        f"eval_accuracy/{k}": v for k, v in rank0["single_accuracy"].items()
    }
    assert not any(k.startswith("eval_reward") or k == "reward" for k in logged[0])
    assert all(r["gradient_checkpointing"] for r in ranks)  # restored after generating
