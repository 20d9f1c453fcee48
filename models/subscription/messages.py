"""The messages that cross the workflow boundary: its updates, signals and queries.

Every update, signal and query takes or returns exactly one of these models so fields can be added
later without breaking recorded histories (add fields with defaults only).
"""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, ConfigDict, Field

from models.calendar import Interval
from models.invoice import InvoiceLine
from models.subscription.state import Actor, OpenInvoice, SubscriptionStatus, Terms


class ChangeRequest(BaseModel):
    """Change plan, quantity and/or interval. Omitted fields keep their current value."""

    request_id: str
    plan_id: str | None = None
    quantity: int | None = None
    interval: Interval | None = None
    when: str | None = None  # now | period_end | None (the policy's default)
    by: Actor = Field(default_factory=Actor)
    # The new terms priced from the catalog by the caller (the API/CLI always sends them, so the
    # decision is in history); without them the worker's shipped catalog prices the change.
    priced_terms: Terms | None = None


class ChangeResult(BaseModel):
    """The decision on a request, returned at once."""

    outcome: str  # applied | scheduled | pending_approval
    request_id: str
    subscription_id: str
    effective_date: date | None = None
    lines: list[InvoiceLine] = Field(default_factory=list)
    invoice_id: str | None = None
    charged_minor: int = 0
    refunded_minor: int = 0
    credited_minor: int = 0
    approval_deadline: datetime | None = None
    approver_groups: list[str] = Field(default_factory=list)
    message: str = ""


class PendingChange(BaseModel):
    """A change that takes effect at the next billing date (listable, replaceable, withdrawable)."""

    request_id: str
    terms: Terms
    effective_date: date
    requested_by: Actor
    requested_at: datetime


class PauseRequest(BaseModel):
    request_id: str
    resume_on: date | None = None
    by: Actor = Field(default_factory=Actor)


class ResumeRequest(BaseModel):
    request_id: str
    by: Actor = Field(default_factory=Actor)


class PauseResult(BaseModel):
    outcome: str  # applied | pending_approval
    request_id: str
    subscription_id: str
    status: SubscriptionStatus
    paused_on: date | None = None
    resume_on: date | None = None
    next_billing_date: date | None = None
    approval_deadline: datetime | None = None


class PendingApproval(BaseModel):
    """A request waiting for an approver; its timers live in the workflow."""

    request_id: str
    subscription_id: str
    kind: str  # change | cancel | pause
    summary: str
    reasons: list[str] = Field(default_factory=list)
    requested_by: Actor
    requested_at: datetime
    groups: list[str]  # first group, then the escalation group
    reminder_at: datetime | None = None
    escalate_at: datetime | None = None
    deadline: datetime
    reminded: bool = False
    escalated: bool = False
    change: ChangeRequest | None = None
    cancel: CancelRequest | None = None
    pause: PauseRequest | None = None


class WithdrawRequest(BaseModel):
    """Withdraw a scheduled change or a request still waiting for approval."""

    request_id: str
    by: Actor = Field(default_factory=Actor)


class AttentionRetry(BaseModel):
    """An operator asks a subscription that needs attention to retry its refused step now."""

    by: Actor = Field(default_factory=Actor)


class ApprovalDecision(BaseModel):
    """An approver's decision; names the request id the approver saw."""

    request_id: str
    approve: bool
    approver: str
    reason: str
    channel: str = "api"
    # The approver's groups as the principal store knows them (set by the API and CLI for the
    # authenticated principal). None (the `temporal` CLI path, an operator trust boundary): the
    # policy's approver_groups directory decides.
    approver_groups: list[str] | None = None
    tenant_id: str | None = None


class ApprovalResult(BaseModel):
    request_id: str
    subscription_id: str
    status: str  # approved | rejected | failed (approved, but it could no longer be carried out)
    message: str = ""
    change: ChangeResult | None = None
    cancel: CancelResult | None = None
    pause: PauseResult | None = None


class PendingView(BaseModel):
    """What is waiting on a subscription: scheduled changes and approvals."""

    subscription_id: str
    scheduled: list[PendingChange] = Field(default_factory=list)
    approvals: list[PendingApproval] = Field(default_factory=list)


class SubscriptionView(BaseModel):
    """What the ``state`` query returns: the live state plus derived dates."""

    model_config = ConfigDict(frozen=True)

    subscription_id: str
    customer_id: str
    plan_id: str
    interval: Interval
    currency: str
    unit_amount_minor: int
    quantity: int
    status: SubscriptionStatus
    timezone: str
    anchor: date
    trial_end: date | None
    current_period_start: date | None
    current_period_end: date | None
    next_billing_date: date | None
    next_billing_at: datetime | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    period_index: int
    dunning_stage: str | None = None
    access: str = "full"
    open_invoices: list[OpenInvoice] = Field(default_factory=list)
    payment_method_id: str | None = None
    account_credit_minor: int = 0
    paused_on: date | None = None
    resume_on: date | None = None
    pending_approvals: int = 0
    scheduled_changes: int = 0
    needs_attention: bool = False
    attention_code: str | None = None
    attention_message: str | None = None
    carried_minor: int = 0


class TimelineEvent(BaseModel):
    """One scheduled event of the subscription's future, with its instant."""

    model_config = ConfigDict(frozen=True)

    at: datetime
    kind: str  # trial_ending_notice, trial_end, upcoming_charge_notice, renewal, cancellation
    description: str
    amount_minor: int | None = None
    currency: str | None = None


class Timeline(BaseModel):
    """What the ``timeline`` query returns."""

    model_config = ConfigDict(frozen=True)

    subscription_id: str
    status: SubscriptionStatus
    events: list[TimelineEvent]


class StartRequest(BaseModel):
    """The update that confirms a new subscription (sent with update-with-start)."""

    request_id: str
    # True: answer once the first payment is settled (or the trial started); False: answer as
    # soon as the workflow has accepted the subscription (order intake's latency budget).
    wait_for_payment: bool = True


class StartResult(BaseModel):
    """The synchronous answer to a create request."""

    subscription_id: str
    customer_id: str
    status: SubscriptionStatus
    plan_id: str
    interval: Interval
    first_invoice_date: date
    first_charge_minor: int
    currency: str
    trial_end: date | None = None


class CancelRequest(BaseModel):
    """Cancel now or at the end of the current period (``None``: as the policy says)."""

    at_period_end: bool | None = True
    request_id: str | None = None
    reason: str | None = None
    by: Actor = Field(default_factory=Actor)


class CancelResult(BaseModel):
    subscription_id: str
    status: SubscriptionStatus
    cancel_at_period_end: bool
    effective_date: date | None
    canceled_at: datetime | None = None
    outcome: str = "applied"  # applied | scheduled | pending_approval
    request_id: str | None = None
    lines: list[InvoiceLine] = Field(default_factory=list)
    refunded_minor: int = 0
    credited_minor: int = 0
    charged_minor: int = 0
    approval_deadline: datetime | None = None


class UncancelRequest(BaseModel):
    by: Actor = Field(default_factory=Actor)


class PaymentMethodUpdate(BaseModel):
    """Replace the card: attached at the gateway, then an immediate retry of what is unpaid."""

    payment_method_id: str
    by: Actor = Field(default_factory=Actor)


class PaymentMethodResult(BaseModel):
    subscription_id: str
    status: SubscriptionStatus
    payment_method_id: str
    retried: bool  # an unpaid invoice was charged again
    open_invoices: int  # still unpaid after the retry


class SubscriptionResult(BaseModel):
    """What the workflow returns when the subscription ends."""

    subscription_id: str
    status: SubscriptionStatus
    periods_billed: int
    canceled_at: datetime | None = None


# Models defined above refer to ones defined below them.
PendingApproval.model_rebuild()
ApprovalResult.model_rebuild()
