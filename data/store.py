"""The trajectory store: every run and each of its model calls, persisted as an RL dataset."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Collection, Container, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, make_dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Select, create_engine, event, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, selectinload, sessionmaker
from sqlalchemy.schema import Column

from data import migrate
from data.difficulty import Level, RunDifficulty, level_of, run_scores, specialist_correctness_query
from data.leases import owner_gone
from data.schema import Base, EvalClaim, ImageBlob, PolicyVersion, Reward, Run, RunImage, Step

log = logging.getLogger(__name__)
T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class ImageIn:
    """An image to store with a run: its content address and (unless hash-only) its bytes."""

    sha256: str
    mime: str
    width: int
    height: int
    data: bytes


def _run_in_field(col: Column[Any]) -> tuple[str, Any, Any]:
    """A ``runs`` column as a RunIn field: required unless the column may be NULL or has a default."""
    default = col.default
    if default is None:
        return col.key, Any, (MISSING if not col.nullable else None)
    if default.is_callable:
        return col.key, Any, field(default_factory=lambda: default.arg(None))
    return col.key, Any, default.arg


RunIn = make_dataclass(
    "RunIn",
    [*map(_run_in_field, Run.__table__.columns), ("image_shas", list[str], field(default_factory=list))],
    kw_only=True,
    namespace={
        "__module__": __name__,
        "__doc__": "A finished (or failed) run, ready to persist in one transaction: the ``runs`` columns "
        "(keywords; a new column of ``Run`` is a new field) and its images' sha256s in prompt order.",
    },
)


@dataclass(frozen=True)
class RewardIn:
    """An automatic reward for the ``step``-th step of the run being saved (None: the whole run)."""

    step: int | None
    role: str
    kind: str
    value: float
    source: str = "gold"


# The steps columns a step record (graph.state.StepRecord) fills; the store numbers and times it.
_STEP_FIELDS = [c.key for c in Step.__table__.columns if c.key not in ("id", "run_id", "seq", "started_at")]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers (UI, export) run beside a writer; busy_timeout makes writers wait, not fail.
    # The driver's own transaction handling is switched off: SQLAlchemy emits BEGIN (_sqlite_begin),
    # so DDL is transactional and writers can take the write lock up front.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    _sqlite_wal(cur)
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_wal(cur: Any) -> None:
    """Switch the file to WAL, waiting (up to the busy timeout) for connections converting it too.

    On a file not in WAL yet (a brand-new database) the pragma reads the header and then rewrites it
    in a write transaction. A connection that holds that read and finds another one converting the
    file gets SQLITE_BUSY at once, without the busy handler (SQLite's deadlock rule for read-to-write
    upgrades), so several processes or threads opening a new database together could fail here, on
    connect, outside every write's retry. Once one of them has converted the file the pragma only
    reads (WAL is stored in the file), so trying again succeeds.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.001
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _is_locked_message(str(exc)) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(2 * delay, 0.05)


def _sqlite_begin(conn: Connection) -> None:
    # A deferred transaction that reads and then writes fails at once with SQLITE_BUSY when another
    # writer committed since its read (the busy timeout cannot help there); writers therefore begin
    # IMMEDIATE (engine option ``sqlite_begin``) and queue on the busy timeout instead.
    conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get('sqlite_begin', 'DEFERRED')}")


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL, a busy timeout and their folder created."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        db = engine.url.database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True)


# Dialects with INSERT ... ON CONFLICT DO NOTHING, for race-free image de-duplication.
_INSERTS: dict[str, Callable[..., Any]] = {"sqlite": sqlite_insert, "postgresql": pg_insert}


def _is_locked_message(message: str) -> bool:
    text = message.lower()
    return "locked" in text or "busy" in text


def _is_locked(exc: OperationalError) -> bool:
    return _is_locked_message(str(exc.orig))


class TrajectoryStore:
    """Runs, steps and images in any SQLAlchemy database (SQLite file by default)."""

    def __init__(self, url: str, *, init_empty: bool = True, store_pixels: bool = True, retries: int = 5):
        self.url = url
        self.engine = make_engine(url)
        migrate.ensure_current(self.engine, init_empty=init_empty)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(
            self.engine.execution_options(sqlite_begin="IMMEDIATE"), expire_on_commit=False
        )
        self.store_pixels = store_pixels
        self.retries = retries

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s:
            yield s

    def _write(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in one transaction, retrying when another writer holds the SQLite lock."""
        for attempt in range(self.retries + 1):
            try:
                with self._write_sessions.begin() as s:
                    return fn(s)
            except OperationalError as exc:
                if not _is_locked(exc) or attempt == self.retries:
                    raise
                delay = 0.05 * 2**attempt
                log.warning("database busy, retrying in %.2fs (%s)", delay, exc.orig)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def save_run(
        self,
        run: RunIn,
        steps: Sequence[Mapping[str, Any]],
        images: Sequence[ImageIn],
        rewards: Sequence[RewardIn] = (),
    ) -> str:
        """Persist a run, its steps, their rewards and any new images in one transaction."""

        def write(s: Session) -> str:
            self._insert_run(s, run, images)
            self._add_steps(s, run.id, steps)
            self._add_rewards(s, run.id, rewards)
            return run.id

        return self._write(write)

    # --- runs recorded while they run (app.runtime): begin, steps as they finish, finish --------

    def begin_run(self, run: RunIn, images: Sequence[ImageIn], *, owner: str, lease_s: float) -> None:
        """Record a run as it starts: ``running``, held by ``owner`` for ``lease_s`` seconds (renewed
        by :meth:`renew_runs`), with its images; :meth:`finish_run` completes it."""

        def write(s: Session) -> None:
            until = self._now(s) + timedelta(seconds=lease_s)
            self._insert_run(s, run, images, status="running", owner=owner, lease_until=until, finished=False)

        self._write(write)

    def add_step(self, run_id: str, seq: int, step: Mapping[str, Any]) -> None:
        """Store the ``seq``-th step of a running run as soon as it finished."""
        self._write(lambda s: self._add_steps(s, run_id, [step], start=seq))

    def finish_run(
        self, run: RunIn, steps: Sequence[Mapping[str, Any]], rewards: Sequence[RewardIn] = ()
    ) -> None:
        """Complete a run :meth:`begin_run` recorded: its final columns, the steps not stored yet
        and the rewards, in one transaction. Also when it was marked ``interrupted`` meanwhile (its
        lease lapsed while it still ran): it did finish. A run never begun is an error."""

        def write(s: Session) -> None:
            row = s.get(Run, run.id, with_for_update=True)
            if row is None:
                raise LookupError(f"run {run.id} was never begun (begin_run records it first)")
            if row.status != "running":
                log.warning("run %s was marked %s but finished after all", run.id, row.status)
            for c in Run.__table__.columns:
                if c.key not in ("id", "created_at", "owner"):
                    setattr(row, c.key, getattr(run, c.key))
            row.finished_at, row.lease_until = run.finished_at or datetime.now(UTC), None
            stored = set(s.scalars(select(Step.seq).where(Step.run_id == run.id)))
            for i, st in enumerate(steps):
                if i not in stored:
                    self._add_steps(s, run.id, [st], start=i)
            self._add_rewards(s, run.id, rewards)

        self._write(write)

    def renew_runs(self, owner: str, run_ids: Collection[str], lease_s: float) -> int:
        """Extend the lease of the runs ``run_ids`` that ``owner`` is running; returns how many.
        Only the runs named: one its process has given up on (finish_run failed) must lapse."""
        if not run_ids:
            return 0

        def write(s: Session) -> int:
            until = self._now(s) + timedelta(seconds=lease_s)
            stmt = update(Run).where(Run.owner == owner, Run.status == "running", Run.id.in_(list(run_ids)))
            return s.execute(stmt.values(lease_until=until)).rowcount

        return self._write(write)

    def mark_interrupted(
        self, *, gone: Callable[[str | None], bool] = owner_gone, run_ids: Sequence[str] | None = None
    ) -> list[str]:
        """Mark ``interrupted`` the running runs whose process is gone: its lease lapsed, or
        ``gone(owner)`` (default: a process on this host that no longer exists); or exactly
        ``run_ids`` when given (their process is stopping them). Returns the runs marked; their
        steps so far, images and thread stay (reopenable, the LangGraph thread is theirs)."""

        def write(s: Session) -> list[str]:
            now = self._now(s)
            running = select(Run.id, Run.owner, (Run.lease_until < now).label("lapsed")).where(
                Run.status == "running"
            )
            if run_ids is not None:
                running = running.where(Run.id.in_(list(run_ids)))
            marked = []
            for r in s.execute(running).all():
                dead = run_ids is not None or gone(r.owner)
                if not dead and not r.lapsed:
                    continue
                # Only while it is still running, and (a lapsed lease) not renewed since it was read.
                still = [Run.id == r.id, Run.status == "running"]
                if not dead:
                    still.append(Run.lease_until < now)
                why = "was stopped" if run_ids is not None else "stopped before it finished"
                stmt = (
                    update(Run)
                    .where(*still)
                    .values(
                        status="interrupted",
                        finished_at=now,
                        lease_until=None,
                        error=f"the process running it ({r.owner}) {why}",
                    )
                )
                if s.execute(stmt).rowcount:
                    marked.append(r.id)
            return marked

        if run_ids is None:  # the periodic sweep: a write transaction only when a run is running
            with self.session() as s:
                if s.scalar(select(Run.id).where(Run.status == "running").limit(1)) is None:
                    return []
        marked = self._write(write)
        if marked:
            log.warning("marked %d run(s) interrupted: %s", len(marked), ", ".join(marked))
        return marked

    def _insert_run(
        self,
        s: Session,
        run: RunIn,
        images: Sequence[ImageIn],
        *,
        finished: bool = True,
        **values: Any,
    ) -> None:
        self._add_images(s, images)
        row = Run(**{c.key: getattr(run, c.key) for c in Run.__table__.columns} | values)
        row.created_at = run.created_at or datetime.now(UTC)
        row.finished_at = (run.finished_at or datetime.now(UTC)) if finished else None
        row.images = [RunImage(position=i, sha256=sha) for i, sha in enumerate(run.image_shas)]
        s.add(row)
        s.flush()

    @staticmethod
    def _add_steps(s: Session, run_id: str, steps: Sequence[Mapping[str, Any]], start: int = 0) -> None:
        s.add_all(
            Step(
                run_id=run_id,
                seq=start + i,
                started_at=datetime.fromtimestamp(st.get("started_at") or time.time(), UTC),
                **{k: st.get(k) for k in _STEP_FIELDS},
            )
            for i, st in enumerate(steps)
        )
        s.flush()

    @staticmethod
    def _add_rewards(s: Session, run_id: str, rewards: Sequence[RewardIn]) -> None:
        if not rewards:
            return
        step_ids = {
            seq: id_ for seq, id_ in s.execute(select(Step.seq, Step.id).where(Step.run_id == run_id))
        }
        s.add_all(
            Reward(
                run_id=run_id,
                step_id=step_ids[r.step] if r.step is not None else None,
                role=r.role,
                kind=r.kind,
                value=r.value,
                source=r.source,
            )
            for r in rewards
        )

    def _add_images(self, s: Session, images: Sequence[ImageIn]) -> None:
        """Insert the images not stored yet; another writer may be inserting the same one right now."""
        rows = [
            {
                "sha256": img.sha256,
                "mime": img.mime,
                "width": img.width,
                "height": img.height,
                "size_bytes": len(img.data),
                "data": img.data if self.store_pixels else None,
                "created_at": datetime.now(UTC),
            }
            for img in {i.sha256: i for i in images}.values()
        ]
        if not rows:
            return
        insert = _INSERTS.get(s.get_bind().dialect.name)
        if insert is not None:
            s.execute(insert(ImageBlob).values(rows).on_conflict_do_nothing(index_elements=["sha256"]))
            return
        shas = [r["sha256"] for r in rows]
        known = set(s.scalars(select(ImageBlob.sha256).where(ImageBlob.sha256.in_(shas))))
        s.add_all(ImageBlob(**r) for r in rows if r["sha256"] not in known)
        s.flush()

    def get_run(self, run_id: str) -> Run | None:
        """The run with its steps and image refs loaded (detached, safe to read after return)."""
        with self._sessions() as s:
            stmt = (
                select(Run).where(Run.id == run_id).options(selectinload(Run.steps), selectinload(Run.images))
            )
            return s.scalars(stmt).one_or_none()

    def list_runs(
        self,
        *,
        limit: int | None = 50,
        status: str | None = None,
        source: str | None = None,
        eval_id: str | None = None,
        thread_id: str | None = None,
    ) -> list[Run]:
        """Newest runs first; ``thread_id`` keeps one case's."""
        stmt = select(Run).order_by(Run.created_at.desc()).limit(limit)
        if thread_id:
            stmt = stmt.where(Run.thread_id == thread_id)
        if status:
            stmt = stmt.where(Run.status == status)
        if source:
            stmt = stmt.where(Run.source == source)
        if eval_id:
            stmt = stmt.where(Run.eval_id == eval_id)
        with self._sessions() as s:
            return list(s.scalars(stmt))

    def image_bytes(self, sha256: str) -> bytes | None:
        """The stored bytes of an image, or None when unknown or stored as a hash only."""
        with self._sessions() as s:
            return s.scalar(select(ImageBlob.data).where(ImageBlob.sha256 == sha256))

    def add_feedback(
        self, run_id: str, *, correct: bool, answer: str | None = None, note: str | None = None
    ) -> int:
        """Append a clinician's verdict on a run's final answer as a reward row; returns its id.

        Earlier verdicts are kept: a trainer sees every opinion and when it was given.
        """

        def write(s: Session) -> int:
            run = s.get(Run, run_id)
            if run is None:
                raise KeyError(f"no run {run_id!r}")
            attending = s.scalar(select(Step.id).where(Step.run_id == run_id, Step.role == "attending"))
            row = Reward(
                run_id=run_id,
                step_id=attending,
                role="attending",
                kind="clinician",
                value=1.0 if correct else 0.0,
                source="clinician",
                answer=answer,
                note=note,
            )
            s.add(row)
            s.flush()
            return row.id

        return self._write(write)

    def latest_verdicts(self, run_ids: Iterable[str]) -> dict[str, Reward]:
        """The clinician verdict that counts per run: its latest (a changed verdict wins, history kept)."""
        ids = list(run_ids)
        if not ids:
            return {}
        with self._sessions() as s:
            rows = s.scalars(select(Reward).where(Reward.id.in_(latest_verdict_ids(ids))))
            return {r.run_id: r for r in rows}

    def clinician_answers(self) -> dict[str, str]:
        """Run id -> the right answer by the latest clinician verdict on it (latest verdict wins):
        the answer it gives, else the run's own answer when it said right. A latest verdict of
        "wrong" without an answer labels nothing."""
        stmt = (
            select(Reward.run_id, Reward.value, Reward.answer, Run.answer.label("run_answer"))
            .join(Run, Run.id == Reward.run_id)
            .where(Reward.id.in_(latest_verdict_ids()))
        )
        with self._sessions() as s:
            rows = s.execute(stmt).all()
        answers = {r.run_id: r.answer or (r.run_answer if r.value >= 1.0 else None) for r in rows}
        return {run: answer for run, answer in answers.items() if answer}

    def rewards(self, run_id: str) -> list[Reward]:
        """A run's reward rows, oldest first."""
        with self._sessions() as s:
            return list(s.scalars(select(Reward).where(Reward.run_id == run_id).order_by(Reward.id)))

    def specialist_correctness(self, run_id: str) -> list[tuple[int, str | None, bool]]:
        """Per specialist step of a run scored against a gold answer: (step id, specialty, right?)."""
        with self._sessions() as s:
            rows = s.execute(specialist_correctness_query(run_id))
            return [(r.step_id, r.specialty, bool(r.correct)) for r in rows]

    def difficulties(
        self, run_ids: Iterable[str] | None = None, *, levels: Iterable[Level] | None = None
    ) -> dict[str, RunDifficulty]:
        """Curriculum difficulty (data.difficulty) of every run with scored specialists, or of
        ``run_ids`` only; ``levels`` keeps only runs at those levels (e.g. ``["hard"]``)."""

        def query(ids: Sequence[str] | None) -> Select:
            scores = run_scores(ids)
            stmt = select(scores.c.run_id, scores.c.n_scored, scores.c.n_right)
            return stmt if levels is None else stmt.where(level_of(scores).in_(list(levels)))

        if run_ids is None:
            queries = [query(None)]
        else:  # in slices: SQLite caps the number of bound parameters
            ids = list(run_ids)
            queries = [query(ids[i : i + 5000]) for i in range(0, len(ids), 5000)]
        with self._sessions() as s:
            rows = [r for q in queries for r in s.execute(q)]
        return {r.run_id: RunDifficulty(r.run_id, r.n_scored, r.n_right) for r in rows}

    def register_policy(
        self,
        role: str,
        base_model: str,
        weights_hash: str,
        *,
        adapter_path: str | None = None,
        parent_id: int | None = None,
        training_run: Mapping[str, Any] | None = None,
    ) -> PolicyVersion:
        """Record a new policy version for ``role`` (always a new row: a trained adapter)."""

        def write(s: Session) -> PolicyVersion:
            row = PolicyVersion(
                role=role,
                base_model=base_model,
                adapter_path=adapter_path,
                weights_hash=weights_hash,
                parent_id=parent_id,
                training_run=dict(training_run or {}),
            )
            s.add(row)
            s.flush()
            return row

        return self._write(write)

    def policy_for(
        self, role: str, base_model: str, weights_hash: str, adapter_path: str | None = None
    ) -> PolicyVersion:
        """The version row for these exact weights, registered on first use."""
        with self._sessions() as s:
            found = s.scalars(
                select(PolicyVersion)
                .where(
                    PolicyVersion.role == role,
                    PolicyVersion.base_model == base_model,
                    PolicyVersion.weights_hash == weights_hash,
                )
                .order_by(PolicyVersion.id)
            ).first()
        return found or self.register_policy(role, base_model, weights_hash, adapter_path=adapter_path)

    def get_policy(self, policy_id: int) -> PolicyVersion | None:
        with self._sessions() as s:
            return s.get(PolicyVersion, policy_id)

    def latest_policy(self, role: str) -> PolicyVersion | None:
        """The newest version registered for ``role``."""
        with self._sessions() as s:
            stmt = select(PolicyVersion).where(PolicyVersion.role == role).order_by(PolicyVersion.id.desc())
            return s.scalars(stmt).first()

    def list_policies(self, role: str | None = None) -> list[PolicyVersion]:
        stmt = select(PolicyVersion).order_by(PolicyVersion.id)
        if role:
            stmt = stmt.where(PolicyVersion.role == role)
        with self._sessions() as s:
            return list(s.scalars(stmt))

    # --- evaluation claims: several processes share one eval's cases (app.evaluation.claims) ----

    def _now(self, s: Session) -> datetime:
        """The time leases are measured by: the PostgreSQL server's clock (so hosts' clocks need
        not agree); SQLite, one host, this machine's."""
        if s.get_bind().dialect.name == "postgresql":
            return s.scalar(select(func.now()))
        return datetime.now(UTC)

    def open_eval_cases(self, eval_id: str, case_ids: Sequence[str]) -> set[str]:
        """Register the cases of ``eval_id`` in order (a case registered before keeps its row) and
        reopen those done without a successful run (failed or skipped: retried, as a resumed eval
        does); returns the cases that already have a successful run."""
        ok_runs = select(Run.case_id).where(
            Run.eval_id == eval_id, Run.status == "ok", Run.case_id.is_not(None)
        )

        def write(s: Session) -> set[str]:
            finished = {c for c in s.scalars(ok_runs.distinct()) if c is not None}
            rows = [
                {"eval_id": eval_id, "case_id": c, "position": i, "done": c in finished, "attempts": 0}
                for i, c in enumerate(case_ids)
            ]
            insert = _INSERTS[s.get_bind().dialect.name]
            for i in range(0, len(rows), 500):  # SQLite caps the number of bound parameters
                s.execute(insert(EvalClaim).values(rows[i : i + 500]).on_conflict_do_nothing())
            s.execute(
                update(EvalClaim)
                .where(EvalClaim.eval_id == eval_id, EvalClaim.done, EvalClaim.case_id.not_in(ok_runs))
                .values(done=False, owner=None, lease_until=None, note=None)
            )
            return finished

        return self._write(write)

    def claim_eval_cases(
        self, eval_id: str, owner: str, *, n: int, lease_s: float, below: int
    ) -> list[tuple[str, int]]:
        """Claim up to ``n`` open cases of ``eval_id`` (position < ``below``, in order) whose lease is
        free or has lapsed, for ``lease_s`` seconds; returns their (case id, position).

        PostgreSQL: rows another process is claiming right now are skipped (``FOR UPDATE SKIP
        LOCKED``), so processes never wait on each other; SQLite: the write transaction holds the
        file (one process at a time). A case that already has a successful run (its process died
        between storing it and marking it done) is marked done, not claimed.
        """

        def write(s: Session) -> list[tuple[str, int]]:
            now = self._now(s)
            free = (EvalClaim.lease_until.is_(None)) | (EvalClaim.lease_until < now)
            rows = s.execute(
                select(EvalClaim.case_id, EvalClaim.position)
                .where(EvalClaim.eval_id == eval_id, ~EvalClaim.done, EvalClaim.position < below, free)
                .order_by(EvalClaim.position)
                .limit(n)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return []
            ids = [r.case_id for r in rows]
            ran = set(
                s.scalars(
                    select(Run.case_id).where(
                        Run.eval_id == eval_id, Run.status == "ok", Run.case_id.in_(ids)
                    )
                )
            )
            mine = EvalClaim.eval_id == eval_id
            if ran:
                s.execute(
                    update(EvalClaim)
                    .where(mine, EvalClaim.case_id.in_(ran))
                    .values(done=True, lease_until=None)
                )
            claimed = [(r.case_id, r.position) for r in rows if r.case_id not in ran]
            if claimed:
                s.execute(
                    update(EvalClaim)
                    .where(mine, EvalClaim.case_id.in_([c for c, _ in claimed]))
                    .values(
                        owner=owner,
                        lease_until=now + timedelta(seconds=lease_s),
                        attempts=EvalClaim.attempts + 1,
                    )
                )
            return claimed

        return self._write(write)

    def renew_eval_claims(self, owner: str, lease_s: float) -> int:
        """Extend the lease of every case ``owner`` holds and has not finished; returns how many."""

        def write(s: Session) -> int:
            until = self._now(s) + timedelta(seconds=lease_s)
            stmt = update(EvalClaim).where(
                EvalClaim.owner == owner, ~EvalClaim.done, EvalClaim.lease_until.is_not(None)
            )
            return s.execute(stmt.values(lease_until=until)).rowcount

        return self._write(write)

    def finish_eval_case(self, eval_id: str, case_id: str, owner: str, *, note: str | None = None) -> bool:
        """Mark a case done (its run is stored, or it was skipped: ``note`` says why); False when
        ``owner`` no longer held it (its lease had lapsed and another process claimed it)."""

        def write(s: Session) -> bool:
            row = s.get(EvalClaim, (eval_id, case_id), with_for_update=True)
            if row is None:
                return False
            held = row.owner == owner
            row.done, row.lease_until, row.note = True, None, note
            return held

        return self._write(write)

    def release_eval_claims(self, owner: str) -> int:
        """Give back the unfinished cases ``owner`` holds, for other processes to claim at once."""

        def write(s: Session) -> int:
            stmt = update(EvalClaim).where(EvalClaim.owner == owner, ~EvalClaim.done)
            return s.execute(stmt.values(owner=None, lease_until=None)).rowcount

        return self._write(write)

    def open_eval_case_count(self, eval_id: str, *, below: int) -> int:
        """How many cases of ``eval_id`` (position < ``below``) are not done yet (claimed or not)."""
        stmt = select(func.count()).where(
            EvalClaim.eval_id == eval_id, ~EvalClaim.done, EvalClaim.position < below
        )
        with self._sessions() as s:
            return s.scalar(stmt) or 0

    def eval_claims(self, eval_id: str, *, below: int | None = None) -> list[EvalClaim]:
        """The claim rows of an eval in case order (those at position < ``below``)."""
        stmt = select(EvalClaim).where(EvalClaim.eval_id == eval_id).order_by(EvalClaim.position)
        if below is not None:
            stmt = stmt.where(EvalClaim.position < below)
        with self._sessions() as s:
            return list(s.scalars(stmt))


def latest_verdict_ids(run_ids: Sequence[str] | None = None) -> Select:
    """Ids of the latest clinician verdict of each run (among ``run_ids``, else of every run); the one
    definition of "latest verdict wins" (reward ids grow with time)."""
    stmt = select(func.max(Reward.id)).where(Reward.kind == "clinician", Reward.source == "clinician")
    if run_ids is not None:
        stmt = stmt.where(Reward.run_id.in_(run_ids))
    return stmt.group_by(Reward.run_id)


def run_to_dict(run: Run) -> dict[str, Any]:
    """A run with its steps as plain JSON-ready data."""
    return {
        "run_id": run.id,
        **row_to_dict(run, skip=("id",)),
        "images": [ri.sha256 for ri in run.images],
        "steps": [row_to_dict(st, skip=("id", "run_id")) for st in run.steps],
    }


def row_to_dict(row: Base, *, skip: Container[str] = ()) -> dict[str, Any]:
    """A row's columns as plain JSON-ready data (datetimes in ISO 8601), but those in ``skip``."""
    values = {c.key: getattr(row, c.key) for c in row.__table__.columns if c.key not in skip}
    return {c: v.isoformat() if isinstance(v, datetime) else v for c, v in values.items()}
