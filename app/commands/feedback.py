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
    answer: Annotated[str | None, typer.Option(help="the right answer, when the run's was wrong")] = None,
    note: Annotated[str | None, typer.Option(help="free-text comment")] = None,
) -> None:
    """Record a clinician's verdict on a run's answer (appended: earlier verdicts are kept)."""
    if correct is None:
        fail("give the verdict: --correct or --wrong")
    store = open_store()
    try:
        reward_id = store.add_feedback(run_id, correct=correct, answer=answer, note=note)
    except KeyError:
        fail(f"no run {run_id!r}")
    finally:
        store.close()
    verdict = "correct" if correct else "wrong"
    console.print(f"feedback #{reward_id} on run {run_id}: {verdict}", highlight=False)
