"""Clinicians' verdicts give runs a difficulty: the specialists' opinions scored against the verdict's
answer (rl.datasets.iter_rows_from_store), on the real store and the real graph with scripted models."""

from __future__ import annotations

from collections.abc import Sequence

from app.runtime import CaseRequest, Runtime
from data.images import load_image
from data.synthetic import generate_cases
from rl.datasets import rows_from_store
from tests.trajectories import make_runs, scripted_panel


def _runs_without_gold(settings, store, n_right: Sequence[int]) -> list[tuple[str, str]]:
    """(run id, the letter ``k`` of its 3 specialists answer) per entry; no gold answer is stored."""
    cases = generate_cases(len(n_right), seed=1)
    plans = {
        f"{c.question} [case {i}]": (c.answer, k) for i, (c, k) in enumerate(zip(cases, n_right, strict=True))
    }
    runtime = Runtime(settings, backends=scripted_panel(plans), store=store)
    try:
        runs = [
            runtime.ask(
                CaseRequest(
                    question=question,
                    images=[load_image(b) for b in case.images],
                    options=list(case.options),
                    case_id=case.case_id,
                    source="test",
                )
            )
            for question, case in zip(plans, cases, strict=True)
        ]
    finally:
        runtime.close()
    return [(run.run_id, case.answer) for run, case in zip(runs, cases, strict=True)]


def _said(store, run_id: str) -> list[str]:
    return [st.parsed["answer"] for st in store.get_run(run_id).steps if st.role == "specialist"]


def _difficulty(store, source: str) -> dict[str, tuple[str, str | None]]:
    """case id -> (answer, difficulty) of the attending rows ``source`` labels."""
    return {
        r["case_id"]: (r["answer"], r["difficulty"])
        for r in rows_from_store(store, "attending", reward_source=source)
    }


def test_verdicts_give_runs_without_gold_a_difficulty(settings, store):
    planned = [3, 2, 1, 0]
    runs = _runs_without_gold(settings, store, planned)
    for (run_id, letter), k in zip(runs, planned, strict=True):
        assert _said(store, run_id).count(letter) == k
        store.add_feedback(run_id, correct=False, answer=letter)
    case = {run_id: store.get_run(run_id).case_id for run_id, _ in runs}

    assert rows_from_store(store, "attending", reward_source="gold") == []
    assert store.difficulties() == {}  # no gold-scored specialist anywhere
    expected = {
        case[run_id]: (letter, level)
        for (run_id, letter), level in zip(runs, ["easy", "medium", "medium", "hard"], strict=True)
    }
    assert _difficulty(store, "clinician") == expected
    assert _difficulty(store, "both") == expected


def test_a_verdict_that_the_run_was_right_scores_against_its_answer(settings, store):
    [(run_id, letter)] = _runs_without_gold(settings, store, [3])
    store.add_feedback(run_id, correct=True)  # the attending answered ``letter``
    assert store.get_run(run_id).answer.strip() == letter
    assert _difficulty(store, "clinician") == {store.get_run(run_id).case_id: (letter, "easy")}


def test_a_replaced_verdict_changes_the_difficulty(settings, store):
    [(run_id, letter)] = _runs_without_gold(settings, store, [0])
    [wrong] = set(_said(store, run_id))
    case_id = store.get_run(run_id).case_id
    store.add_feedback(run_id, correct=False, answer=letter)
    assert _difficulty(store, "clinician") == {case_id: (letter, "hard")}
    store.add_feedback(run_id, correct=False, answer=f"Option {wrong}")  # the same letter, another form
    assert _difficulty(store, "clinician") == {case_id: (f"Option {wrong}", "easy")}


def test_verdicts_that_agree_with_gold_give_the_stored_gold_difficulty(settings, store):
    runs = make_runs(settings, store, [3, 1, 0])
    for run in runs:
        store.add_feedback(run.run_id, correct=False, answer=store.get_run(run.run_id).gold_answer)
    by_gold = {c: d for c, (_, d) in _difficulty(store, "gold").items()}
    stored = {store.get_run(r).case_id: d.level for r, d in store.difficulties().items()}
    assert by_gold == stored and sorted(stored.values()) == ["easy", "hard", "medium"]
    assert {c: d for c, (_, d) in _difficulty(store, "clinician").items()} == by_gold


def test_both_prefers_gold_and_its_difficulty(settings, store):
    [gold_run] = make_runs(settings, store, [3])  # every specialist names the gold answer: easy
    [(plain_run, letter)] = _runs_without_gold(settings, store, [1])
    gold = store.get_run(gold_run.run_id)
    assert set(_said(store, gold_run.run_id)) == {gold.gold_answer}
    wrong = next(letter for letter in "ABCD" if letter != gold.gold_answer)
    store.add_feedback(gold_run.run_id, correct=False, answer=wrong)  # nobody said it: hard by the verdict
    store.add_feedback(plain_run, correct=False, answer=letter)
    plain = store.get_run(plain_run).case_id

    assert _difficulty(store, "gold") == {gold.case_id: (gold.gold_answer, "easy")}
    assert _difficulty(store, "clinician") == {gold.case_id: (wrong, "hard"), plain: (letter, "medium")}
    assert _difficulty(store, "both") == {gold.case_id: (gold.gold_answer, "easy"), plain: (letter, "medium")}
