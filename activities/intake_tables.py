"""SQL tables of order intake: orders received, dead letters, the credit ledger, stock.

Only the intake store (and migrations) import these. Amounts are integers in minor units; instants
are UTC. Every row but stock belongs to a tenant. Writes are idempotent through unique business
keys: ``order_id`` for orders (a digest of the tenant, the principal that sent it, the channel and
the channel's order id: the same channel order id from another principal is another order), the
order's ``order_id`` for stock reservations, ``open_key`` (set only while a dead letter is open) so
one failing order has one open dead letter however often it is retried. Credit accounts are keyed
by ``(tenant_id, account_id)``: two tenants may each have an account ``acme``.

Text that came from a payload is stored with card-like numbers masked (``models.redact``).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from activities.tables import UTCDateTime, tenant_field
from models.identity import DEFAULT_TENANT


def _ts(**kw: object) -> object:
    return Field(sa_column=sa.Column(UTCDateTime(), **kw))  # type: ignore[arg-type]


class IntakeOrder(SQLModel, table=True):
    """Every order a channel sent that parsed: accepted, rejected by a rule, or in flight.

    ``status``: ``pending`` (claimed, subscription being started), ``accepted`` (``result`` holds
    the answer repeated orders get), ``rejected`` (``rule``/``error_code``/``message`` say why),
    ``dead_lettered`` (see ``dead_letters``), ``discarded`` (its dead letter was discarded).
    ``principal_id`` is who sent it (NULL: received before intake authenticated its callers);
    ``fingerprint`` digests its terms (a resend with other terms is refused, see the store).
    """

    __tablename__ = "intake_orders"

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: str = tenant_field()  # type: ignore[assignment]
    principal_id: str | None = Field(default=None, index=True, max_length=64)
    order_id: str = Field(unique=True, max_length=64)
    channel: str = Field(max_length=32)
    channel_order_id: str = Field(max_length=200)
    status: str = Field(index=True, max_length=16)
    customer_id: str = Field(max_length=64)
    account_id: str = Field(index=True, max_length=64)
    plan_id: str = Field(max_length=64)
    interval: str = Field(max_length=16)
    currency: str = Field(max_length=3)
    quantity: int = 1
    rule_set: str = Field(max_length=16)
    rule: str | None = Field(default=None, index=True, max_length=64)
    error_code: str | None = Field(default=None, max_length=64)
    message: str | None = Field(default=None, max_length=1000)
    subscription_id: str | None = Field(default=None, index=True, max_length=64)
    term_value_minor: int = Field(default=0, sa_type=sa.BigInteger)
    credit_reserved_minor: int = Field(default=0, sa_type=sa.BigInteger)
    attempts: int = 1
    fingerprint: str | None = Field(default=None, max_length=64)
    result: str = Field(default="{}", sa_type=sa.Text)
    created_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
    updated_at: datetime = _ts(nullable=False)  # type: ignore[assignment]


class DeadLetter(SQLModel, table=True):
    """A payload that could not be processed: malformed, refused, or failed after retries.

    ``status``: ``open`` until replayed (``replayed``) or given up on (``discarded``).
    ``priority`` = one-year order value (major units) x customer tier weight; highest first.
    ``principal_id`` sent it (a replay acts for it; NULL: before authentication); ``order_id`` is
    its order's (when the payload got as far as naming one); ``order_key`` is ``channel:id``.
    """

    __tablename__ = "dead_letters"

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: str = tenant_field()  # type: ignore[assignment]
    principal_id: str | None = Field(default=None, max_length=64)
    channel: str = Field(index=True, max_length=32)
    order_id: str | None = Field(default=None, index=True, max_length=64)
    order_key: str | None = Field(default=None, index=True, max_length=240)
    # Equal to the dedupe key while open, NULL once closed: at most one open letter per key.
    open_key: str | None = Field(default=None, unique=True, max_length=240)
    content_type: str = Field(default="application/json", max_length=100)
    payload: str = Field(sa_type=sa.Text)
    headers: str = Field(default="{}", sa_type=sa.Text)
    reason: str = Field(max_length=1000)
    error_code: str = Field(max_length=64)
    rule: str | None = Field(default=None, max_length=64)
    attempts: int = 1
    priority: int = Field(default=0, index=True, sa_type=sa.BigInteger)
    status: str = Field(default="open", index=True, max_length=16)
    resolution: str | None = Field(default=None, sa_type=sa.Text)
    received_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
    created_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
    updated_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
    resolved_at: datetime | None = _ts(nullable=True)  # type: ignore[assignment]


class CreditAccount(SQLModel, table=True):
    """An account of the internal credit ledger (partners, business customers, known customers).

    ``outstanding_minor`` is invoiced and unpaid (kept by billing); ``reserved_minor`` is what
    accepted intake orders on credit hold until they are invoiced.
    """

    __tablename__ = "credit_accounts"

    tenant_id: str = Field(
        default=DEFAULT_TENANT,
        primary_key=True,
        max_length=64,
        index=True,
        sa_column_kwargs={"server_default": DEFAULT_TENANT},
    )
    account_id: str = Field(primary_key=True, max_length=64)
    name: str = Field(default="", max_length=200)
    currency: str = Field(default="USD", max_length=3)
    credit_limit_minor: int = Field(default=0, sa_type=sa.BigInteger)
    outstanding_minor: int = Field(default=0, sa_type=sa.BigInteger)
    reserved_minor: int = Field(default=0, sa_type=sa.BigInteger)
    good_standing: bool = True
    trusted_partner: bool = False
    enterprise: bool = False
    paid_invoices: int = 0
    late_payments: int = 0
    # Who is billed for invoice orders (the subscriptions' customer) and what settles them.
    billing_email: str | None = Field(default=None, max_length=320)
    payment_method_id: str | None = Field(default=None, max_length=64)
    updated_at: datetime = _ts(nullable=False)  # type: ignore[assignment]


class InventoryItem(SQLModel, table=True):
    """Stock on hand of a SKU (physical replenishment plans)."""

    __tablename__ = "inventory"

    sku: str = Field(primary_key=True, max_length=64)
    on_hand: int = 0
    updated_at: datetime = _ts(nullable=False)  # type: ignore[assignment]


class InventoryReservation(SQLModel, table=True):
    """Stock held for an accepted order's first deliveries (one row per order; ``order_key`` is
    the order's ``order_id``)."""

    __tablename__ = "inventory_reservations"

    id: int | None = Field(default=None, primary_key=True)
    sku: str = Field(index=True, max_length=64)
    order_key: str = Field(unique=True, max_length=240)
    quantity: int
    created_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
