"""Migration 0006 on data: intake rows from before it keep working (SQLite, or PostgreSQL with
OMS_TEST_DATABASE_URL).

Orders received before intake authenticated its callers keep their ids; their dead letters and
stock reservations are linked to them by ``order_id`` now, so discarding such a letter still
releases what its order held; credit accounts move to the default tenant under the new key.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import Engine

from activities.db import create_db_engine
from activities.intake_store import CreditAccountSeed, DeadLetterStatus, IntakeStore, OrderStatus
from models.orders import order_id_for
from workers.migrate import alembic_config, upgrade

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
LEGACY_ORDER_ID = order_id_for("web", "beans-1")  # the id before scopes: kept


@pytest.fixture
def at_0005(db_url: str) -> Iterator[Engine]:
    """A database migrated to 0005 holding a pending order's reservations and its dead letter."""
    command.upgrade(alembic_config(db_url), "0005")
    engine = create_db_engine(db_url)
    rows = {
        "credit_accounts": {
            "account_id": "acme",
            "name": "Acme",
            "currency": "USD",
            "credit_limit_minor": 100_000,
            "outstanding_minor": 0,
            "reserved_minor": 3000,
            "good_standing": True,
            "trusted_partner": True,
            "enterprise": False,
            "paid_invoices": 10,
            "late_payments": 0,
            "updated_at": NOW,
        },
        "intake_orders": {
            "order_id": LEGACY_ORDER_ID,
            "channel": "web",
            "channel_order_id": "beans-1",
            "status": "dead_lettered",
            "customer_id": "cust_1",
            "account_id": "acme",
            "plan_id": "coffee-beans",
            "interval": "weekly",
            "currency": "USD",
            "quantity": 1,
            "rule_set": "relaxed",
            "term_value_minor": 0,
            "credit_reserved_minor": 3000,
            "attempts": 1,
            "result": "{}",
            "created_at": NOW,
            "updated_at": NOW,
        },
        "inventory_reservations": {
            "sku": "BEANS-1KG",
            "order_key": "web:beans-1",
            "quantity": 3,
            "created_at": NOW,
        },
        "dead_letters": {
            "channel": "web",
            "order_key": "web:beans-1",
            "open_key": "web:beans-1",
            "content_type": "application/json",
            "payload": "{}",
            "headers": "{}",
            "reason": "Temporal was down",
            "error_code": "TEMPORAL_UNAVAILABLE",
            "attempts": 4,
            "priority": 100,
            "status": "open",
            "received_at": NOW,
            "created_at": NOW,
            "updated_at": NOW,
        },
    }
    meta = sa.MetaData()
    with engine.begin() as conn:
        for table, values in rows.items():
            conn.execute(sa.Table(table, meta, autoload_with=conn).insert().values(**values))
    yield engine
    engine.dispose()


def test_rows_from_before_0006_are_linked_by_order_id_and_released_on_discard(
    db_url: str, at_0005: Engine
) -> None:
    upgrade(db_url)
    store = IntakeStore(at_0005)
    [letter] = store.list_dead_letters()
    assert (letter.order_id, letter.open_key, letter.principal_id) == (
        LEGACY_ORDER_ID,
        LEGACY_ORDER_ID,
        None,
    )
    order = store.order_by_id(LEGACY_ORDER_ID)
    assert order is not None and order.principal_id is None and order.tenant_id == "default"
    assert store.stock("BEANS-1KG")[1] == 3
    acme = store.credit_account("acme")
    assert acme is not None and acme.reserved_minor == 3000

    assert letter.id is not None
    store.resolve_dead_letter(letter.id, DeadLetterStatus.DISCARDED, {"reason": "test"})
    assert store.stock("BEANS-1KG")[1] == 0
    acme = store.credit_account("acme")
    assert acme is not None and acme.reserved_minor == 0
    discarded = store.order_by_id(LEGACY_ORDER_ID)
    assert discarded is not None and discarded.status == OrderStatus.DISCARDED

    # Another tenant may now have an account of the same id.
    store.upsert_credit_account(CreditAccountSeed(account_id="acme", tenant_id="t2"))
    t2 = store.credit_account("acme", "t2")
    assert t2 is not None and t2.credit_limit_minor == 0


def test_downgrade_to_0005_restores_the_keys(db_url: str, at_0005: Engine) -> None:
    upgrade(db_url)
    command.downgrade(alembic_config(db_url), "0005")
    with at_0005.connect() as conn:
        key = conn.execute(sa.text("SELECT order_key FROM inventory_reservations")).scalar_one()
        open_key = conn.execute(sa.text("SELECT open_key FROM dead_letters")).scalar_one()
    assert (key, open_key) == ("web:beans-1", "web:beans-1")
    pk = sa.inspect(at_0005).get_pk_constraint("credit_accounts")["constrained_columns"]
    assert pk == ["account_id"]
