"""A user's own mistake in the served app (a bad run id) is one log line, not a traceback."""

from __future__ import annotations

import logging
from contextlib import closing

import pytest
from gradio_client import Client

from app.config import Settings
from app.runtime import Runtime
from data.schema import ROLES
from tests.scripted import ScriptedBackend
from tests.ui_server import serving


def test_a_bad_run_id_in_compare_logs_one_line_and_no_traceback(tmp_path, capfd, caplog):
    scripted = ScriptedBackend(lambda _: "")  # no question is asked
    runtime = Runtime(Settings(home=tmp_path / "home"), backends=dict.fromkeys(ROLES, scripted))
    caplog.set_level(logging.INFO)
    with closing(runtime), serving(runtime) as url:
        client = Client(url, verbose=False)
        with pytest.raises(Exception, match="no run 'not-a-run'"):
            client.predict("not-a-run", "also-not", api_name="/compare_runs")
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert "Run A: no run 'not-a-run'" in [r.getMessage().removeprefix("refused: ") for r in caplog.records]
    assert not any(r.exc_info for r in caplog.records)
