"""Billing KPIs computed from plain facts (pure: no I/O, no clock).

``activities/kpis.py`` reads the facts from the database; this module decides what they mean.

Definitions (a date range is ``[since, until)`` on the invoice's ``period_start``, the local billing
date; for events, on their workflow time in UTC from ``since`` 00:00 UTC to ``until`` 00:00 UTC):

- A *charged invoice* is a period invoice (kind ``period``, or ``period-sN`` after an interval
  change or a pause restarted the period numbering) with ``total_minor > 0``; zero-total invoices
  move no money and are left out of every payment KPI. A subscription's period invoices are
  ordered by billing date (``period_start``), then issue time.
- The *first charge* of a subscription is its first charged invoice (the first period after a
  trial, or the prorated first piece of an anchor-day subscription). A *renewal* is every charged
  invoice after the subscription's first **paid** charged invoice. Invoices issued while the first
  charge was still unpaid (only possible while that first charge is in dunning) belong to a start
  that never succeeded and count as neither; subscriptions refused at start
  (``incomplete_expired``) have a first charge and no renewals.
- ``renewals_due``: renewals in the range. ``renewals_paid``: those paid *within the dunning
  window*: an invoice paid after its subscription was marked ``unpaid`` (the window ended, a later
  card update recovered it) is ``renewals_paid_late`` instead. ``renewals_pending``: still open on a
  subscription that is still collecting (``active`` or ``past_due``), so their outcome is not known
  yet. ``renewal_success_rate = renewals_paid / (renewals_due - renewals_pending)``.
- ``first_attempt_failure_rate``: declined attempt-0 payments / settled attempt-0 payments
  (``succeeded`` or ``declined``) of the charged invoices in the range, first charges included.
- ``recovery_by_step``: for each dunning attempt ``k >= 1`` (the retries, whether scheduled or
  triggered by a new card): succeeded / settled attempts ``k``.
- ``dunning_recovery_rate``: of the charged invoices whose attempt 0 was declined and that entered
  dunning (a declined first charge without a trial refuses the start instead: its invoice is
  ``void``), the share paid within the dunning window.
- ``involuntary_churn``: subscriptions canceled for nonpayment in the range / subscriptions live
  (``trialing``, ``active``, ``past_due``, ``unpaid`` or ``paused``) at some instant of the range.

Enrollment (``enrollment``, over enrollments *started* in the range, UTC days):

- ``time_to_first_value``: from an enrollment's start to its confirmation with an active or
  trialing subscription and the owner's access (the ``enrolled`` event), p50 and p95 in seconds,
  over the enrollments confirmed.
- ``conversion``: confirmed / started, overall and by channel and by plan (the plan chosen last).
- ``verification_failure_rate``: wrong codes / codes checked (wrong + verified).

Every rate is ``None`` when its denominator is zero.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time

from pydantic import BaseModel, ConfigDict, Field

from models.vocabulary import PAID_ACTIONS, AuditAction, PaymentStatus

LIVE_STATUSES = frozenset({"trialing", "active", "past_due", "unpaid", "paused"})
TERMINAL_STATUSES = frozenset({"canceled", "incomplete_expired"})
COLLECTING_STATUSES = frozenset({"active", "past_due"})
SETTLED_PAYMENT_STATUSES = frozenset({PaymentStatus.SUCCEEDED, PaymentStatus.DECLINED})


class InvoiceFact(BaseModel):
    """The columns of one period invoice that KPIs need."""

    model_config = ConfigDict(frozen=True)

    invoice_id: str
    subscription_id: str
    period_index: int  # within its billing schedule
    period_start: date
    total_minor: int
    status: str  # open | paid | uncollectible | void
    issued_at: datetime  # workflow time


class PaymentFact(BaseModel):
    """One charge attempt."""

    model_config = ConfigDict(frozen=True)

    invoice_id: str
    subscription_id: str
    attempt: int
    status: str  # pending | succeeded | declined | processing


class AuditFact(BaseModel):
    """One audit entry (``seq`` orders a subscription's entries as the workflow wrote them)."""

    model_config = ConfigDict(frozen=True)

    seq: int
    subscription_id: str
    action: str
    to_status: str | None
    occurred_at: datetime  # workflow time
    details: dict[str, str] = Field(default_factory=dict)


class SubscriptionFact(BaseModel):
    """A subscription's current status."""

    model_config = ConfigDict(frozen=True)

    subscription_id: str
    status: str


class StepRecovery(BaseModel):
    """How often dunning attempt ``attempt`` collected the money."""

    attempt: int
    attempted: int
    succeeded: int
    rate: float | None


class EnrollmentFact(BaseModel):
    """One enrollment's row, for the enrollment KPIs."""

    model_config = ConfigDict(frozen=True)

    channel: str
    plan_id: str
    status: str
    started_at: datetime
    enrolled_at: datetime | None = None


class Conversion(BaseModel):
    started: int
    enrolled: int
    rate: float | None


class EnrollmentKpis(BaseModel):
    """Sign-ups over the range (module docstring)."""

    started: int
    enrolled: int
    expired: int
    conversion: float | None
    conversion_by_channel: dict[str, Conversion]
    conversion_by_plan: dict[str, Conversion]
    ttv_p50_s: float | None
    ttv_p95_s: float | None
    codes_checked: int
    codes_wrong: int
    verification_failure_rate: float | None


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo), 3)


def compute_enrollment_kpis(
    facts: Sequence[EnrollmentFact], codes_wrong: int, codes_verified: int
) -> EnrollmentKpis:
    """The enrollment KPIs of the enrollments in ``facts`` and their code checks."""

    def convert(group: Iterable[EnrollmentFact]) -> Conversion:
        rows = list(group)
        done = sum(1 for f in rows if f.enrolled_at is not None)
        return Conversion(started=len(rows), enrolled=done, rate=ratio(done, len(rows)))

    by_channel: dict[str, list[EnrollmentFact]] = defaultdict(list)
    by_plan: dict[str, list[EnrollmentFact]] = defaultdict(list)
    for f in facts:
        by_channel[f.channel].append(f)
        by_plan[f.plan_id].append(f)
    ttv = [
        (f.enrolled_at - f.started_at).total_seconds() for f in facts if f.enrolled_at is not None
    ]
    overall = convert(facts)
    checked = codes_wrong + codes_verified
    return EnrollmentKpis(
        started=overall.started,
        enrolled=overall.enrolled,
        expired=sum(1 for f in facts if f.status == "expired"),
        conversion=overall.rate,
        conversion_by_channel={k: convert(v) for k, v in sorted(by_channel.items())},
        conversion_by_plan={k: convert(v) for k, v in sorted(by_plan.items())},
        ttv_p50_s=percentile(ttv, 50),
        ttv_p95_s=percentile(ttv, 95),
        codes_checked=checked,
        codes_wrong=codes_wrong,
        verification_failure_rate=ratio(codes_wrong, checked),
    )


class KpiReport(BaseModel):
    """The KPIs over one range (see the module docstring for each definition)."""

    since: date | None
    until: date | None
    renewals_due: int
    renewals_paid: int
    renewals_paid_late: int
    renewals_pending: int
    renewals_failed: int
    renewal_success_rate: float | None
    first_charges_due: int
    first_charges_paid: int
    first_charge_success_rate: float | None
    first_attempts: int
    first_attempt_failures: int
    first_attempt_failure_rate: float | None
    recovery_by_step: list[StepRecovery]
    dunning_entered: int
    dunning_recovered: int
    dunning_recovery_rate: float | None
    subscriptions_live: int
    involuntary_churned: int
    involuntary_churn: float | None
    voluntary_cancellations: int
    marked_unpaid: int
    invoices: int
    payments: int
    enrollment: EnrollmentKpis | None = None


def ratio(numerator: int, denominator: int) -> float | None:
    """``numerator / denominator`` rounded to 6 places, None for an empty denominator."""
    return round(numerator / denominator, 6) if denominator else None


def day_start_utc(day: date | None) -> datetime | None:
    """00:00 UTC of ``day`` (range bounds for events)."""
    return datetime.combine(day, time(), tzinfo=UTC) if day is not None else None


def in_date_range(day: date, since: date | None, until: date | None) -> bool:
    return (since is None or day >= since) and (until is None or day < until)


def in_instant_range(at: datetime, since: datetime | None, until: datetime | None) -> bool:
    return (since is None or at >= since) and (until is None or at < until)


class _Classified(BaseModel):
    first_charges: list[InvoiceFact] = Field(default_factory=list)
    renewals: list[InvoiceFact] = Field(default_factory=list)


def billing_order(invoices: Iterable[InvoiceFact]) -> dict[str, int]:
    """Each invoice's rank among its subscription's period invoices, in billing order.

    Period indexes restart when a new billing schedule starts, so the order is by billing date,
    then issue time (workflow time), then index.
    """
    by_sub: dict[str, list[InvoiceFact]] = defaultdict(list)
    for inv in invoices:
        by_sub[inv.subscription_id].append(inv)
    rank: dict[str, int] = {}
    for items in by_sub.values():
        items.sort(key=lambda i: (i.period_start, i.issued_at, i.period_index))
        rank.update((inv.invoice_id, n) for n, inv in enumerate(items))
    return rank


def classify_invoices(invoices: Iterable[InvoiceFact], rank: dict[str, int]) -> _Classified:
    """Split every subscription's charged invoices into first charges and renewals."""
    by_sub: dict[str, list[InvoiceFact]] = defaultdict(list)
    for inv in invoices:
        if inv.total_minor > 0:
            by_sub[inv.subscription_id].append(inv)
    out = _Classified()
    for items in by_sub.values():
        items.sort(key=lambda i: rank[i.invoice_id])
        out.first_charges.append(items[0])
        first_paid = next((rank[i.invoice_id] for i in items if i.status == "paid"), None)
        if first_paid is not None:
            out.renewals.extend(i for i in items if rank[i.invoice_id] > first_paid)
    return out


def paid_late(invoice: InvoiceFact, audit: Sequence[AuditFact], rank: dict[str, int]) -> bool:
    """True when ``invoice`` (paid) was paid only after its subscription was marked unpaid.

    Collection is strictly oldest first, so the entry that closes an invoice's collection is the
    first one that reports a payment of it or of a later invoice, or a failure of a later invoice.
    The invoice was paid late when a ``marked_unpaid`` entry lies between its issue and that entry.

    Args:
        invoice: a paid invoice.
        audit: the subscription's audit entries, ordered by ``seq``.
        rank: every known invoice's place in its subscription's billing order.
    """
    p = rank[invoice.invoice_id]
    closing_seq: int | None = None
    for entry in audit:
        other = rank.get(entry.details.get("invoice_id", ""))
        if other is None:
            continue
        if (entry.action in PAID_ACTIONS and other >= p) or (
            entry.action == AuditAction.PAYMENT_FAILED and other > p
        ):
            closing_seq = entry.seq
            break
    if closing_seq is None:
        return False
    return any(
        e.action == "marked_unpaid" and e.seq < closing_seq and e.occurred_at >= invoice.issued_at
        for e in audit
    )


def _live_span(audit: Sequence[AuditFact]) -> tuple[datetime, datetime | None] | None:
    """When a subscription first became live and when it ended (None: still live / never)."""
    start = next((e.occurred_at for e in audit if e.to_status in LIVE_STATUSES), None)
    if start is None:
        return None
    end = next((e.occurred_at for e in audit if e.to_status in TERMINAL_STATUSES), None)
    return start, end


def compute_kpis(
    *,
    invoices: Sequence[InvoiceFact],
    payments: Sequence[PaymentFact],
    audit: Sequence[AuditFact],
    subscriptions: Sequence[SubscriptionFact],
    since: date | None = None,
    until: date | None = None,
) -> KpiReport:
    """The KPIs of ``[since, until)`` from the facts of every subscription concerned.

    ``invoices`` must hold *all* invoices of the subscriptions concerned, not only those in the
    range: which invoice is a subscription's first charge depends on the earlier ones.
    """
    if since is not None and until is not None and since >= until:
        raise ValueError(f"since ({since}) must be before until ({until})")
    status_of = {s.subscription_id: s.status for s in subscriptions}
    audit_of: dict[str, list[AuditFact]] = defaultdict(list)
    for entry in sorted(audit, key=lambda e: e.seq):
        audit_of[entry.subscription_id].append(entry)
    rank = billing_order(invoices)

    classified = classify_invoices(invoices, rank)
    first = [i for i in classified.first_charges if in_date_range(i.period_start, since, until)]
    renewals = [i for i in classified.renewals if in_date_range(i.period_start, since, until)]

    def paid_in_window(inv: InvoiceFact) -> bool:
        return inv.status == "paid" and not paid_late(inv, audit_of[inv.subscription_id], rank)

    renewals_paid = sum(1 for i in renewals if paid_in_window(i))
    renewals_late = sum(1 for i in renewals if i.status == "paid") - renewals_paid
    renewals_pending = sum(
        1
        for i in renewals
        if i.status == "open" and status_of.get(i.subscription_id) in COLLECTING_STATUSES
    )
    first_paid = sum(1 for i in first if paid_in_window(i))
    first_pending = sum(
        1
        for i in first
        if i.status == "open" and status_of.get(i.subscription_id) in COLLECTING_STATUSES
    )

    charged = {i.invoice_id: i for i in invoices if i.total_minor > 0}
    in_range = {
        inv_id for inv_id, inv in charged.items() if in_date_range(inv.period_start, since, until)
    }
    settled = [
        p for p in payments if p.invoice_id in in_range and p.status in SETTLED_PAYMENT_STATUSES
    ]
    attempts0 = [p for p in settled if p.attempt == 0]
    failures0 = [p for p in attempts0 if p.status == "declined"]
    steps: dict[int, list[PaymentFact]] = defaultdict(list)
    for p in settled:
        if p.attempt >= 1:
            steps[p.attempt].append(p)
    recovery = [
        StepRecovery(
            attempt=k,
            attempted=len(ps),
            succeeded=(ok := sum(1 for p in ps if p.status == "succeeded")),
            rate=ratio(ok, len(ps)),
        )
        for k, ps in sorted(steps.items())
    ]
    # A refused start (its first charge declined: invoice void) never enters dunning.
    entered = {p.invoice_id for p in failures0 if charged[p.invoice_id].status != "void"}
    recovered = sum(1 for inv_id in entered if paid_in_window(charged[inv_id]))

    since_at, until_at = day_start_utc(since), day_start_utc(until)
    live = 0
    involuntary = 0
    voluntary = 0
    unpaid = 0
    for entries in audit_of.values():
        span = _live_span(entries)
        if span is not None:
            start, end = span
            if (until_at is None or start < until_at) and (
                since_at is None or end is None or end >= since_at
            ):
                live += 1
        for e in entries:
            if not in_instant_range(e.occurred_at, since_at, until_at):
                continue
            if e.action == "canceled":
                if e.details.get("mode") == "nonpayment":
                    involuntary += 1
                else:
                    voluntary += 1
            elif e.action == "marked_unpaid":
                unpaid += 1

    settled_renewals = len(renewals) - renewals_pending
    return KpiReport(
        since=since,
        until=until,
        renewals_due=len(renewals),
        renewals_paid=renewals_paid,
        renewals_paid_late=renewals_late,
        renewals_pending=renewals_pending,
        renewals_failed=settled_renewals - renewals_paid - renewals_late,
        renewal_success_rate=ratio(renewals_paid, settled_renewals),
        first_charges_due=len(first),
        first_charges_paid=first_paid,
        first_charge_success_rate=ratio(first_paid, len(first) - first_pending),
        first_attempts=len(attempts0),
        first_attempt_failures=len(failures0),
        first_attempt_failure_rate=ratio(len(failures0), len(attempts0)),
        recovery_by_step=recovery,
        dunning_entered=len(entered),
        dunning_recovered=recovered,
        dunning_recovery_rate=ratio(recovered, len(entered)),
        subscriptions_live=live,
        involuntary_churned=involuntary,
        involuntary_churn=ratio(involuntary, live),
        voluntary_cancellations=voluntary,
        marked_unpaid=unpaid,
        invoices=len(in_range),
        payments=len(settled),
    )
