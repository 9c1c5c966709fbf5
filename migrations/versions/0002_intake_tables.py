"""intake: layout_registry, submission, submission_file, inbox_object

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "layout_registry",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("layout_id", sa.String(length=200), nullable=False),
        sa.Column("submitter_id", sa.String(length=200), nullable=False),
        sa.Column("filename_pattern", sa.String(length=500), nullable=False),
        sa.Column("file_type", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_layout_registry")),
        sa.UniqueConstraint("layout_id", name=op.f("uq_layout_registry_layout_id")),
    )
    op.create_table(
        "submission",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("submission_id", sa.String(length=64), nullable=False),
        sa.Column("submitter_id", sa.String(length=200), nullable=False),
        sa.Column("file_type", sa.String(length=200), nullable=False),
        sa.Column("grouping_key", sa.String(length=1200), nullable=False),
        sa.Column("grouping_method", sa.String(length=40), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("raw_prefix", sa.String(length=1200), nullable=False),
        sa.Column("manifest_key", sa.String(length=1200), nullable=False),
        sa.Column("file_count", sa.Integer(), nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=40), nullable=False),
        sa.Column("previous_submission_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("manifest_written_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("staged_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_submission")),
        sa.UniqueConstraint("grouping_key", "content_hash", name=op.f("uq_submission_grouping_key_content_hash")),
        sa.UniqueConstraint("submission_id", name=op.f("uq_submission_submission_id")),
    )
    with op.batch_alter_table("submission", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_submission_grouping_key"), ["grouping_key"], unique=False)
        batch_op.create_index(batch_op.f("ix_submission_submitter_id"), ["submitter_id"], unique=False)

    op.create_table(
        "inbox_object",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("submission_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=1200), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("etag", sa.String(length=200), nullable=False),
        sa.Column("last_modified", sa.DateTime(timezone=True), nullable=True),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["submission_id"], ["submission.submission_id"], name=op.f("fk_inbox_object_submission_id_submission")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbox_object")),
        sa.UniqueConstraint("submission_id", "key", name=op.f("uq_inbox_object_submission_id_key")),
    )
    with op.batch_alter_table("inbox_object", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_inbox_object_submission_id"), ["submission_id"], unique=False)

    op.create_table(
        "submission_file",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("submission_id", sa.String(length=64), nullable=False),
        sa.Column("inbox_key", sa.String(length=1200), nullable=False),
        sa.Column("raw_key", sa.String(length=1200), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("etag", sa.String(length=200), nullable=False),
        sa.Column("file_type", sa.String(length=200), nullable=False),
        sa.Column("layout_id", sa.String(length=200), nullable=True),
        sa.Column("layout_version", sa.Integer(), nullable=True),
        sa.Column("classification", sa.String(length=40), nullable=False),
        sa.Column("classification_detail", sa.String(length=1000), nullable=False),
        sa.Column("staged_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["submission_id"], ["submission.submission_id"], name=op.f("fk_submission_file_submission_id_submission")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_submission_file")),
        sa.UniqueConstraint("inbox_key", "etag", name=op.f("uq_submission_file_inbox_key_etag")),
        sa.UniqueConstraint("raw_key", name=op.f("uq_submission_file_raw_key")),
    )
    with op.batch_alter_table("submission_file", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_submission_file_submission_id"), ["submission_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("submission_file", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_submission_file_submission_id"))

    op.drop_table("submission_file")
    with op.batch_alter_table("inbox_object", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbox_object_submission_id"))

    op.drop_table("inbox_object")
    with op.batch_alter_table("submission", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_submission_submitter_id"))
        batch_op.drop_index(batch_op.f("ix_submission_grouping_key"))

    op.drop_table("submission")
    op.drop_table("layout_registry")
