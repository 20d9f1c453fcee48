"""The store: the only code that reads and writes the business tables.

``Store`` is a plain repository (one transaction per method, every write idempotent through a
unique business key) used by activities and by read-only views in the starter. ``StoreActivities``
exposes its writes to workflows as Temporal activities.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, IntegrityError, ProgrammingError
from sqlmodel import Session, SQLModel, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.notify.outbox import webhook_deliveries
from activities.tables import (
    ApprovalRequest,
    AuditLog,
    CreditLedgerEntry,
    Customer,
    Invoice,
    InvoiceLineRow,
    NotificationRow,
    Payment,
    Refund,
    Subscription,
    utcnow,
)
from models.errors import ErrorCode
from models.identity import DEFAULT_TENANT
from models.subscription import (
    ApprovalRecord,
    AuditEntry,
    CreditEntry,
    InvoiceDraft,
    InvoiceSettlement,
    Notification,
    SubscriptionSnapshot,
    TransitionRecord,
)

log = structlog.get_logger(__name__)

T = TypeVar("T", bound=SQLModel)
F = TypeVar("F", bound=Callable[..., Any])


def data_errors(func: F) -> F:
    """Turn a write the database refuses as data into a non-retryable ``DATA_ERROR``.

    A value too long for its column, a broken constraint or a missing row gets the same answer on
    every retry, so retrying it forever would hold the subscription's locks for nothing. Connection
    problems (``OperationalError``) stay retryable: they heal.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (DataError, IntegrityError, ProgrammingError, LookupError, ValueError) as err:
            log.error("store.data_error", error=type(err).__name__, activity=func.__name__)
            raise ApplicationError(
                f"the database refused the write ({type(err).__name__})",
                type=ErrorCode.DATA_ERROR,
                non_retryable=True,
            ) from err

    return wrapper  # type: ignore[return-value]


class Store:
    """Repository over the business tables; each method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def _insert_once(self, row: T, existing: Callable[[Session], T | None]) -> tuple[T, bool]:
        """Insert ``row`` unless a row with its unique key exists; returns (row, inserted)."""
        with self.session() as s:
            found = existing(s)
            if found is not None:
                return found, False
            s.add(row)
            try:
                s.commit()
                return row, True
            except IntegrityError:
                s.rollback()
        with self.session() as s:  # lost a race with a concurrent insert of the same key
            found = existing(s)
            if found is None:
                raise RuntimeError("insert conflicted but no existing row was found")
            return found, False

    @staticmethod
    def _by(model: type[T], column: Any, value: Any) -> Callable[[Session], T | None]:
        """A lookup of ``model``'s row whose unique ``column`` equals ``value``."""

        def find(s: Session) -> T | None:
            return s.exec(select(model).where(column == value)).first()

        return find

    def _update_by(self, model: type[T], column: Any, value: Any, values: dict[str, Any]) -> T:
        """Set ``values`` (and ``updated_at``) on the row whose unique ``column`` is ``value``."""
        with self.session() as s:
            row = s.exec(select(model).where(column == value)).one()
            for name, new in {**values, "updated_at": utcnow()}.items():
                setattr(row, name, new)
            s.add(row)
            s.commit()
            return row

    # --- customers -----------------------------------------------------------------------

    def upsert_customer(
        self, customer_id: str, email: str, timezone: str, tenant_id: str = DEFAULT_TENANT
    ) -> Customer:
        def existing(s: Session) -> Customer | None:
            return s.get(Customer, customer_id)

        row, _ = self._insert_once(
            Customer(
                id=customer_id,
                email=email,
                timezone=timezone,
                tenant_id=tenant_id,
                created_at=utcnow(),
            ),
            existing,
        )
        return row

    def tenant_of(self, subscription_id: str) -> str:
        """The tenant of a subscription's rows (its row says; the default tenant before it)."""
        with self.session() as s:
            return _tenant(s, subscription_id)

    def get_customer(self, customer_id: str) -> Customer | None:
        with self.session() as s:
            return s.get(Customer, customer_id)

    def set_gateway_customer(self, customer_id: str, gateway_customer_id: str) -> None:
        with self.session() as s:
            row = s.get(Customer, customer_id)
            if row is None:
                raise LookupError(f"customer {customer_id} not found")
            row.gateway_customer_id = gateway_customer_id
            s.add(row)
            s.commit()

    # --- subscriptions and audit ---------------------------------------------------------

    def write_transition(self, rec: TransitionRecord) -> bool:
        """Upsert the subscription row and append the audit entry, in one transaction.

        Returns False when this audit entry was already written (a retried activity).
        """
        with self.session() as s:
            if s.exec(select(AuditLog).where(AuditLog.event_key == rec.audit.event_key)).first():
                return False
            self._apply_snapshot(s, rec.snapshot)
            s.add(_audit_row(rec.audit, rec.snapshot.tenant_id))
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                return False
        return True

    @staticmethod
    def _apply_snapshot(s: Session, snap: SubscriptionSnapshot) -> None:
        row = s.get(Subscription, snap.subscription_id)
        now = utcnow()
        values: dict[str, Any] = {
            "customer_id": snap.customer_id,
            "tenant_id": snap.tenant_id,
            "plan_id": snap.plan_id,
            "interval": snap.interval.value,
            "currency": snap.currency,
            "unit_amount_minor": snap.unit_amount_minor,
            "quantity": snap.quantity,
            "status": snap.status.value,
            "timezone": snap.timezone,
            "anchor_date": snap.anchor,
            "trial_end": snap.trial_end,
            "current_period_start": snap.current_period_start,
            "current_period_end": snap.current_period_end,
            "next_billing_at": snap.next_billing_at,
            "cancel_at_period_end": snap.cancel_at_period_end,
            "canceled_at": snap.canceled_at,
            "payment_method_id": snap.payment_method_id,
            "updated_at": now,
        }
        if row is None:
            s.add(Subscription(id=snap.subscription_id, created_at=now, **values))
        else:
            for key, value in values.items():
                setattr(row, key, value)
            s.add(row)

    def get_subscription(self, subscription_id: str) -> Subscription | None:
        with self.session() as s:
            return s.get(Subscription, subscription_id)

    def list_subscriptions(
        self,
        *,
        status: str | None = None,
        customer_id: str | None = None,
        plan_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
        tenant_id: str | None = None,
    ) -> Sequence[Subscription]:
        q = select(Subscription)
        if tenant_id is not None:
            q = q.where(Subscription.tenant_id == tenant_id)
        if status:
            q = q.where(Subscription.status == status)
        if customer_id:
            q = q.where(Subscription.customer_id == customer_id)
        if plan_id:
            q = q.where(Subscription.plan_id == plan_id)
        q = q.order_by(col(Subscription.created_at).desc(), col(Subscription.id)).offset(offset)
        with self.session() as s:
            return s.exec(q.limit(limit)).all()

    def audit_trail(self, subscription_id: str) -> Sequence[AuditLog]:
        with self.session() as s:
            q = (
                select(AuditLog)
                .where(AuditLog.subscription_id == subscription_id)
                .order_by(col(AuditLog.id))
            )
            return s.exec(q).all()

    # --- invoices ------------------------------------------------------------------------

    def write_invoice(self, draft: InvoiceDraft) -> bool:
        """Write an invoice and its lines once; returns False if it already existed."""
        with self.session() as s:
            if s.get(Invoice, draft.invoice_id) is not None:
                return False
            now = utcnow()
            s.add(
                Invoice(
                    id=draft.invoice_id,
                    tenant_id=_tenant(s, draft.subscription_id),
                    subscription_id=draft.subscription_id,
                    customer_id=draft.customer_id,
                    kind=draft.kind,
                    period_index=draft.period_index,
                    period_start=draft.period_start,
                    period_end=draft.period_end,
                    currency=draft.currency,
                    subtotal_minor=draft.subtotal_minor,
                    credit_applied_minor=draft.credit_applied_minor,
                    total_minor=draft.total_minor,
                    status="paid" if draft.total_minor == 0 else "open",
                    issued_at=draft.issued_at,
                    updated_at=now,
                )
            )
            for position, line in enumerate(draft.lines):
                s.add(
                    InvoiceLineRow(
                        invoice_id=draft.invoice_id,
                        position=position,
                        kind=line.kind.value,
                        description=line.description,
                        amount_minor=line.amount_minor,
                        currency=line.currency,
                        quantity=line.quantity,
                        unit_amount_minor=line.unit_amount_minor,
                        period_start=line.period_start,
                        period_end=line.period_end,
                    )
                )
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                return False
        return True

    def settle_invoice(self, settlement: InvoiceSettlement) -> None:
        with self.session() as s:
            row = s.get(Invoice, settlement.invoice_id)
            if row is None:
                raise LookupError(f"invoice {settlement.invoice_id} not found")
            row.status = settlement.status
            row.payment_intent_id = settlement.payment_intent_id or row.payment_intent_id
            row.updated_at = utcnow()
            s.add(row)
            s.commit()

    def list_invoices(self, subscription_id: str) -> list[tuple[Invoice, list[InvoiceLineRow]]]:
        with self.session() as s:
            invoices = s.exec(
                select(Invoice)
                .where(Invoice.subscription_id == subscription_id)
                .order_by(col(Invoice.period_index), col(Invoice.issued_at))
            ).all()
            ids = [i.id for i in invoices]
            lines = (
                s.exec(
                    select(InvoiceLineRow)
                    .where(col(InvoiceLineRow.invoice_id).in_(ids))
                    .order_by(col(InvoiceLineRow.invoice_id), col(InvoiceLineRow.position))
                ).all()
                if ids
                else []
            )
        by_invoice: dict[str, list[InvoiceLineRow]] = {i: [] for i in ids}
        for line in lines:
            by_invoice[line.invoice_id].append(line)
        return [(inv, by_invoice[inv.id]) for inv in invoices]

    # --- payments ------------------------------------------------------------------------

    def payment_by_key(self, key: str) -> Payment | None:
        with self.session() as s:
            return s.exec(select(Payment).where(Payment.idempotency_key == key)).first()

    def begin_payment(self, payment: Payment) -> Payment:
        """Record a charge attempt before any money moves; returns the existing one on a retry."""
        key = payment.idempotency_key
        payment.tenant_id = self.tenant_of(payment.subscription_id)
        row, _ = self._insert_once(payment, self._by(Payment, Payment.idempotency_key, key))
        return row

    def claim_intent(self, key: str, intent_id: str) -> str:
        """Store ``intent_id`` for the attempt unless one is stored already; the stored id.

        Two executions of one attempt (a timed-out one still running and its retry) may each
        create an intent; only the first stored is ever confirmed.
        """
        with self.session() as s:
            s.execute(
                sa.update(Payment)
                .where(
                    col(Payment.idempotency_key) == key,
                    col(Payment.gateway_intent_id).is_(None),
                )
                .values(gateway_intent_id=intent_id, updated_at=utcnow())
            )
            s.commit()
            stored = s.exec(select(Payment).where(Payment.idempotency_key == key)).one()
            assert stored.gateway_intent_id is not None
            return stored.gateway_intent_id

    def update_payment(self, key: str, **values: Any) -> Payment:
        return self._update_by(Payment, Payment.idempotency_key, key, values)

    def payments(self, subscription_id: str | None = None) -> Sequence[Payment]:
        q = select(Payment).order_by(col(Payment.id))
        if subscription_id:
            q = q.where(Payment.subscription_id == subscription_id)
        with self.session() as s:
            return s.exec(q).all()

    # --- approvals -----------------------------------------------------------------------

    def upsert_approval(self, rec: ApprovalRecord) -> None:
        values = rec.model_dump()
        values["reasons"] = json.dumps(rec.reasons)
        values["groups"] = json.dumps(rec.groups)
        with self.session() as s:
            row = s.get(ApprovalRequest, rec.request_id)
            if row is None:
                tenant = _tenant(s, rec.subscription_id)
                s.add(ApprovalRequest(**values, tenant_id=tenant, updated_at=utcnow()))
            else:
                for key, value in values.items():
                    setattr(row, key, value)
                row.updated_at = utcnow()
                s.add(row)
            s.commit()

    def approvals(
        self,
        *,
        status: str | None = "pending",
        subscription_id: str | None = None,
        tenant_id: str | None = None,
    ) -> Sequence[ApprovalRequest]:
        q = select(ApprovalRequest)
        if tenant_id is not None:
            q = q.where(ApprovalRequest.tenant_id == tenant_id)
        if status:
            q = q.where(ApprovalRequest.status == status)
        if subscription_id:
            q = q.where(ApprovalRequest.subscription_id == subscription_id)
        with self.session() as s:
            return s.exec(q.order_by(col(ApprovalRequest.deadline))).all()

    def approval(self, request_id: str) -> ApprovalRequest | None:
        with self.session() as s:
            return s.get(ApprovalRequest, request_id)

    # --- account credit and refunds -----------------------------------------------------

    def record_credit(self, entry: CreditEntry) -> bool:
        _, inserted = self._insert_once(
            CreditLedgerEntry(
                **entry.model_dump(),
                tenant_id=self.tenant_of(entry.subscription_id),
                created_at=utcnow(),
            ),
            self._by(CreditLedgerEntry, CreditLedgerEntry.entry_key, entry.entry_key),
        )
        return inserted

    def credit_ledger(self, subscription_id: str) -> Sequence[CreditLedgerEntry]:
        with self.session() as s:
            q = (
                select(CreditLedgerEntry)
                .where(CreditLedgerEntry.subscription_id == subscription_id)
                .order_by(col(CreditLedgerEntry.id))
            )
            return s.exec(q).all()

    def begin_refund(self, refund: Refund) -> Refund:
        """Record a refund before the gateway call; returns the existing one on a retry."""
        key = refund.idempotency_key
        refund.tenant_id = self.tenant_of(refund.subscription_id)
        row, _ = self._insert_once(refund, self._by(Refund, Refund.idempotency_key, key))
        return row

    def update_refund(self, key: str, **values: Any) -> Refund:
        return self._update_by(Refund, Refund.idempotency_key, key, values)

    def refunds(self, subscription_id: str) -> Sequence[Refund]:
        with self.session() as s:
            q = (
                select(Refund)
                .where(Refund.subscription_id == subscription_id)
                .order_by(col(Refund.id))
            )
            return s.exec(q).all()

    # --- notifications -------------------------------------------------------------------

    def enqueue_notification(self, n: Notification) -> bool:
        """Put a notice in the outbox, with one webhook delivery per endpoint of its tenant that
        wants its kind, in one transaction (a retried write adds nothing)."""
        with self.session() as s:
            if s.exec(select(NotificationRow).where(NotificationRow.key == n.key)).first():
                return False
            now = utcnow()
            tenant = _tenant(s, n.subscription_id)
            s.add(
                NotificationRow(
                    key=n.key,
                    tenant_id=tenant,
                    subscription_id=n.subscription_id,
                    customer_id=n.customer_id,
                    kind=n.kind,
                    data=json.dumps(n.data, sort_keys=True),
                    scheduled_for=n.scheduled_for,
                    created_at=now,
                )
            )
            for delivery in webhook_deliveries(s, tenant, n, now):
                s.add(delivery)
            try:
                s.commit()
            except IntegrityError:  # written concurrently by a retry of this activity
                s.rollback()
                return False
        return True

    def notifications(self, subscription_id: str) -> Sequence[NotificationRow]:
        with self.session() as s:
            q = (
                select(NotificationRow)
                .where(NotificationRow.subscription_id == subscription_id)
                .order_by(col(NotificationRow.id))
            )
            return s.exec(q).all()

    def count(self, table: type[SQLModel]) -> int:
        with self.session() as s:
            return int(s.exec(select(sa.func.count()).select_from(table)).one())


def _tenant(s: Session, subscription_id: str) -> str:
    tenant = s.exec(
        select(Subscription.tenant_id).where(Subscription.id == subscription_id)
    ).first()
    return tenant or DEFAULT_TENANT


def _audit_row(a: AuditEntry, tenant_id: str) -> AuditLog:
    return AuditLog(
        event_key=a.event_key,
        tenant_id=tenant_id,
        subscription_id=a.subscription_id,
        action=a.action,
        from_status=a.from_status,
        to_status=a.to_status,
        actor=a.actor,
        channel=a.channel,
        request_id=a.request_id,
        reason=a.reason,
        details=json.dumps(a.details, sort_keys=True),
        occurred_at=a.occurred_at,
        recorded_at=utcnow(),
    )


class StoreActivities:
    """Store writes as activities (sync: they run in the worker's thread pool)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @activity.defn(name="store.record_transition")
    @data_errors
    def record_transition(self, rec: TransitionRecord) -> None:
        written = self.store.write_transition(rec)
        log.info(
            "subscription.transition",
            subscription_id=rec.audit.subscription_id,
            action=rec.audit.action,
            from_status=rec.audit.from_status,
            to_status=rec.audit.to_status,
            actor=rec.audit.actor,
            channel=rec.audit.channel,
            duplicate=not written,
        )

    @activity.defn(name="store.write_invoice")
    @data_errors
    def write_invoice(self, draft: InvoiceDraft) -> None:
        written = self.store.write_invoice(draft)
        log.info(
            "invoice.issued",
            invoice_id=draft.invoice_id,
            total_minor=draft.total_minor,
            currency=draft.currency,
            duplicate=not written,
        )

    @activity.defn(name="store.settle_invoice")
    @data_errors
    def settle_invoice(self, settlement: InvoiceSettlement) -> None:
        self.store.settle_invoice(settlement)

    @activity.defn(name="store.record_approval")
    @data_errors
    def record_approval(self, rec: ApprovalRecord) -> None:
        self.store.upsert_approval(rec)
        log.info(
            "approval.recorded",
            request_id=rec.request_id,
            subscription_id=rec.subscription_id,
            status=rec.status,
            escalated=rec.escalated,
        )

    @activity.defn(name="store.record_credit")
    @data_errors
    def record_credit(self, entry: CreditEntry) -> None:
        inserted = self.store.record_credit(entry)
        log.info(
            "credit.recorded",
            subscription_id=entry.subscription_id,
            amount_minor=entry.amount_minor,
            balance_after_minor=entry.balance_after_minor,
            reason=entry.reason,
            duplicate=not inserted,
        )

    @activity.defn(name="store.enqueue_notification")
    @data_errors
    def enqueue_notification(self, n: Notification) -> None:
        inserted = self.store.enqueue_notification(n)
        log.info(
            "notification.queued",
            kind=n.kind,
            subscription_id=n.subscription_id,
            scheduled_for=n.scheduled_for.isoformat(),
            duplicate=not inserted,
        )


def as_utc_iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
