"""OpenTelemetry export of runs to a real OTLP receiver: Arize Phoenix (PyPI ``arize-phoenix``),
started by the test on loopback. It must receive one trace per run (trace id = run id) with the
node spans nested under the run and each model call under its node; privacy drops the prompts;
with the receiver down a run still succeeds and one warning is logged."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from app.config import RoleSpec, TracingSettings
from app.runtime import CaseRequest
from data.synthetic import make_case
from graph.context import GraphMode

# Phoenix has a lock and environment of its own (tools/phoenix), set up by scripts/test.
PHOENIX = Path(__file__).resolve().parents[1] / ".venv-phoenix" / "bin" / "phoenix"
PROJECT = "mmedagent"
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory):
    """A Phoenix server on loopback ports, with its own working directory, telemetry off."""
    if not PHOENIX.exists():
        pytest.skip("arize-phoenix is not installed (scripts/test installs it into .venv-phoenix)")
    port = _free_port()
    env = {
        **os.environ,
        "PHOENIX_WORKING_DIR": str(tmp_path_factory.mktemp("phoenix")),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(_free_port()),
        "PHOENIX_TELEMETRY_ENABLED": "false",
        "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
    }
    log_path = tmp_path_factory.mktemp("phoenix-log") / "phoenix.log"
    with log_path.open("w") as out:
        proc = subprocess.Popen([str(PHOENIX), "serve"], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240  # under the per-test timeout, with a message
    while True:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"phoenix did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def _spans(url: str, trace_id: str, expected: int) -> list[dict]:
    """The spans Phoenix stored for a trace, once ``expected`` of them arrived (ingestion is async)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            data = _get(f"{url}/v1/projects/{PROJECT}/spans?trace_id={trace_id}&limit=1000")["data"]
        except OSError:  # the project exists once its first span arrived
            data = []
        if len(data) >= expected or time.monotonic() > deadline:
            return data
        time.sleep(0.5)


def _ask(runtime, seed: int):
    res = runtime.ask(CaseRequest.from_synthetic(make_case(seed), limits=runtime.settings.image_limits()))
    assert res.status == "ok", res.error
    return res


SMALL = {r: RoleSpec(max_new_tokens=8) for r in ("triage", "specialist", "attending")}


def test_each_run_is_one_trace_with_nested_node_and_model_spans(phoenix, make_runtime):
    runtime = make_runtime(tracing=TracingSettings(otlp_endpoint=phoenix, timeout_s=60), **SMALL)
    runs = [_ask(runtime, 0), _ask(runtime, 1)]
    assert runtime.tracer.flush()
    for res in runs:
        spans = _spans(phoenix, res.run_id, 11)
        assert {s["context"]["trace_id"] for s in spans} == {res.run_id}  # one trace, id = run id
        (root,) = [s for s in spans if s["parent_id"] is None]
        assert root["name"] == "mmedagent.multi" and root["attributes"]["mmedagent.run_id"] == res.run_id
        nodes = [s for s in spans if s["parent_id"] == root["context"]["span_id"]]
        assert sorted(s["name"] for s in nodes) == [
            "attending",
            "specialist",
            "specialist",
            "specialist",
            "triage",
        ]
        node_ids = {s["context"]["span_id"]: s for s in nodes}
        calls = [s for s in spans if s["parent_id"] in node_ids]
        assert len(calls) == 5 and len(spans) == 11
        stored = {(st.node, st.specialty): st for st in runtime.store.get_run(res.run_id).steps}
        for call in calls:
            node = node_ids[call["parent_id"]]
            st = stored[(node["name"], node["attributes"].get("mmedagent.specialty"))]
            attrs = call["attributes"]
            assert attrs["gen_ai.usage.input_tokens"] == st.prompt_tokens
            assert attrs["gen_ai.usage.output_tokens"] == st.completion_tokens
            assert attrs["llm.token_count.completion"] == st.completion_tokens
            assert attrs["gen_ai.request.model"] == st.model_id and call["span_kind"] == "LLM"
            assert attrs["output.value"] == st.completion  # prompts and completions exported
            assert json.loads(attrs["input.value"]) == st.messages
            assert call["start_time"] >= node["start_time"] and call["end_time"] <= node["end_time"]


def test_a_vote_run_is_one_vote_node_with_a_call_per_sample(phoenix, make_runtime):
    runtime = make_runtime(
        mode=GraphMode("vote", votes=3), tracing=TracingSettings(otlp_endpoint=phoenix, timeout_s=60), **SMALL
    )
    res = _ask(runtime, 3)
    assert runtime.tracer.flush()
    spans = _spans(phoenix, res.run_id, 5)
    (root,) = [s for s in spans if s["parent_id"] is None]
    (vote,) = [s for s in spans if s["parent_id"] == root["context"]["span_id"]]
    calls = [s for s in spans if s["parent_id"] == vote["context"]["span_id"]]
    assert root["name"] == "mmedagent.vote" and vote["name"] == "vote" and len(calls) == 3 == len(spans) - 2


def test_privacy_keeps_prompts_and_completions_out(phoenix, make_runtime):
    runtime = make_runtime(
        tracing=TracingSettings(otlp_endpoint=phoenix, timeout_s=60), store_pixels=False, **SMALL
    )
    res = _ask(runtime, 2)
    assert runtime.tracer.flush()
    spans = _spans(phoenix, res.run_id, 11)
    assert len(spans) == 11
    private = [make_case(2).question]
    for st in res.steps:
        private.append(st["completion"])
        private += [b["text"] for m in st["messages"] for b in m["content"] if b.get("type") == "text"]
    stored = json.dumps([s["attributes"] for s in spans])
    assert [t for t in private if t.strip() and json.dumps(t)[1:-1] in stored] == []
    tokens = [s["attributes"].get("gen_ai.usage.output_tokens") for s in spans]
    assert sum(t for t in tokens if t) == sum(st["completion_tokens"] for st in res.steps)


def test_receiver_down_runs_succeed_with_one_warning(make_runtime, caplog):
    down = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    runtime = make_runtime(tracing=TracingSettings(otlp_endpoint=down, timeout_s=1), **SMALL)
    with caplog.at_level(logging.INFO):
        for seed in range(3):
            _ask(runtime, seed)  # succeeds
            runtime.tracer.flush()
        runtime.close()  # shutting down with a dead receiver neither hangs nor raises
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in warnings] == ["app.tracing"], [r.getMessage() for r in warnings]
    assert down in warnings[0].getMessage()
    # Only our own exports are quieted: the exporter's logger keeps its level for anyone else.
    exporter_log = logging.getLogger("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    assert exporter_log.level == logging.NOTSET
    with caplog.at_level(logging.INFO):
        exporter_log.warning("another exporter in this process")
    assert caplog.records[-1].getMessage() == "another exporter in this process"
