"""The subscription's state model and the messages that cross the workflow boundary.

Every workflow input, update, signal, query and activity takes exactly one of these models so
fields can be added later without breaking recorded histories (add fields with defaults only).
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from models.calendar import Interval
from models.catalog import Catalog
from models.dunning import DunningRule
from models.invoice import InvoiceLine
from models.policy import Policy
from models.vocabulary import PaymentStatus


class SubscriptionStatus(StrEnum):
    """Stripe's status words where they fit."""

    incomplete = "incomplete"  # created, first invoice not paid yet
    incomplete_expired = "incomplete_expired"  # first payment failed: never started
    trialing = "trialing"
    active = "active"
    paused = "paused"  # no service, no charges until resumed
    past_due = "past_due"  # a renewal payment failed; dunning is retrying
    unpaid = "unpaid"  # dunning ended without payment; waits for a new payment method
    canceled = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in (SubscriptionStatus.canceled, SubscriptionStatus.incomplete_expired)


class Terms(BaseModel):
    """What the customer pays: locked at subscription time from the catalog."""

    plan_id: str
    plan_name: str
    interval: Interval
    currency: str
    unit_amount_minor: int
    quantity: int = 1
    # The plan's tier, locked with the price: change decisions (upgrade or downgrade) read it from
    # here, never from the live catalog, so a replayed decision cannot change after a catalog edit.
    tier: int = 0


class Actor(BaseModel):
    """Who asked for something, through which channel, with which request id (for the audit)."""

    actor: str = "system"
    channel: str = "system"
    request_id: str | None = None
    reason: str | None = None


class OpenInvoice(BaseModel):
    """An issued invoice not yet paid; collected oldest first."""

    invoice_id: str
    period_index: int
    amount_minor: int
    period_start: date
    period_end: date
    attempts: int = 0  # declined attempts: numbers the next attempt's idempotency key
    failures_in_schedule: int = 0  # failures since the retry schedule (re)started
    schedule_start: datetime | None = None
    first_failed_at: datetime | None = None
    last_decline_category: str | None = None
    last_decline_code: str | None = None
    charge_key: str | None = None  # set for a request's invoice (change, cancellation fee)
    credit_applied_minor: int = 0  # account credit this invoice consumed (restored if voided)
    schedule: int = 0  # the billing schedule it was issued under (part of its charge keys)
    # A charge the gateway reports as still processing: polled until it settles.
    processing_key: str | None = None
    next_poll_at: datetime | None = None
    polls: int = 0


class PaymentRef(BaseModel):
    """A card payment of the current period that a refund can go back to."""

    intent_id: str
    amount_minor: int
    refunded_minor: int = 0

    @property
    def refundable_minor(self) -> int:
        return max(0, self.amount_minor - self.refunded_minor)


class BilledPeriod(BaseModel):
    """What was invoiced for the current period: the base of any proration credit."""

    start: date
    end: date  # the end of the served span (moves when a pause shifts billing)
    period_start: date  # B_n: the full period the billed span belongs to
    unit_amount_minor: int
    quantity: int
    billed_minor: int  # everything charged for this period (base charge + change charges)
    credits_minor: int = 0  # credits already issued against it (positive number)
    payments: list[PaymentRef] = Field(default_factory=list)  # card payments, oldest first
    invoice_id: str | None = None  # the period's invoice (unpaid while it is open)
    # Set once a pause shifted the served span: the paid period's original length in days, which
    # prices any later credit (billing-math.md, "Pause").
    length_days: int | None = None


class Attention(BaseModel):
    """Something a person must look at: the step that was refused, why, and when it is retried."""

    code: str
    message: str
    step: str
    since: datetime
    retry_at: datetime
    attempts: int = 1
    # True when billing waits for it (a refused step of the loop); False for a record that could
    # not be written (an audit row, a notice): billing goes on, a person still has to look.
    blocking: bool = True


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


class SubscriptionState(BaseModel):
    """The whole state of one subscription: the one model ``continue_as_new`` carries."""

    subscription_id: str
    customer_id: str
    email: str
    terms: Terms
    timezone: str = "UTC"
    start_date: date
    anchor: date  # A: billing dates B_n derive from it (trial end when there is a trial)
    trial_end: date | None = None
    # First day of paid service when it falls inside a period (aligned to an anchor day the
    # subscription did not start on): that period is billed as a leading prorated piece.
    billing_start: date | None = None
    first_period_index: int = 0
    payment_method_id: str
    gateway_customer_id: str | None = None
    notice_days: int = 3
    created_by: Actor = Field(default_factory=Actor)
    segment: str = "self_serve"
    dunning_rule: DunningRule = Field(default_factory=DunningRule)  # locked at creation
    # The change/cancel/pause policy, locked at creation like prices: decisions made in update
    # handlers replay identically even after the shipped policy file changes.
    policy: Policy | None = None
    # The catalog's terms in this subscription's currency, locked at creation: a change request
    # without priced terms is priced from here (never from the worker's live catalog).
    offers: list[Terms] = Field(default_factory=list)
    open_invoices: list[OpenInvoice] = Field(default_factory=list)
    billed: BilledPeriod | None = None  # the current period as invoiced
    account_credit_minor: int = 0  # the customer's credit balance, consumed by invoices first
    scheduled_changes: list[PendingChange] = Field(default_factory=list)
    approvals: list[PendingApproval] = Field(default_factory=list)
    closed_requests: dict[str, str] = Field(default_factory=dict)  # request id -> final status
    paused_on: date | None = None
    resume_on: date | None = None
    pause_shifts_billing: bool = True
    schedule: int = 0  # grows when an interval change restarts the period numbering
    cancel_fee_minor: int = 0  # early-termination fee due when a scheduled cancellation applies
    dunning_stage: str | None = None  # retrying | awaiting_payment_method | final
    access: str = "full"  # what the customer keeps while dunning: full | restricted
    # Mirror status and dates into search attributes (off only on the time-skipping test
    # server, which has no visibility store).
    search_attributes: bool = True

    status: SubscriptionStatus = SubscriptionStatus.incomplete
    period_index: int = 0  # the next period to bill
    paid_through: date | None = None  # end of the last period invoiced and paid
    cancel_at_period_end: bool = False
    canceled_at: datetime | None = None
    cancel_reason: str | None = None
    notices_sent: list[str] = Field(default_factory=list)  # keys of notices already sent
    audit_seq: int = 0  # transitions written so far (keys audit rows)
    first_charge_error: str | None = None  # error code when the first charge failed
    runs: int = 1  # how many workflow runs (continue-as-new) this subscription has had
    attention: Attention | None = None  # set while a refused step waits for a person or a retry
    carried_minor: int = 0  # owed from invoices below the gateway minimum, added to the next one
    # Request ids that were declined at payment (a retry of the same id gets a fresh attempt).
    declined_requests: dict[str, int] = Field(default_factory=dict)
    # Continue-as-new once a run's history passes this many events even if the server has not
    # suggested it yet (tests set it low to exercise the path).
    history_limit: int = 2000


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


# --- Activity messages --------------------------------------------------------------------


class ProvisionCustomer(BaseModel):
    customer_id: str
    email: str
    timezone: str
    payment_method_id: str


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


# Models defined above refer to ones defined below them.
PendingApproval.model_rebuild()
ApprovalResult.model_rebuild()
SubscriptionState.model_rebuild()


def catalog_terms(
    catalog: Catalog, plan_id: str, currency: str, interval: str, quantity: int
) -> Terms:
    """The terms a plan is sold at (price and tier from ``catalog``); OmsError if not sold."""
    plan = catalog.plan(plan_id)
    price = plan.price(currency, interval)
    return Terms(
        plan_id=plan.plan_id,
        plan_name=plan.name,
        interval=price.interval,
        currency=price.currency,
        unit_amount_minor=price.amount_minor,
        quantity=quantity,
        tier=plan.tier,
    )


def catalog_offers(catalog: Catalog, currency: str) -> list[Terms]:
    """Every plan and interval ``catalog`` sells in ``currency`` (quantity 1): a state snapshot."""
    return [
        catalog_terms(catalog, plan.plan_id, currency, price.interval, 1)
        for plan in catalog.plans
        for price in plan.prices
        if price.currency == currency.upper()
    ]
