"""Store against a real database: every write is idempotent through its business key.

Runs on SQLite by default and on PostgreSQL when ``OMS_TEST_DATABASE_URL`` is set (one schema per
test). Activities are at-least-once, so writing the same thing twice must leave one record.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import StatementError

from activities.store import Store
from activities.tables import (
    AuditLog,
    Customer,
    Invoice,
    InvoiceLineRow,
    NotificationRow,
    Payment,
    Subscription,
    utcnow,
)
from models.calendar import Interval
from models.invoice import InvoiceLine, LineKind
from models.subscription import (
    AuditEntry,
    InvoiceDraft,
    InvoiceSettlement,
    Notification,
    SubscriptionSnapshot,
    SubscriptionStatus,
    TransitionRecord,
)

# A non-UTC offset: values must come back as the same instant, in UTC, on every backend.
PLUS_TWO = timezone(timedelta(hours=2))


@pytest.fixture
def store(engine: Engine) -> Store:
    return Store(engine)


def snapshot(
    subscription_id: str = "sub_1",
    *,
    status: SubscriptionStatus = SubscriptionStatus.active,
    customer_id: str = "cust_1",
    plan_id: str = "pro",
    next_billing_at: datetime | None = datetime(2027, 2, 1, 5, tzinfo=UTC),
) -> SubscriptionSnapshot:
    """A subscription snapshot as the workflow sends it."""
    return SubscriptionSnapshot(
        subscription_id=subscription_id,
        customer_id=customer_id,
        plan_id=plan_id,
        interval=Interval.MONTHLY,
        currency="USD",
        unit_amount_minor=3000,
        quantity=1,
        status=status,
        timezone="America/New_York",
        anchor=date(2027, 1, 1),
        trial_end=None,
        current_period_start=date(2027, 1, 1),
        current_period_end=date(2027, 2, 1),
        next_billing_at=next_billing_at,
        cancel_at_period_end=False,
        canceled_at=None,
        payment_method_id="pm_1",
    )


def transition(
    snap: SubscriptionSnapshot,
    seq: int,
    action: str,
    *,
    from_status: str | None = None,
    occurred_at: datetime = datetime(2027, 1, 1, 12, tzinfo=UTC),
) -> TransitionRecord:
    """A transition record whose audit key follows the workflow's ``{sub}:{seq}:{action}``."""
    return TransitionRecord(
        snapshot=snap,
        audit=AuditEntry(
            event_key=f"{snap.subscription_id}:{seq}:{action}",
            subscription_id=snap.subscription_id,
            action=action,
            from_status=from_status,
            to_status=snap.status.value,
            actor="tester",
            channel="cli",
            request_id="req-1",
            reason=None,
            details={"invoice_id": "in_1"},
            occurred_at=occurred_at,
        ),
    )


def draft(invoice_id: str = "in_sub_1_p0", *, total_minor: int = 2500) -> InvoiceDraft:
    """An invoice with three lines whose order matters (charge, credit, discount)."""
    lines = [
        InvoiceLine(
            kind=LineKind.PERIOD_CHARGE,
            description="Pro (monthly)",
            amount_minor=3000,
            currency="USD",
            unit_amount_minor=3000,
            period_start=date(2027, 1, 1),
            period_end=date(2027, 2, 1),
        ),
        InvoiceLine(
            kind=LineKind.PRORATION_CREDIT,
            description="Unused time",
            amount_minor=-300,
            currency="USD",
        ),
        InvoiceLine(
            kind=LineKind.DISCOUNT, description="Welcome", amount_minor=-200, currency="USD"
        ),
    ]
    return InvoiceDraft(
        invoice_id=invoice_id,
        subscription_id="sub_1",
        customer_id="cust_1",
        period_index=0,
        period_start=date(2027, 1, 1),
        period_end=date(2027, 2, 1),
        currency="USD",
        lines=lines,
        subtotal_minor=2500,
        credit_applied_minor=2500 - total_minor,
        total_minor=total_minor,
        issued_at=datetime(2027, 1, 1, 14, tzinfo=PLUS_TWO),
    )


def payment(key: str = "sub_1:period-0:attempt-0", amount_minor: int = 2500) -> Payment:
    """A pending charge attempt, as the charge activity records it before any money moves."""
    return Payment(
        idempotency_key=key,
        invoice_id="in_sub_1_p0",
        subscription_id="sub_1",
        attempt=0,
        amount_minor=amount_minor,
        currency="USD",
        status="pending",
        created_at=utcnow(),
        updated_at=utcnow(),
    )


def notification(key: str = "sub_1:upcoming:1") -> Notification:
    return Notification(
        key=key,
        subscription_id="sub_1",
        customer_id="cust_1",
        kind="upcoming_charge",
        scheduled_for=datetime(2027, 1, 29, 7, tzinfo=PLUS_TWO),
        data={"amount": "$30.00", "charge_date": "2027-02-01"},
    )


def assert_utc(value: datetime | None, expected: datetime) -> None:
    """``value`` is timezone-aware, in UTC, and the same instant as ``expected``."""
    assert value is not None
    assert value.utcoffset() == timedelta(0), f"{value!r} is not UTC"
    assert value.tzinfo is not None
    assert value == expected


# --- subscriptions and audit -----------------------------------------------------------------


def test_write_transition_twice_with_the_same_event_key_writes_one_audit_row(
    store: Store,
) -> None:
    rec = transition(snapshot(), 1, "created")

    assert store.write_transition(rec) is True
    assert store.write_transition(rec) is False

    [audit] = store.audit_trail("sub_1")
    assert (audit.event_key, audit.action, audit.to_status) == (
        "sub_1:1:created",
        "created",
        "active",
    )
    assert (audit.actor, audit.channel, audit.request_id) == ("tester", "cli", "req-1")
    assert json.loads(audit.details) == {"invoice_id": "in_1"}
    assert store.count(AuditLog) == 1
    assert store.count(Subscription) == 1


def test_duplicate_transition_does_not_touch_the_subscription_row(store: Store) -> None:
    store.write_transition(transition(snapshot(status=SubscriptionStatus.incomplete), 1, "created"))

    # Same audit key, different snapshot: a replayed write must not move the row.
    replay = transition(snapshot(status=SubscriptionStatus.canceled), 1, "created")
    assert store.write_transition(replay) is False

    row = store.get_subscription("sub_1")
    assert row is not None and row.status == "incomplete"


def test_later_transitions_update_the_subscription_and_append_to_the_audit_trail(
    store: Store,
) -> None:
    first = snapshot(status=SubscriptionStatus.incomplete, next_billing_at=None)
    store.write_transition(transition(first, 1, "created"))
    row = store.get_subscription("sub_1")
    assert row is not None
    created_at = row.created_at

    later = snapshot(status=SubscriptionStatus.active)
    assert store.write_transition(transition(later, 2, "activated", from_status="incomplete"))

    row = store.get_subscription("sub_1")
    assert row is not None
    assert row.status == "active"
    assert row.created_at == created_at
    assert row.updated_at >= created_at
    assert_utc(row.next_billing_at, datetime(2027, 2, 1, 5, tzinfo=UTC))
    assert (row.current_period_start, row.current_period_end) == (
        date(2027, 1, 1),
        date(2027, 2, 1),
    )
    assert [(a.action, a.from_status, a.to_status) for a in store.audit_trail("sub_1")] == [
        ("created", None, "incomplete"),
        ("activated", "incomplete", "active"),
    ]
    assert store.count(Subscription) == 1


def test_list_subscriptions_filters_by_status_customer_and_plan(store: Store) -> None:
    rows = [
        ("sub_a", SubscriptionStatus.active, "cust_1", "pro"),
        ("sub_b", SubscriptionStatus.active, "cust_2", "starter"),
        ("sub_c", SubscriptionStatus.canceled, "cust_1", "starter"),
        ("sub_d", SubscriptionStatus.trialing, "cust_2", "pro"),
    ]
    for sub, status, customer, plan in rows:
        snap = snapshot(sub, status=status, customer_id=customer, plan_id=plan)
        store.write_transition(transition(snap, 1, "created"))

    def ids(**filters: Any) -> set[str]:
        return {s.id for s in store.list_subscriptions(**filters)}

    assert ids() == {"sub_a", "sub_b", "sub_c", "sub_d"}
    assert ids(status="active") == {"sub_a", "sub_b"}
    assert ids(customer_id="cust_1") == {"sub_a", "sub_c"}
    assert ids(plan_id="starter") == {"sub_b", "sub_c"}
    assert ids(status="active", plan_id="pro") == {"sub_a"}
    assert ids(customer_id="cust_2", plan_id="pro", status="trialing") == {"sub_d"}
    assert ids(status="past_due") == set()
    assert len(store.list_subscriptions(limit=3)) == 3
    page1 = [s.id for s in store.list_subscriptions(limit=2)]
    page2 = [s.id for s in store.list_subscriptions(limit=2, offset=2)]
    assert sorted(page1 + page2) == ["sub_a", "sub_b", "sub_c", "sub_d"]


# --- invoices -----------------------------------------------------------------------------------


def test_write_invoice_twice_writes_one_invoice_with_its_lines_in_order(store: Store) -> None:
    assert store.write_invoice(draft()) is True
    assert store.write_invoice(draft()) is False

    [(invoice, lines)] = store.list_invoices("sub_1")
    assert invoice.id == "in_sub_1_p0"
    assert (invoice.subtotal_minor, invoice.total_minor, invoice.status) == (2500, 2500, "open")
    assert_utc(invoice.issued_at, datetime(2027, 1, 1, 12, tzinfo=UTC))
    assert [(line.position, line.kind, line.amount_minor) for line in lines] == [
        (0, "period_charge", 3000),
        (1, "proration_credit", -300),
        (2, "discount", -200),
    ]
    assert (lines[0].period_start, lines[0].period_end) == (date(2027, 1, 1), date(2027, 2, 1))
    assert store.count(Invoice) == 1
    assert store.count(InvoiceLineRow) == 3


def test_an_invoice_with_nothing_to_charge_is_paid_when_written(store: Store) -> None:
    store.write_invoice(draft(total_minor=0))

    [(invoice, _)] = store.list_invoices("sub_1")
    assert (invoice.total_minor, invoice.credit_applied_minor, invoice.status) == (0, 2500, "paid")


def test_settling_an_invoice_records_status_and_keeps_the_intent(store: Store) -> None:
    store.write_invoice(draft())

    store.settle_invoice(
        InvoiceSettlement(invoice_id="in_sub_1_p0", status="paid", payment_intent_id="pi_1")
    )
    store.settle_invoice(InvoiceSettlement(invoice_id="in_sub_1_p0", status="paid"))

    [(invoice, _)] = store.list_invoices("sub_1")
    assert (invoice.status, invoice.payment_intent_id) == ("paid", "pi_1")
    with pytest.raises(LookupError):
        store.settle_invoice(InvoiceSettlement(invoice_id="in_missing", status="paid"))


# --- payments -----------------------------------------------------------------------------------


def test_begin_payment_twice_returns_the_same_row(store: Store) -> None:
    first = store.begin_payment(payment())
    store.update_payment(first.idempotency_key, gateway_intent_id="pi_123")

    # The retry may even carry other values: the recorded attempt wins (the charge compares them).
    again = store.begin_payment(payment(amount_minor=9999))

    assert first.id is not None
    assert again.id == first.id
    assert (again.amount_minor, again.gateway_intent_id, again.status) == (
        2500,
        "pi_123",
        "pending",
    )
    assert store.count(Payment) == 1


def test_concurrent_begin_payment_with_one_key_records_one_attempt(store: Store) -> None:
    threads = 6
    barrier = threading.Barrier(threads)

    def begin(_: int) -> int | None:
        barrier.wait()
        return store.begin_payment(payment()).id

    with ThreadPoolExecutor(max_workers=threads) as pool:
        ids = set(pool.map(begin, range(threads)))

    assert len(ids) == 1 and None not in ids
    assert store.count(Payment) == 1


def test_update_payment_changes_the_row_found_by_key(store: Store) -> None:
    row = store.begin_payment(payment())

    updated = store.update_payment(
        row.idempotency_key, status="succeeded", gateway_intent_id="pi_9"
    )

    assert (updated.status, updated.gateway_intent_id) == ("succeeded", "pi_9")
    assert updated.updated_at >= row.updated_at
    found = store.payment_by_key(row.idempotency_key)
    assert found is not None and (found.id, found.status) == (row.id, "succeeded")
    assert [p.id for p in store.payments("sub_1")] == [row.id]
    assert store.payments("sub_other") == []


# --- notifications and customers ---------------------------------------------------------------


def test_enqueue_notification_twice_writes_one(store: Store) -> None:
    assert store.enqueue_notification(notification()) is True
    assert store.enqueue_notification(notification()) is False

    [row] = store.notifications("sub_1")
    assert (row.key, row.kind, row.status, row.channel) == (
        "sub_1:upcoming:1",
        "upcoming_charge",
        "pending",
        "email",
    )
    assert json.loads(row.data) == {"amount": "$30.00", "charge_date": "2027-02-01"}
    assert_utc(row.scheduled_for, datetime(2027, 1, 29, 5, tzinfo=UTC))
    assert store.count(NotificationRow) == 1


def test_upsert_customer_twice_keeps_one_and_its_gateway_id(store: Store) -> None:
    first = store.upsert_customer("cust_1", "ada@example.com", "Europe/Paris")
    store.set_gateway_customer("cust_1", "cus_abc")

    again = store.upsert_customer("cust_1", "ada@example.com", "Europe/Paris")

    assert again.id == first.id == "cust_1"
    assert again.gateway_customer_id == "cus_abc"
    assert store.count(Customer) == 1
    with pytest.raises(LookupError):
        store.set_gateway_customer("cust_missing", "cus_x")


# --- instants ------------------------------------------------------------------------------------


def test_datetimes_come_back_timezone_aware_in_utc(store: Store) -> None:
    occurred = datetime(2027, 3, 1, 9, 30, 15, 123456, tzinfo=PLUS_TWO)
    billing = datetime(2027, 4, 1, 4, tzinfo=timezone(timedelta(hours=-4)))
    store.write_transition(
        transition(snapshot(next_billing_at=billing), 1, "x", occurred_at=occurred)
    )
    store.enqueue_notification(notification())
    customer = store.upsert_customer("cust_1", "ada@example.com", "UTC")

    [audit] = store.audit_trail("sub_1")
    assert_utc(audit.occurred_at, datetime(2027, 3, 1, 7, 30, 15, 123456, tzinfo=UTC))
    sub = store.get_subscription("sub_1")
    assert sub is not None
    assert_utc(sub.next_billing_at, datetime(2027, 4, 1, 8, tzinfo=UTC))
    for value in (sub.created_at, sub.updated_at, audit.recorded_at, customer.created_at):
        assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
    fresh = store.get_customer("cust_1")
    assert fresh is not None
    assert_utc(fresh.created_at, customer.created_at)


def test_a_naive_datetime_is_refused(store: Store) -> None:
    naive = notification().model_copy(update={"scheduled_for": datetime(2027, 1, 1, 12)})

    with pytest.raises(StatementError) as info:
        store.enqueue_notification(naive)

    assert isinstance(info.value.orig, ValueError)
    assert store.count(NotificationRow) == 0
