"""Initial schema: images, runs, run_images, steps.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("mime", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=True),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("thread_id", sa.String(64), nullable=False, index=True),
        sa.Column("created_at", TZ, nullable=False, index=True),
        sa.Column("finished_at", TZ, nullable=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("source", sa.String(32), nullable=False, index=True),
        sa.Column("case_id", sa.String(128), nullable=True, index=True),
        sa.Column("question", sa.Text, nullable=False),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("gold_answer", sa.Text, nullable=True),
        sa.Column("gold_specialty", sa.String(64), nullable=True),
        sa.Column("specialties", sa.JSON, nullable=False),
        sa.Column("answer", sa.Text, nullable=True),
        sa.Column("answer_status", sa.String(16), nullable=True),
        sa.Column("wall_s", sa.Float, nullable=True),
        sa.Column("meta", sa.JSON, nullable=False),
    )
    op.create_table(
        "run_images",
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("sha256", sa.String(64), sa.ForeignKey("images.sha256"), nullable=False, index=True),
    )
    op.create_table(
        "steps",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True
        ),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("node", sa.String(32), nullable=False),
        sa.Column("role", sa.String(32), nullable=False, index=True),
        sa.Column("specialty", sa.String(64), nullable=True),
        sa.Column("messages", sa.JSON, nullable=False),
        sa.Column("image_refs", sa.JSON, nullable=False),
        sa.Column("completion", sa.Text, nullable=False),
        sa.Column("parsed", sa.JSON, nullable=False),
        sa.Column("parse_status", sa.String(16), nullable=False),
        sa.Column("token_ids", sa.JSON, nullable=True),
        sa.Column("logprobs", sa.JSON, nullable=True),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("latency_s", sa.Float, nullable=False),
        sa.Column("model_id", sa.String(512), nullable=False),
        sa.Column("started_at", TZ, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("steps")
    op.drop_table("run_images")
    op.drop_table("runs")
    op.drop_table("images")
