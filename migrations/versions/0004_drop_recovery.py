"""drop_recovery: what the sweeper did for drops that did not converge by themselves

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "drop_recovery",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("subject", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("group_id", sa.String(length=64), nullable=False),
        sa.Column("submission_id", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("rounds", sa.Integer(), nullable=False),
        sa.Column("last_run_id", sa.String(length=64), nullable=True),
        sa.Column("last_error", sa.String(length=1000), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("converged_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drop_recovery")),
        sa.UniqueConstraint("subject", name=op.f("uq_drop_recovery_subject")),
    )
    with op.batch_alter_table("drop_recovery", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_drop_recovery_group_id"), ["group_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("drop_recovery", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_drop_recovery_group_id"))
    op.drop_table("drop_recovery")
