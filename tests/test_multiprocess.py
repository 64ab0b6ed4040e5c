"""Curriculum GRPO on two real processes (torchrun, gloo, CPU) on the tiny checkpoint: every step
trains one stage on both ranks, in the planned order, and every row of every stage is trained.

`accelerate launch --cpu --num_processes 2` would start a single process on CPU; torchrun starts two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rl.datasets import synthetic_attending_rows
from rl.grpo import RUN_FILE
from tests.recipes import TINY_RECIPE

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),  # about 2 minutes alone on 2 CPU cores; the global limit is for hangs
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning"),
]

RECIPE = TINY_RECIPE
CASES = 14


def test_two_processes_train_one_stage_per_step_and_every_row(tiny_model_dir, tmp_path, monkeypatch):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "rl.grpo", "--role", "attending", "--synthetic", str(CASES), "--recipe", str(recipe),
        "--model", str(tiny_model_dir), "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    record = json.loads((out / RUN_FILE).read_text())
    # 2 processes x 4 prompts x 4 completions: one step trains 16 completions of 4 prompts
    assert (record["world_size"], record["global_batch"], record["loss_type"]) == (2, 16, "grpo")
    planned = [p["stage"] for p in record["stages"] for _ in range(p["steps"])]
    steps = record["per_step"]
    assert [e["stage"] for e in steps] == planned == sorted(planned, key=["easy", "medium", "hard"].index)
    assert record["steps"] == len(planned)
    for entry in steps:
        assert entry["stage_by_rank"] == [entry["stage"]] * 2
        gamma = {"easy": 0.2, "medium": 0.4, "hard": 0.6}[entry["stage"]]
        assert (entry["gamma"], set(entry["reward_by_difficulty"]) - {"all"}) == (gamma, {entry["stage"]})
    rows = synthetic_attending_rows(CASES, seed=0)
    for level in ("easy", "medium", "hard"):
        trained = {c for e in steps if e["stage"] == level for c in e["case_ids"]}
        assert trained == {r["case_id"] for r in rows if r["difficulty"] == level}, level
    assert (out / "policy" / "config.json").is_file()

    # one command registers the finished run as a policy version the graph can serve
    from typer.testing import CliRunner

    from app.cli import app
    from data.store import TrajectoryStore

    db_url = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MMEDAGENT_DB_URL", db_url)
    registered = CliRunner().invoke(app, ["policies", "register", str(out)])
    assert registered.exit_code == 0, registered.output
    store = TrajectoryStore(db_url)
    try:
        version = store.latest_policy("attending")
    finally:
        store.close()
    assert (version.base_model, version.adapter_path) == (str(out / "policy"), None)  # full fine-tuning
    assert (version.training_run["world_size"], version.training_run["rows"]) == (2, CASES)
