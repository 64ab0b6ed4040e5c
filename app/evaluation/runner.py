"""Run a benchmark through one mode of the system; every case becomes a stored run of the eval.

Modes: ``multi`` (the full graph), ``static`` (a fixed panel of specialists, no triage),
``single`` (the attending alone, no opinions) and ``vote-N`` (the attending prompt sampled N times
at ``vote_temperature``, majority answer). Each is a graph variant run by the same
:class:`app.runtime.Runtime` (:class:`graph.context.GraphMode`), so every case is a run tagged
with the eval id: inspectable, and reusable as training data.

The eval id is derived from what determines the results (benchmark, local copy, split, mode,
models, policy versions, decoding): running the same command again resumes, skipping cases that
already have a successful run for that id (failed runs are retried). The report is built from the
stored runs only, so a resumed eval reports what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.config import Settings
from app.evaluation.report import EvalError, build_report
from app.evaluation.stored import eval_records
from app.runtime import CaseRequest, InputError, Runtime
from data.benchmarks import BenchmarkCase, load_benchmark
from data.images import ImageError
from data.schema import ROLES, Run
from data.specialties import SPECIALTIES
from data.store import TrajectoryStore
from graph.context import GraphMode

log = logging.getLogger(__name__)

_MODE = re.compile(r"^(?:(multi|static|single)|vote-([1-9]\d*))$")
DEFAULT_VOTE_TEMPERATURE = 1.0


def parse_mode(text: str, specialists: Sequence[str] = ()) -> GraphMode:
    """``single`` | ``static`` | ``multi`` | ``vote-N`` -> the graph mode that runs it."""
    m = _MODE.match(text.strip())
    if not m:
        raise EvalError(f"unknown mode {text!r}; use single, vote-N (e.g. vote-5), static or multi")
    unknown = [s for s in specialists if s not in SPECIALTIES]
    if unknown:
        raise EvalError(f"unknown specialties {unknown}; choose from {', '.join(SPECIALTIES)}")
    if specialists and m.group(1) != "static":
        raise EvalError("a fixed panel of specialists only applies to --mode static")
    if m.group(2):
        return GraphMode("vote", votes=int(m.group(2)))
    return GraphMode(m.group(1), specialists=tuple(specialists))  # type: ignore[arg-type]


@dataclass(frozen=True)
class EvalSpec:
    """What to evaluate: a benchmark (and where its local copy is) in one mode."""

    benchmark: str
    mode: str
    path: Path | None = None
    split: str | None = None
    subset: str | None = None
    language: str = "en"
    limit: int | None = None
    n: int = 200  # synthetic only
    seed: int = 0  # synthetic only
    specialists: tuple[str, ...] = ()  # static only
    vote_temperature: float = DEFAULT_VOTE_TEMPERATURE

    def graph_mode(self) -> GraphMode:
        return parse_mode(self.mode, self.specialists)

    def load_cases(self) -> list[BenchmarkCase]:
        return load_benchmark(
            self.benchmark,
            self.path,
            split=self.split,
            subset=self.subset,
            language=self.language,
            limit=self.limit,
            n=self.n,
            seed=self.seed,
        )

    def settings_for(self, settings: Settings) -> Settings:
        """The settings to run this mode with: ``vote`` samples the attending at ``vote_temperature``."""
        if self.graph_mode().kind != "vote":
            return settings
        if self.vote_temperature <= 0:
            raise EvalError("vote-N needs a sampling temperature > 0")
        attending = settings.attending.model_copy(update={"temperature": self.vote_temperature})
        return settings.model_copy(update={"attending": attending})


def eval_config(spec: EvalSpec, runtime: Runtime) -> dict[str, Any]:
    """Everything the eval's results depend on; ``limit`` and ``n`` only choose how many of the
    (fixed-order) cases run, so they are not part of it and a longer run extends a shorter one."""
    s = runtime.settings
    mode = spec.graph_mode()
    return {
        "benchmark": spec.benchmark,
        "path": str(spec.path.expanduser().resolve()) if spec.path else None,
        "split": spec.split,
        "subset": spec.subset,
        "language": spec.language,
        "seed": spec.seed if spec.benchmark == "synthetic" else None,
        "mode": spec.mode,
        "panel": list(mode.specialists) if mode.kind == "static" else None,
        "n_specialists": s.n_specialists if mode.kind in ("multi", "static") else None,
        "max_pixels": s.max_pixels,
        "roles": {
            role: {
                "backend": s.role(role).backend,
                "model": s.model_for(role),
                "model_id": runtime.backends[role].model_id,
                "adapter": s.role(role).adapter,
                "policy_version_id": runtime.policy_ids.get(role),
                **asdict(s.role(role).sampling()),
            }
            for role in ROLES
        },
    }


def eval_id_for(config: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    return f"{config['benchmark']}-{config['mode']}-{digest[:10]}"


@dataclass(frozen=True)
class CaseOutcome:
    """What happened to one case: ``ok``/``error`` (a new run), ``reused`` or ``skipped``."""

    case_id: str
    status: str
    run_id: str | None = None
    reason: str | None = None


def _request(case: BenchmarkCase, eval_id: str, runtime: Runtime) -> CaseRequest:
    limits = runtime.settings.image_limits()
    return CaseRequest(
        question=case.question,
        images=[img.load(limits) for img in case.images],
        options=list(case.options),
        case_id=case.case_id,
        gold_answer=case.answer,
        gold_specialty=case.specialty,
        source="eval",
        eval_id=eval_id,
        meta={
            "benchmark": case.benchmark,
            "kind": case.kind,
            "answer_text": case.answer_text,
            "subset": case.subset,
            "modality": case.modality,
            "case": dict(case.meta),
        },
    )


def _ask(runtime: Runtime, case: BenchmarkCase, eval_id: str) -> CaseOutcome:
    try:
        req = _request(case, eval_id, runtime)
        runtime.validate(req)
    except (ImageError, InputError) as exc:
        # Bad input loses nothing: the case is reported as skipped, with the reason, and retried on resume.
        log.warning("case %s skipped: %s", case.case_id, exc)
        return CaseOutcome(case.case_id, "skipped", reason=str(exc))
    result = runtime.ask(req)
    return CaseOutcome(case.case_id, result.status, run_id=result.run_id, reason=result.error)


def finished_cases(store: TrajectoryStore, eval_id: str) -> set[str]:
    """Case ids that already have a successful run in this eval."""
    with store.session() as s:
        stmt = select(Run.case_id).where(Run.eval_id == eval_id, Run.status == "ok").distinct()
        return {c for c in s.scalars(stmt) if c is not None}


def run_cases(
    runtime: Runtime,
    cases: Sequence[BenchmarkCase],
    eval_id: str,
    *,
    workers: int = 1,
    on_case: Callable[[CaseOutcome], None] | None = None,
) -> dict[str, str]:
    """Ask every case not yet finished in ``eval_id``, ``workers`` at a time; returns the skipped
    cases with their reasons. On an exception (Ctrl-C included) cases in flight finish and are
    stored, the rest are left for the next run."""
    if workers < 1:
        raise EvalError(f"workers must be >= 1, got {workers}")
    done = finished_cases(runtime.store, eval_id)
    todo = iter([c for c in cases if c.case_id not in done])
    for case in cases:
        if case.case_id in done and on_case:
            on_case(CaseOutcome(case.case_id, "reused"))
    skipped: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval") as pool:
        pending: set[Future[CaseOutcome]] = set()
        try:
            while True:
                # A bounded window: images are decoded in the workers, never all at once.
                while len(pending) < 2 * workers and (case := next(todo, None)) is not None:
                    pending.add(pool.submit(_ask, runtime, case, eval_id))
                if not pending:
                    break
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    outcome = future.result()
                    if outcome.status == "skipped":
                        skipped[outcome.case_id] = outcome.reason or "skipped"
                    if on_case:
                        on_case(outcome)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return skipped


def evaluate(
    runtime: Runtime,
    spec: EvalSpec,
    cases: Sequence[BenchmarkCase],
    *,
    eval_id: str | None = None,
    workers: int = 1,
    on_case: Callable[[CaseOutcome], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the eval of ``cases`` and return its report."""
    mode = spec.graph_mode()
    if runtime.mode != mode:
        raise EvalError(f"the runtime runs {runtime.mode}, the eval asks for {mode}")
    config = eval_config(spec, runtime)
    eval_id = eval_id or eval_id_for(config)
    skipped = run_cases(runtime, cases, eval_id, workers=workers, on_case=on_case)
    info = {
        "eval_id": eval_id,
        "benchmark": spec.benchmark,
        "mode": spec.mode,
        "split": spec.split,
        "models": {role: runtime.backends[role].model_id for role in ROLES if role in runtime.backends},
        "config": config,
    }
    return build_report(
        eval_records(runtime.store, eval_id), case_ids=[c.case_id for c in cases], info=info, skipped=skipped
    )
