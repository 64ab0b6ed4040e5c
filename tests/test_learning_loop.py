"""``mmedagent demo``: the learning loop end to end, exactly as ``bash scripts/run`` runs it:
clinic cases stored, the triage trained from those stored runs, registered, served for the
held-out cases, and better on them (about 8 minutes on 2 CPU cores; docs/learning.md has the
rise on other seeds)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app
from data.store import TrajectoryStore

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning"),
]

CASES, HELD_OUT, STEPS = 512, 100, 160  # the loop's defaults


def test_the_loop_trains_on_its_stored_runs_and_serves_a_better_triage(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.chdir(tmp_path)  # no stray mmedagent.toml
    monkeypatch.setenv("MMEDAGENT_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = CliRunner().invoke(app, ["demo"])
    out = without_progress_bars(res.output)
    assert res.exit_code == 0, out

    store = TrajectoryStore(f"sqlite:///{home / 'mmedagent.db'}")
    try:
        clinic = [r for r in store.list_runs(limit=None, source="demo")]
        assert len(clinic) == CASES and all(r.status == "ok" and r.gold_specialty for r in clinic)
        (base,) = [p for p in store.list_policies("triage") if p.parent_id is None]
        trained = store.latest_policy("triage")
        assert trained.parent_id == base.id and trained.training_run["data"] == "store"
        assert trained.training_run["rows"] == CASES and trained.training_run["steps"] == STEPS

        evals = {r.eval_id for r in store.list_runs(limit=None, source="eval")}
        assert len(evals) == 2
        served = {}
        for eval_id in evals:
            runs = store.list_runs(limit=None, eval_id=eval_id)
            assert len(runs) == HELD_OUT and not {r.case_id for r in runs} & {r.case_id for r in clinic}
            triage = {
                s.policy_version_id for r in runs for s in store.get_run(r.id).steps if s.role == "triage"
            }
            served[eval_id] = triage
        assert sorted(served.values(), key=sorted) == [{base.id}, {trained.id}]  # before, then `latest`
        rewards = training_rewards(Path(trained.training_run["output_dir"]))
    finally:
        store.close()

    assert f"after: triage v{trained.id}" in out
    rise = re.search(r"paired over the \d+ cases: ([+-][\d.]+) pp \[([+-][\d.]+), ([+-][\d.]+)\]", out)
    assert rise, out
    assert float(rise.group(2)) > 0, f"{out}\n{rewards}"  # the held-out rise's 95 % CI excludes zero
    assert "the CI excludes zero" in out
    curve = re.search(r"learning curve: (\S+)", out)
    assert curve and Path(curve.group(1)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mmedagent --triage" in out and "ui" in out  # what to try next


def without_progress_bars(output: str) -> str:
    """The demo's printout without the trainers' progress bars (what a failure should show)."""
    lines = re.split(r"[\r\n]", output)
    return "\n".join(line for line in lines if line.strip() and not re.search(r"\d+/\d+ \[", line))


def training_rewards(run_dir: Path) -> str:
    """The GRPO run's logged sampled rewards, KL and zero-variance share per step (for a failure)."""
    import json

    from rl.grpo import RUN_FILE

    keys = (
        "rewards/triage_format_reward/mean",
        "rewards/triage_accuracy_reward/mean",
        "kl",
        "frac_reward_zero_std",
    )
    history = json.loads((run_dir / RUN_FILE).read_text()).get("log_history", [])
    rows = [
        f"step {h['step']}: "
        + " ".join(f"{k.split('/')[-2] if '/' in k else k}={h[k]:.3g}" for k in keys if k in h)
        for h in history
        if keys[1] in h
    ]
    return "GRPO (format, accuracy, kl, zero-std share):\n" + "\n".join(rows)
