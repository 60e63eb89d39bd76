"""events acknowledged as alerts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 01:19:16.630330
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import rekindle.cloud.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_FK = "fk_events_acknowledged_by_admins"


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "acknowledged",
                rekindle.cloud.models.UTCDateTime(timezone=True),
                nullable=True,
            )
        )
        batch_op.add_column(sa.Column("acknowledged_by", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(_FK, "admins", ["acknowledged_by"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_constraint(_FK, type_="foreignkey")
        batch_op.drop_column("acknowledged_by")
        batch_op.drop_column("acknowledged")
