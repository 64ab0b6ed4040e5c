"""``feedback``: a clinician's verdict on a run's answer."""

from __future__ import annotations

from typing import Annotated

import typer

from app.commands.common import console, fail, open_store


def feedback(
    run_id: str,
    correct: Annotated[
        bool | None, typer.Option("--correct/--wrong", help="the clinician's verdict on the final answer")
    ] = None,
    answer: Annotated[
        str | None,
        typer.Option(
            help="the right answer (with --wrong); a letter or an option's text when the run has options"
        ),
    ] = None,
    note: Annotated[str | None, typer.Option(help="free-text comment")] = None,
) -> None:
    """Record a clinician's verdict on a run's answer (appended: the latest verdict counts)."""
    from app.feedback import FeedbackError, record_verdict

    if correct is None:
        fail("give the verdict: --correct or --wrong")
    store = open_store()
    try:
        verdict = record_verdict(store, run_id, correct=correct, answer=answer, note=note)
    except FeedbackError as exc:
        fail(str(exc))
    finally:
        store.close()
    said = "correct" if correct else "wrong"
    console.print(f"feedback #{verdict.reward_id} on run {run_id}: {said}", highlight=False)
