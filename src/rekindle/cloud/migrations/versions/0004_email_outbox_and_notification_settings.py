"""email outbox and notification settings

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 01:54:48.953978
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import rekindle.cloud.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbound_emails",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("recipients", sa.JSON(), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created", rekindle.cloud.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_try", rekindle.cloud.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sent", rekindle.cloud.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("outbound_emails", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_outbound_emails_org_id"), ["org_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_outbound_emails_state"), ["state"], unique=False)

    with op.batch_alter_table("organizations", schema=None) as batch_op:
        # existing organizations: no recipients set (their admins), a day before an alert
        batch_op.add_column(
            sa.Column("notify_emails", sa.JSON(), nullable=False, server_default="[]")
        )
        batch_op.add_column(
            sa.Column("offline_after_hours", sa.Integer(), nullable=False, server_default="24")
        )


def downgrade() -> None:
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_column("offline_after_hours")
        batch_op.drop_column("notify_emails")

    with op.batch_alter_table("outbound_emails", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbound_emails_state"))
        batch_op.drop_index(batch_op.f("ix_outbound_emails_org_id"))

    op.drop_table("outbound_emails")
