"""Wiring: settings -> backends + store + graph, and ``Runtime.ask`` to run one case end to end."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache

from app.backends.batcher import batching_session
from app.checkpoints import open_checkpointer
from app.config import Settings
from data.images import ImageError, ImageLimits, LoadedImage, image_from_bytes, load_image
from data.leases import LeaseKeeper, process_owner
from data.schema import ROLES
from data.store import ImageIn, RewardIn, RunIn, TrajectoryStore
from graph.build import build_graph
from graph.context import GraphContext, GraphMode
from graph.protocol import ChatBackend
from rl.rewards import step_rewards

if TYPE_CHECKING:
    from PIL import Image

    from data.synthetic import SyntheticCase

log = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], None]
IMAGE_CACHE_SIZE = 256
# How long a running run is held without renewal before another process may mark it interrupted.
RUN_LEASE_S = 60.0


class InputError(ValueError):
    """The case itself is unusable (empty question, too many options...): nothing is stored."""


class RunNotFinished(RuntimeError):
    """A run was recorded when it started, but storing its end failed (the database went away):
    its steps stored so far are kept, and it was marked ``interrupted`` if the database allowed."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} could not be stored as finished")
        self.run_id = run_id


@dataclass
class CaseRequest:
    """One question about a case, with its already validated images."""

    question: str
    images: Sequence[LoadedImage]
    options: Sequence[str] = ()
    case_id: str | None = None
    gold_answer: str | None = None
    gold_specialty: str | None = None
    source: str = "cli"
    thread_id: str | None = None
    eval_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_synthetic(
        cls, case: SyntheticCase, *, gold: bool = True, limits: ImageLimits | None = None, **kw: Any
    ) -> CaseRequest:
        """A synthetic-clinic case as a request; ``gold`` attaches its answer and specialty (rewards);
        ``kw`` sets or overrides any other field."""
        fields_ = {
            "question": case.question,
            "images": [load_image(b, limits=limits or ImageLimits()) for b in case.images],
            "options": list(case.options),
            "case_id": case.case_id,
            "gold_answer": case.answer if gold else None,
            "gold_specialty": case.specialty if gold else None,
        }
        return cls(**{**fields_, **kw})


@dataclass
class CaseResult:
    """What a run produced; ``status == "error"`` carries the error and the steps that finished."""

    run_id: str
    thread_id: str
    status: str
    specialties: list[str]
    triage_status: str | None
    opinions: list[dict[str, Any]]
    answer: str | None
    answer_status: str | None
    error: str | None
    wall_s: float
    steps: list[dict[str, Any]]

    def summary(self) -> dict[str, Any]:
        """JSON-ready result for ``mmedagent ask --json``."""
        return {
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "status": self.status,
            "error": self.error,
            "triage": {"specialties": self.specialties, "parse_status": self.triage_status},
            "opinions": self.opinions,
            "answer": self.answer,
            "parse_status": self.answer_status,
            # The registered policy version (``mmedagent policies``) of each role that answered.
            "policy_versions": {s["role"]: s.get("policy_version_id") for s in self.steps},
            "timings": {
                "wall_s": round(self.wall_s, 4),
                "model_s": round(sum(s.get("latency_s", 0.0) for s in self.steps), 4),
                "steps": [
                    {
                        "node": s["node"],
                        "specialty": s.get("specialty"),
                        "latency_s": round(s["latency_s"], 4),
                        "wait_s": round(s.get("wait_s") or 0.0, 4),
                        "batch_id": s.get("batch_id"),
                        "policy_version_id": s.get("policy_version_id"),
                    }
                    for s in self.steps
                ],
            },
        }


class Runtime:
    """Owns the store, the backends, the checkpointer and the compiled graph.

    Each run is recorded as it starts (``running``, held by this process under a lease the runtime
    renews) and its steps as they finish, so a process that dies leaves it, not nothing: at start
    (and at each renewal) a runtime marks ``interrupted`` the runs whose process on this host is
    gone or whose lease lapsed (data.leases).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        backends: Mapping[str, ChatBackend] | None = None,
        store: TrajectoryStore | None = None,
        mode: GraphMode | None = None,
    ):
        self.settings = settings
        self.mode = mode or GraphMode()  # the full system, or an evaluation baseline
        settings.home.mkdir(parents=True, exist_ok=True)
        self.store = store or TrajectoryStore(settings.database_url, store_pixels=settings.store_pixels)
        from app.backends.factory import apply_policy_choices

        # Roles set to serve a registered policy version ("latest" or an id) get its model + adapter.
        settings, self._chosen_policies = apply_policy_choices(settings, self.store)
        self.settings = settings
        self._owns_backends = backends is None
        if backends is None:
            from app.backends.factory import build_backends

            backends = build_backends(settings)
        self.backends = dict(backends)
        self.policy_ids = self._resolve_policies()
        # Earlier turns of each case: SQLite in ``home``, or the PostgreSQL database every replica shares.
        self._checkpointer = open_checkpointer(self.store.url, settings.checkpoint_path)
        self.graph = build_graph(checkpointer=self._checkpointer.saver, kind=self.mode.kind)
        self.tracer = None  # OpenTelemetry export of each run (app/tracing.py), when configured
        if settings.tracing.otlp_endpoint:
            from app.tracing import make_tracer

            self.tracer = make_tracer(settings)
        # Decoded pixels of recent images (bounded: a long-lived UI process sees many cases).
        self._images: LRUCache[str, Image.Image] = LRUCache(IMAGE_CACHE_SIZE)
        self._images_lock = threading.Lock()
        self.owner = process_owner()
        self._in_flight: set[str] = set()  # the runs this runtime is running: the leases it renews
        self._in_flight_lock = threading.Lock()
        self.store.mark_interrupted()
        self._leases = LeaseKeeper(self._keep_leases, RUN_LEASE_S, name="run-lease").start()

    def _keep_leases(self) -> None:
        with self._in_flight_lock:
            running = set(self._in_flight)
        self.store.renew_runs(self.owner, running, RUN_LEASE_S)
        self.store.mark_interrupted()

    @contextlib.contextmanager
    def _holding(self, run_id: str) -> Iterator[None]:
        """Renew ``run_id``'s lease while the block runs, and not after."""
        with self._in_flight_lock:
            self._in_flight.add(run_id)
        try:
            yield
        finally:
            with self._in_flight_lock:
                self._in_flight.discard(run_id)

    def _resolve_policies(self) -> dict[str, int]:
        """Policy version id per role, from what the settings say each role serves."""
        from app.policies import resolve_policy

        return {
            role: self._chosen_policies.get(role)
            or resolve_policy(
                self.store, role, self.settings.model_for(role), self.settings.role(role).adapter
            ).id
            for role in ROLES
        }

    def close(self) -> None:
        self._leases.stop()
        if self.tracer is not None:
            self.tracer.shutdown()
            self.tracer = None
        self._checkpointer.close()
        self.store.close()
        if self._owns_backends:  # batcher threads, HTTP connection pools
            for backend in {id(b): b for b in self.backends.values()}.values():
                close = getattr(backend, "close", None)
                if close is not None:
                    close()

    def context(self) -> GraphContext:
        s = self.settings
        return GraphContext(
            backends=self.backends,
            resolve_image=self.resolve_image,
            sampling={r: s.role(r).sampling() for r in ROLES},
            n_specialists=s.n_specialists,
            mode=self.mode,
        )

    def resolve_image(self, sha256: str) -> Image.Image:
        """The normalised pixels of an image: from this process's cache, else from the store."""
        with self._images_lock:
            cached = self._images.get(sha256)
        if cached is not None:
            return cached
        data = self.store.image_bytes(sha256)
        if data is None:
            raise ImageError(f"image {sha256[:12]} is not available (unknown, or stored as a hash only)")
        image = image_from_bytes(data, self.settings.image_limits())
        self._cache_image(sha256, image)
        return image

    def stored_images(self, shas: Sequence[str]) -> list[LoadedImage]:
        """The images of a stored case whose bytes the store kept (a case stored as hashes only has
        none: its images must be attached again to ask a follow-up)."""
        limits = self.settings.image_limits()
        out = []
        for sha in shas:
            data = self.store.image_bytes(sha)
            if data is not None:
                out.append(load_image(data, name=f"image {sha[:12]}", limits=limits))
        return out

    def _cache_image(self, sha256: str, image: Image.Image) -> None:
        with self._images_lock:
            self._images[sha256] = image

    def validate(self, req: CaseRequest) -> None:
        """Reject unusable cases before anything runs or is written."""
        s = self.settings
        if not req.question or not req.question.strip():
            raise InputError("the question is empty")
        if len(req.question) > s.max_question_chars:
            raise InputError(
                f"the question is {len(req.question)} characters; the limit is {s.max_question_chars}"
            )
        if len(req.options) > s.max_options:
            raise InputError(f"{len(req.options)} options; the limit is {s.max_options}")
        if any(not o.strip() for o in req.options):
            raise InputError("an option is empty")
        if not req.images:
            raise InputError("a case needs at least one image")

    def _step_finished(self, run_id: str, steps: list[dict[str, Any]], record: dict[str, Any]) -> None:
        """Keep a finished step and store it at once (finish_run stores any this could not)."""
        policy = self.policy_ids.get(record["role"])
        steps.append({**record, "policy_version_id": policy, "finished_at": time.time()})
        try:
            self.store.add_step(run_id, len(steps) - 1, steps[-1])
        except Exception as exc:
            log.warning(
                "run %s: step %d not stored yet (%s); it is stored when the run finishes",
                run_id,
                len(steps) - 1,
                exc,
            )

    @staticmethod
    def _rewards(req: CaseRequest, options: list[str], steps: list[dict[str, Any]]) -> list[RewardIn]:
        """Automatic rewards for each step whose gold label the case carries."""
        return [
            RewardIn(step=i, role=st["role"], kind=kind, value=value)
            for i, st in enumerate(steps)
            for kind, value in step_rewards(
                st["role"],
                st["completion"],
                gold_answer=req.gold_answer,
                options=options,
                gold_specialty=req.gold_specialty,
            ).items()
        ]

    def _finish(self, req: CaseRequest, run: RunIn, steps: list[dict[str, Any]]) -> None:
        """Store the run's end; when that fails, mark it ``interrupted`` (its lease, no longer
        renewed, lapses if even that fails) and raise :class:`RunNotFinished`."""
        try:
            self.store.finish_run(run, steps, self._rewards(req, run.options, steps))
        except Exception as exc:
            log.error("run %s could not be stored as finished: %s", run.id, exc)
            try:
                self.store.mark_interrupted(run_ids=[run.id])
            except Exception as again:
                log.error("run %s could not be marked interrupted either: %s", run.id, again)
            raise RunNotFinished(run.id) from exc

    def ask(self, req: CaseRequest, on_event: EventHandler | None = None) -> CaseResult:
        """Run one case through the graph and persist its trajectory (also when it fails)."""
        # One batching session per run (app/backends/batcher.py): local backends batch this run's
        # calls with other runs'. It spans the whole run, saving included, so that a worker that
        # runs cases back to back is expected by the batchers until its next case begins: cases
        # that started together go on together.
        with batching_session():
            return self._ask(req, on_event)

    def _ask(self, req: CaseRequest, on_event: EventHandler | None) -> CaseResult:
        self.validate(req)
        run_id = uuid.uuid4().hex
        thread_id = req.thread_id or run_id
        for img in req.images:
            self._cache_image(img.sha256, img.image)
        case_input = {
            "question": req.question.strip(),
            "options": [o.strip() for o in req.options],
            "image_hashes": [img.sha256 for img in req.images],
        }
        config = {"configurable": {"thread_id": thread_id}, "run_id": uuid.UUID(run_id)}
        images = [ImageIn(i.sha256, i.mime, i.width, i.height, i.data) for i in req.images]
        record = {
            "id": run_id,
            "thread_id": thread_id,
            "question": case_input["question"],
            "options": case_input["options"],
            "image_shas": case_input["image_hashes"],
            "source": req.source,
            "case_id": req.case_id,
            "gold_answer": req.gold_answer,
            "gold_specialty": req.gold_specialty,
            "created_at": datetime.now(UTC),
            "meta": req.meta,
            "eval_id": req.eval_id,
            "mode": self.mode.kind,
        }
        self.store.begin_run(RunIn(status="running", **record), images, owner=self.owner, lease_s=RUN_LEASE_S)
        with self._holding(run_id):
            steps: list[dict[str, Any]] = []
            final: dict[str, Any] = {}
            error: str | None = None
            t0 = time.perf_counter()
            try:
                for mode, chunk in self.graph.stream(
                    case_input, config, context=self.context(), stream_mode=["custom", "values"]
                ):
                    if mode == "values":
                        final = chunk
                        continue
                    if chunk.get("event") == "step_finished":
                        self._step_finished(run_id, steps, chunk["record"])
                    if on_event:
                        on_event(chunk)
            except Exception as exc:  # the run is recorded as failed, whatever broke
                error = f"{type(exc).__name__}: {exc}"
                log.warning("run %s failed: %s", run_id, error)
            except BaseException:  # Ctrl-C, SystemExit: the run stops here, its steps so far are kept
                with contextlib.suppress(Exception):
                    self.store.mark_interrupted(run_ids=[run_id])
                raise
            wall = time.perf_counter() - t0
            status = "error" if error else "ok"
            run = RunIn(
                **record,
                owner=self.owner,
                status=status,
                error=error,
                specialties=final.get("specialties", []),
                answer=None if error else final.get("answer"),
                answer_status=None if error else final.get("answer_status"),
                wall_s=wall,
            )
            self._finish(req, run, steps)
            if self.tracer is not None:
                self.tracer.export_run(run, steps, self.context().sampling)
            result = CaseResult(
                run_id=run_id,
                thread_id=thread_id,
                status=status,
                specialties=run.specialties,
                triage_status=final.get("triage_status"),
                opinions=[] if error else list(final.get("opinions", [])),
                answer=run.answer,
                answer_status=run.answer_status,
                error=error,
                wall_s=wall,
                steps=steps,
            )
            if on_event:
                on_event({"event": "run_finished", "run_id": run_id, "status": status, "error": error})
            return result
