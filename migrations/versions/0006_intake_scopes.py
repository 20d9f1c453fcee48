"""intake behind the security boundary: orders scoped to their principal, accounts per tenant

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 09:00:00.000000

Hand-written to match activities/intake_tables.py exactly (tests/activities/test_migrations.py
compares the migrated schema with SQLModel.metadata).

- ``intake_orders``: ``principal_id`` (who sent it; NULL for orders received before intake
  authenticated its callers) and ``fingerprint`` (a digest of its terms). The unique
  ``(channel, channel_order_id)`` goes: ``order_id``, a digest of the tenant, the principal, the
  channel and the channel's id, is the order's identity (orders from before keep their ids).
- ``dead_letters``: ``principal_id`` (a replay acts for it) and ``order_id`` (its order, filled in
  for existing letters from their ``order_key``). Open letters of an order fold by ``order_id``.
- ``inventory_reservations.order_key`` holds the order's ``order_id`` (rewritten for existing
  reservations).
- ``credit_accounts``: primary key ``(tenant_id, account_id)``: each tenant names its accounts.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Reflected SQLite constraints have no names; batch mode names them with this convention.
NAMING = {
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
}
# The key (channel:channel_order_id) of an existing order, as dead letters and reservations hold.
ORDER_KEY = "o.channel || ':' || o.channel_order_id"


def _str(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _credit_accounts(*key: str) -> sa.Table:
    """``credit_accounts`` as 0005 left it, with ``key`` as its primary key (SQLite rebuilds the
    table from this definition and copies the rows)."""
    return sa.Table(
        "credit_accounts",
        sa.MetaData(),
        sa.Column("account_id", _str(64), nullable=False),
        sa.Column("name", _str(200), nullable=False),
        sa.Column("currency", _str(3), nullable=False),
        sa.Column("credit_limit_minor", sa.BigInteger(), nullable=False),
        sa.Column("outstanding_minor", sa.BigInteger(), nullable=False),
        sa.Column("reserved_minor", sa.BigInteger(), nullable=False),
        sa.Column("good_standing", sa.Boolean(), nullable=False),
        sa.Column("trusted_partner", sa.Boolean(), nullable=False),
        sa.Column("enterprise", sa.Boolean(), nullable=False),
        sa.Column("paid_invoices", sa.Integer(), nullable=False),
        sa.Column("late_payments", sa.Integer(), nullable=False),
        sa.Column("billing_email", _str(320), nullable=True),
        sa.Column("payment_method_id", _str(64), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", _str(64), server_default="default", nullable=False),
        sa.PrimaryKeyConstraint(*key),
        sa.Index("ix_credit_accounts_tenant_id", "tenant_id"),
    )


def _credit_accounts_key(*columns: str) -> None:
    """Make ``columns`` the primary key of ``credit_accounts``."""
    if _sqlite():
        with op.batch_alter_table(
            "credit_accounts", copy_from=_credit_accounts(*columns), recreate="always"
        ):
            pass
    else:
        op.drop_constraint("credit_accounts_pkey", "credit_accounts", type_="primary")
        op.create_primary_key("credit_accounts_pkey", "credit_accounts", list(columns))


def upgrade() -> None:
    # --- intake_orders ---------------------------------------------------------------------
    if _sqlite():
        with op.batch_alter_table(
            "intake_orders", schema=None, naming_convention=NAMING, recreate="always"
        ) as batch_op:
            batch_op.drop_constraint("uq_intake_orders_channel_channel_order_id", type_="unique")
    else:
        op.drop_constraint(
            "intake_orders_channel_channel_order_id_key", "intake_orders", type_="unique"
        )
    with op.batch_alter_table("intake_orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("principal_id", _str(64), nullable=True))
        batch_op.add_column(sa.Column("fingerprint", _str(64), nullable=True))
        batch_op.create_index("ix_intake_orders_principal_id", ["principal_id"], unique=False)

    # --- dead_letters ----------------------------------------------------------------------
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("principal_id", _str(64), nullable=True))
        batch_op.add_column(sa.Column("order_id", _str(64), nullable=True))
        batch_op.create_index("ix_dead_letters_order_id", ["order_id"], unique=False)
    op.execute(
        "UPDATE dead_letters SET order_id = (SELECT o.order_id FROM intake_orders o "
        f"WHERE {ORDER_KEY} = dead_letters.order_key) WHERE order_key IS NOT NULL"
    )
    op.execute(
        "UPDATE dead_letters SET open_key = order_id "
        "WHERE open_key IS NOT NULL AND order_id IS NOT NULL"
    )

    # --- inventory_reservations ------------------------------------------------------------
    op.execute(
        "UPDATE inventory_reservations SET order_key = (SELECT o.order_id FROM intake_orders o "
        f"WHERE {ORDER_KEY} = inventory_reservations.order_key) "
        f"WHERE EXISTS (SELECT 1 FROM intake_orders o WHERE {ORDER_KEY} = "
        "inventory_reservations.order_key)"
    )

    # --- credit_accounts: (tenant_id, account_id) ------------------------------------------
    _credit_accounts_key("tenant_id", "account_id")


def downgrade() -> None:
    # Accounts of several tenants with the same id cannot go back to one key: refused by the
    # database (duplicate key) rather than silently merged.
    _credit_accounts_key("account_id")

    op.execute(
        "UPDATE inventory_reservations SET order_key = (SELECT "
        f"{ORDER_KEY} FROM intake_orders o WHERE o.order_id = inventory_reservations.order_key) "
        "WHERE EXISTS (SELECT 1 FROM intake_orders o "
        "WHERE o.order_id = inventory_reservations.order_key)"
    )
    op.execute(
        "UPDATE dead_letters SET open_key = order_key "
        "WHERE open_key IS NOT NULL AND order_id IS NOT NULL"
    )
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_index("ix_dead_letters_order_id")
        batch_op.drop_column("order_id")
        batch_op.drop_column("principal_id")

    with op.batch_alter_table("intake_orders", schema=None) as batch_op:
        batch_op.drop_index("ix_intake_orders_principal_id")
        batch_op.drop_column("fingerprint")
        batch_op.drop_column("principal_id")
        batch_op.create_unique_constraint(
            "uq_intake_orders_channel_channel_order_id"
            if _sqlite()
            else "intake_orders_channel_channel_order_id_key",
            ["channel", "channel_order_id"],
        )
