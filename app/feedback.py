"""A clinician's verdict on a run's answer: one set of rules for the web page and the CLI.

Verdicts are appended, never overwritten: a changed verdict is a new row, and the latest one per
run is the one exports and training use (:meth:`data.store.TrajectoryStore.latest_verdicts`).
"""

from __future__ import annotations

from dataclasses import dataclass

from data.answers import match_option
from data.store import TrajectoryStore


class FeedbackError(ValueError):
    """A verdict that cannot be recorded; the message says why, for the clinician."""


@dataclass(frozen=True)
class Verdict:
    reward_id: int
    run_id: str
    correct: bool
    answer: str | None


def record_verdict(
    store: TrajectoryStore,
    run_id: str,
    *,
    correct: bool,
    answer: str | None = None,
    note: str | None = None,
) -> Verdict:
    """Check and append a verdict on ``run_id``'s final answer.

    A correct verdict carries no right answer; a right answer given with a wrong verdict must name
    one of the run's options when the run has options (a letter or the option's text).
    """
    run = store.get_run(run_id.strip())
    if run is None:
        raise FeedbackError(f"no run {run_id!r}")
    answer = (answer or "").strip() or None
    if correct and answer:
        raise FeedbackError("a 'correct' verdict takes no right answer; give one only with 'wrong'")
    if answer and run.options and match_option(answer, run.options) is None:
        raise FeedbackError(
            f"the right answer {answer!r} names none of the run's options ({'; '.join(run.options)}); "
            "give an option's letter or its text"
        )
    reward_id = store.add_feedback(run.id, correct=correct, answer=answer, note=(note or "").strip() or None)
    return Verdict(reward_id, run.id, correct, answer)
