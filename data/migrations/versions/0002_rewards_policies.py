"""Rewards, policy versions, steps.policy_version_id, runs.eval_id.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "policy_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("role", sa.String(32), nullable=False, index=True),
        sa.Column("base_model", sa.String(512), nullable=False),
        sa.Column("adapter_path", sa.String(1024), nullable=True),
        sa.Column("weights_hash", sa.String(64), nullable=False, index=True),
        sa.Column("parent_id", sa.Integer, sa.ForeignKey("policy_versions.id"), nullable=True),
        sa.Column("training_run", sa.JSON, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_table(
        "rewards",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("step_id", sa.Integer, sa.ForeignKey("steps.id", ondelete="CASCADE"), nullable=True),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("answer", sa.Text, nullable=True),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("created_at", TZ, nullable=False),
    )
    for col in ("run_id", "step_id", "role", "kind"):
        op.create_index(f"ix_rewards_{col}", "rewards", [col])
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("policy_version_id", sa.Integer, nullable=True))
        batch.create_foreign_key("fk_steps_policy_version", "policy_versions", ["policy_version_id"], ["id"])
        batch.create_index("ix_steps_policy_version_id", ["policy_version_id"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("eval_id", sa.String(64), nullable=True))
        batch.create_index("ix_runs_eval_id", ["eval_id"])


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_eval_id")
        batch.drop_column("eval_id")
    with op.batch_alter_table("steps") as batch:
        batch.drop_index("ix_steps_policy_version_id")
        batch.drop_constraint("fk_steps_policy_version", type_="foreignkey")
        batch.drop_column("policy_version_id")
    op.drop_table("rewards")
    op.drop_table("policy_versions")
