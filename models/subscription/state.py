"""The subscription's state: the one model ``continue_as_new`` carries, and the parts it holds.

Add fields with defaults only: recorded histories carry these models by field name.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from models.calendar import Interval
from models.dunning import DunningRule
from models.policy import Policy

if TYPE_CHECKING:
    # Runtime import would be circular (messages use Actor and Terms): the package's __init__
    # rebuilds SubscriptionState once both modules are loaded.
    from models.subscription.messages import PendingApproval, PendingChange


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

    actor: str = "system"  # the authenticated principal's id (or "system", "policy", ...)
    channel: str = "system"
    request_id: str | None = None
    reason: str | None = None
    tenant_id: str | None = None  # the principal's tenant (None: before tenants, or the system)
    role: str | None = None  # the principal's role when it acted


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

    @property
    def served_period(self) -> tuple[date, date] | None:
        """The paid period as it is served after a shifting pause, ``(end - L, end)``; None when
        it is still a calendar period of the schedule (billing-math.md, "Pause")."""
        if self.length_days is None:
            return None
        return (self.end - timedelta(days=self.length_days), self.end)


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


class SubscriptionState(BaseModel):
    """The whole state of one subscription: the one model ``continue_as_new`` carries."""

    subscription_id: str
    customer_id: str
    email: str
    terms: Terms
    tenant_id: str = "default"  # every row the subscription writes belongs to this tenant
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
    # Lead time of the upcoming-charge notice per interval, locked at creation (yearly renewals
    # 30 days ahead: automatic-renewal laws ask for 15 to 45). None (older states): notice_days.
    notice_days_by_interval: dict[str, int] | None = None
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
