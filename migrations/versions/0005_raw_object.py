"""raw_object: the version of every raw copy and manifest, as written and locked; the inbox
version the stager deleted

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "raw_object",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("submission_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("key", sa.String(length=1200), nullable=False),
        sa.Column("version_id", sa.String(length=200), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("retention_mode", sa.String(length=20), nullable=False),
        sa.Column("retain_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("legal_hold", sa.Boolean(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["submission_id"], ["submission.submission_id"], name=op.f("fk_raw_object_submission_id_submission")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_raw_object")),
        sa.UniqueConstraint("key", name=op.f("uq_raw_object_key")),
    )
    with op.batch_alter_table("raw_object", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_raw_object_submission_id"), ["submission_id"], unique=False)
    with op.batch_alter_table("inbox_object", schema=None) as batch_op:
        batch_op.add_column(sa.Column("removed_version_id", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("inbox_object", schema=None) as batch_op:
        batch_op.drop_column("removed_version_id")
    with op.batch_alter_table("raw_object", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_raw_object_submission_id"))
    op.drop_table("raw_object")
