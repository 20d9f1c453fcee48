"""Reconcile the database against the payment gateway: is every period charged exactly once?

The gateway is the truth about money; the database is the truth about what we meant to charge.
:func:`reconcile` reads both and reports:

- ``mismatches``: a ``payments`` row that does not match its gateway object: the intent is missing,
  its amount, currency or idempotency key differ, or exactly one side says ``succeeded``. A row
  marked ``succeeded`` without an intent id is a mismatch too.
- ``double_charges``: a (subscription, period) with more than one *succeeded* PaymentIntent at the
  gateway. Intents are grouped by their ``subscription_id`` and ``invoice_id`` metadata (one
  invoice per period), whether or not a payment row points at them.
- ``uncharged_periods``: an invoice (of any kind) marked ``paid`` with a total above zero and no
  succeeded intent for it; and a period of a subscription that is ``active`` or ``trialing`` whose
  due instant passed more than ``grace`` before ``now`` and that has no invoice at all. The
  periods due are read from the subscription's own billing dates: its next billing instant (the
  projection the workflow writes with every transition; a subscription that has billed everything
  due has it in the future) and, after it, local midnight of each billing date of its current
  schedule (anchor, interval, time zone). A period counts as invoiced when an invoice of the
  subscription starts on that date. Periods a pause skipped on purpose are never due, and a
  subscription ending at its period end has no next billing instant.
- ``orphan_intents``: intents created for one of our attempts that no payment row points at and
  that never succeeded (a worker died between creating the intent and storing its id; the retry
  made another). They are not charges and are reported apart.
- ``unrecorded_charges``: succeeded intents no payment row points at: money taken that our books
  do not show (also counted in ``double_charges`` when the period has another succeeded intent).

Only intents whose ``subscription_id`` metadata names a subscription of this database are
considered (``foreign_intents`` counts the others), so a gateway account shared with other
databases (tests, other environments) does not pollute the report.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import date, datetime, timedelta

import structlog
from pydantic import BaseModel, Field
from sqlmodel import select

from activities.gateway import METADATA_IDEMPOTENCY_KEY, IntentInfo, StripeGateway
from activities.store import Store
from activities.tables import Invoice, Payment, Subscription
from models.calendar import (
    Interval,
    interval_billing_date,
    local_date,
    local_midnight_utc,
    period_index_containing,
)

log = structlog.get_logger(__name__)

BILLING_STATUSES = frozenset({"active", "trialing"})
DEFAULT_GRACE = timedelta(minutes=5)
MAX_PERIODS_CHECKED = 5000  # per subscription: ~100 years of weekly billing


class PaymentMismatch(BaseModel):
    """A payment row that does not match the gateway."""

    idempotency_key: str
    subscription_id: str
    invoice_id: str
    problem: str  # missing_intent | missing_at_gateway | amount | currency | key | status
    db_status: str
    db_amount_minor: int
    db_currency: str
    intent_id: str | None = None
    gateway_status: str | None = None
    gateway_amount_minor: int | None = None
    gateway_currency: str | None = None


class DoubleCharge(BaseModel):
    """One period with more than one succeeded PaymentIntent."""

    subscription_id: str
    invoice_id: str
    intent_ids: list[str]
    amount_minor: int  # total taken for the period
    currency: str


class UnchargedPeriod(BaseModel):
    """A period that should have been charged and was not."""

    subscription_id: str
    period_index: int
    reason: str  # paid_without_charge | not_invoiced
    invoice_id: str | None = None
    due_date: date | None = None


class GatewayIntent(BaseModel):
    """An intent reported apart (orphan or unrecorded charge)."""

    intent_id: str
    status: str
    subscription_id: str
    invoice_id: str | None
    idempotency_key: str | None
    amount_minor: int
    currency: str


class ReconciliationReport(BaseModel):
    """What :func:`reconcile` found; ``ok`` when nothing is wrong with the money."""

    checked_at: datetime
    payments_checked: int
    intents_checked: int
    foreign_intents: int
    unsettled_payments: int = Field(description="rows still pending or processing")
    mismatches: list[PaymentMismatch]
    double_charges: list[DoubleCharge]
    uncharged_periods: list[UnchargedPeriod]
    orphan_intents: list[GatewayIntent]
    unrecorded_charges: list[GatewayIntent]

    @property
    def ok(self) -> bool:
        return not (
            self.mismatches
            or self.double_charges
            or self.uncharged_periods
            or self.unrecorded_charges
        )

    def summary(self) -> dict[str, int]:
        """Counts only (for logs and the simulation's output)."""
        return {
            "payments_checked": self.payments_checked,
            "intents_checked": self.intents_checked,
            "mismatches": len(self.mismatches),
            "double_charges": len(self.double_charges),
            "uncharged_periods": len(self.uncharged_periods),
            "orphan_intents": len(self.orphan_intents),
            "unrecorded_charges": len(self.unrecorded_charges),
            "unsettled_payments": self.unsettled_payments,
        }


def reconcile(
    store: Store,
    gateway: StripeGateway,
    now: datetime,
    *,
    grace: timedelta = DEFAULT_GRACE,
) -> ReconciliationReport:
    """Compare every payment, invoice and billing subscription with the gateway's intents.

    Args:
        store: the database.
        gateway: the gateway the payments went to (every intent is listed: a full scan).
        now: the instant periods are judged due against (the workflows' clock: virtual time in a
            simulation).
        grace: a period due less than this before ``now`` may still be being invoiced; it is not
            reported.
    """
    with store.session() as s:
        payments = list(s.exec(select(Payment)).all())
        invoices = list(s.exec(select(Invoice)).all())
        subscriptions = list(s.exec(select(Subscription)).all())
    known = {sub.id for sub in subscriptions} | {p.subscription_id for p in payments}
    ours: list[IntentInfo] = []
    foreign = 0
    for intent in gateway.list_payment_intents():
        if intent.metadata.get("subscription_id") in known:
            ours.append(intent)
        else:
            foreign += 1
    report = compare(
        payments=payments,
        invoices=invoices,
        subscriptions=subscriptions,
        intents=ours,
        now=now,
        grace=grace,
    )
    report.foreign_intents = foreign
    log.info(
        "reconcile.done", checked_at=now.isoformat(), foreign_intents=foreign, **report.summary()
    )
    return report


def compare(
    *,
    payments: Iterable[Payment],
    invoices: Iterable[Invoice],
    subscriptions: Iterable[Subscription],
    intents: Iterable[IntentInfo],
    now: datetime,
    grace: timedelta = DEFAULT_GRACE,
) -> ReconciliationReport:
    """The reconciliation of rows already read (no I/O); see :func:`reconcile`."""
    payments = list(payments)
    invoices = list(invoices)
    intents = list(intents)
    by_id = {i.id: i for i in intents}

    mismatches = [m for p in payments if (m := _check_payment(p, by_id)) is not None]
    unsettled = sum(1 for p in payments if p.status in ("pending", "processing"))

    succeeded: dict[tuple[str, str], list[IntentInfo]] = defaultdict(list)
    for intent in intents:
        if intent.status == "succeeded":
            key = (
                intent.metadata.get("subscription_id", ""),
                intent.metadata.get("invoice_id", ""),
            )
            succeeded[key].append(intent)
    double = [
        DoubleCharge(
            subscription_id=sub,
            invoice_id=inv,
            intent_ids=sorted(i.id for i in group),
            amount_minor=sum(i.amount_minor for i in group),
            currency=group[0].currency,
        )
        for (sub, inv), group in sorted(succeeded.items())
        if len(group) > 1
    ]

    uncharged = [
        UnchargedPeriod(
            subscription_id=inv.subscription_id,
            period_index=inv.period_index,
            reason="paid_without_charge",
            invoice_id=inv.id,
            due_date=inv.period_start,
        )
        for inv in invoices
        if inv.status == "paid"
        and inv.total_minor > 0
        and not succeeded.get((inv.subscription_id, inv.id))
    ]
    starts: dict[str, set[date]] = defaultdict(set)
    for inv in invoices:
        starts[inv.subscription_id].add(inv.period_start)
    for sub in subscriptions:
        if sub.status in BILLING_STATUSES:
            uncharged.extend(_missing_periods(sub, starts.get(sub.id, set()), now - grace))

    referenced = {p.gateway_intent_id for p in payments if p.gateway_intent_id}
    orphans: list[GatewayIntent] = []
    unrecorded: list[GatewayIntent] = []
    for intent in intents:
        if intent.id in referenced:
            continue
        (unrecorded if intent.status == "succeeded" else orphans).append(_apart(intent))

    return ReconciliationReport(
        checked_at=now,
        payments_checked=len(payments),
        intents_checked=len(intents),
        foreign_intents=0,
        unsettled_payments=unsettled,
        mismatches=mismatches,
        double_charges=double,
        uncharged_periods=uncharged,
        orphan_intents=orphans,
        unrecorded_charges=unrecorded,
    )


def _check_payment(p: Payment, intents: dict[str, IntentInfo]) -> PaymentMismatch | None:
    def mismatch(problem: str, intent: IntentInfo | None = None) -> PaymentMismatch:
        return PaymentMismatch(
            idempotency_key=p.idempotency_key,
            subscription_id=p.subscription_id,
            invoice_id=p.invoice_id,
            problem=problem,
            db_status=p.status,
            db_amount_minor=p.amount_minor,
            db_currency=p.currency,
            intent_id=p.gateway_intent_id,
            gateway_status=intent.status if intent else None,
            gateway_amount_minor=intent.amount_minor if intent else None,
            gateway_currency=intent.currency if intent else None,
        )

    if p.gateway_intent_id is None:
        return mismatch("missing_intent") if p.status == "succeeded" else None
    intent = intents.get(p.gateway_intent_id)
    if intent is None:
        return mismatch("missing_at_gateway")
    if intent.amount_minor != p.amount_minor:
        return mismatch("amount", intent)
    if intent.currency.upper() != p.currency.upper():
        return mismatch("currency", intent)
    if intent.metadata.get(METADATA_IDEMPOTENCY_KEY) != p.idempotency_key:
        return mismatch("key", intent)
    if (intent.status == "succeeded") != (p.status == "succeeded"):
        return mismatch("status", intent)
    return None


def _apart(intent: IntentInfo) -> GatewayIntent:
    return GatewayIntent(
        intent_id=intent.id,
        status=intent.status,
        subscription_id=intent.metadata.get("subscription_id", ""),
        invoice_id=intent.metadata.get("invoice_id"),
        idempotency_key=intent.metadata.get(METADATA_IDEMPOTENCY_KEY),
        amount_minor=intent.amount_minor,
        currency=intent.currency,
    )


def _missing_periods(
    sub: Subscription, invoiced: set[date], due_before: datetime
) -> list[UnchargedPeriod]:
    """Periods of a billing subscription due before ``due_before`` that have no invoice.

    ``invoiced`` holds the start dates of the subscription's invoices. ``period_index`` in the
    result counts within the subscription's current billing schedule.
    """
    if sub.cancel_at_period_end or sub.next_billing_at is None:
        return []  # nothing more to bill, or it ends with the period it has billed
    if sub.next_billing_at > due_before:
        return []  # up to date: the next charge is not due yet
    interval = Interval(sub.interval)
    # The next due may be the prorated leading piece of an anchor-day schedule (due on its start
    # date, inside the period); the ones after it are the schedule's billing dates.
    first_day = local_date(sub.next_billing_at, sub.timezone)
    first = period_index_containing(sub.anchor_date, interval, max(first_day, sub.anchor_date))
    missing: list[UnchargedPeriod] = []
    for n in range(first, first + MAX_PERIODS_CHECKED):
        if n == first:
            due, day = sub.next_billing_at, first_day
        else:
            day = interval_billing_date(sub.anchor_date, interval, n)
            due = local_midnight_utc(day, sub.timezone)
        if due > due_before:
            break
        if day not in invoiced:
            missing.append(
                UnchargedPeriod(
                    subscription_id=sub.id, period_index=n, reason="not_invoiced", due_date=day
                )
            )
    return missing
