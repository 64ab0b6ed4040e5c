"""Step timing (wait_s, batch_id, batch_size) and the run's graph mode.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("wait_s", sa.Float, nullable=True))
        batch.add_column(sa.Column("batch_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("batch_size", sa.Integer, nullable=True))
        batch.create_index("ix_steps_batch_id", ["batch_id"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("mode", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("mode")
    with op.batch_alter_table("steps") as batch:
        batch.drop_index("ix_steps_batch_id")
        batch.drop_column("batch_size")
        batch.drop_column("batch_id")
        batch.drop_column("wait_s")
