"""SQL tables: the durable business records. Only the store (and migrations) import these.

Amounts are integers in minor units with their currency; instants are UTC; local billing dates are
DATE columns. Every write path is idempotent through a unique business key.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from models.identity import DEFAULT_TENANT


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC instants on every backend (SQLite keeps no offset, so restore it)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where a UTC instant is required")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(**kw: object) -> object:
    return Field(sa_column=sa.Column(UTCDateTime(), **kw))  # type: ignore[arg-type]


def tenant_field() -> object:
    """The tenant a business row belongs to (rows from before tenants: the default tenant)."""
    return Field(
        default=DEFAULT_TENANT,
        max_length=64,
        index=True,
        sa_column_kwargs={"server_default": DEFAULT_TENANT},
    )


class Customer(SQLModel, table=True):
    """A customer record. ``name``, ``phone`` and ``country`` come from enrollment (optional);
    ``account_tenant_id`` is the customer's own tenant id, unique, given at enrollment."""

    __tablename__ = "customers"
    __table_args__ = (
        sa.UniqueConstraint("account_tenant_id", name="uq_customers_account_tenant_id"),
    )

    id: str = Field(primary_key=True, max_length=64)
    tenant_id: str = tenant_field()  # type: ignore[assignment]
    email: str = Field(index=True, max_length=320)
    timezone: str = Field(max_length=64, default="UTC")
    locale: str = Field(default="en", max_length=16, sa_column_kwargs={"server_default": "en"})
    gateway_customer_id: str | None = Field(default=None, max_length=64)
    name: str | None = Field(default=None, max_length=200)
    phone: str | None = Field(default=None, max_length=32)  # E.164
    country: str | None = Field(default=None, max_length=2)  # ISO 3166-1 alpha-2
    account_tenant_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = _ts(nullable=False)  # type: ignore[assignment]


class Subscription(SQLModel, table=True):
    __tablename__ = "subscriptions"

    id: str = Field(primary_key=True, max_length=64)
    tenant_id: str = tenant_field()  # type: ignore[assignment]
    customer_id: str = Field(index=True, max_length=64)
    plan_id: str = Field(index=True, max_length=64)
    interval: str = Field(max_length=16)
    currency: str = Field(max_length=3)
    unit_amount_minor: int = Field(sa_type=sa.BigInteger)
    quantity: int = 1
    status: str = Field(index=True, max_length=32)
    timezone: str = Field(max_length=64)
    anchor_date: date
    trial_end: date | None = None
    current_period_start: date | None = None
    current_period_end: date | None = None
    next_billing_at: datetime | None = _ts(nullable=True)  # type: ignore[assignment]
    cancel_at_period_end: bool = False
    canceled_at: datetime | None = _ts(nullable=True)  # type: ignore[assignment]
    payment_method_id: str = Field(max_length=64)
    created_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
    updated_at: datetime = _ts(nullable=False)  # type: ignore[assignment]


class Invoice(SQLModel, table=True):
    __tablename__ = "invoices"
    __table_args__ = (sa.UniqueConstraint("subscription_id", "period_index", "kind"),)

    id: str = Field(primary_key=True, max_length=96)
    tenant_id: str = tenant_field()  # type: ignore[assignment]
    subscription_id: str = Field(index=True, max_length=64)
    customer_id: str = Field(index=True, max_length=64)
    kind: str = Field(default="period", max_length=16)
    period_index: int
    period_start: date
    period_end: date
    currency: str = Field(max_length=3)
    subtotal_minor: int = Field(sa_type=sa.BigInteger)
    credit_applied_minor: int = Field(sa_type=sa.BigInteger, default=0)
    total_minor: int = Field(sa_type=sa.BigInteger)
    status: str = Field(max_length=16, default="open")  # open | paid | uncollectible | void
    payment_intent_id: str | None = Field(default=None, max_length=64)
    issued_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
    updated_at: datetime = _ts(nullable=False)  # type: ignore[assignment]


class InvoiceLineRow(SQLModel, table=True):
    __tablename__ = "invoice_lines"
    __table_args__ = (sa.UniqueConstraint("invoice_id", "position"),)

    id: int | None = Field(default=None, primary_key=True)
    invoice_id: str = Field(index=True, max_length=96)
    position: int
    kind: str = Field(max_length=32)
    description: str = Field(max_length=500)
    amount_minor: int = Field(sa_type=sa.BigInteger)
    currency: str = Field(max_length=3)
    quantity: int = 1
    unit_amount_minor: int | None = Field(default=None, sa_type=sa.BigInteger)
    period_start: date | None = None
    period_end: date | None = None


class Payment(SQLModel, table=True):
    __tablename__ = "payments"

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: str = tenant_field()  # type: ignore[assignment]
    idempotency_key: str = Field(unique=True, max_length=160)
    invoice_id: str = Field(index=True, max_length=96)
    subscription_id: str = Field(index=True, max_length=64)
    attempt: int = 0
    gateway_intent_id: str | None = Field(default=None, max_length=64)
    amount_minor: int = Field(sa_type=sa.BigInteger)
    currency: str = Field(max_length=3)
    status: str = Field(max_length=24)  # pending | succeeded | declined | processing
    decline_code: str | None = Field(default=None, max_length=64)
    decline_category: str | None = Field(default=None, max_length=32)
    failure_message: str | None = Field(default=None, max_length=500)
    created_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
    updated_at: datetime = _ts(nullable=False)  # type: ignore[assignment]


class AuditLog(SQLModel, table=True):
    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: str = tenant_field()  # type: ignore[assignment]
    event_key: str = Field(unique=True, max_length=200)
    subscription_id: str = Field(index=True, max_length=64)
    action: str = Field(max_length=64)
    from_status: str | None = Field(default=None, max_length=32)
    to_status: str | None = Field(default=None, max_length=32)
    actor: str = Field(max_length=200)
    channel: str = Field(max_length=32)
    request_id: str | None = Field(default=None, max_length=200)
    reason: str | None = Field(default=None, max_length=500)
    details: str = Field(default="{}", sa_type=sa.Text)
    occurred_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
    recorded_at: datetime = _ts(nullable=False)  # type: ignore[assignment]


class NotificationRow(SQLModel, table=True):
    """The outbox: one e-mail to send, written with the change that causes it.

    The relay (activities/notify/relay.py) claims due rows (``claimed_until`` is its lease, so a
    killed relay's claims lapse), sends, and marks them ``sent``; a transient failure retries at
    ``next_attempt_at``; a permanent one, or too many attempts, ends ``dead`` with ``last_error``.
    ``skipped``: nothing to send (no address, or a kind nobody receives by e-mail).
    """

    __tablename__ = "notifications"

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: str = tenant_field()  # type: ignore[assignment]
    key: str = Field(unique=True, max_length=200)
    subscription_id: str = Field(index=True, max_length=64)
    customer_id: str = Field(max_length=64)
    kind: str = Field(max_length=32)
    channel: str = Field(default="email", max_length=16)
    status: str = Field(default="pending", index=True, max_length=16)
    data: str = Field(default="{}", sa_type=sa.Text)
    scheduled_for: datetime = _ts(nullable=False)  # type: ignore[assignment]
    created_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    next_attempt_at: datetime | None = _ts(nullable=True)  # type: ignore[assignment]
    claimed_until: datetime | None = _ts(nullable=True)  # type: ignore[assignment]
    sent_at: datetime | None = _ts(nullable=True)  # type: ignore[assignment]
    message_id: str | None = Field(default=None, max_length=200)
    last_error: str | None = Field(default=None, max_length=500)


class CreditLedgerEntry(SQLModel, table=True):
    """Account credit movements: granted (+) by proration credits, consumed (-) by invoices."""

    __tablename__ = "credit_ledger"

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: str = tenant_field()  # type: ignore[assignment]
    entry_key: str = Field(unique=True, max_length=200)
    customer_id: str = Field(index=True, max_length=64)
    subscription_id: str = Field(index=True, max_length=64)
    amount_minor: int = Field(sa_type=sa.BigInteger)
    currency: str = Field(max_length=3)
    balance_after_minor: int = Field(sa_type=sa.BigInteger)
    reason: str = Field(max_length=200)
    invoice_id: str | None = Field(default=None, max_length=96)
    created_at: datetime = _ts(nullable=False)  # type: ignore[assignment]


class Refund(SQLModel, table=True):
    __tablename__ = "refunds"

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: str = tenant_field()  # type: ignore[assignment]
    idempotency_key: str = Field(unique=True, max_length=160)
    subscription_id: str = Field(index=True, max_length=64)
    invoice_id: str | None = Field(default=None, max_length=96)
    gateway_intent_id: str = Field(max_length=64)
    gateway_refund_id: str | None = Field(default=None, max_length=64)
    amount_minor: int = Field(sa_type=sa.BigInteger)
    currency: str = Field(max_length=3)
    status: str = Field(max_length=24)  # pending | succeeded | failed
    reason: str = Field(default="", max_length=200)
    created_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
    updated_at: datetime = _ts(nullable=False)  # type: ignore[assignment]


class ApprovalRequest(SQLModel, table=True):
    """Approval requests as approvers see them (a projection; the workflow decides)."""

    __tablename__ = "approval_requests"

    request_id: str = Field(primary_key=True, max_length=200)
    tenant_id: str = tenant_field()  # type: ignore[assignment]
    subscription_id: str = Field(index=True, max_length=64)
    kind: str = Field(max_length=16)
    summary: str = Field(max_length=500)
    reasons: str = Field(default="[]", sa_type=sa.Text)
    groups: str = Field(default="[]", sa_type=sa.Text)
    status: str = Field(index=True, max_length=16)  # pending | approved | rejected | expired | ...
    escalated: bool = False
    requested_by: str = Field(max_length=200)
    requested_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
    deadline: datetime = _ts(nullable=False)  # type: ignore[assignment]
    decided_by: str | None = Field(default=None, max_length=200)
    decision_reason: str | None = Field(default=None, max_length=500)
    updated_at: datetime = _ts(nullable=False)  # type: ignore[assignment]


class ClockRecord(SQLModel, table=True):
    """A test clock (dev and test deployments only, see starter/clock.py).

    The clock reads ``now`` at the wall-clock instant ``synced_at`` and runs at wall-clock speed
    from there, as the virtual time of the workflows attached to it does.
    """

    __tablename__ = "test_clocks"

    clock_id: str = Field(primary_key=True, max_length=64)
    now: datetime = _ts(nullable=False)  # type: ignore[assignment]
    synced_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
    created_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
    updated_at: datetime = _ts(nullable=False)  # type: ignore[assignment]


class Tenant(SQLModel, table=True):
    """A tenant: every business row names one; another tenant's rows do not exist for a caller."""

    __tablename__ = "tenants"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    created_at: datetime = _ts(nullable=False)  # type: ignore[assignment]


class PrincipalRow(SQLModel, table=True):
    """The principal store: who a credential stands for, its tenant, role and memberships.

    Credentials name a principal by id; its role, groups and accounts are read from here on every
    request, so a change (or ``disabled_at``) takes effect at once and a token cannot widen them.
    """

    __tablename__ = "principals"

    id: str = Field(primary_key=True, max_length=64)
    tenant_id: str = Field(index=True, max_length=64)
    role: str = Field(max_length=16)
    name: str | None = Field(default=None, max_length=200)
    customer_id: str | None = Field(default=None, index=True, max_length=64)
    groups: str = Field(default="[]", sa_type=sa.Text)
    partner_id: str | None = Field(default=None, max_length=64)
    accounts: str = Field(default="[]", sa_type=sa.Text)
    email: str | None = Field(default=None, max_length=320)  # where notices to it go
    created_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
    disabled_at: datetime | None = _ts(nullable=True)  # type: ignore[assignment]


class ApiKeyRow(SQLModel, table=True):
    """An API key (partners, services): only a hash of its secret is kept, as Stripe does."""

    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=32)  # the public part of the key
    principal_id: str = Field(index=True, max_length=64)
    secret_hash: str = Field(max_length=128)
    created_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
    expires_at: datetime | None = _ts(nullable=True)  # type: ignore[assignment]
    revoked_at: datetime | None = _ts(nullable=True)  # type: ignore[assignment]


class IdempotencyKeyRow(SQLModel, table=True):
    """A client idempotency key, scoped to its principal and bound to the request it first named.

    The same key with another request is refused (``IDEMPOTENCY_KEY_REUSED``); the result itself
    is the workflow's (its update id is the scoped key), so nothing is cached here.
    """

    __tablename__ = "idempotency_keys"

    scoped_key: str = Field(primary_key=True, max_length=64)
    principal_id: str = Field(max_length=64)
    tenant_id: str = Field(max_length=64)
    operation: str = Field(max_length=64)
    fingerprint: str = Field(max_length=64)
    created_at: datetime = _ts(nullable=False)  # type: ignore[assignment]


class WebhookEndpoint(SQLModel, table=True):
    """A tenant's webhook endpoint: where events of the listed types are delivered, signed."""

    __tablename__ = "webhook_endpoints"

    id: str = Field(primary_key=True, max_length=32)
    tenant_id: str = Field(index=True, max_length=64)
    url: str = Field(max_length=2000)
    # Signing secret (whsec_...): kept to sign every delivery, shown to the tenant once.
    secret: str = Field(max_length=100)
    event_types: str = Field(default='["*"]', sa_type=sa.Text)
    enabled: bool = True
    created_at: datetime = _ts(nullable=False)  # type: ignore[assignment]


class WebhookDelivery(SQLModel, table=True):
    """One event for one endpoint, written with the notification (the same transaction).

    Retried with back-off for up to three days; listed and replayable (``oms webhooks``).
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (sa.UniqueConstraint("endpoint_id", "event_id"),)

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: str = Field(index=True, max_length=64)
    endpoint_id: str = Field(index=True, max_length=32)
    event_id: str = Field(max_length=64)  # derived from the notification key
    event_type: str = Field(max_length=32)
    payload: str = Field(sa_type=sa.Text)
    status: str = Field(default="pending", index=True, max_length=16)
    attempts: int = 0
    next_attempt_at: datetime | None = _ts(nullable=True)  # type: ignore[assignment]
    claimed_until: datetime | None = _ts(nullable=True)  # type: ignore[assignment]
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, max_length=500)
    delivered_at: datetime | None = _ts(nullable=True)  # type: ignore[assignment]
    created_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
