"""enrollment: sign-ups, their codes, per-address limits, audit events, consents, sign-in links;
the customer's name, phone, country and own tenant id

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08 10:00:00.000000

Hand-written to match activities/tables.py and activities/enrollment_tables.py exactly
(tests/activities/test_migrations.py compares the migrated schema with SQLModel.metadata).
Existing customers get NULL for the new columns.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _str(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _tenant() -> sa.Column:
    return sa.Column("tenant_id", _str(64), server_default="default", nullable=False)


def _indexes(table: str, *columns: str) -> None:
    with op.batch_alter_table(table, schema=None) as batch_op:
        for column in columns:
            batch_op.create_index(f"ix_{table}_{column}", [column], unique=False)


def upgrade() -> None:
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", _str(200), nullable=True))
        batch_op.add_column(sa.Column("phone", _str(32), nullable=True))
        batch_op.add_column(sa.Column("country", _str(2), nullable=True))
        batch_op.add_column(sa.Column("account_tenant_id", _str(64), nullable=True))
        batch_op.create_unique_constraint("uq_customers_account_tenant_id", ["account_tenant_id"])

    op.create_table(
        "enrollments",
        sa.Column("id", _str(64), nullable=False),
        _tenant(),
        sa.Column("status", _str(32), nullable=False),
        sa.Column("email", _str(320), nullable=True),
        sa.Column("name", _str(200), nullable=True),
        sa.Column("phone", _str(32), nullable=True),
        sa.Column("country", _str(2), nullable=True),
        sa.Column("locale", _str(16), nullable=False),
        sa.Column("timezone", _str(64), nullable=False),
        sa.Column("address_key", _str(64), nullable=False),
        sa.Column("token_hash", _str(64), nullable=False),
        sa.Column("channel", _str(32), nullable=False),
        sa.Column("plan_id", _str(64), nullable=False),
        sa.Column("interval", _str(16), nullable=False),
        sa.Column("currency", _str(3), nullable=False),
        sa.Column("referral_code", _str(64), nullable=True),
        sa.Column("terms_version", _str(32), nullable=False),
        sa.Column("terms_hash", _str(64), nullable=True),
        sa.Column("privacy_version", _str(32), nullable=False),
        sa.Column("privacy_hash", _str(64), nullable=True),
        sa.Column("marketing", sa.Boolean(), nullable=False),
        _ts("started_at", nullable=False),
        _ts("verified_at"),
        _ts("enrolled_at"),
        _ts("expired_at"),
        sa.Column("customer_id", _str(64), nullable=True),
        sa.Column("account_tenant_id", _str(64), nullable=True),
        sa.Column("principal_id", _str(64), nullable=True),
        sa.Column("gateway_customer_id", _str(64), nullable=True),
        sa.Column("payment_method_id", _str(64), nullable=True),
        sa.Column("subscription_id", _str(64), nullable=True),
        _ts("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    _indexes("enrollments", "tenant_id", "status", "address_key")

    op.create_table(
        "enrollment_codes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("enrollment_id", _str(64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("digest", _str(64), nullable=False),
        _ts("sent_at", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("enrollment_id", "number"),
    )
    _indexes("enrollment_codes", "enrollment_id")

    op.create_table(
        "enrollment_addresses",
        sa.Column("address_key", _str(64), nullable=False),
        _tenant(),
        sa.Column("sends", sa.Text(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("kills", sa.Integer(), nullable=False),
        _ts("locked_until"),
        sa.Column("customer_id", _str(64), nullable=True),
        _ts("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("address_key"),
    )
    _indexes("enrollment_addresses", "tenant_id")

    op.create_table(
        "enrollment_events",
        sa.Column("id", sa.Integer(), nullable=False),
        _tenant(),
        sa.Column("event_key", _str(200), nullable=False),
        sa.Column("enrollment_id", _str(64), nullable=False),
        sa.Column("action", _str(64), nullable=False),
        sa.Column("actor", _str(200), nullable=False),
        sa.Column("channel", _str(32), nullable=False),
        sa.Column("ip", _str(64), nullable=True),
        sa.Column("user_agent", _str(300), nullable=True),
        sa.Column("details", sa.Text(), nullable=False),
        _ts("occurred_at", nullable=False),
        _ts("recorded_at", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_key"),
    )
    _indexes("enrollment_events", "tenant_id", "enrollment_id")

    op.create_table(
        "consents",
        sa.Column("id", sa.Integer(), nullable=False),
        _tenant(),
        sa.Column("consent_key", _str(200), nullable=False),
        sa.Column("enrollment_id", _str(64), nullable=False),
        sa.Column("customer_id", _str(64), nullable=True),
        sa.Column("document", _str(16), nullable=False),
        sa.Column("version", _str(32), nullable=False),
        sa.Column("document_hash", _str(64), nullable=False),
        sa.Column("granted", sa.Boolean(), nullable=False),
        sa.Column("channel", _str(32), nullable=False),
        sa.Column("ip", _str(64), nullable=True),
        sa.Column("user_agent", _str(300), nullable=True),
        _ts("given_at", nullable=False),
        _ts("withdrawn_at"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("consent_key"),
    )
    _indexes("consents", "tenant_id", "enrollment_id", "customer_id")

    op.create_table(
        "sign_in_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", _str(64), nullable=False),
        sa.Column("principal_id", _str(64), nullable=False),
        _tenant(),
        _ts("expires_at", nullable=False),
        _ts("used_at"),
        _ts("created_at", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    _indexes("sign_in_links", "tenant_id")


def downgrade() -> None:
    for table in (
        "sign_in_links",
        "consents",
        "enrollment_events",
        "enrollment_addresses",
        "enrollment_codes",
        "enrollments",
    ):
        op.drop_table(table)
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_constraint("uq_customers_account_tenant_id", type_="unique")
        for column in ("account_tenant_id", "country", "phone", "name"):
            batch_op.drop_column(column)
