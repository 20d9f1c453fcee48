"""The intake store on a real database (SQLite, or PostgreSQL with OMS_TEST_DATABASE_URL).

Claims are idempotent and atomic (concurrent orders never oversell stock or a credit line), dead
letters fold repeats of the same failure, sort by priority and close once.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from activities.intake_store import (
    ClaimOutcome,
    CreditAccountSeed,
    DeadLetterDraft,
    DeadLetterStatus,
    IntakeStore,
    OrderStatus,
)
from models.calendar import Interval
from models.catalog import default_catalog
from models.intake_rules import Decision, IntakeFacts, evaluate
from models.orders import BillingMode, CanonicalOrder, Channel

CATALOG = default_catalog()
RECEIVED = datetime(2026, 11, 21, 12, tzinfo=UTC)


@pytest.fixture
def store(engine: Engine) -> IntakeStore:
    s = IntakeStore(engine)
    s.set_stock("BEANS-1KG", 12)
    s.upsert_credit_account(
        CreditAccountSeed(
            account_id="acme",
            credit_limit_minor=10_000,
            trusted_partner=True,
            paid_invoices=10,
            payment_method_id="pm_onfile1",
            billing_email="ap@acme.example",
        )
    )
    return s


def beans(n: int, quantity: int = 1) -> CanonicalOrder:
    return CanonicalOrder(
        channel=Channel.WEB,
        channel_order_id=f"beans-{n}",
        email=f"c{n}@example.com",
        plan_id="coffee-beans",
        interval=Interval.WEEKLY,
        currency="USD",
        quantity=quantity,
        payment_method_id="pm_abc123",
    )


def invoiced(n: int, plan: str = "pro") -> CanonicalOrder:
    return CanonicalOrder(
        channel=Channel.PARTNER,
        channel_order_id=f"acme:{n}",
        email=f"p{n}@example.com",
        plan_id=plan,
        interval=Interval.MONTHLY,
        currency="USD",
        billing=BillingMode.INVOICE,
        account_id="acme",
        partner_id="acme",
    )


def decide(order: CanonicalOrder) -> Any:
    def run(facts: IntakeFacts) -> Decision:
        return evaluate(order, CATALOG, facts)

    return run


def claim(store: IntakeStore, order: CanonicalOrder) -> Any:
    sku = "BEANS-1KG" if order.plan_id == "coffee-beans" else None
    return store.claim(order, sku, decide(order))


def test_a_claimed_order_reserves_stock_and_once_completed_is_a_duplicate(
    store: IntakeStore,
) -> None:
    order = beans(1)
    first = claim(store, order)
    assert first.outcome == ClaimOutcome.CLAIMED and first.row.status == OrderStatus.PENDING
    assert store.stock("BEANS-1KG") == (12, 3)  # strict rules: 3 deliveries reserved

    again = claim(store, order)  # a retry before completion judges again, not counting itself
    assert again.outcome == ClaimOutcome.CLAIMED and again.row.attempts == 2
    assert store.stock("BEANS-1KG") == (12, 3)

    assert store.complete(order.order_id, "sub_1", {"subscription_id": "sub_1"}) is True
    assert store.complete(order.order_id, "sub_1", {"subscription_id": "sub_1"}) is False
    dup = claim(store, order)
    assert dup.outcome == ClaimOutcome.DUPLICATE
    assert json.loads(dup.row.result) == {"subscription_id": "sub_1"}
    assert store.stock("BEANS-1KG") == (12, 3)


def test_a_rejection_is_recorded_with_its_rule_and_judged_again_when_resent(
    store: IntakeStore,
) -> None:
    order = beans(2, quantity=5)  # needs 15 of 12
    rejected = claim(store, order)
    assert rejected.outcome == ClaimOutcome.REJECTED
    row = store.get_order("web", "beans-2")
    assert row is not None and row.status == OrderStatus.REJECTED
    assert (row.rule, row.error_code, row.rule_set) == ("stock.coverage", "OUT_OF_STOCK", "strict")
    assert store.stock("BEANS-1KG") == (12, 0)

    store.set_stock("BEANS-1KG", 20)  # restocked: the same order goes through now
    accepted = claim(store, order)
    assert accepted.outcome == ClaimOutcome.CLAIMED and accepted.row.attempts == 2
    assert accepted.row.rule is None and store.stock("BEANS-1KG") == (20, 15)


def test_concurrent_orders_never_reserve_more_stock_than_there_is(store: IntakeStore) -> None:
    orders = [beans(100 + i) for i in range(8)]  # each needs 3; 12 in stock: exactly 4 fit
    with ThreadPoolExecutor(max_workers=8) as pool:
        claims = list(pool.map(lambda o: claim(store, o), orders))
    outcomes = [c.outcome for c in claims]
    assert outcomes.count(ClaimOutcome.CLAIMED) == 4
    assert outcomes.count(ClaimOutcome.REJECTED) == 4
    assert store.stock("BEANS-1KG") == (12, 12)


def test_concurrent_orders_never_overdraw_a_credit_line(store: IntakeStore) -> None:
    # Limit 10,000 + 10% (trusted partner): eleven $10 orders of 1,000 fit (11,000), not twelve.
    orders = [invoiced(i, plan="starter") for i in range(14)]
    with ThreadPoolExecutor(max_workers=7) as pool:
        claims = list(pool.map(lambda o: claim(store, o), orders))
    outcomes = [c.outcome for c in claims]
    assert outcomes.count(ClaimOutcome.CLAIMED) == 12  # 12 x 900 = 10,800 <= 11,000
    account = store.credit_account("acme")
    assert account is not None and account.reserved_minor == 12 * 900


def test_the_same_new_order_claimed_concurrently_is_recorded_once(store: IntakeStore) -> None:
    order = invoiced(7)
    with ThreadPoolExecutor(max_workers=4) as pool:
        claims = list(pool.map(lambda _: claim(store, order), range(4)))
    assert {c.outcome for c in claims} == {ClaimOutcome.CLAIMED}
    rows = store.list_orders(channel="partner")
    assert len(rows) == 1 and rows[0].attempts == 4
    account = store.credit_account("acme")
    assert account is not None and account.reserved_minor == 3000


def test_release_gives_back_stock_and_credit_and_records_why(store: IntakeStore) -> None:
    claim(store, beans(3))
    claim(store, invoiced(3))
    store.release(
        beans(3).order_id,
        OrderStatus.REJECTED,
        rule="workflow.start",
        error_code="SUBSCRIPTION_EXISTS",
        message="ended",
    )
    store.release(invoiced(3).order_id, OrderStatus.DISCARDED)
    assert store.stock("BEANS-1KG") == (12, 0)
    account = store.credit_account("acme")
    assert account is not None and account.reserved_minor == 0
    row = store.get_order("web", "beans-3")
    assert row is not None and (row.status, row.rule) == ("rejected", "workflow.start")


def letter(**kw: Any) -> DeadLetterDraft:
    values: dict[str, Any] = {
        "channel": "web",
        "payload": "{}",
        "reason": "Temporal is not reachable",
        "error_code": "TEMPORAL_UNAVAILABLE",
        "rule": "dependency.temporal",
        "received_at": RECEIVED,
        "order_key": "web:o-1",
        "priority": 100,
        "attempts": 3,
    }
    values.update(kw)
    return DeadLetterDraft(**values)


def test_a_repeated_failure_of_the_same_order_folds_into_its_open_dead_letter(
    store: IntakeStore,
) -> None:
    first, created = store.add_dead_letter(letter())
    again, created_again = store.add_dead_letter(letter(reason="time-out", priority=50))
    assert created and not created_again and again.id == first.id
    assert (again.attempts, again.reason, again.priority) == (6, "time-out", 100)
    # Payloads without an order key fold by their content.
    a, _ = store.add_dead_letter(letter(order_key=None, payload="garbage"))
    b, _ = store.add_dead_letter(letter(order_key=None, payload="garbage"))
    c, _ = store.add_dead_letter(letter(order_key=None, payload="other garbage"))
    assert a.id == b.id != c.id


def test_dead_letters_list_highest_priority_first_then_oldest(store: IntakeStore) -> None:
    ids = {}
    for key, priority in [("a", 10), ("b", 5000), ("c", 10), ("d", 360)]:
        row, _ = store.add_dead_letter(letter(order_key=f"web:{key}", priority=priority))
        ids[key] = row.id
    listed = [r.id for r in store.list_dead_letters()]
    assert listed == [ids["b"], ids["d"], ids["a"], ids["c"]]
    assert [r.id for r in store.list_dead_letters(channel="mobile")] == []


def test_a_closed_dead_letter_stays_closed_and_a_new_failure_opens_a_new_one(
    store: IntakeStore,
) -> None:
    row, _ = store.add_dead_letter(letter())
    assert row.id is not None
    closed = store.resolve_dead_letter(row.id, DeadLetterStatus.DISCARDED, {"reason": "test"})
    assert closed is not None and closed.status == "discarded" and closed.resolved_at is not None
    assert store.resolve_dead_letter(row.id, DeadLetterStatus.REPLAYED, {}) is None
    fresh, created = store.add_dead_letter(letter())
    assert created and fresh.id != row.id
    assert [r.id for r in store.list_dead_letters(status=None)] == [row.id, fresh.id]


def test_completing_an_order_closes_its_open_dead_letter_as_replayed(store: IntakeStore) -> None:
    order = beans(4)
    claim(store, order)
    row, _ = store.add_dead_letter(letter(order_key=order.key, order_id=order.order_id))
    pending = store.get_order("web", "beans-4")
    assert pending is not None and pending.status == OrderStatus.DEAD_LETTERED
    store.complete(order.order_id, "sub_4", {"subscription_id": "sub_4"})
    assert row.id is not None
    after = store.get_dead_letter(row.id)
    assert after is not None and after.status == "replayed" and after.open_key is None
    assert json.loads(after.resolution or "{}")["subscription_id"] == "sub_4"


def test_discarding_a_dead_letter_releases_what_its_order_held(store: IntakeStore) -> None:
    order = beans(5)
    claim(store, order)
    row, _ = store.add_dead_letter(letter(order_key=order.key, order_id=order.order_id))
    assert store.stock("BEANS-1KG") == (12, 3) and row.id is not None
    store.resolve_dead_letter(row.id, DeadLetterStatus.DISCARDED, {"reason": "customer left"})
    assert store.stock("BEANS-1KG") == (12, 0)
    got = store.get_order("web", "beans-5")
    assert got is not None and got.status == OrderStatus.DISCARDED


def test_rejection_counts_group_by_rule_rule_set_and_channel(store: IntakeStore) -> None:
    for i in range(3):
        claim(store, beans(200 + i, quantity=5))
    claim(store, invoiced(9, plan="gold"))
    counts = store.rejection_counts()
    assert counts[0] == {
        "rule": "stock.coverage",
        "error_code": "OUT_OF_STOCK",
        "rule_set": "strict",
        "channel": "web",
        "count": 3,
    }
    assert counts[1]["rule"] == "catalog.plan" and counts[1]["count"] == 1
    rows = store.list_orders(status="rejected", rule="stock.coverage")
    assert len(rows) == 3


def test_timestamps_are_utc_instants(store: IntakeStore) -> None:
    row, _ = store.add_dead_letter(letter())
    got = store.get_dead_letter(row.id or 0)
    assert got is not None and got.received_at == RECEIVED
    assert got.created_at.tzinfo is not None
    assert abs(got.created_at - datetime.now(UTC)) < timedelta(minutes=1)
