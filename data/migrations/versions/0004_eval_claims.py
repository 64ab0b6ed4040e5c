"""Evaluation claims: which process runs which case of an eval (evaluations split over processes).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eval_claims",
        sa.Column("eval_id", sa.String(64), primary_key=True),
        sa.Column("case_id", sa.String(128), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("done", sa.Boolean, nullable=False),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("note", sa.Text, nullable=True),
    )
    op.create_index("ix_eval_claims_owner", "eval_claims", ["owner"])
    op.create_index("ix_eval_claims_eval_id_done_position", "eval_claims", ["eval_id", "done", "position"])


def downgrade() -> None:
    op.drop_index("ix_eval_claims_eval_id_done_position", table_name="eval_claims")
    op.drop_index("ix_eval_claims_owner", table_name="eval_claims")
    op.drop_table("eval_claims")
