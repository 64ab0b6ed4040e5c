"""The CLI as a user runs it: `ask --json` -> `runs show`; bad input exits 2 and writes nothing."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from app.cli import app
from data.store import TrajectoryStore
from tests.test_images import png_with_header

runner = CliRunner()


@pytest.fixture
def env(tmp_path, tiny_model_dir, monkeypatch):
    home = tmp_path / "home"
    values = {"MMEDAGENT_HOME": str(home), "MMEDAGENT_MODEL": str(tiny_model_dir), "HF_HUB_OFFLINE": "1"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return {**os.environ, **values}


def _png(path: Path, size=(56, 56)) -> Path:
    Image.new("RGB", size, (200, 40, 40)).save(path)
    return path


def _mmedagent(*args: str, env: dict) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("mmedagent")
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_ask_json_then_runs_show(tmp_path, env):
    img = _png(tmp_path / "scan.png")
    out = _mmedagent(
        "ask", "--image", str(img), "--question", "What is the finding?",
        "--option", "A) Normal", "--option", "B) Nodule", "--json", env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == "ok"
    assert len(result["opinions"]) == 3 and len(result["triage"]["specialties"]) == 3
    assert {"answer", "parse_status", "timings", "run_id"} <= result.keys()
    shown = _mmedagent("runs", "show", result["run_id"], "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    run = json.loads(shown.stdout)
    assert run["run_id"] == result["run_id"]
    assert [s["node"] for s in run["steps"]].count("specialist") == 3
    listed = _mmedagent("runs", "list", env=env)
    assert result["run_id"] in listed.stdout


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, "PNG")
    files = {
        "empty": b"",
        "truncated": good.getvalue()[: len(good.getvalue()) // 2],
        "text": b"this is not an image, just text\n",
        "bomb": png_with_header(20000, 20000),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.png"
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize(
    ("kind", "message"),
    [("empty", "empty"), ("truncated", "truncated"), ("text", "not a recognised image"), ("bomb", "pixel")],
)
def test_bad_image_exits_2_and_writes_nothing(tmp_path, env, kind, message):
    bad = _bad_files(tmp_path)[kind]
    good = _png(tmp_path / "good.png")
    res = runner.invoke(app, ["ask", "--image", str(good), "--image", str(bad), "--question", "What is it?"])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert len(res.output.strip().splitlines()) == 1
    home = Path(env["MMEDAGENT_HOME"])
    if (home / "mmedagent.db").exists():
        assert TrajectoryStore(f"sqlite:///{home / 'mmedagent.db'}").list_runs() == []


def test_missing_file_and_empty_question_exit_2(tmp_path, env):
    res = runner.invoke(app, ["ask", "--image", str(tmp_path / "nope.png"), "--question", "q"])
    assert res.exit_code == 2 and "no such file" in res.output
    res = runner.invoke(app, ["ask", "--image", str(_png(tmp_path / "a.png")), "--question", "   "])
    assert res.exit_code == 2 and "question is empty" in res.output


def test_runs_show_unknown_id(env):
    res = runner.invoke(app, ["runs", "show", "doesnotexist"])
    assert res.exit_code == 2 and "no run" in res.output


@pytest.mark.slow
def test_demo_quick_prints_table(env):
    res = runner.invoke(app, ["demo", "--quick", "--n", "2"])
    assert res.exit_code == 0, res.output
    assert "syn-0-00000" in res.output and "syn-0-00001" in res.output
    assert "trajectories stored in" in res.output
    home = Path(env["MMEDAGENT_HOME"])
    runs = TrajectoryStore(f"sqlite:///{(home / 'mmedagent.db').resolve()}").list_runs()
    assert sorted(r.case_id for r in runs) == ["syn-0-00000", "syn-0-00001"]
    assert all(r.gold_answer and r.gold_specialty for r in runs)
