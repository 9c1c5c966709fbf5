"""duplicates and rejections: submission.content_sha256 / duplicate_of, inbox_rejection

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbox_rejection",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=1200), nullable=False),
        sa.Column("etag", sa.String(length=200), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("grouping_key", sa.String(length=1200), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbox_rejection")),
        sa.UniqueConstraint("key", "etag", name=op.f("uq_inbox_rejection_key_etag")),
    )
    with op.batch_alter_table("submission", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("duplicate_of", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_submission_content_sha256"), ["content_sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("submission", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_submission_content_sha256"))
        batch_op.drop_column("duplicate_of")
        batch_op.drop_column("content_sha256")

    op.drop_table("inbox_rejection")
