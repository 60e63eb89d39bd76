"""maintenance runs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 01:33:27.402411
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import rekindle.cloud.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "maintenance_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("storage_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("trigger", sa.String(length=20), nullable=False),
        sa.Column("created", rekindle.cloud.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started", rekindle.cloud.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished", rekindle.cloud.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("heartbeat", rekindle.cloud.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("removed", sa.Integer(), nullable=False),
        sa.Column("bytes_freed", sa.BigInteger(), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
        ),
        sa.ForeignKeyConstraint(
            ["storage_id"],
            ["storages.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("maintenance_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_maintenance_runs_org_id"), ["org_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_maintenance_runs_state"), ["state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("maintenance_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_maintenance_runs_state"))
        batch_op.drop_index(batch_op.f("ix_maintenance_runs_org_id"))

    op.drop_table("maintenance_runs")
