"""the notification outbox's delivery state, webhook endpoints and deliveries, locales, e-mails

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 10:00:00.000000

Hand-written to match activities/tables.py exactly (tests/activities/test_migrations.py compares
the migrated schema with SQLModel.metadata). Rows already in the outbox stay pending: the relay
sends what is due.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _str(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(_ts("next_attempt_at"))
        batch_op.add_column(_ts("claimed_until"))
        batch_op.add_column(_ts("sent_at"))
        batch_op.add_column(sa.Column("message_id", _str(200), nullable=True))
        batch_op.add_column(sa.Column("last_error", _str(500), nullable=True))
        batch_op.create_index("ix_notifications_status", ["status"], unique=False)
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("locale", _str(16), server_default="en", nullable=False))
    with op.batch_alter_table("principals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("email", _str(320), nullable=True))

    op.create_table(
        "webhook_endpoints",
        sa.Column("id", _str(32), nullable=False),
        sa.Column("tenant_id", _str(64), nullable=False),
        sa.Column("url", _str(2000), nullable=False),
        sa.Column("secret", _str(100), nullable=False),
        sa.Column("event_types", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        _ts("created_at", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("webhook_endpoints", schema=None) as batch_op:
        batch_op.create_index("ix_webhook_endpoints_tenant_id", ["tenant_id"], unique=False)
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", _str(64), nullable=False),
        sa.Column("endpoint_id", _str(32), nullable=False),
        sa.Column("event_id", _str(64), nullable=False),
        sa.Column("event_type", _str(32), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", _str(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("next_attempt_at"),
        _ts("claimed_until"),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", _str(500), nullable=True),
        _ts("delivered_at"),
        _ts("created_at", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("endpoint_id", "event_id"),
    )
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_webhook_deliveries_tenant_id", ["tenant_id"], unique=False)
        batch_op.create_index("ix_webhook_deliveries_endpoint_id", ["endpoint_id"], unique=False)
        batch_op.create_index("ix_webhook_deliveries_status", ["status"], unique=False)


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
    with op.batch_alter_table("principals", schema=None) as batch_op:
        batch_op.drop_column("email")
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_column("locale")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index("ix_notifications_status")
        for column in ("last_error", "message_id", "sent_at", "claimed_until", "next_attempt_at"):
            batch_op.drop_column(column)
        batch_op.drop_column("attempts")
