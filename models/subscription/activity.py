"""The models activities take and return (the workflow's side effects: store, gateway, outbox).

Recorded histories carry these models by field name: add fields with defaults only.
"""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, Field

from models.calendar import Interval
from models.invoice import InvoiceLine
from models.subscription.state import SubscriptionStatus
from models.vocabulary import PaymentStatus


class ProvisionCustomer(BaseModel):
    customer_id: str
    email: str
    timezone: str
    payment_method_id: str
    tenant_id: str = "default"


class ProvisionedCustomer(BaseModel):
    gateway_customer_id: str
    card_brand: str | None = None
    card_last4: str | None = None


class SubscriptionSnapshot(BaseModel):
    """The subscription row the store keeps current (a projection of the workflow's state)."""

    subscription_id: str
    customer_id: str
    plan_id: str
    interval: Interval
    tenant_id: str = "default"
    currency: str
    unit_amount_minor: int
    quantity: int
    status: SubscriptionStatus
    timezone: str
    anchor: date
    trial_end: date | None
    current_period_start: date | None
    current_period_end: date | None
    next_billing_at: datetime | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    payment_method_id: str


class AuditEntry(BaseModel):
    """One audited transition or action."""

    event_key: str  # unique: makes the write idempotent
    subscription_id: str
    action: str
    from_status: str | None
    to_status: str | None
    actor: str
    channel: str
    request_id: str | None = None
    reason: str | None = None
    details: dict[str, str] = Field(default_factory=dict)
    occurred_at: datetime


class TransitionRecord(BaseModel):
    """An audit entry and the subscription row after it, written in one transaction."""

    snapshot: SubscriptionSnapshot
    audit: AuditEntry


class InvoiceDraft(BaseModel):
    """An invoice the workflow composed; the store writes it once (keyed by ``invoice_id``)."""

    invoice_id: str
    kind: str = "period"  # period (one per billing period) or a change/cancellation invoice
    subscription_id: str
    customer_id: str
    period_index: int
    period_start: date
    period_end: date
    currency: str
    lines: list[InvoiceLine]
    subtotal_minor: int
    credit_applied_minor: int
    total_minor: int
    issued_at: datetime


class ChargeRequest(BaseModel):
    """Charge one invoice once: the idempotency key names the attempt."""

    idempotency_key: str
    invoice_id: str
    subscription_id: str
    customer_id: str
    gateway_customer_id: str
    payment_method_id: str
    amount_minor: int
    currency: str
    attempt: int = 0
    description: str | None = None


class ChargeResult(BaseModel):
    """Outcome of a charge attempt. Declines are results, not exceptions."""

    idempotency_key: str
    status: str  # succeeded | declined | processing
    intent_id: str | None
    amount_minor: int
    currency: str
    decline_code: str | None = None
    decline_category: str | None = None
    message: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == PaymentStatus.SUCCEEDED

    @property
    def processing(self) -> bool:
        return self.status == PaymentStatus.PROCESSING


class InvoiceSettlement(BaseModel):
    invoice_id: str
    status: str  # paid | uncollectible | void
    payment_intent_id: str | None = None


class ApprovalRecord(BaseModel):
    """The approvers' view of a request, written whenever it changes."""

    request_id: str
    subscription_id: str
    kind: str
    summary: str
    reasons: list[str]
    groups: list[str]
    status: str
    escalated: bool
    requested_by: str
    requested_at: datetime
    deadline: datetime
    decided_by: str | None = None
    decision_reason: str | None = None


class CreditEntry(BaseModel):
    """One movement of the customer's account credit (the workflow holds the balance)."""

    entry_key: str
    customer_id: str
    subscription_id: str
    amount_minor: int  # + granted, - consumed
    currency: str
    balance_after_minor: int
    reason: str
    invoice_id: str | None = None


class RefundRequest(BaseModel):
    idempotency_key: str
    subscription_id: str
    invoice_id: str | None
    intent_id: str
    amount_minor: int
    currency: str
    reason: str


class RefundResult(BaseModel):
    idempotency_key: str
    refund_id: str | None
    amount_minor: int
    status: str


class Notification(BaseModel):
    """A customer notice put in the outbox (delivery channels come later)."""

    key: str  # unique: makes the write idempotent
    subscription_id: str
    customer_id: str
    kind: str  # upcoming_charge | trial_ending | payment_failed | canceled
    scheduled_for: datetime
    data: dict[str, str] = Field(default_factory=dict)
