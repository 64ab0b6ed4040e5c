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
    assert res.exit_code == 0, res.output

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
    finally:
        store.close()

    out = res.output
    assert f"after: triage v{trained.id}" in out
    rise = re.search(r"paired over the \d+ cases: ([+-][\d.]+) pp \[([+-][\d.]+), ([+-][\d.]+)\]", out)
    assert rise, out
    assert float(rise.group(2)) > 0, out  # the held-out rise's 95 % CI excludes zero
    assert "the CI excludes zero" in out
    curve = re.search(r"learning curve: (\S+)", out)
    assert curve and Path(curve.group(1)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mmedagent --triage" in out and "ui" in out  # what to try next
