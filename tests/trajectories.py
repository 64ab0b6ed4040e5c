"""Stored runs with a known number of right specialists, made by the real graph and runtime.

The models are ScriptedBackends (tests/scripted.py): triage consults Radiologist, Oncologist and
(fallback) Pathologist; for a case planned with k right specialists, the first k of them answer the
gold letter and the others a wrong one; the attending answers the gold letter.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.config import Settings
from app.runtime import CaseRequest, CaseResult, Runtime
from data.images import load_image
from data.store import TrajectoryStore
from data.synthetic import generate_cases
from tests.scripted import ScriptedBackend, request_text

PANEL = ["Radiologist", "Oncologist", "Pathologist"]


def _gold(req_text: str, plans: dict[str, tuple[str, int]]) -> tuple[str, int]:
    return next(v for q, v in plans.items() if q in req_text)


def scripted_panel(plans: dict[str, tuple[str, int]]) -> dict[str, ScriptedBackend]:
    """Backends for cases keyed by question: ``plans[question] = (gold letter, k right)``."""

    def specialist(req) -> str:
        gold, k = _gold(request_text(req), plans)
        who = req.messages[0]["content"][0]["text"].split("experienced ")[1].split(".")[0]
        letter = gold if PANEL.index(who) < k else ("A" if gold != "A" else "B")
        return f"<think>as a {who}</think><answer>{letter}</answer>"

    def attending(req) -> str:
        return f"<think>weighing the panel</think><answer>{_gold(request_text(req), plans)[0]}</answer>"

    return {
        "triage": ScriptedBackend(lambda r: "<think>CT</think><answer>Radiologist, Oncologist</answer>"),
        "specialist": ScriptedBackend(specialist),
        "attending": ScriptedBackend(attending),
    }


def make_runs(
    settings: Settings, store: TrajectoryStore, n_right: Sequence[int | None], seed: int = 0
) -> list[CaseResult]:
    """One run per entry: ``k`` of 3 specialists right, or None for a case without a gold answer."""
    cases = generate_cases(len(n_right), seed=seed)
    plans = {
        f"{c.question} [case {i}]": (c.answer, k or 0)
        for i, (c, k) in enumerate(zip(cases, n_right, strict=True))
    }
    runtime = Runtime(settings, backends=scripted_panel(plans), store=store)
    results = []
    try:
        for (question, _), case, k in zip(plans.items(), cases, n_right, strict=True):
            req = CaseRequest(
                question=question,
                images=[load_image(b) for b in case.images],
                options=list(case.options),
                case_id=case.case_id,
                gold_answer=case.answer if k is not None else None,
                gold_specialty=case.specialty if k is not None else None,
                source="test",
            )
            results.append(runtime.ask(req))
    finally:
        runtime.close()  # disposes the store's pool only: the store stays usable
    return results
