"""Run a benchmark through one mode of the system; every case becomes a stored run of the eval.

Modes: ``multi`` (the full graph), ``static`` (a fixed panel of specialists, no triage),
``single`` (the attending alone, no opinions) and ``vote-N`` (the attending prompt sampled N times
at ``vote_temperature``, majority answer). Each is a graph variant run by the same
:class:`app.runtime.Runtime` (:class:`graph.context.GraphMode`), so every case is a run tagged
with the eval id: inspectable, and reusable as training data.

The eval id is derived from what determines the results (benchmark, local copy, split, mode,
models, policy versions, decoding): running the same command again resumes, skipping cases that
already have a successful run for that id (failed runs are retried). Any number of processes, on
any hosts sharing the database, may run the same eval at once: they claim its cases through the
store (:mod:`app.evaluation.claims`), so each case runs once, and a dead process's cases go to the
others when its leases lapse. The report is built from the stored runs only, so a resumed or split
eval reports what an uninterrupted single process would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.config import Settings
from app.evaluation.claims import DEFAULT_LEASE_S, claim_keeper
from app.evaluation.report import EvalError, build_report
from app.evaluation.stored import eval_records
from app.runtime import CaseRequest, InputError, Runtime
from data.benchmarks import BenchmarkCase, load_benchmark
from data.images import ImageError
from data.leases import process_owner
from data.schema import ROLES
from data.specialties import SPECIALTIES
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
    """What happened to one case: ``ok``/``error`` (a new run), ``reused`` (run before),
    ``skipped`` (bad input) or ``elsewhere`` (run by another process on the same eval)."""

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


def _run_claimed(runtime: Runtime, case: BenchmarkCase, eval_id: str, owner: str) -> CaseOutcome:
    """Ask a claimed case, then mark it done (its run is stored; or skipped, with the reason)."""
    outcome = _ask(runtime, case, eval_id)
    note = (outcome.reason or "skipped") if outcome.status == "skipped" else None
    if not runtime.store.finish_eval_case(eval_id, case.case_id, owner, note=note):
        log.warning(
            "case %s: this process's lease on it had lapsed and another process may have run it too "
            "(a longer --lease avoids that)",
            case.case_id,
        )
    return outcome


def run_cases(
    runtime: Runtime,
    cases: Sequence[BenchmarkCase],
    eval_id: str,
    *,
    workers: int = 1,
    on_case: Callable[[CaseOutcome], None] | None = None,
    lease_s: float = DEFAULT_LEASE_S,
) -> dict[str, str]:
    """Ask every case not yet finished in ``eval_id``, ``workers`` at a time; returns the skipped
    cases with their reasons.

    Cases are claimed through the store (app.evaluation.claims), so any number of processes on one
    database and eval id share them, each case run once; a process's claims are leases of
    ``lease_s`` seconds, renewed while it runs, and the cases of a process that stopped renewing
    are claimed by another once they lapse. This returns when every case is done, whoever ran it.
    On an exception (Ctrl-C included) cases in flight finish and are stored, the others are given
    back for the next run (or another process)."""
    if workers < 1:
        raise EvalError(f"workers must be >= 1, got {workers}")
    if lease_s <= 0:
        raise EvalError(f"the lease must be > 0 seconds, got {lease_s}")
    store = runtime.store
    by_id = {c.case_id: c for c in cases}
    done = store.open_eval_cases(eval_id, list(by_id))
    reported = set()
    for case in cases:
        if case.case_id in done and on_case:
            reported.add(case.case_id)
            on_case(CaseOutcome(case.case_id, "reused"))
    owner = process_owner()
    poll = min(1.0, lease_s / 4)
    try:
        with (
            claim_keeper(store, owner, lease_s),
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval") as pool,
        ):
            pending: set[Future[CaseOutcome]] = set()
            try:
                while True:
                    # A bounded window: images are decoded in the workers, never all at once.
                    room = 2 * workers - len(pending)
                    claimed = (
                        store.claim_eval_cases(eval_id, owner, n=room, lease_s=lease_s, below=len(cases))
                        if room > 0
                        else []
                    )
                    for case_id, _ in claimed:
                        if case_id not in by_id:
                            raise EvalError(
                                f"eval {eval_id} has case {case_id} where this process has another: "
                                "the processes of one eval must evaluate the same benchmark"
                            )
                        pending.add(pool.submit(_run_claimed, runtime, by_id[case_id], eval_id, owner))
                    if not pending:
                        if not store.open_eval_case_count(eval_id, below=len(cases)):
                            break
                        time.sleep(poll)  # the rest are held by other processes: wait for them
                        continue
                    finished, pending = wait(pending, timeout=poll, return_when=FIRST_COMPLETED)
                    for future in finished:
                        outcome = future.result()
                        reported.add(outcome.case_id)
                        if on_case:
                            on_case(outcome)
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
    finally:
        try:
            store.release_eval_claims(owner)
        except Exception as exc:  # their leases lapse anyway
            log.warning("could not give back the unfinished cases of %s: %s", owner, exc)
    claims = store.eval_claims(eval_id, below=len(cases))
    if on_case:
        for claim in claims:
            if claim.case_id not in reported:
                on_case(CaseOutcome(claim.case_id, "elsewhere"))
    return {c.case_id: c.note for c in claims if c.done and c.note is not None}


def evaluate(
    runtime: Runtime,
    spec: EvalSpec,
    cases: Sequence[BenchmarkCase],
    *,
    eval_id: str | None = None,
    workers: int = 1,
    on_case: Callable[[CaseOutcome], None] | None = None,
    lease_s: float = DEFAULT_LEASE_S,
) -> dict[str, Any]:
    """Run (or resume, or join another process running) the eval of ``cases`` and return its report."""
    mode = spec.graph_mode()
    if runtime.mode != mode:
        raise EvalError(f"the runtime runs {runtime.mode}, the eval asks for {mode}")
    config = eval_config(spec, runtime)
    eval_id = eval_id or eval_id_for(config)
    skipped = run_cases(runtime, cases, eval_id, workers=workers, on_case=on_case, lease_s=lease_s)
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
