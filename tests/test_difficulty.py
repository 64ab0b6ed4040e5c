"""Specialist correctness per step and curriculum difficulty, by query, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from data.difficulty import RunDifficulty, classify
from rl.rewards import step_rewards
from tests.trajectories import PANEL, make_runs


@pytest.mark.parametrize(("s", "level"), [(1.0, "easy"), (2 / 3, "medium"), (1 / 3, "medium"), (0.0, "hard")])
def test_classify(s, level):
    assert classify(s) == level


@pytest.mark.parametrize("s", [-0.1, 1.5])
def test_classify_rejects_a_fraction_out_of_range(s):
    with pytest.raises(ValueError, match="s must be in"):
        classify(s)


def test_reward_rows_match_the_reward_functions(settings, store):
    (result,) = make_runs(settings, store, [1])
    run = store.get_run(result.run_id)
    rows = store.rewards(run.id)
    stored = {(r.step_id, r.kind): r.value for r in rows if r.source == "gold"}
    expected = {
        (st.id, kind): value
        for st in run.steps
        for kind, value in step_rewards(
            st.role,
            st.completion,
            gold_answer=run.gold_answer,
            options=run.options,
            gold_specialty=run.gold_specialty,
        ).items()
    }
    assert stored == expected
    assert len(expected) == 2 * len(run.steps)  # format + accuracy for each of the 5 steps


def test_specialist_correctness_and_difficulty_levels(settings, store):
    easy, medium, hard, two, unlabelled = make_runs(settings, store, [3, 1, 0, 2, None])
    correctness = store.specialist_correctness(medium.run_id)
    # steps are stored in the order they finished: the fan-out's order varies with the machine's load
    assert {specialty: right for _, specialty, right in correctness} == {
        PANEL[0]: True,
        PANEL[1]: False,
        PANEL[2]: False,
    }
    assert [step_id for step_id, _, _ in correctness] == sorted(step_id for step_id, _, _ in correctness)
    assert {step_id for step_id, _, _ in correctness} == {
        st.id for st in store.get_run(medium.run_id).steps if st.role == "specialist"
    }
    assert store.specialist_correctness(unlabelled.run_id) == []

    found = store.difficulties()
    assert found == {
        easy.run_id: RunDifficulty(easy.run_id, 3, 3),
        medium.run_id: RunDifficulty(medium.run_id, 3, 1),
        hard.run_id: RunDifficulty(hard.run_id, 3, 0),
        two.run_id: RunDifficulty(two.run_id, 3, 2),
    }
    assert [found[r.run_id].level for r in (easy, medium, hard, two)] == ["easy", "medium", "hard", "medium"]
    assert found[medium.run_id].s == pytest.approx(1 / 3)

    assert set(store.difficulties(levels=["hard"])) == {hard.run_id}
    assert set(store.difficulties(levels=["easy", "medium"])) == {easy.run_id, medium.run_id, two.run_id}
    assert set(store.difficulties([medium.run_id, unlabelled.run_id])) == {medium.run_id}


def test_clinician_feedback_does_not_change_difficulty(settings, store):
    (run,) = make_runs(settings, store, [0])
    store.add_feedback(run.run_id, correct=True, note="the attending got it despite the panel")
    assert store.difficulties()[run.run_id].level == "hard"
