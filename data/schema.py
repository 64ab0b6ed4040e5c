"""SQLAlchemy models of the trajectory store. Changes go through an Alembic migration."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# The roles a step is made by, in graph order; the trainable ones are retrained by rl/.
ROLES = ("triage", "specialist", "attending")
TRAINABLE_ROLES = ("triage", "attending")
# A run's status: finished (ok | error), in progress (running), or left unfinished by a process that
# died or stopped renewing its lease (interrupted: its steps so far are kept).
RUN_STATUSES = ("ok", "error", "running", "interrupted")
# The statuses of finished runs: the only ones an export (app.commands.export, ui.trajectories) offers.
FINISHED_STATUSES = ("ok", "error")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: DateTime(timezone=True),
    }


class ImageBlob(Base):
    """An image, content-addressed by the sha256 of its bytes and stored once."""

    __tablename__ = "images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    mime: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)
    # NULL when the deployment stores hashes only (no pixels).
    data: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Run(Base):
    """One question about one case, through the whole graph."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    thread_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # RUN_STATUSES
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    source: Mapped[str] = mapped_column(String(32), default="cli", index=True)
    case_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    question: Mapped[str] = mapped_column(Text)
    options: Mapped[list[Any]] = mapped_column(default=list)
    gold_answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    gold_specialty: Mapped[str | None] = mapped_column(String(64), nullable=True)
    specialties: Mapped[list[Any]] = mapped_column(default=list)
    answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    answer_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    wall_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    eval_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # The graph that answered (graph.context.GraphKind); NULL for runs stored before it was recorded.
    mode: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # The process running it (data.leases, ``host:pid:nonce``; kept once finished: who ran it) and,
    # while ``running``, until when it holds the run (by the database's clock; renewed as it runs).
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    lease_until: Mapped[datetime | None] = mapped_column(nullable=True)

    images: Mapped[list[RunImage]] = relationship(
        order_by="RunImage.position", cascade="all, delete-orphan", back_populates="run"
    )
    steps: Mapped[list[Step]] = relationship(
        order_by="Step.seq", cascade="all, delete-orphan", back_populates="run"
    )
    rewards: Mapped[list[Reward]] = relationship(
        order_by="Reward.id", cascade="all, delete-orphan", back_populates="run"
    )


class RunImage(Base):
    """The images of a run, in the order the prompts refer to them."""

    __tablename__ = "run_images"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), index=True)

    run: Mapped[Run] = relationship(back_populates="images")


class Step(Base):
    """One model call inside a run: the exact prompt, the completion and what it cost."""

    __tablename__ = "steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    node: Mapped[str] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(32), index=True)
    specialty: Mapped[str | None] = mapped_column(String(64), nullable=True)
    messages: Mapped[list[Any]] = mapped_column()
    image_refs: Mapped[list[Any]] = mapped_column(default=list)
    completion: Mapped[str] = mapped_column(Text)
    parsed: Mapped[dict[str, Any]] = mapped_column(default=dict)
    parse_status: Mapped[str] = mapped_column(String(16))
    token_ids: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    logprobs: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    model_id: Mapped[str] = mapped_column(String(512))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Time from the call's start to its model call's start (queueing, batching, preprocessing);
    # the model call itself is ``latency_s``. NULL for steps stored before it was recorded.
    wait_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The batched ``generate`` that produced the completion (shared by every request in it, also
    # other runs') and its size; NULL where the backend does not batch in-process.
    batch_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    batch_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    policy_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("policy_versions.id"), nullable=True, index=True
    )

    run: Mapped[Run] = relationship(back_populates="steps")


class Reward(Base):
    """A reward for a step or a run: automatic (format/accuracy vs a gold label) or a clinician's
    verdict. Rows are only ever appended: a later verdict never overwrites an earlier one."""

    __tablename__ = "rewards"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step_id: Mapped[int | None] = mapped_column(
        ForeignKey("steps.id", ondelete="CASCADE"), nullable=True, index=True
    )
    role: Mapped[str] = mapped_column(String(32), index=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)  # format | accuracy | clinician
    value: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(32))  # gold | clinician
    answer: Mapped[str | None] = mapped_column(Text, nullable=True)  # a clinician's right answer
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    run: Mapped[Run] = relationship(back_populates="rewards")


class PolicyVersion(Base):
    """A role's serving policy: base model + optional adapter. Every step names the one that made it."""

    __tablename__ = "policy_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    role: Mapped[str] = mapped_column(String(32), index=True)
    base_model: Mapped[str] = mapped_column(String(512))
    adapter_path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    weights_hash: Mapped[str] = mapped_column(String(64), index=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("policy_versions.id"), nullable=True)
    training_run: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EvalClaim(Base):
    """One case of an evaluation and which process has it: how several processes (on any hosts) on
    one database share an eval's cases without running one twice (app.evaluation.claims).

    A process claims open cases in small batches (PostgreSQL: ``FOR UPDATE SKIP LOCKED``) for a
    lease it renews while they run; a case whose lease has lapsed (its process died) is claimed
    again by another. ``done`` once the case's run is stored (ok or error) or it was skipped
    (``note``: why); a new start of the eval reopens the cases without a successful run.
    """

    __tablename__ = "eval_claims"
    __table_args__ = (Index("ix_eval_claims_eval_id_done_position", "eval_id", "done", "position"),)

    eval_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # The case's place in the benchmark's fixed order (claimed in order; --limit N takes the first N).
    position: Mapped[int] = mapped_column(Integer)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    # host:pid:nonce of the process that claimed it last (kept once done: who ran it).
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    # By the database's clock; NULL: not claimed (or done).
    lease_until: Mapped[datetime | None] = mapped_column(nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
