"""Read the facts behind the billing KPIs from the store's tables (SQLite and PostgreSQL).

The definitions live in :mod:`models.kpis` (pure); this module only selects the rows: every
subscription with a period invoice (kind ``period`` or ``period-sN``) whose ``period_start`` falls
in ``[since, until)``, with *all* its period invoices (which one is the first charge depends on
earlier ones), payments and audit entries; plus the audit entries of every other subscription for
the churn figures. Columns are selected explicitly, never whole ORM rows, and the range is applied
in SQL.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import structlog
from sqlalchemy import or_, select
from sqlmodel import col

from activities.store import Store
from activities.tables import AuditLog, Invoice, Payment, Subscription
from models.kpis import (
    AuditFact,
    InvoiceFact,
    KpiReport,
    PaymentFact,
    SubscriptionFact,
    compute_kpis,
    day_start_utc,
)
from models.vocabulary import AuditAction

log = structlog.get_logger(__name__)

# Audit actions the KPIs read (status moves carry to_status; the others are counted).
KPI_ACTIONS = (
    AuditAction.CREATED,
    AuditAction.ACTIVATED,
    AuditAction.RENEWED,
    AuditAction.RECOVERED,
    AuditAction.PAYMENT_FAILED,
    AuditAction.MARKED_UNPAID,
    AuditAction.CANCELED,
    AuditAction.CREATION_FAILED,
)


class KpiFacts:
    """The rows behind one KPI report."""

    def __init__(
        self,
        invoices: list[InvoiceFact],
        payments: list[PaymentFact],
        audit: list[AuditFact],
        subscriptions: list[SubscriptionFact],
    ) -> None:
        self.invoices = invoices
        self.payments = payments
        self.audit = audit
        self.subscriptions = subscriptions


def _details(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    try:
        data: Any = json.loads(raw)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def load_kpi_facts(
    store: Store,
    since: date | None = None,
    until: date | None = None,
    tenant_id: str | None = None,
) -> KpiFacts:
    """The invoices, payments, audit entries and statuses the KPIs of ``[since, until)`` need
    (of one tenant's subscriptions when ``tenant_id`` is given)."""
    period = or_(col(Invoice.kind) == "period", col(Invoice.kind).startswith("period-s"))
    in_range = select(col(Invoice.subscription_id)).where(period)
    if tenant_id is not None:
        in_range = in_range.where(col(Invoice.tenant_id) == tenant_id)
    if since is not None:
        in_range = in_range.where(col(Invoice.period_start) >= since)
    if until is not None:
        in_range = in_range.where(col(Invoice.period_start) < until)
    subs = in_range.distinct().scalar_subquery()

    audit_q = select(
        col(AuditLog.id),
        col(AuditLog.subscription_id),
        col(AuditLog.action),
        col(AuditLog.to_status),
        col(AuditLog.occurred_at),
        col(AuditLog.details),
    ).where(col(AuditLog.action).in_(KPI_ACTIONS))
    if tenant_id is not None:
        audit_q = audit_q.where(col(AuditLog.tenant_id) == tenant_id)
    until_at = day_start_utc(until)
    if until_at is not None:
        # Later entries matter only for the invoices in the range (when were they paid).
        audit_q = audit_q.where(
            or_(col(AuditLog.occurred_at) < until_at, col(AuditLog.subscription_id).in_(subs))
        )
    invoice_q = select(
        col(Invoice.id),
        col(Invoice.subscription_id),
        col(Invoice.period_index),
        col(Invoice.period_start),
        col(Invoice.total_minor),
        col(Invoice.status),
        col(Invoice.issued_at),
    ).where(period, col(Invoice.subscription_id).in_(subs))
    payment_q = select(
        col(Payment.invoice_id),
        col(Payment.subscription_id),
        col(Payment.attempt),
        col(Payment.status),
    ).where(col(Payment.subscription_id).in_(subs))
    subscription_q = select(col(Subscription.id), col(Subscription.status))
    if tenant_id is not None:
        subscription_q = subscription_q.where(col(Subscription.tenant_id) == tenant_id)

    with store.session() as s:
        inv_rows = s.execute(invoice_q).all()
        pay_rows = s.execute(payment_q).all()
        audit_rows = s.execute(audit_q).all()
        sub_rows = s.execute(subscription_q).all()

    facts = KpiFacts(
        invoices=[
            InvoiceFact(
                invoice_id=r[0],
                subscription_id=r[1],
                period_index=r[2],
                period_start=r[3],
                total_minor=r[4],
                status=r[5],
                issued_at=r[6],
            )
            for r in inv_rows
        ],
        payments=[
            PaymentFact(invoice_id=r[0], subscription_id=r[1], attempt=r[2], status=r[3])
            for r in pay_rows
        ],
        audit=[
            AuditFact(
                seq=r[0] or 0,
                subscription_id=r[1],
                action=r[2],
                to_status=r[3],
                occurred_at=r[4],
                details=_details(r[5]),
            )
            for r in audit_rows
        ],
        subscriptions=[SubscriptionFact(subscription_id=r[0], status=r[1]) for r in sub_rows],
    )
    log.debug(
        "kpis.facts_loaded",
        since=since.isoformat() if since else None,
        until=until.isoformat() if until else None,
        invoices=len(facts.invoices),
        payments=len(facts.payments),
        audit=len(facts.audit),
    )
    return facts


def kpi_report(
    store: Store,
    since: date | None = None,
    until: date | None = None,
    tenant_id: str | None = None,
) -> KpiReport:
    """The KPIs of ``[since, until)`` (either bound optional) from the database.

    Raises:
        ValueError: when ``since`` is not before ``until``.
    """
    if since is not None and until is not None and since >= until:
        raise ValueError(f"since ({since}) must be before until ({until})")
    facts = load_kpi_facts(store, since, until, tenant_id)
    return compute_kpis(
        invoices=facts.invoices,
        payments=facts.payments,
        audit=facts.audit,
        subscriptions=facts.subscriptions,
        since=since,
        until=until,
    )
