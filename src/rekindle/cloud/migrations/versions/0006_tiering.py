"""tiering: warm and cold bytes per organization and storage, and per server

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import rekindle.cloud.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "storage_tiers",
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("storage_id", sa.Integer(), nullable=False),
        sa.Column("warm_bytes", sa.BigInteger(), nullable=False),
        sa.Column("cold_bytes", sa.BigInteger(), nullable=False),
        sa.Column("cold_packs", sa.Integer(), nullable=False),
        sa.Column("measured", rekindle.cloud.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"]),
        sa.ForeignKeyConstraint(["storage_id"], ["storages.id"]),
        sa.PrimaryKeyConstraint("org_id", "storage_id"),
    )
    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("warm_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("cold_bytes", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("maintenance_runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("bytes_archived", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("maintenance_runs", schema=None) as batch_op:
        batch_op.drop_column("bytes_archived")
    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.drop_column("cold_bytes")
        batch_op.drop_column("warm_bytes")
    op.drop_table("storage_tiers")
