"""storage usage

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 02:04:42.919399
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import rekindle.cloud.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("storages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("used_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("total_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(
            sa.Column("checked", rekindle.cloud.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("over_threshold", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("storages", schema=None) as batch_op:
        batch_op.drop_column("over_threshold")
        batch_op.drop_column("checked")
        batch_op.drop_column("total_bytes")
        batch_op.drop_column("used_bytes")
