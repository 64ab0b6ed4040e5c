"""The graph: triage -> Send fan-out to 3 specialists -> attending, streamed and persisted."""

from __future__ import annotations

import pytest

from app.runtime import CaseRequest, InputError
from data.synthetic import generate_cases
from tests.scripted import ScriptedBackend, request_text


def _case_request(seed: int = 0, **kw) -> CaseRequest:
    return CaseRequest.from_synthetic(generate_cases(1, seed=seed)[0], **kw)


def _specialist_answer(req) -> str:
    system = req.messages[0]["content"][0]["text"]
    who = system.split("experienced ")[1].split(".")[0]
    return f"<think>as a {who} I see a nodule</think><answer>B</answer>"


@pytest.fixture
def scripted_backends():
    return {
        "triage": ScriptedBackend(lambda r: "<think>CT</think><answer>Radiologist, Oncologist</answer>"),
        "specialist": ScriptedBackend(_specialist_answer),
        "attending": ScriptedBackend(lambda r: "<think>agree with the panel</think><answer>B</answer>"),
    }


def test_fan_out_to_three_specialists_and_persist(make_runtime, scripted_backends):
    rt = make_runtime(backends=scripted_backends)
    events = []
    result = rt.ask(_case_request(), on_event=events.append)
    assert result.status == "ok", result.error
    # triage chose 2; the third comes from the fallback order, all distinct
    assert result.specialties == ["Radiologist", "Oncologist", "Pathologist"]
    assert result.answer == "B" and result.answer_status == "ok"
    run = rt.store.get_run(result.run_id)
    nodes = [s.node for s in run.steps]
    assert nodes.count("specialist") == 3 and nodes.count("attending") == 1 and nodes[0] == "triage"
    assert {s.specialty for s in run.steps if s.node == "specialist"} == set(result.specialties)
    attending = next(s for s in run.steps if s.node == "attending")
    prompt = attending.messages[-1]["content"][-1]["text"]
    for specialty in result.specialties:
        assert f"[{specialty}] <think>as a {specialty} I see a nodule</think>" in prompt
    assert attending.image_refs == run.steps[0].image_refs == [ri.sha256 for ri in run.images]
    started = [e for e in events if e.get("event") == "step_started"]
    assert len(started) == 5 and events[-1]["event"] == "run_finished"
    # the 3 specialist requests really reached the backend, each with the case image
    assert sum(len(c) for c in scripted_backends["specialist"].calls) == 3
    assert all(len(r.images) == 1 for c in scripted_backends["specialist"].calls for r in c)


def test_unusable_triage_falls_back(make_runtime, scripted_backends):
    scripted_backends["triage"] = ScriptedBackend(lambda r: "%%% garbage %%%")
    rt = make_runtime(backends=scripted_backends)
    result = rt.ask(_case_request())
    assert result.status == "ok"
    assert result.triage_status == "failed"
    assert result.specialties == ["Pathologist", "Radiologist", "Surgeon"]
    triage = rt.store.get_run(result.run_id).steps[0]
    assert triage.parse_status == "failed" and triage.parsed["error"]


def test_garbage_attending_is_recorded_not_raised(make_runtime, scripted_backends):
    scripted_backends["attending"] = ScriptedBackend(lambda r: "\x00" * 50)
    rt = make_runtime(backends=scripted_backends)
    result = rt.ask(_case_request())
    assert result.status == "ok" and result.answer_status == "failed" and result.answer == ""


def test_failing_backend_stores_error_run_with_finished_steps(make_runtime, scripted_backends):
    scripted_backends["attending"] = ScriptedBackend(lambda r: "", fail=True)
    rt = make_runtime(backends=scripted_backends)
    result = rt.ask(_case_request())
    assert result.status == "error" and "connection refused" in result.error
    run = rt.store.get_run(result.run_id)
    assert run.status == "error" and "BackendError" in run.error
    assert sorted(s.node for s in run.steps) == ["specialist"] * 3 + ["triage"]
    # the runtime is still usable afterwards
    scripted_backends["attending"].fail = False
    assert rt.ask(_case_request(seed=1)).status == "ok"


def test_follow_up_question_sees_history(make_runtime, scripted_backends):
    rt = make_runtime(backends=scripted_backends)
    first = rt.ask(_case_request())
    follow = _case_request(thread_id=first.thread_id)
    follow.question = "Is it malignant?"
    second = rt.ask(follow)
    assert second.thread_id == first.thread_id and second.run_id != first.run_id
    attending_req = scripted_backends["attending"].calls[-1][0]
    assert "Earlier answer: B" in request_text(attending_req)
    # opinions were reset for the new question: 3, not 6
    assert len(second.opinions) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [({"question": "  "}, "empty"), ({"question": "x" * 9000}, "limit"), ({"images": []}, "image")],
)
def test_bad_case_input_writes_nothing(make_runtime, scripted_backends, change, message):
    rt = make_runtime(backends=scripted_backends)
    req = _case_request()
    for k, v in change.items():
        setattr(req, k, v)
    with pytest.raises(InputError, match=message):
        rt.ask(req)
    assert rt.store.list_runs() == []


def test_real_tiny_model_end_to_end(make_runtime, tiny_model_dir):
    """Real transformers generation on the tiny checkpoint: whatever it says, the run is whole."""
    rt = make_runtime()
    result = rt.ask(_case_request())
    assert result.status == "ok", result.error
    run = rt.store.get_run(result.run_id)
    assert [s.node for s in run.steps].count("specialist") == 3
    for step in run.steps:
        assert step.completion_tokens == len(step.token_ids) > 0
        assert len(step.logprobs) == len(step.token_ids)
        assert step.model_id == str(tiny_model_dir)
        assert step.prompt_tokens > 0


def test_rewards_policy_versions_and_feedback_are_stored(make_runtime, scripted_backends):
    rt = make_runtime(backends=scripted_backends)
    req = _case_request()
    result = rt.ask(req)
    run = rt.store.get_run(result.run_id)
    rows = rt.store.rewards(result.run_id)
    by_step = {(r.step_id, r.kind): r.value for r in rows}
    for st in run.steps:
        assert (st.id, "format") in by_step
        assert st.policy_version_id == rt.policy_ids[st.role]
    triage = run.steps[0]
    assert by_step[(triage.id, "accuracy")] == float(req.gold_specialty == "Radiologist")
    attending = run.steps[-1]
    assert by_step[(attending.id, "accuracy")] == float(req.gold_answer == "B")
    # clinician verdicts append, never overwrite
    rt.store.add_feedback(result.run_id, correct=False, answer="C", note="missed the fracture")
    rt.store.add_feedback(result.run_id, correct=True)
    clinician = [r for r in rt.store.rewards(result.run_id) if r.kind == "clinician"]
    assert [(r.value, r.answer, r.step_id) for r in clinician] == [
        (0.0, "C", attending.id),
        (1.0, None, attending.id),
    ]
    # the same weights map to the same policy version in a new runtime
    assert make_runtime(backends=scripted_backends).policy_ids == rt.policy_ids
