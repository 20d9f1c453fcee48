"""tenants, principals, API keys, idempotency keys; tenant_id on every business row

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 09:00:00.000000

Hand-written to match activities/tables.py and activities/intake_tables.py exactly
(tests/activities/test_migrations.py compares the migrated schema with SQLModel.metadata).
Existing rows move to the default tenant (the column's server default).
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TENANT_TABLES = (
    "customers",
    "subscriptions",
    "invoices",
    "payments",
    "audit_log",
    "notifications",
    "credit_ledger",
    "refunds",
    "approval_requests",
    "intake_orders",
    "dead_letters",
    "credit_accounts",
)


def _str(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    for table in TENANT_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("tenant_id", _str(64), server_default="default", nullable=False)
            )
            batch_op.create_index(f"ix_{table}_tenant_id", ["tenant_id"], unique=False)

    op.create_table(
        "tenants",
        sa.Column("id", _str(64), nullable=False),
        sa.Column("name", _str(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute(
        "INSERT INTO tenants (id, name, created_at) VALUES ('default', 'Default tenant', "
        "CURRENT_TIMESTAMP)"
    )
    op.create_table(
        "principals",
        sa.Column("id", _str(64), nullable=False),
        sa.Column("tenant_id", _str(64), nullable=False),
        sa.Column("role", _str(16), nullable=False),
        sa.Column("name", _str(200), nullable=True),
        sa.Column("customer_id", _str(64), nullable=True),
        sa.Column("groups", sa.Text(), nullable=False),
        sa.Column("partner_id", _str(64), nullable=True),
        sa.Column("accounts", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("principals", schema=None) as batch_op:
        batch_op.create_index("ix_principals_tenant_id", ["tenant_id"], unique=False)
        batch_op.create_index("ix_principals_customer_id", ["customer_id"], unique=False)
    op.create_table(
        "api_keys",
        sa.Column("id", _str(32), nullable=False),
        sa.Column("principal_id", _str(64), nullable=False),
        sa.Column("secret_hash", _str(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index("ix_api_keys_principal_id", ["principal_id"], unique=False)
    op.create_table(
        "idempotency_keys",
        sa.Column("scoped_key", _str(64), nullable=False),
        sa.Column("principal_id", _str(64), nullable=False),
        sa.Column("tenant_id", _str(64), nullable=False),
        sa.Column("operation", _str(64), nullable=False),
        sa.Column("fingerprint", _str(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scoped_key"),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("api_keys")
    op.drop_table("principals")
    op.drop_table("tenants")
    for table in reversed(TENANT_TABLES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f"ix_{table}_tenant_id")
            batch_op.drop_column("tenant_id")
