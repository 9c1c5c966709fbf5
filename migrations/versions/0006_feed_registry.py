"""feed_registry: the expected deliveries (feeds), synced from feed_definitions.json

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feed_registry",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("feed_id", sa.String(length=63), nullable=False),
        sa.Column("submitter_id", sa.String(length=200), nullable=False),
        sa.Column("file_type", sa.String(length=200), nullable=False),
        sa.Column("cadence", sa.String(length=200), nullable=False),
        sa.Column("grace", sa.String(length=40), nullable=False),
        sa.Column("early", sa.String(length=40), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feed_registry")),
        sa.UniqueConstraint("feed_id", name=op.f("uq_feed_registry_feed_id")),
    )


def downgrade() -> None:
    op.drop_table("feed_registry")
