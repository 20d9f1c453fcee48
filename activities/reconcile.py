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

- ``charges_after_cancel``: a charge (a payment that succeeded in the books or at the gateway)
  of a canceled subscription that should not have happened. The cancellation is the first audit
  row moving the subscription to ``canceled``: its ``occurred_at`` is the workflow instant it took
  effect, its ``recorded_at`` the database's clock then, and its ``mode`` detail says how
  (``now``, ``at_period_end``, ``nonpayment``). A charge counts when the period invoice it pays
  starts after the cancellation date (on or after it for a period-end cancellation: that period
  was never to be served), when its invoice was issued after the cancellation took effect
  (workflow time), or when its payment row was created after the cancellation row was recorded
  (both database clocks). An early termination fee is charged because of the cancellation and
  never counts.
- ``credit_mismatches``: a subscription whose account credit in its workflow's state differs from
  the sum of its ``credit_ledger`` entries (checked only for the subscriptions whose state the
  caller passes in ``workflow_credits``).
- ``refunds_over_payment``: a payment whose refunds (succeeded or pending: the money may have
  moved) add up to more than what was paid; a refund of a payment that never succeeded counts too.

Only intents whose ``subscription_id`` metadata names a subscription of this database are
considered (``foreign_intents`` counts the others), so a gateway account shared with other
databases (tests, other environments) does not pollute the report.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import structlog
from pydantic import BaseModel, Field
from sqlmodel import select

from activities.gateway import METADATA_IDEMPOTENCY_KEY, IntentInfo
from activities.gateway_port import PaymentGateway
from activities.store import Store
from activities.tables import (
    AuditLog,
    CreditLedgerEntry,
    Invoice,
    InvoiceLineRow,
    Payment,
    Refund,
    Subscription,
)
from models.calendar import (
    Interval,
    interval_billing_date,
    local_date,
    local_midnight_utc,
    period_index_containing,
)
from models.invoice import LineKind

log = structlog.get_logger(__name__)

BILLING_STATUSES = frozenset({"active", "trialing"})
CANCELED = "canceled"
# Refund rows whose money may have left: a pending one may have reached the gateway.
LIVE_REFUND_STATUSES = frozenset({"succeeded", "pending"})
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


class ChargeAfterCancel(BaseModel):
    """A charge of a canceled subscription that should not have happened."""

    subscription_id: str
    invoice_id: str
    reason: str  # period_after_cancel | invoiced_after_cancel | charged_after_cancel
    amount_minor: int
    currency: str
    canceled_at: datetime  # workflow time the cancellation took effect
    cancel_mode: str
    intent_id: str | None = None
    idempotency_key: str | None = None


class CreditMismatch(BaseModel):
    """A subscription whose credit balance in workflow state is not what its ledger adds up to."""

    subscription_id: str
    workflow_credit_minor: int
    ledger_credit_minor: int
    ledger_entries: int


class RefundOverPayment(BaseModel):
    """A payment refunded for more than was paid."""

    intent_id: str
    subscription_id: str
    paid_minor: int
    refunded_minor: int
    refund_keys: list[str]


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
    charges_after_cancel: list[ChargeAfterCancel] = Field(default_factory=list)
    credit_mismatches: list[CreditMismatch] = Field(default_factory=list)
    refunds_over_payment: list[RefundOverPayment] = Field(default_factory=list)
    cancellations_checked: int = 0
    credits_checked: int = Field(default=0, description="subscriptions whose credit was compared")
    refunds_checked: int = 0

    @property
    def ok(self) -> bool:
        return not (
            self.mismatches
            or self.double_charges
            or self.uncharged_periods
            or self.unrecorded_charges
            or self.charges_after_cancel
            or self.credit_mismatches
            or self.refunds_over_payment
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
            "charges_after_cancel": len(self.charges_after_cancel),
            "credit_mismatches": len(self.credit_mismatches),
            "refunds_over_payment": len(self.refunds_over_payment),
        }


@dataclass
class Books:
    """Everything reconciliation reads from the database."""

    payments: list[Payment] = field(default_factory=list)
    invoices: list[Invoice] = field(default_factory=list)
    subscriptions: list[Subscription] = field(default_factory=list)
    audit: list[AuditLog] = field(default_factory=list)
    invoice_lines: list[InvoiceLineRow] = field(default_factory=list)
    credits: list[CreditLedgerEntry] = field(default_factory=list)
    refunds: list[Refund] = field(default_factory=list)

    @property
    def subscription_ids(self) -> set[str]:
        """Every subscription the books mention."""
        return {sub.id for sub in self.subscriptions} | {p.subscription_id for p in self.payments}


def load_books(store: Store) -> Books:
    """Read every table reconciliation needs (the audit log only for cancellations)."""
    with store.session() as s:
        return Books(
            payments=list(s.exec(select(Payment)).all()),
            invoices=list(s.exec(select(Invoice)).all()),
            subscriptions=list(s.exec(select(Subscription)).all()),
            audit=list(s.exec(select(AuditLog).where(AuditLog.to_status == CANCELED)).all()),
            invoice_lines=list(
                s.exec(
                    select(InvoiceLineRow).where(
                        InvoiceLineRow.kind == LineKind.EARLY_TERMINATION_FEE.value
                    )
                ).all()
            ),
            credits=list(s.exec(select(CreditLedgerEntry)).all()),
            refunds=list(s.exec(select(Refund)).all()),
        )


def reconcile(
    store: Store,
    gateway: PaymentGateway,
    now: datetime,
    *,
    grace: timedelta = DEFAULT_GRACE,
    workflow_credits: Mapping[str, int] | None = None,
) -> ReconciliationReport:
    """Compare every payment, invoice and billing subscription with the gateway's intents.

    Args:
        store: the database.
        gateway: the gateway the payments went to (every intent is listed: a full scan).
        now: the instant periods are judged due against (the workflows' clock: virtual time in a
            simulation).
        grace: a period due less than this before ``now`` may still be being invoiced; it is not
            reported.
        workflow_credits: account credit per subscription as its workflow's state reports it;
            compared with the credit ledger (None: not compared).
    """
    books = load_books(store)
    known = books.subscription_ids
    ours: list[IntentInfo] = []
    foreign = 0
    for intent in gateway.list_payment_intents():
        if intent.metadata.get("subscription_id") in known:
            ours.append(intent)
        else:
            foreign += 1
    report = compare_books(books, ours, now=now, grace=grace, workflow_credits=workflow_credits)
    report.foreign_intents = foreign
    log.info(
        "reconcile.done", checked_at=now.isoformat(), foreign_intents=foreign, **report.summary()
    )
    return report


def compare_books(
    books: Books,
    intents: Iterable[IntentInfo],
    *,
    now: datetime,
    grace: timedelta = DEFAULT_GRACE,
    workflow_credits: Mapping[str, int] | None = None,
) -> ReconciliationReport:
    """The whole reconciliation of books already read (no I/O); see :func:`reconcile`."""
    intents = list(intents)
    report = compare(
        payments=books.payments,
        invoices=books.invoices,
        subscriptions=books.subscriptions,
        intents=intents,
        now=now,
        grace=grace,
    )
    report.charges_after_cancel = charges_after_cancel(books, intents)
    report.cancellations_checked = len(cancellations(books.audit, books.subscriptions))
    if workflow_credits is not None:
        report.credit_mismatches = credit_mismatches(books.credits, workflow_credits)
        report.credits_checked = len(workflow_credits)
    report.refunds_over_payment = refunds_over_payment(books.refunds, books.payments, intents)
    report.refunds_checked = len(books.refunds)
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
    """The reconciliation of payments, invoices and periods (no I/O); see :func:`reconcile`."""
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


# --- cancellations, credit, refunds -----------------------------------------------------------


@dataclass(frozen=True)
class Cancellation:
    """When and how a subscription was canceled, from its audit row."""

    at: datetime  # workflow time it took effect
    recorded_at: datetime  # the database's clock when the row was written
    day: date  # the local date it took effect
    mode: str  # now | at_period_end | nonpayment | ...


def cancellations(
    audit: Iterable[AuditLog], subscriptions: Iterable[Subscription]
) -> dict[str, Cancellation]:
    """The first move to ``canceled`` of each subscription (rows of other actions are ignored)."""
    zones = {sub.id: sub.timezone for sub in subscriptions}
    found: dict[str, Cancellation] = {}
    rows = sorted(
        (r for r in audit if r.to_status == CANCELED and r.from_status != CANCELED),
        key=lambda r: (r.occurred_at, r.id or 0),
    )
    for row in rows:
        if row.subscription_id in found:
            continue
        try:
            mode = str(json.loads(row.details or "{}").get("mode", ""))
        except (ValueError, AttributeError):
            mode = ""
        found[row.subscription_id] = Cancellation(
            at=row.occurred_at,
            recorded_at=row.recorded_at,
            day=local_date(row.occurred_at, zones.get(row.subscription_id, "UTC")),
            mode=mode,
        )
    return found


@dataclass(frozen=True)
class _Charge:
    subscription_id: str
    invoice_id: str
    amount_minor: int
    currency: str
    intent_id: str | None
    idempotency_key: str | None
    created_at: datetime | None  # the payment row's creation (None: unrecorded at the gateway)


def _charges(payments: Iterable[Payment], intents: Iterable[IntentInfo]) -> list[_Charge]:
    """Money taken: payments that succeeded in the books or at the gateway, and unrecorded ones."""
    intents = list(intents)
    by_id = {i.id: i for i in intents}
    charges: list[_Charge] = []
    referenced: set[str] = set()
    for p in payments:
        intent = by_id.get(p.gateway_intent_id) if p.gateway_intent_id else None
        if p.gateway_intent_id:
            referenced.add(p.gateway_intent_id)
        if p.status != "succeeded" and (intent is None or intent.status != "succeeded"):
            continue
        charges.append(
            _Charge(
                subscription_id=p.subscription_id,
                invoice_id=p.invoice_id,
                amount_minor=p.amount_minor,
                currency=p.currency,
                intent_id=p.gateway_intent_id,
                idempotency_key=p.idempotency_key,
                created_at=p.created_at,
            )
        )
    for intent in intents:
        if intent.status == "succeeded" and intent.id not in referenced:
            charges.append(
                _Charge(
                    subscription_id=intent.metadata.get("subscription_id", ""),
                    invoice_id=intent.metadata.get("invoice_id", ""),
                    amount_minor=intent.amount_minor,
                    currency=intent.currency,
                    intent_id=intent.id,
                    idempotency_key=intent.metadata.get(METADATA_IDEMPOTENCY_KEY),
                    created_at=None,
                )
            )
    return charges


def charges_after_cancel(books: Books, intents: Iterable[IntentInfo]) -> list[ChargeAfterCancel]:
    """Charges of canceled subscriptions made after the cancellation (see the module docstring)."""
    canceled = cancellations(books.audit, books.subscriptions)
    if not canceled:
        return []
    invoices = {inv.id: inv for inv in books.invoices}
    fee_invoices = {
        line.invoice_id
        for line in books.invoice_lines
        if line.kind == LineKind.EARLY_TERMINATION_FEE.value
    }
    found: list[ChargeAfterCancel] = []
    for charge in _charges(books.payments, intents):
        cancel = canceled.get(charge.subscription_id)
        if cancel is None or charge.invoice_id in fee_invoices:
            continue
        reason = _after_cancel_reason(charge, invoices.get(charge.invoice_id), cancel)
        if reason is None:
            continue
        found.append(
            ChargeAfterCancel(
                subscription_id=charge.subscription_id,
                invoice_id=charge.invoice_id,
                reason=reason,
                amount_minor=charge.amount_minor,
                currency=charge.currency,
                canceled_at=cancel.at,
                cancel_mode=cancel.mode,
                intent_id=charge.intent_id,
                idempotency_key=charge.idempotency_key,
            )
        )
    return found


def _after_cancel_reason(
    charge: _Charge, invoice: Invoice | None, cancel: Cancellation
) -> str | None:
    if invoice is not None:
        period = invoice.kind.startswith("period")
        if period and (
            invoice.period_start > cancel.day
            or (cancel.mode == "at_period_end" and invoice.period_start >= cancel.day)
        ):
            return "period_after_cancel"
        if invoice.issued_at > cancel.at:
            return "invoiced_after_cancel"
    if charge.created_at is not None and charge.created_at > cancel.recorded_at:
        return "charged_after_cancel"
    return None


def credit_mismatches(
    ledger: Iterable[CreditLedgerEntry], workflow_credits: Mapping[str, int]
) -> list[CreditMismatch]:
    """Subscriptions whose credit in workflow state differs from the sum of their ledger entries."""
    sums: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    for entry in ledger:
        sums[entry.subscription_id] += entry.amount_minor
        counts[entry.subscription_id] += 1
    return [
        CreditMismatch(
            subscription_id=sub,
            workflow_credit_minor=credit,
            ledger_credit_minor=sums.get(sub, 0),
            ledger_entries=counts.get(sub, 0),
        )
        for sub, credit in sorted(workflow_credits.items())
        if credit != sums.get(sub, 0)
    ]


def refunds_over_payment(
    refunds: Iterable[Refund], payments: Iterable[Payment], intents: Iterable[IntentInfo]
) -> list[RefundOverPayment]:
    """Payments refunded for more than was paid (the gateway's intent is the truth when listed)."""
    by_intent: dict[str, list[Refund]] = defaultdict(list)
    for r in refunds:
        if r.status in LIVE_REFUND_STATUSES:
            by_intent[r.gateway_intent_id].append(r)
    gateway = {i.id: i for i in intents}
    booked: dict[str, int] = {}
    for p in payments:
        if p.gateway_intent_id and p.status == "succeeded":
            booked[p.gateway_intent_id] = p.amount_minor
    found: list[RefundOverPayment] = []
    for intent_id, rows in sorted(by_intent.items()):
        intent = gateway.get(intent_id)
        if intent is not None:
            paid = intent.amount_minor if intent.status == "succeeded" else 0
        else:
            paid = booked.get(intent_id, 0)
        refunded = sum(r.amount_minor for r in rows)
        if refunded > paid:
            found.append(
                RefundOverPayment(
                    intent_id=intent_id,
                    subscription_id=rows[0].subscription_id,
                    paid_minor=paid,
                    refunded_minor=refunded,
                    refund_keys=sorted(r.idempotency_key for r in rows),
                )
            )
    return found
