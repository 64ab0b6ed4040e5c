"""The loop closed: cases run through the graph (simulated specialists) -> stored -> `mmedagent train`
-> a registered policy version -> served by the graph -> recorded as the policy of new steps."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app
from app.config import Settings
from app.runtime import CaseRequest, Runtime
from data.store import TrajectoryStore
from data.synthetic import generate_cases
from rl.simulated import AnswerKey, SimulatedSpecialist
from tests.recipes import TINY_RECIPE

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")]
runner = CliRunner()


@pytest.fixture
def home(tmp_path, tiny_model_dir, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no stray mmedagent.toml
    monkeypatch.setenv("MMEDAGENT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MMEDAGENT_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "home"


def _request(case) -> CaseRequest:
    return CaseRequest.from_synthetic(case)


def _policy_of(store: TrajectoryStore, run_id: str, role: str) -> int:
    (step,) = [s for s in store.get_run(run_id).steps if s.role == role]
    return step.policy_version_id


def test_trained_policy_is_registered_served_and_recorded(home, tmp_path, tiny_backend):
    cases = generate_cases(8, seed=0, size=56)
    specialists = SimulatedSpecialist(AnswerKey.from_synthetic(cases), p_right=0.5)
    rt = Runtime(
        Settings(), backends={"triage": tiny_backend, "specialist": specialists, "attending": tiny_backend}
    )
    try:
        for case in cases:
            assert rt.ask(_request(case)).status == "ok"
        levels = {d.level for d in rt.store.difficulties().values()}
        before = rt.policy_ids["attending"]
    finally:
        rt.close()
    assert len(levels) >= 2  # the simulated specialists made cases of several difficulties

    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    out = tmp_path / "att-run"
    args = ["train", "--role", "attending", "--from-db", "--out", str(out), "--recipe", "tiny.yaml"]
    result = runner.invoke(app, [*args, "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    assert "registered attending policy version" in result.output

    store = TrajectoryStore(Settings().database_url)
    try:
        latest = store.latest_policy("attending")
        assert latest.parent_id == before and latest.base_model == str(out / "policy")
        assert latest.training_run["steps"] == 2 and latest.training_run["data"] == "store"
        assert [s["stage"] for s in latest.training_run["stages"]] == sorted(
            (s["stage"] for s in latest.training_run["stages"]), key=["easy", "medium", "hard"].index
        )
    finally:
        store.close()
    listed = runner.invoke(app, ["policies", "list", "--role", "attending"])
    assert listed.exit_code == 0 and str(latest.id) in listed.output and "curriculum" in listed.output
    assert f"v{latest.id}" in listed.output and f"base ({before})" in listed.output  # names users see
    shown = runner.invoke(app, ["policies", "show", str(latest.id)])
    assert shown.exit_code == 0, shown.output
    assert f"parent {before}" in shown.output and "data     store:" in shown.output
    assert "curriculum, loss grpo" in shown.output and "stage    easy" in shown.output
    assert "reward   all " in shown.output  # the final reward by difficulty
    missing = runner.invoke(app, ["policies", "show", "999"])
    assert missing.exit_code == 2 and "no policy version 999" in missing.output

    # serve it: the attending loads the trained weights; every new attending step names the version
    served = Settings(attending={"policy": "latest"})
    rt = Runtime(served)
    try:
        assert rt.backends["attending"].model_id == str(out / "policy")
        assert rt.backends["triage"].model_id != str(out / "policy")
        run = rt.ask(_request(generate_cases(9, seed=0, size=56)[8]))
        assert _policy_of(rt.store, run.run_id, "attending") == latest.id
        assert _policy_of(rt.store, run.run_id, "triage") != latest.id
    finally:
        rt.close()

    # the same through the CLI's global option, with a version id
    img = tmp_path / "case.png"
    img.write_bytes(cases[0].images[0])
    asked = runner.invoke(
        app, ["--attending", str(latest.id), "ask", "-i", str(img), "-q", cases[0].question, "--json"]
    )
    assert asked.exit_code == 0, asked.output
    store = TrajectoryStore(Settings().database_url)
    try:
        newest = store.list_runs(limit=1)[0]
        assert _policy_of(store, newest.id, "attending") == latest.id
    finally:
        store.close()
    # a version of another role is refused, and nothing runs
    bad = runner.invoke(app, ["--triage", str(latest.id), "ask", "-i", str(img), "-q", "x"])
    assert bad.exit_code == 1 and f"no policy {latest.id} for this role" in bad.output


def test_train_from_an_export_folder_without_curriculum(home, tmp_path, tiny_backend):
    from data.export import ExportFilter, export

    cases = generate_cases(4, seed=1, size=56)
    rt = Runtime(Settings(), backends=dict.fromkeys(("triage", "specialist", "attending"), tiny_backend))
    try:
        for case in cases:
            rt.ask(_request(case))
        export(rt.store, ExportFilter(role="triage", with_gold=True), "parquet", tmp_path / "export")
    finally:
        rt.close()
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    out = tmp_path / "tri-run"
    data = ["--data", str(tmp_path / "export"), "--curriculum", "false", "--no-register"]
    result = runner.invoke(
        app,
        ["train", "--role", "triage", *data, "--out", str(out), "--recipe", "tiny.yaml", "--max-steps", "1"],
    )
    assert result.exit_code == 0, result.output
    assert (out / "policy" / "config.json").is_file() and "registered" not in result.output
    # a second run into the same folder is refused rather than overwriting the trained policy
    again = runner.invoke(
        app, ["train", "--role", "triage", "--data", str(tmp_path / "export"), "--out", str(out)]
    )
    assert again.exit_code == 2 and "already exists" in again.output
    none = runner.invoke(app, ["train", "--role", "triage", "--out", str(tmp_path / "x")])
    assert none.exit_code == 2 and "exactly one data source" in none.output


def test_train_since_takes_only_the_runs_stored_since_then(home, tmp_path, tiny_backend):
    from datetime import UTC, datetime

    cases = generate_cases(6, seed=1, size=56)
    rt = Runtime(Settings(), backends=dict.fromkeys(("triage", "specialist", "attending"), tiny_backend))
    try:
        for case in cases[:2]:
            assert rt.ask(_request(case)).status == "ok"
        since = datetime.now(UTC)
        for case in cases[2:]:
            assert rt.ask(_request(case)).status == "ok"
    finally:
        rt.close()
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    args = ["train", "--role", "triage", "--from-db", "--recipe", "tiny.yaml", "--max-steps", "1"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "t"), "--since", since.isoformat()])
    assert result.exit_code == 0, result.output
    store = TrajectoryStore(Settings().database_url)
    try:
        assert store.latest_policy("triage").training_run["rows"] == 4  # not the 2 stored before
    finally:
        store.close()
    later = runner.invoke(app, [*args, "--out", str(tmp_path / "u"), "--since", "2999-01-01"])
    assert later.exit_code == 2 and "no usable triage rows" in later.output
    relative = runner.invoke(app, [*args, "--out", str(tmp_path / "v"), "--since", "24h"])
    assert relative.exit_code == 2 and "expected an ISO date" in relative.output
    synthetic = runner.invoke(
        app,
        [
            "train",
            "--role",
            "triage",
            "--synthetic",
            "4",
            "--out",
            str(tmp_path / "w"),
            "--since",
            "2026-01-01",
        ],
    )
    assert synthetic.exit_code == 2 and "goes with --from_db" in synthetic.output
