"""The rule models of the policy document: approval routes, change, cancellation and pause rules.

A :class:`RuleSet` is one level of the document (``default``, a segment or a plan); the document
itself, and which level's rule applies, is :class:`models.policy.document.PolicyDocument`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from models.errors import ErrorCode
from models.money import BillingInputError
from models.policy.fields import (
    AmountsByCurrency,
    Duration,
    NonNegativeInt,
    Percent,
    _Doc,
    _permitted,
)
from models.policy.vocabulary import (
    ANY,
    CHANGE_KINDS,
    ChangeKind,
    CreditHandling,
    Timing,
    WithinMinimumTerm,
)

# ---------------------------------------------------------------------------------------------
# Approval routes and SLAs
# ---------------------------------------------------------------------------------------------


def _aware(instant: datetime) -> datetime:
    if instant.utcoffset() is None:
        raise BillingInputError(
            ErrorCode.INVALID_REQUEST,
            f"instant must be a timezone-aware datetime, got {instant!r}",
        )
    return instant


class ApprovalSla(_Doc):
    """How long an approval request may wait.

    Attributes:
        reminder_after: When the approver group is reminded; ``None`` for no reminder.
        escalate_after: When the request also goes to the escalation group; ``None`` for none.
        expire_after: When the request expires by itself (rejected, reason "expired").
    """

    reminder_after: Duration | None = None
    escalate_after: Duration | None = None
    expire_after: Duration

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        for name in ("reminder_after", "escalate_after", "expire_after"):
            value: timedelta | None = getattr(self, name)
            if value is not None and value <= timedelta(0):
                raise ValueError(f"{name} must be longer than zero")
        for name in ("reminder_after", "escalate_after"):
            value = getattr(self, name)
            if value is not None and value >= self.expire_after:
                # A reminder or escalation at or after expiry would never be sent.
                raise ValueError(f"{name} ({value}) must come before expire_after")
        return self

    def reminder_at(self, requested_at: datetime) -> datetime | None:
        """The instant the reminder is due for a request made at ``requested_at`` (aware)."""
        at = _aware(requested_at)
        return None if self.reminder_after is None else at + self.reminder_after

    def escalate_at(self, requested_at: datetime) -> datetime | None:
        """The instant the request escalates to the second group, if it ever does."""
        at = _aware(requested_at)
        return None if self.escalate_after is None else at + self.escalate_after

    def expires_at(self, requested_at: datetime) -> datetime:
        """The approval deadline: the instant the request expires if nobody decided."""
        return _aware(requested_at) + self.expire_after


class ApprovalRoute(_Doc):
    """Who approves, in order, and how fast.

    Attributes:
        groups: The approver group first asked, then (optionally) the escalation group. Members
            of either group may decide at any time; escalation adds the second group's attention.
        sla: Reminder, escalation and expiry delays.
    """

    groups: list[str] = Field(min_length=1, max_length=2)
    sla: ApprovalSla

    @model_validator(mode="after")
    def _escalation_is_complete(self) -> Self:
        if len(set(self.groups)) != len(self.groups):
            raise ValueError("the escalation group must differ from the first group")
        if len(self.groups) == 2 and self.sla.escalate_after is None:
            raise ValueError(
                f"groups names an escalation group ({self.groups[1]}) but sla has no escalate_after"
            )
        if len(self.groups) == 1 and self.sla.escalate_after is not None:
            raise ValueError("sla.escalate_after is set but groups has no escalation group")
        return self


# ---------------------------------------------------------------------------------------------
# Change rules
# ---------------------------------------------------------------------------------------------


class ChangeApprovalWhen(_Doc):
    """When a change needs approval; any condition that holds is enough.

    Attributes:
        always: Every change of this kind needs approval.
        amount_over_minor: Per currency: the monthly-equivalent recurring amount changes (either
            way) by more than this. A currency missing here needs approval (closed by default).
        quantity_decrease_over_units: The quantity falls by more than this many units.
        quantity_decrease_over_percent: The quantity falls by more than this percentage.
        discount_over_percent: The new discount is over this percentage.
    """

    always: bool = False
    amount_over_minor: AmountsByCurrency | None = None
    quantity_decrease_over_units: NonNegativeInt | None = None
    quantity_decrease_over_percent: Percent | None = None
    discount_over_percent: Percent | None = None


class ChangeRule(_Doc):
    """The rule for one kind of change at one level.

    Attributes:
        allowed: Whether the change may be requested at all.
        timing: When it takes effect if the requester does not say.
        timings: The timings a requester may ask for; ``None`` means both.
        credit_handling: Where a credit from an immediate change goes: ``account_credit`` or
            ``refund``.
        approval: When the change needs approval.
    """

    allowed: bool = True
    timing: Timing = Timing.IMMEDIATELY
    timings: list[Timing] | None = None
    credit_handling: CreditHandling = CreditHandling.ACCOUNT_CREDIT
    approval: ChangeApprovalWhen = Field(default_factory=ChangeApprovalWhen)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        _permitted(self.timing, self.timings, "change rule")
        if self.credit_handling is CreditHandling.NONE:
            # The billing spec issues the credit line; only where it goes is policy.
            raise ValueError("credit_handling of a change is account_credit or refund, not none")
        return self

    @property
    def permitted_timings(self) -> tuple[Timing, ...]:
        """The timings a requester may choose."""
        return tuple(Timing) if self.timings is None else tuple(self.timings)


# ---------------------------------------------------------------------------------------------
# Cancellation rules
# ---------------------------------------------------------------------------------------------


class NoFee(_Doc):
    """No early-termination fee."""

    kind: Literal["none"] = "none"


class FlatFee(_Doc):
    """A fixed fee per currency for cancelling inside the minimum term."""

    kind: Literal["flat"]
    amount_minor: AmountsByCurrency


class RemainingMonthsFee(_Doc):
    """``percent`` of (remaining months of the minimum term x the monthly-equivalent amount).

    Remaining months are counted from the day the customer stops paying (see
    :meth:`Policy.decide_cancellation`) to the end of the term; a started month counts whole.
    """

    kind: Literal["remaining_months"]
    percent: Percent = Decimal(100)


EarlyTerminationFee = Annotated[NoFee | FlatFee | RemainingMonthsFee, Field(discriminator="kind")]


class CancellationApprovalWhen(_Doc):
    """When a cancellation needs approval; any condition that holds is enough.

    Attributes:
        always: Every cancellation.
        immediately: Cancellations that take effect now.
        within_minimum_term: Cancellations that take effect before the minimum term ends.
    """

    always: bool = False
    immediately: bool = False
    within_minimum_term: bool = False


class CancellationRule(_Doc):
    """What a cancellation does.

    Attributes:
        timing: When it takes effect if the requester does not say.
        timings: The timings a requester may ask for; ``None`` means both.
        refund: For an immediate cancellation, what happens to the unused paid time:
            ``refund`` (to the card), ``account_credit`` or ``none`` (forfeited).
        minimum_term_months: Months from the subscription date before which a cancellation
            takes effect "within the minimum term"; 0 for none.
        within_minimum_term: ``charge_fee`` (allowed, with the early-termination fee) or
            ``refuse`` (error ``MINIMUM_TERM``).
        early_termination_fee: ``{kind: none}``, ``{kind: flat, amount_minor: {...}}`` or
            ``{kind: remaining_months, percent: 100}``.
        approval: When a cancellation needs approval.
    """

    timing: Timing = Timing.PERIOD_END
    timings: list[Timing] | None = None
    refund: CreditHandling = CreditHandling.ACCOUNT_CREDIT
    minimum_term_months: int = Field(default=0, ge=0, strict=True)
    within_minimum_term: WithinMinimumTerm = WithinMinimumTerm.CHARGE_FEE
    early_termination_fee: EarlyTerminationFee = Field(default_factory=NoFee)
    approval: CancellationApprovalWhen = Field(default_factory=CancellationApprovalWhen)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        _permitted(self.timing, self.timings, "cancellation")
        has_fee = not isinstance(self.early_termination_fee, NoFee)
        if has_fee and self.minimum_term_months == 0:
            raise ValueError("early_termination_fee needs a minimum_term_months above 0")
        if has_fee and self.within_minimum_term is WithinMinimumTerm.REFUSE:
            raise ValueError(
                "early_termination_fee never applies when within_minimum_term is refuse; "
                "remove one of them"
            )
        return self

    @property
    def permitted_timings(self) -> tuple[Timing, ...]:
        """The timings a requester may choose."""
        return tuple(Timing) if self.timings is None else tuple(self.timings)


# ---------------------------------------------------------------------------------------------
# Pause rules
# ---------------------------------------------------------------------------------------------


class PauseApprovalWhen(_Doc):
    """When a pause needs approval; any condition that holds is enough.

    Attributes:
        always: Every pause.
        over_days: Pauses longer than this many days (an open-ended pause without a
            ``max_days`` always counts as longer).
    """

    always: bool = False
    over_days: int | None = Field(default=None, ge=1, strict=True)


class PauseRule(_Doc):
    """Whether and how long a subscription may pause (no charges, no service).

    Attributes:
        allowed: Whether pausing is offered.
        max_days: Longest pause; an open-ended pause resumes by itself after it. ``None``: no
            limit.
        shift_billing_dates: ``true``: every later billing date moves by the days paused (the
            customer keeps the time already paid for). ``false``: billing dates stay; those inside
            the pause are skipped.
        require_resume_date: Whether a pause must name its resume date.
        approval: When a pause needs approval.
    """

    allowed: bool = True
    max_days: int | None = Field(default=None, ge=1, strict=True)
    shift_billing_dates: bool = True
    require_resume_date: bool = False
    approval: PauseApprovalWhen = Field(default_factory=PauseApprovalWhen)


# ---------------------------------------------------------------------------------------------
# Levels and the document
# ---------------------------------------------------------------------------------------------

_QUANTITY_CONDITIONS = ("quantity_decrease_over_units", "quantity_decrease_over_percent")


class RuleSet(_Doc):
    """The rules of one level (``default``, a segment or a plan); every section is optional.

    Attributes:
        approval: Who approves requests that match this level, and the SLA.
        changes: A rule per change kind, or ``any`` for every kind this level does not name.
        cancellation: The cancellation rule.
        pause: The pause rule (resume follows the same rule's ``shift_billing_dates``).
    """

    approval: ApprovalRoute | None = None
    changes: dict[str, ChangeRule] = Field(default_factory=dict)
    cancellation: CancellationRule | None = None
    pause: PauseRule | None = None

    @field_validator("changes")
    @classmethod
    def _known_kinds(cls, value: dict[str, ChangeRule]) -> dict[str, ChangeRule]:
        for key, rule in value.items():
            if key in (ChangeKind.CANCEL, ChangeKind.PAUSE, ChangeKind.RESUME):
                section = "cancellation" if key == ChangeKind.CANCEL else "pause"
                raise ValueError(f"{key!r} is not a change kind; its rules go under '{section}:'")
            if key != ANY and key not in CHANGE_KINDS:
                kinds = ", ".join([*CHANGE_KINDS, ANY])
                raise ValueError(f"unknown change kind {key!r}; use one of {kinds}")
            # A threshold under a kind it can never apply to is a mistake, not a no-op.
            when = rule.approval
            if key not in (ANY, ChangeKind.QUANTITY_DECREASE):
                for name in _QUANTITY_CONDITIONS:
                    if getattr(when, name) is not None:
                        raise ValueError(
                            f"changes.{key}: {name} applies to quantity_decrease (or any) only"
                        )
            if key not in (ANY, ChangeKind.DISCOUNT) and when.discount_over_percent is not None:
                raise ValueError(
                    f"changes.{key}: discount_over_percent applies to discount (or any) only"
                )
        return value

    def change_rule(self, kind: ChangeKind) -> tuple[ChangeRule, str] | None:
        """This level's rule for ``kind`` and the key that matched, or ``None``."""
        if kind.value in self.changes:
            return self.changes[kind.value], kind.value
        if ANY in self.changes:
            return self.changes[ANY], ANY
        return None
