"""Reconciliation of hand-built books against a real localstripe: what it finds, and what not.

Intents are created and confirmed at the gateway exactly as the charge activity does (metadata with
subscription, invoice, attempt and idempotency key), so the reconciliation reads real gateway
objects. The session's localstripe is shared with other tests: their intents must be ignored.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import Engine

from activities.gateway import IntentInfo, StripeGateway
from activities.reconcile import reconcile
from activities.store import Store
from activities.tables import Invoice, Payment, Subscription, utcnow
from models.calendar import billing_date, local_midnight_utc
from models.ids import invoice_id, payment_idempotency_key

TEST_KEY = "sk_test_oms_reconcile"
VISA = "4242424242424242"
CHARGE_FAILS = "4000000000000341"  # attaches, then every charge is declined


@pytest.fixture
def gateway(localstripe_url: str) -> StripeGateway:
    return StripeGateway(TEST_KEY, api_base=localstripe_url, max_network_retries=0, timeout_s=10)


@pytest.fixture
def store(engine: Engine) -> Store:
    return Store(engine)


class Books:
    """Writes one subscription's rows and makes its charges at the gateway."""

    def __init__(self, store: Store, gateway: StripeGateway, **sub: object) -> None:
        self.store = store
        self.gateway = gateway
        self.sub_id = f"sub_{uuid.uuid4().hex[:16]}"
        self.customer = gateway.create_customer(
            email=f"{self.sub_id}@example.com", metadata={}, idempotency_key=f"c:{self.sub_id}"
        )
        values: dict[str, object] = {
            "status": "active",
            "interval": "monthly",
            "timezone": "UTC",
            "anchor_date": date.today(),
            "next_billing_at": None,
            **sub,
        }
        with store.session() as s:
            s.add(
                Subscription(
                    id=self.sub_id,
                    customer_id="cust_r",
                    plan_id="starter",
                    currency="USD",
                    unit_amount_minor=900,
                    payment_method_id="pm_r",
                    created_at=utcnow(),
                    updated_at=utcnow(),
                    **values,  # type: ignore[arg-type]
                )
            )
            s.commit()

    def card(self, number: str = VISA) -> str:
        pm = self.gateway.create_test_payment_method(number)
        self.gateway.attach_payment_method(pm, self.customer)
        return pm

    def invoice(self, n: int, status: str, total: int = 900, start: date | None = None) -> str:
        inv = invoice_id(self.sub_id, n)
        start = start or date(2027, 1, 1) + timedelta(days=30 * n)
        with self.store.session() as s:
            s.add(
                Invoice(
                    id=inv,
                    subscription_id=self.sub_id,
                    customer_id="cust_r",
                    period_index=n,
                    period_start=start,
                    period_end=start + timedelta(days=30),
                    currency="USD",
                    subtotal_minor=total,
                    total_minor=total,
                    status=status,
                    issued_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
            s.commit()
        return inv

    def intent(
        self, n: int, attempt: int, *, confirm: bool, card: str | None = None, amount: int = 900
    ) -> IntentInfo:
        """An intent for period ``n``, attempt ``attempt``, confirmed or left unconfirmed."""
        key = payment_idempotency_key(self.sub_id, n, attempt)
        created = self.gateway.create_payment_intent(
            amount_minor=amount,
            currency="USD",
            customer_id=self.customer,
            payment_method_id=card or self.card(),
            idempotency_key=key,
            metadata={
                "subscription_id": self.sub_id,
                "invoice_id": invoice_id(self.sub_id, n),
                "attempt": str(attempt),
            },
        )
        if not confirm:
            return created
        return self.gateway.confirm_payment_intent(created.id, idempotency_key=key)

    def payment(
        self, n: int, attempt: int, status: str, intent_id: str | None, amount: int = 900
    ) -> None:
        with self.store.session() as s:
            s.add(
                Payment(
                    idempotency_key=payment_idempotency_key(self.sub_id, n, attempt),
                    invoice_id=invoice_id(self.sub_id, n),
                    subscription_id=self.sub_id,
                    attempt=attempt,
                    gateway_intent_id=intent_id,
                    amount_minor=amount,
                    currency="USD",
                    status=status,
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
            s.commit()

    def charged(self, n: int, attempt: int = 0) -> IntentInfo:
        """Period ``n`` charged once, as the charge activity leaves it."""
        intent = self.intent(n, attempt, confirm=True)
        assert intent.status == "succeeded"
        self.payment(n, attempt, "succeeded", intent.id)
        return intent


def now() -> datetime:
    return datetime.now(UTC)


def test_a_clean_history_reconciles_and_reports_unconfirmed_intents_apart(
    store: Store, gateway: StripeGateway
) -> None:
    books = Books(store, gateway)
    books.invoice(0, "paid")
    books.charged(0)
    books.invoice(1, "paid")
    declined = books.intent(1, 0, confirm=True, card=books.card(CHARGE_FAILS))
    assert declined.status == "requires_payment_method"
    books.payment(1, 0, "declined", declined.id)
    books.charged(1, attempt=1)
    # A worker died after creating this intent and before storing its id: never confirmed.
    orphan = books.intent(1, 2, confirm=False)

    report = reconcile(store, gateway, now())

    assert report.ok
    assert (report.mismatches, report.double_charges, report.uncharged_periods) == ([], [], [])
    assert [(o.intent_id, o.status) for o in report.orphan_intents] == [
        (orphan.id, "requires_confirmation")
    ]
    assert report.unrecorded_charges == []
    assert (report.payments_checked, report.intents_checked) == (3, 4)


def test_a_period_charged_twice_at_the_gateway_is_a_double_charge_though_the_books_show_one(
    store: Store, gateway: StripeGateway
) -> None:
    books = Books(store, gateway)
    inv = books.invoice(0, "paid")
    recorded = books.charged(0)
    # The same period charged again (say a retry that created a second intent and confirmed it).
    duplicate = books.intent(0, 1, confirm=True)
    assert duplicate.status == "succeeded"

    report = reconcile(store, gateway, now())

    assert not report.ok
    [double] = report.double_charges
    assert (double.subscription_id, double.invoice_id) == (books.sub_id, inv)
    assert double.intent_ids == sorted([recorded.id, duplicate.id])
    assert (double.amount_minor, double.currency) == (1800, "USD")
    assert [u.intent_id for u in report.unrecorded_charges] == [duplicate.id]
    assert report.mismatches == [] and report.uncharged_periods == []


def test_payment_rows_that_disagree_with_the_gateway_are_mismatches(
    store: Store, gateway: StripeGateway
) -> None:
    books = Books(store, gateway)
    for n in range(5):
        books.invoice(n, "open")
    other_amount = books.intent(0, 0, confirm=True, amount=1000)
    books.payment(0, 0, "succeeded", other_amount.id)  # recorded as 900
    unconfirmed = books.intent(1, 0, confirm=False)
    books.payment(1, 0, "succeeded", unconfirmed.id)  # the books say paid; no money moved
    confirmed = books.intent(2, 0, confirm=True)
    books.payment(2, 0, "pending", confirmed.id)  # money moved; the books never heard
    books.payment(3, 0, "declined", "pi_unknown_to_the_gateway")
    books.payment(4, 0, "succeeded", None)

    report = reconcile(store, gateway, now())

    problems = {m.idempotency_key.rsplit(":", 2)[1]: m.problem for m in report.mismatches}
    assert problems == {
        "period-0": "amount",
        "period-1": "status",
        "period-2": "status",
        "period-3": "missing_at_gateway",
        "period-4": "missing_intent",
    }
    by_period = {m.invoice_id: m for m in report.mismatches}
    assert by_period[invoice_id(books.sub_id, 0)].gateway_amount_minor == 1000
    assert by_period[invoice_id(books.sub_id, 2)].gateway_status == "succeeded"
    assert report.unsettled_payments == 1
    assert not report.ok


def test_paid_invoices_without_a_charge_and_overdue_periods_without_an_invoice_are_uncharged(
    store: Store, gateway: StripeGateway
) -> None:
    checked_at = now()
    today = checked_at.date()
    anchor = today - timedelta(days=75)
    ny = "America/New_York"

    def due(n: int, tz: str = "UTC") -> datetime:
        return local_midnight_utc(billing_date(anchor, 1, n), tz)

    paid_free = Books(store, gateway, anchor_date=anchor, next_billing_at=due(4))
    paid_free.invoice(0, "paid", start=anchor)  # 9.00 marked paid, nothing at the gateway
    # The projection says period 1 is next, 2.5 months ago: periods 1 and 2 were never invoiced.
    behind = Books(store, gateway, anchor_date=anchor, timezone=ny, next_billing_at=due(1, ny))
    behind.invoice(0, "paid", total=0, start=anchor)
    # A stale projection, but every period due has its invoice: nothing is missing.
    caught_up = Books(store, gateway, anchor_date=anchor, next_billing_at=due(1))
    for n in range(3):
        caught_up.invoice(n, "paid", total=0, start=billing_date(anchor, 1, n))
    trial_over = Books(
        store,
        gateway,
        status="trialing",
        anchor_date=today - timedelta(days=1),
        next_billing_at=checked_at - timedelta(days=1),
    )
    trial_ending = Books(
        store, gateway, status="trialing", next_billing_at=checked_at - timedelta(minutes=1)
    )
    # Not billing any more, or ending with its last billed period: nothing is due.
    canceled = Books(store, gateway, status="canceled", anchor_date=anchor, next_billing_at=due(1))
    ending = Books(
        store, gateway, cancel_at_period_end=True, anchor_date=anchor, next_billing_at=due(1)
    )

    report = reconcile(store, gateway, checked_at)

    found = {(u.subscription_id, u.period_index, u.reason) for u in report.uncharged_periods}
    assert found == {
        (paid_free.sub_id, 0, "paid_without_charge"),
        (behind.sub_id, 1, "not_invoiced"),
        (behind.sub_id, 2, "not_invoiced"),
        (trial_over.sub_id, 0, "not_invoiced"),
    }
    quiet = {caught_up.sub_id, trial_ending.sub_id, canceled.sub_id, ending.sub_id}
    assert not quiet & {u.subscription_id for u in report.uncharged_periods}
    assert {
        u.period_index: u.due_date
        for u in report.uncharged_periods
        if u.subscription_id == behind.sub_id
    } == {1: billing_date(anchor, 1, 1), 2: billing_date(anchor, 1, 2)}


def test_intents_of_other_databases_on_the_same_gateway_are_ignored(
    store: Store, gateway: StripeGateway
) -> None:
    stranger = Books(store, gateway)
    with store.session() as s:  # the stranger's books live elsewhere: forget them here
        row = s.get(Subscription, stranger.sub_id)
        s.delete(row)
        s.commit()
    stranger.intent(0, 0, confirm=True)
    stranger.intent(0, 1, confirm=True)  # even a double charge there is none of our business
    ours = Books(store, gateway)
    ours.invoice(0, "paid")
    ours.charged(0)

    report = reconcile(store, gateway, now())

    assert report.ok and report.double_charges == [] and report.orphan_intents == []
    assert report.intents_checked == 1
    assert report.foreign_intents >= 2
