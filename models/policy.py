"""Policies as data: whether a change may happen, when it takes effect, and who must approve it.

The policy document (``models/data/policy.yaml``, explained in ``docs/policy.md``) holds rules at
three levels: ``default``, ``segments.<segment>`` and ``plans.<plan_id>``. For every decision the
most specific level that has a rule wins (plan > segment > default), and the winning rule is used
whole. Rules are never merged field by field, so the rule a person reads is the rule applied. Under
``changes:`` a level may name a change kind or ``any`` (every kind that level does not name).

Every decision is a pure function of its arguments: dates and instants are passed in, nothing reads
a clock, the environment or a file (``default_policy`` reads the packaged YAML, outside workflows).
Decisions are pydantic models so they cross the Temporal boundary with the pydantic converter.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction
from functools import cache
from importlib import resources
from typing import Annotated, Literal, Self, TypedDict, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from models.calendar import Interval, billing_date
from models.catalog import Catalog, Plan
from models.errors import ErrorCode, OmsError
from models.invoice import InvoiceLine, LineKind
from models.money import (
    BillingInputError,
    ensure_int,
    format_money,
    normalize_currency,
    round_minor,
)

__all__ = [
    "CHANGE_KINDS",
    "SEGMENTS",
    "ApprovalRoute",
    "ApprovalSla",
    "CancellationApprovalWhen",
    "CancellationDecision",
    "CancellationRule",
    "ChangeApprovalWhen",
    "ChangeDecision",
    "ChangeKind",
    "ChangeRule",
    "CreditHandling",
    "Decision",
    "EarlyTerminationFee",
    "FlatFee",
    "NoFee",
    "PauseApprovalWhen",
    "PauseDecision",
    "PauseRule",
    "Policy",
    "RemainingMonthsFee",
    "ResumeDecision",
    "RuleSet",
    "Segment",
    "TermsSnapshot",
    "Timing",
    "WithinMinimumTerm",
    "classify_change",
    "default_policy",
    "load_policy",
    "monthly_amount_delta_minor",
    "parse_duration",
    "parse_timing",
]

Segment = Literal["self_serve", "enterprise"]
SEGMENTS: tuple[Segment, ...] = ("self_serve", "enterprise")
ANY = "any"


class ChangeKind(StrEnum):
    """What a request does to a subscription. One request may be several kinds at once."""

    UPGRADE = "upgrade"
    DOWNGRADE = "downgrade"
    QUANTITY_INCREASE = "quantity_increase"
    QUANTITY_DECREASE = "quantity_decrease"
    INTERVAL_CHANGE = "interval_change"
    DISCOUNT = "discount"
    # Not changes of terms: decided by their own sections (cancellation, pause); listed so
    # approval requests and audit rows share one vocabulary.
    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"


# The kinds ruled under ``changes:``, in the order reasons and sources are reported.
CHANGE_KINDS: tuple[ChangeKind, ...] = (
    ChangeKind.UPGRADE,
    ChangeKind.DOWNGRADE,
    ChangeKind.QUANTITY_INCREASE,
    ChangeKind.QUANTITY_DECREASE,
    ChangeKind.INTERVAL_CHANGE,
    ChangeKind.DISCOUNT,
)


class Timing(StrEnum):
    """When an accepted request takes effect."""

    IMMEDIATELY = "immediately"
    PERIOD_END = "period_end"


class CreditHandling(StrEnum):
    """What happens to money owed back to the customer (unused, already paid time)."""

    REFUND = "refund"  # back to the card (a gateway refund)
    ACCOUNT_CREDIT = "account_credit"  # to the credit ledger, consumed by later invoices
    NONE = "none"  # forfeited: cancellations only


class WithinMinimumTerm(StrEnum):
    """What a cancellation that takes effect before the minimum term ends does."""

    CHARGE_FEE = "charge_fee"
    REFUSE = "refuse"


_TIMING_ALIASES: dict[str, Timing] = {
    "now": Timing.IMMEDIATELY,
    "immediate": Timing.IMMEDIATELY,
    "immediately": Timing.IMMEDIATELY,
    "periodend": Timing.PERIOD_END,
    "atperiodend": Timing.PERIOD_END,
}


def parse_timing(value: object) -> Timing:
    """Return the :class:`Timing` named by ``value``, accepting the CLI's words.

    Args:
        value: A ``Timing`` or ``"now"``, ``"immediately"``, ``"period_end"``, ``"period-end"``,
            ``"at_period_end"`` (case-insensitive).

    Raises:
        BillingInputError: ``INVALID_REQUEST`` for anything else.
    """
    if isinstance(value, Timing):
        return value
    if isinstance(value, str):
        key = value.strip().lower().replace("-", "").replace("_", "")
        if key in _TIMING_ALIASES:
            return _TIMING_ALIASES[key]
    raise BillingInputError(
        ErrorCode.INVALID_REQUEST, f"unknown timing {value!r}; use 'now' or 'period_end'"
    )


# ---------------------------------------------------------------------------------------------
# Field types of the document
# ---------------------------------------------------------------------------------------------

_DURATION_RE = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_TIMEDELTA: TypeAdapter[timedelta] = TypeAdapter(timedelta)


def parse_duration(value: object) -> timedelta:
    """Parse a duration such as ``"4h"``, ``"2d"``, ``"1w2d"``, ``"90m"`` or ISO 8601 ``"P2D"``.

    Bare numbers are refused: ``2`` could mean hours or days, and an SLA off by 24x is the kind of
    mistake a policy file must not allow.

    Args:
        value: A ``timedelta`` or a string with units (w, d, h, m, s) or an ISO 8601 duration.

    Raises:
        ValueError: For a bare number or an unreadable string.
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        match = _DURATION_RE.fullmatch(text)
        if text and match is not None:
            weeks, days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
            return timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)
        if text.startswith("p"):  # ISO 8601, as pydantic serializes a timedelta to JSON
            try:
                return _TIMEDELTA.validate_python(value)
            except ValidationError:
                pass
    raise ValueError(
        f"duration {value!r} needs a unit: write e.g. '4h', '2d', '1w2d' or ISO 8601 'P2D'"
    )


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Percent = Annotated[Decimal, Field(ge=0, le=100)]
NonNegativeInt = Annotated[int, Field(ge=0, strict=True)]


def _normalize_amounts(value: dict[str, int]) -> dict[str, int]:
    normalized: dict[str, int] = {}
    for code, amount in value.items():
        key = normalize_currency(code)  # a ValueError: pydantic reports it with the field path
        if key in normalized:
            raise ValueError(f"currency {key} is listed twice")
        normalized[key] = amount
    if not normalized:
        raise ValueError("list at least one currency, e.g. {USD: 5000}")
    return normalized


# Amounts in minor units per currency, e.g. {USD: 5000, JPY: 7000}.
AmountsByCurrency = Annotated[dict[str, NonNegativeInt], AfterValidator(_normalize_amounts)]


class _ApprovalFields(TypedDict, total=False):
    """The approval part of a decision, as keyword arguments (typed for mypy --strict)."""

    needs_approval: bool
    approval_reasons: list[str]
    approver_groups: list[str]
    sla: ApprovalSla | None


class _Doc(BaseModel):
    """A part of the policy document: immutable, and unknown keys are errors (typos surface)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _permitted(timing: Timing, timings: list[Timing] | None, where: str) -> None:
    if timings is None:
        return
    if not timings:
        raise ValueError(f"{where}: timings must list at least one of immediately, period_end")
    if len(set(timings)) != len(timings):
        raise ValueError(f"{where}: timings lists a timing twice")
    if timing not in timings:
        raise ValueError(f"{where}: the default timing {timing.value} is not in timings")


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


_T = TypeVar("_T")


class Policy(_Doc):
    """The whole policy document.

    Attributes:
        version: The document format version (1).
        approver_groups: Approver group name -> member ids (the approver directory).
        default: Rules that apply when no segment or plan rule does; must be complete.
        segments: Rules per segment (``self_serve``, ``enterprise``).
        plans: Rules per plan id.
    """

    version: Literal[1] = 1
    approver_groups: dict[str, list[str]]
    default: RuleSet
    segments: dict[Segment, RuleSet] = Field(default_factory=dict)
    plans: dict[str, RuleSet] = Field(default_factory=dict)

    @field_validator("approver_groups")
    @classmethod
    def _members(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for group, members in value.items():
            if not group.strip():
                raise ValueError("an approver group needs a name")
            cleaned = [m.strip() for m in members]
            if not cleaned or any(not m for m in cleaned):
                raise ValueError(f"approver group {group!r} needs at least one non-empty id")
            folded = [m.casefold() for m in cleaned]
            if len(set(folded)) != len(folded):
                raise ValueError(f"approver group {group!r} lists a member twice")
        return {group: [m.strip() for m in members] for group, members in value.items()}

    @model_validator(mode="after")
    def _complete_and_linked(self) -> Self:
        missing = [k.value for k in CHANGE_KINDS if self.default.change_rule(k) is None]
        for section in ("approval", "cancellation", "pause"):
            if getattr(self.default, section) is None:
                missing.append(section)
        if missing:
            raise ValueError(
                "default must rule every case so no decision is left undefined; missing: "
                + ", ".join(missing)
            )
        for where, level in self._all_levels():
            if level.approval is None:
                continue
            for group in level.approval.groups:
                if group not in self.approver_groups:
                    known = ", ".join(self.approver_groups) or "none"
                    raise ValueError(
                        f"{where}.approval names group {group!r}, which is not in "
                        f"approver_groups (known: {known})"
                    )
        return self

    def _all_levels(self) -> list[tuple[str, RuleSet]]:
        return [
            ("default", self.default),
            *((f"segments.{s}", r) for s, r in self.segments.items()),
            *((f"plans.{p}", r) for p, r in self.plans.items()),
        ]

    # -- resolution ---------------------------------------------------------------------------

    def _levels(self, segment: str, plan_id: str | None) -> list[tuple[str, RuleSet]]:
        """The levels that apply, most specific first."""
        if segment not in SEGMENTS:
            raise BillingInputError(
                ErrorCode.INVALID_REQUEST,
                f"unknown segment {segment!r}; use one of {', '.join(SEGMENTS)}",
            )
        levels: list[tuple[str, RuleSet]] = []
        if plan_id is not None and plan_id in self.plans:
            levels.append((f"plans.{plan_id}", self.plans[plan_id]))
        if segment in self.segments:
            levels.append((f"segments.{segment}", self.segments[segment]))
        levels.append(("default", self.default))
        return levels

    def _section(
        self, segment: str, plan_id: str | None, section: str, kind: type[_T]
    ) -> tuple[_T, str]:
        for where, level in self._levels(segment, plan_id):
            rule = getattr(level, section)
            if rule is not None:
                assert isinstance(rule, kind)
                return rule, f"{where}.{section}"
        raise AssertionError(f"default.{section} is required by validation")

    def change_rule(
        self, *, segment: Segment, plan_id: str | None, kind: ChangeKind
    ) -> tuple[ChangeRule, str]:
        """The rule for one change kind and where it came from (e.g. ``plans.pro.changes.any``).

        Raises:
            ValueError: For a kind that is not ruled under ``changes:`` (cancel, pause, resume).
        """
        if kind not in CHANGE_KINDS:
            raise ValueError(f"{kind.value} is decided by its own method, not by change rules")
        for where, level in self._levels(segment, plan_id):
            found = level.change_rule(kind)
            if found is not None:
                return found[0], f"{where}.changes.{found[1]}"
        raise AssertionError("default covers every change kind by validation")

    def cancellation_rule(
        self, *, segment: Segment, plan_id: str | None
    ) -> tuple[CancellationRule, str]:
        """The cancellation rule that applies and where it came from."""
        return self._section(segment, plan_id, "cancellation", CancellationRule)

    def pause_rule(self, *, segment: Segment, plan_id: str | None) -> tuple[PauseRule, str]:
        """The pause rule that applies and where it came from."""
        return self._section(segment, plan_id, "pause", PauseRule)

    def approval_route(self, *, segment: Segment, plan_id: str | None) -> tuple[ApprovalRoute, str]:
        """The approval route (groups and SLA) that applies and where it came from."""
        return self._section(segment, plan_id, "approval", ApprovalRoute)

    def approvers(self, *, segment: Segment, plan_id: str | None) -> list[str]:
        """Every member id who may decide approvals for this segment and plan."""
        route, _ = self.approval_route(segment=segment, plan_id=plan_id)
        return [m for g in route.groups for m in self.approver_groups[g]]

    # -- changes ------------------------------------------------------------------------------

    def decide_change(
        self,
        *,
        segment: Segment,
        plan_id: str,
        kinds: Iterable[ChangeKind],
        currency: str,
        amount_delta_minor: int = 0,
        quantity_before: int = 1,
        quantity_after: int = 1,
        discount_percent: Decimal | int = 0,
        timing_requested: Timing | None = None,
    ) -> ChangeDecision:
        """Decide a change of terms: allowed?, when?, approval by whom?, where credits go.

        Each kind is decided by its own rule (most specific level first). The change is allowed
        only if every rule allows it; it needs approval if any rule's condition holds. Without a
        requested timing it takes effect at period end if any rule defaults to that, else
        immediately; either way every rule must permit the timing. A credit is refunded only
        if every rule says ``refund`` (account credit can still be refunded later; a refund
        cannot be taken back).

        Args:
            segment: The subscription's segment.
            plan_id: The current plan (its rules and its segment's rules apply).
            kinds: What the change does (see :func:`classify_change`).
            currency: The subscription's currency.
            amount_delta_minor: New minus old monthly-equivalent recurring amount (see
                :func:`monthly_amount_delta_minor`); negative for a downgrade.
            quantity_before: Quantity now.
            quantity_after: Quantity after the change.
            discount_percent: The discount the change sets (0..100).
            timing_requested: The timing the requester asked for, or ``None`` for the default.

        Returns:
            A :class:`ChangeDecision`; a refusal has ``allowed=False`` and a ``code``.

        Raises:
            ValueError: For cancel/pause/resume kinds, an unknown currency or segment.
        """
        code = normalize_currency(currency)
        delta = ensure_int(amount_delta_minor, "amount_delta_minor")
        ordered = _ordered_kinds(kinds)
        if not ordered:
            return ChangeDecision.refused(
                ErrorCode.INVALID_REQUEST,
                "the request changes nothing: same plan, quantity, interval and discount",
            )
        for name, qty in (("quantity_before", quantity_before), ("quantity_after", quantity_after)):
            if isinstance(qty, bool) or not isinstance(qty, int) or qty < 1:
                return ChangeDecision.refused(
                    ErrorCode.INVALID_QUANTITY, f"{name} must be a whole number of at least 1"
                )
        discount = _percent(discount_percent)
        if discount is None:
            return ChangeDecision.refused(
                ErrorCode.INVALID_REQUEST,
                f"discount_percent must be between 0 and 100, got {discount_percent!r}",
            )

        rules: list[tuple[ChangeKind, ChangeRule, str]] = []
        for kind in ordered:
            rule, source = self.change_rule(segment=segment, plan_id=plan_id, kind=kind)
            rules.append((kind, rule, source))
        sources = [source for _, _, source in rules]
        for kind, rule, source in rules:
            if not rule.allowed:
                return ChangeDecision.refused(
                    ErrorCode.CHANGE_NOT_ALLOWED,
                    f"{_a(_label(kind))} is not allowed on plan {plan_id} ({source})",
                    kinds=ordered,
                    sources=sources,
                )

        timing_or_refusal = _common_timing(
            [(k, r.timing, r.permitted_timings, s) for k, r, s in rules], timing_requested
        )
        # Timing is a StrEnum, so test for it (not for str) to tell a timing from a refusal.
        if not isinstance(timing_or_refusal, Timing):
            return ChangeDecision.refused(
                ErrorCode.CHANGE_NOT_ALLOWED, timing_or_refusal, kinds=ordered, sources=sources
            )
        timing = timing_or_refusal

        reasons: list[str] = []
        for kind, rule, source in rules:
            reasons.extend(
                _change_reasons(
                    kind,
                    rule.approval,
                    source,
                    currency=code,
                    delta=delta,
                    before=quantity_before,
                    after=quantity_after,
                    discount=discount,
                )
            )
        refund = all(r.credit_handling is CreditHandling.REFUND for _, r, _ in rules)
        credit = CreditHandling.REFUND if refund else CreditHandling.ACCOUNT_CREDIT
        what = " and ".join(_label(k) for k in ordered)
        return ChangeDecision(
            allowed=True,
            message=f"{what} takes effect {_timing_words(timing)}",
            kinds=ordered,
            timing=timing,
            credit_handling=credit,
            sources=sources,
            **self._approval_fields(segment, plan_id, reasons),
        )

    def decide_terms_change(
        self,
        *,
        segment: Segment,
        current: TermsSnapshot,
        new: TermsSnapshot,
        timing_requested: Timing | None = None,
    ) -> ChangeDecision:
        """:meth:`decide_change` for two sets of terms: classifies and measures the change first.

        Args:
            segment: The subscription's segment.
            current: The terms in force (their plan's rules apply).
            new: The requested terms.
            timing_requested: The timing asked for, or ``None`` for the default.

        Returns:
            The decision; a currency switch or a quantity below 1 is a refusal with its code.
        """
        try:
            kinds = classify_change(current, new)
        except OmsError as error:
            return ChangeDecision.refused(error.code, error.message)
        return self.decide_change(
            segment=segment,
            plan_id=current.plan_id,
            kinds=kinds,
            currency=current.currency,
            amount_delta_minor=monthly_amount_delta_minor(current, new),
            quantity_before=current.quantity,
            quantity_after=new.quantity,
            discount_percent=new.discount_percent,
            timing_requested=timing_requested,
        )

    # -- cancellation -------------------------------------------------------------------------

    def decide_cancellation(
        self,
        *,
        segment: Segment,
        terms: TermsSnapshot,
        subscribed_on: date,
        today: date,
        period_end: date,
        timing_requested: Timing | None = None,
    ) -> CancellationDecision:
        """Decide a cancellation: when, what happens to unused time, minimum term and fee.

        The cancellation takes effect ``today`` (immediately) or on ``period_end``. The minimum
        term ends ``minimum_term_months`` after ``subscribed_on`` (day clamped, as billing dates
        are); a cancellation taking effect before then is within the term. The remaining-months
        fee counts from the day the customer stops paying: the effective date when the unused
        time is given back (refund or account credit), else the period end (the customer keeps
        what they paid for), up to the end of the term; a started month counts whole.

        Args:
            segment: The subscription's segment.
            terms: The terms in force (plan, currency, monthly amount for the fee).
            subscribed_on: The day the subscription (and its minimum term) started.
            today: The local date of the request.
            period_end: The end (exclusive) of the current period: the next billing date.
            timing_requested: ``Timing.IMMEDIATELY``, ``Timing.PERIOD_END`` or ``None``.

        Returns:
            A :class:`CancellationDecision`; ``MINIMUM_TERM`` or ``CHANGE_NOT_ALLOWED`` refusals.

        Raises:
            BillingInputError: ``INVALID_DATE_RANGE`` when ``today`` precedes ``subscribed_on``
                or is not before ``period_end``.
            ValueError: When a flat fee lists no amount for the subscription's currency (a
                policy gap :meth:`check_catalog` reports at load time).
        """
        if not subscribed_on <= today < period_end:
            raise BillingInputError(
                ErrorCode.INVALID_DATE_RANGE,
                f"need subscribed_on <= today < period_end, got {subscribed_on}, {today}, "
                f"{period_end}",
            )
        rule, source = self.cancellation_rule(segment=segment, plan_id=terms.plan_id)
        sources = [source]
        timing = rule.timing if timing_requested is None else parse_timing(timing_requested)
        if timing not in rule.permitted_timings:
            offered = " or ".join(_timing_words(t) for t in rule.permitted_timings)
            return CancellationDecision.refused(
                ErrorCode.CHANGE_NOT_ALLOWED,
                f"on plan {terms.plan_id} a cancellation takes effect {offered}, not "
                f"{_timing_words(timing)} ({source})",
                sources=sources,
            )
        effective = today if timing is Timing.IMMEDIATELY else period_end
        term_ends = (
            billing_date(subscribed_on, rule.minimum_term_months, 1)
            if rule.minimum_term_months
            else None
        )
        within = term_ends is not None and effective < term_ends
        if within and rule.within_minimum_term is WithinMinimumTerm.REFUSE:
            return CancellationDecision.refused(
                ErrorCode.MINIMUM_TERM,
                f"plan {terms.plan_id} has a {rule.minimum_term_months}-month minimum term "
                f"until {term_ends}; a cancellation may take effect on or after that day "
                f"({source})",
                sources=sources,
                within_minimum_term=True,
                minimum_term_ends=term_ends,
            )
        refund = rule.refund if timing is Timing.IMMEDIATELY else CreditHandling.NONE
        fee = 0
        if within and term_ends is not None:
            stops_paying = effective if refund is not CreditHandling.NONE else period_end
            fee = _early_termination_fee(
                rule.early_termination_fee, terms, stops_paying, term_ends, source
            )

        reasons: list[str] = []
        when = rule.approval
        if when.always:
            reasons.append(f"every cancellation needs approval here ({source})")
        if when.immediately and timing is Timing.IMMEDIATELY:
            reasons.append(f"an immediate cancellation needs approval ({source})")
        if when.within_minimum_term and within:
            reasons.append(
                f"the cancellation takes effect within the minimum term, before {term_ends} "
                f"({source})"
            )
        parts = [f"cancellation takes effect {_timing_words(timing)} ({effective})"]
        if refund is not CreditHandling.NONE:
            parts.append(f"unused time goes to {_credit_words(refund)}")
        if fee:
            parts.append(f"early-termination fee {format_money(fee, terms.currency)}")
        return CancellationDecision(
            allowed=True,
            message="; ".join(parts),
            timing=timing,
            effective_date=effective,
            refund=refund,
            currency=terms.currency,
            within_minimum_term=within,
            minimum_term_ends=term_ends,
            early_termination_fee_minor=fee,
            sources=sources,
            **self._approval_fields(segment, terms.plan_id, reasons),
        )

    # -- pause and resume ---------------------------------------------------------------------

    def decide_pause(
        self,
        *,
        segment: Segment,
        plan_id: str,
        today: date,
        resume_on: date | None = None,
        currently_paused: bool = False,
    ) -> PauseDecision:
        """Decide a pause starting ``today``, optionally with the day service resumes.

        An open-ended pause under a rule with ``max_days`` resumes by itself after ``max_days``.

        Args:
            segment: The subscription's segment.
            plan_id: The current plan.
            today: The local date the pause starts.
            resume_on: The first local day of service again, or ``None`` for open-ended.
            currently_paused: Whether the subscription is paused already.

        Returns:
            A :class:`PauseDecision`; refusals carry ``SUBSCRIPTION_PAUSED``,
            ``CHANGE_NOT_ALLOWED``, ``INVALID_DATE_RANGE`` or ``INVALID_REQUEST``.
        """
        rule, source = self.pause_rule(segment=segment, plan_id=plan_id)
        sources = [source]
        if currently_paused:
            return PauseDecision.refused(
                ErrorCode.SUBSCRIPTION_PAUSED,
                "the subscription is already paused; resume it or change its resume date",
                sources=sources,
            )
        if not rule.allowed:
            return PauseDecision.refused(
                ErrorCode.CHANGE_NOT_ALLOWED,
                f"plan {plan_id} cannot be paused ({source}); cancel it instead",
                sources=sources,
            )
        if resume_on is not None and resume_on <= today:
            return PauseDecision.refused(
                ErrorCode.INVALID_DATE_RANGE,
                f"resume date {resume_on} must be after the pause starts ({today})",
                sources=sources,
            )
        if resume_on is None and rule.require_resume_date:
            return PauseDecision.refused(
                ErrorCode.INVALID_REQUEST,
                f"a pause on plan {plan_id} needs a resume date ({source})",
                sources=sources,
            )
        resume_by = None if rule.max_days is None else today + timedelta(days=rule.max_days)
        if resume_on is not None and resume_by is not None and resume_on > resume_by:
            return PauseDecision.refused(
                ErrorCode.CHANGE_NOT_ALLOWED,
                f"a pause lasts at most {rule.max_days} days: resume on or before {resume_by} "
                f"({source})",
                sources=sources,
            )
        resume = resume_on if resume_on is not None else resume_by
        days = None if resume is None else (resume - today).days

        reasons: list[str] = []
        if rule.approval.always:
            reasons.append(f"every pause needs approval here ({source})")
        limit = rule.approval.over_days
        if limit is not None and (days is None or days > limit):
            length = "an open-ended pause" if days is None else f"a {days}-day pause"
            reasons.append(f"{length} is longer than {limit} days ({source})")
        until = "until resumed" if resume is None else f"until {resume}"
        return PauseDecision(
            allowed=True,
            message=f"paused from {today} {until}",
            starts_on=today,
            resume_on=resume,
            resume_by=resume_by,
            max_days=rule.max_days,
            shift_billing_dates=rule.shift_billing_dates,
            sources=sources,
            **self._approval_fields(segment, plan_id, reasons),
        )

    def decide_resume(
        self,
        *,
        segment: Segment,
        plan_id: str,
        currently_paused: bool,
        paused_on: date | None,
        today: date,
    ) -> ResumeDecision:
        """Decide a resume on ``today`` and say how billing dates move.

        Args:
            segment: The subscription's segment.
            plan_id: The current plan.
            currently_paused: Whether the subscription is paused.
            paused_on: The local date the pause started (``None`` when not paused).
            today: The first local day of service again.

        Returns:
            A :class:`ResumeDecision` with the days paused; ``NOT_PAUSED`` when not paused.
        """
        rule, source = self.pause_rule(segment=segment, plan_id=plan_id)
        if not currently_paused or paused_on is None:
            return ResumeDecision.refused(
                ErrorCode.NOT_PAUSED, "the subscription is not paused", sources=[source]
            )
        if today < paused_on:
            return ResumeDecision.refused(
                ErrorCode.INVALID_DATE_RANGE,
                f"resume date {today} is before the pause started ({paused_on})",
                sources=[source],
            )
        days = (today - paused_on).days
        shift = "billing dates move" if rule.shift_billing_dates else "billing dates stay"
        return ResumeDecision(
            allowed=True,
            message=f"resumed after {days} days paused; {shift}",
            paused_days=days,
            shift_billing_dates=rule.shift_billing_dates,
            sources=[source],
        )

    # -- approvers ----------------------------------------------------------------------------

    def approver_may_decide(
        self,
        *,
        approver: str,
        requester: str,
        segment: Segment,
        plan_id: str | None = None,
        memberships: Mapping[str, Collection[str]] | None = None,
    ) -> None:
        """Check that ``approver`` may approve or reject ``requester``'s request.

        Ids compare case-insensitively and without surrounding blanks, so ``Alice`` cannot
        approve ``alice``'s request. Members of the first and the escalation group may decide.

        Args:
            approver: The id of the person deciding.
            requester: The id of the person who made the request.
            segment: The subscription's segment.
            plan_id: The subscription's plan (a plan may route approvals elsewhere).
            memberships: Group -> member ids from an identity service; defaults to the policy's
                ``approver_groups``.

        Raises:
            OmsError: ``SELF_APPROVAL`` when approver and requester are the same person;
                ``APPROVER_NOT_AUTHORIZED`` when the approver is in none of the route's groups.
        """
        who = approver.strip().casefold()
        if not who:
            raise OmsError(ErrorCode.APPROVER_NOT_AUTHORIZED, "name the approver (--as ID)")
        if who == requester.strip().casefold():
            raise OmsError(
                ErrorCode.SELF_APPROVAL,
                f"{approver} made this request and cannot approve or reject it; ask another "
                "approver",
            )
        route, source = self.approval_route(segment=segment, plan_id=plan_id)
        directory: Mapping[str, Collection[str]] = (
            self.approver_groups if memberships is None else memberships
        )
        for group in route.groups:
            if who in {m.strip().casefold() for m in directory.get(group, ())}:
                return
        groups = " or ".join(route.groups)
        raise OmsError(
            ErrorCode.APPROVER_NOT_AUTHORIZED,
            f"{approver} is not in {groups}, who approve {segment} requests ({source})",
        )

    def _approval_fields(
        self, segment: Segment, plan_id: str | None, reasons: list[str]
    ) -> _ApprovalFields:
        if not reasons:
            return {"needs_approval": False, "approval_reasons": [], "approver_groups": []}
        route, _ = self.approval_route(segment=segment, plan_id=plan_id)
        return {
            "needs_approval": True,
            "approval_reasons": reasons,
            "approver_groups": list(route.groups),
            "sla": route.sla,
        }

    # -- catalog cross-check ------------------------------------------------------------------

    def check_catalog(self, catalog: Catalog) -> None:
        """Check the policy against a catalog: plan ids exist, every currency has its amounts.

        Run at startup: a missing approval limit would send every change in that currency to
        approval, and a missing flat fee would fail the cancellation.

        Raises:
            ValueError: Listing every problem found.
        """
        problems: list[str] = []
        known = {p.plan_id for p in catalog.plans}
        problems.extend(
            f"plans.{plan_id}: no such plan in the catalog"
            for plan_id in self.plans
            if plan_id not in known
        )
        for plan in catalog.plans:
            problems.extend(self._currency_gaps(plan))
        if problems:
            raise ValueError("policy does not fit the catalog: " + "; ".join(problems))

    def _currency_gaps(self, plan: Plan) -> list[str]:
        gaps: list[str] = []
        currencies = set(plan.currencies)
        for kind in CHANGE_KINDS:
            rule, source = self.change_rule(segment=plan.segment, plan_id=plan.plan_id, kind=kind)
            limits = rule.approval.amount_over_minor
            if limits is not None and (missing := currencies - set(limits)):
                gaps.append(
                    f"{source}.approval.amount_over_minor has no {', '.join(sorted(missing))} "
                    f"(plan {plan.plan_id})"
                )
        cancel, source = self.cancellation_rule(segment=plan.segment, plan_id=plan.plan_id)
        fee = cancel.early_termination_fee
        if isinstance(fee, FlatFee) and (missing := currencies - set(fee.amount_minor)):
            gaps.append(
                f"{source}.early_termination_fee.amount_minor has no "
                f"{', '.join(sorted(missing))} (plan {plan.plan_id})"
            )
        return gaps


# ---------------------------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------------------------


class Decision(BaseModel):
    """What every policy decision says.

    Attributes:
        allowed: Whether the request may go ahead (perhaps after approval).
        code: The error code of a refusal; ``None`` when allowed.
        message: A sentence a person can act on.
        needs_approval: Whether someone must approve before it is applied or scheduled.
        approval_reasons: Why approval is needed, one sentence per condition that held.
        approver_groups: First group, then the escalation group (empty without approval).
        sla: Reminder, escalation and expiry delays (``None`` without approval).
        sources: The policy entries that decided, e.g. ``segments.enterprise.changes.any``.
    """

    model_config = ConfigDict(frozen=True)

    allowed: bool
    code: ErrorCode | None = None
    message: str
    needs_approval: bool = False
    approval_reasons: list[str] = Field(default_factory=list)
    approver_groups: list[str] = Field(default_factory=list)
    sla: ApprovalSla | None = None
    sources: list[str] = Field(default_factory=list)

    @classmethod
    def refused(cls, code: ErrorCode, message: str, **fields: object) -> Self:
        """A refusal with its code and message (other fields keep their defaults)."""
        return cls.model_validate({"allowed": False, "code": code, "message": message, **fields})

    def raise_if_refused(self) -> Self:
        """Return self when allowed; raise the refusal as an :class:`OmsError` otherwise."""
        if not self.allowed:
            raise OmsError(self.code or ErrorCode.CHANGE_NOT_ALLOWED, self.message)
        return self


class ChangeDecision(Decision):
    """The decision on a change of terms.

    Attributes:
        kinds: The kinds of change decided, in canonical order.
        timing: When the change takes effect.
        credit_handling: Where a credit from an immediate change goes.
    """

    kinds: list[ChangeKind] = Field(default_factory=list)
    timing: Timing = Timing.IMMEDIATELY
    credit_handling: CreditHandling = CreditHandling.ACCOUNT_CREDIT


class CancellationDecision(Decision):
    """The decision on a cancellation.

    Attributes:
        timing: When the cancellation takes effect.
        effective_date: The first local day without service (``None`` on a refusal).
        refund: What happens to unused paid time: refund, account credit or none.
        currency: The subscription's currency (of the fee).
        within_minimum_term: Whether it takes effect before the minimum term ends.
        minimum_term_ends: The day the minimum term ends, if there is one.
        early_termination_fee_minor: The fee to invoice (0 for none).
    """

    timing: Timing = Timing.PERIOD_END
    effective_date: date | None = None
    refund: CreditHandling = CreditHandling.NONE
    currency: str | None = None
    within_minimum_term: bool = False
    minimum_term_ends: date | None = None
    early_termination_fee_minor: int = 0

    def fee_line(self) -> InvoiceLine | None:
        """The early-termination fee as an invoice line, or ``None`` when there is no fee."""
        if not self.early_termination_fee_minor or self.currency is None:
            return None
        return InvoiceLine(
            kind=LineKind.EARLY_TERMINATION_FEE,
            description=f"Early termination fee (minimum term until {self.minimum_term_ends})",
            amount_minor=self.early_termination_fee_minor,
            currency=self.currency,
        )


class PauseDecision(Decision):
    """The decision on a pause.

    Attributes:
        starts_on: The first local day paused.
        resume_on: The first day of service again: as requested, else ``resume_by``, else
            ``None`` (open-ended).
        resume_by: The latest day the pause may end (``None`` without ``max_days``).
        max_days: The rule's longest pause.
        shift_billing_dates: Whether billing dates move by the days paused.
    """

    starts_on: date | None = None
    resume_on: date | None = None
    resume_by: date | None = None
    max_days: int | None = None
    shift_billing_dates: bool = True


class ResumeDecision(Decision):
    """The decision on a resume.

    Attributes:
        paused_days: Days between the pause and the resume.
        shift_billing_dates: Whether every later billing date moves by ``paused_days``.
    """

    paused_days: int = 0
    shift_billing_dates: bool = True


# ---------------------------------------------------------------------------------------------
# Classifying a change of terms
# ---------------------------------------------------------------------------------------------


class TermsSnapshot(BaseModel):
    """The terms a change compares: plan and tier, price, quantity, interval, discount.

    Attributes:
        plan_id: The plan.
        tier: The plan's tier in the catalog (higher is a bigger plan).
        currency: ISO 4217 code.
        interval: Billing interval.
        unit_amount_minor: Price per unit per interval, before discount.
        quantity: Units.
        discount_percent: Discount on the recurring amount (0..100).
    """

    model_config = ConfigDict(frozen=True)

    plan_id: str
    tier: int
    currency: str
    interval: Interval
    unit_amount_minor: NonNegativeInt
    quantity: int = 1
    discount_percent: Percent = Decimal(0)

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        return normalize_currency(value)

    @classmethod
    def from_plan(
        cls,
        plan: Plan,
        *,
        currency: str,
        interval: Interval | str,
        quantity: int = 1,
        discount_percent: Decimal | int = 0,
    ) -> TermsSnapshot:
        """The terms of ``plan`` at its catalog price.

        Raises:
            OmsError: ``CURRENCY_NOT_OFFERED`` / ``INTERVAL_NOT_OFFERED`` / ``INVALID_INTERVAL``.
        """
        price = plan.price(currency, interval)
        return cls(
            plan_id=plan.plan_id,
            tier=plan.tier,
            currency=price.currency,
            interval=price.interval,
            unit_amount_minor=price.amount_minor,
            quantity=quantity,
            discount_percent=Decimal(discount_percent),
        )

    def monthly_unit_price(self) -> Fraction:
        """The list unit price per month-equivalent, exact (a year is 12 months or 52 weeks)."""
        return self.unit_amount_minor * _periods_per_year(self.interval) / 12

    def monthly_amount(self) -> Fraction:
        """The recurring amount per month-equivalent: unit x quantity less discount, exact."""
        share = 1 - Fraction(self.discount_percent) / 100
        return self.monthly_unit_price() * self.quantity * share


def _periods_per_year(interval: Interval) -> Fraction:
    months = interval.months
    if months is not None:
        return Fraction(12, months)
    days = interval.days
    assert days is not None  # an Interval is months or days, by construction
    # 52 weeks a year: weekly 52, biweekly 26. Exact, and the convention replenishment uses.
    return Fraction(364, days)


def classify_change(current: TermsSnapshot, new: TermsSnapshot) -> frozenset[ChangeKind]:
    """The kinds of change from ``current`` to ``new`` terms (empty when nothing changes).

    Another plan is an upgrade when its tier is higher, or at equal tier when its monthly-
    equivalent unit price is higher; otherwise a downgrade (a sideways move gets the more
    cautious rule). The same plan on another interval is an interval change only: yearly is
    cheaper per month but is not a downgrade.

    Args:
        current: The terms in force.
        new: The requested terms.

    Raises:
        OmsError: ``INVALID_QUANTITY`` for a quantity below 1; ``CHANGE_NOT_ALLOWED`` for a
            currency switch (a subscription keeps its currency).
    """
    for side in (current, new):
        if side.quantity < 1:
            raise OmsError(
                ErrorCode.INVALID_QUANTITY, f"quantity must be at least 1, got {side.quantity}"
            )
    if current.currency != new.currency:
        raise OmsError(
            ErrorCode.CHANGE_NOT_ALLOWED,
            f"a subscription keeps its currency ({current.currency}, not {new.currency}); "
            "cancel it and subscribe again to pay in another currency",
        )
    kinds: set[ChangeKind] = set()
    if new.plan_id != current.plan_id:
        up = (new.tier, new.monthly_unit_price()) > (current.tier, current.monthly_unit_price())
        kinds.add(ChangeKind.UPGRADE if up else ChangeKind.DOWNGRADE)
    if new.quantity > current.quantity:
        kinds.add(ChangeKind.QUANTITY_INCREASE)
    elif new.quantity < current.quantity:
        kinds.add(ChangeKind.QUANTITY_DECREASE)
    if new.interval != current.interval:
        kinds.add(ChangeKind.INTERVAL_CHANGE)
    if new.discount_percent != current.discount_percent:
        kinds.add(ChangeKind.DISCOUNT)
    return frozenset(kinds)


def monthly_amount_delta_minor(current: TermsSnapshot, new: TermsSnapshot) -> int:
    """New minus current monthly-equivalent recurring amount, rounded once (``R``).

    This is what approval limits (``amount_over_minor``) compare: negative for a downgrade.

    Raises:
        ValueError: When the currencies differ.
    """
    if current.currency != new.currency:
        raise ValueError(f"cannot compare {current.currency} with {new.currency}")
    return round_minor(new.monthly_amount() - current.monthly_amount(), current.currency)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _ordered_kinds(kinds: Iterable[ChangeKind]) -> list[ChangeKind]:
    wanted = {ChangeKind(k) for k in kinds}
    others = wanted - set(CHANGE_KINDS)
    if others:
        names = ", ".join(sorted(k.value for k in others))
        raise ValueError(f"{names}: use decide_cancellation / decide_pause / decide_resume")
    return [k for k in CHANGE_KINDS if k in wanted]


def _percent(value: object) -> Fraction | None:
    """An exact percentage in 0..100, or ``None`` when ``value`` is not one (floats refused)."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return None
    if isinstance(value, Decimal) and not value.is_finite():
        return None
    exact = Fraction(value)
    return exact if 0 <= exact <= 100 else None


def _label(kind: ChangeKind) -> str:
    return kind.value.replace("_", " ")


def _a(label: str) -> str:
    return f"{'an' if label[:1] in 'aeiou' else 'a'} {label}"


def _timing_words(timing: Timing) -> str:
    return "immediately" if timing is Timing.IMMEDIATELY else "at period end"


def _credit_words(handling: CreditHandling) -> str:
    return "the card as a refund" if handling is CreditHandling.REFUND else "account credit"


def _show_percent(value: Fraction) -> str:
    shown = (Decimal(value.numerator) / Decimal(value.denominator)).quantize(Decimal("0.01"))
    text = f"{shown:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _common_timing(
    rules: list[tuple[ChangeKind, Timing, tuple[Timing, ...], str]],
    requested: Timing | None,
) -> Timing | str:
    """The timing every rule permits, or a refusal sentence."""
    if requested is not None:
        wanted = parse_timing(requested)
        for kind, _, permitted, source in rules:
            if wanted not in permitted:
                return (
                    f"{_a(_label(kind))} cannot take effect {_timing_words(wanted)}; it takes "
                    f"effect {' or '.join(_timing_words(t) for t in permitted)} ({source})"
                )
        return wanted
    # The later default wins: a part that must wait for period end holds the whole change.
    later = any(default is Timing.PERIOD_END for _, default, _, _ in rules)
    preferred = [Timing.PERIOD_END, Timing.IMMEDIATELY] if later else list(Timing)
    for candidate in preferred:
        if all(candidate in permitted for _, _, permitted, _ in rules):
            return candidate
    names = " and ".join(_label(k) for k, _, _, _ in rules)
    return f"the rules for {names} allow no common timing; request them separately"


def _change_reasons(
    kind: ChangeKind,
    when: ChangeApprovalWhen,
    source: str,
    *,
    currency: str,
    delta: int,
    before: int,
    after: int,
    discount: Fraction,
) -> list[str]:
    label = _label(kind)
    reasons: list[str] = []
    if when.always:
        reasons.append(f"every {label} needs approval here ({source})")
    limits = when.amount_over_minor
    if limits is not None:
        limit = limits.get(currency)
        if limit is None:
            # Closed by default: an unpriced limit is a policy gap a person should look at.
            reasons.append(f"{label}: no approval limit is set for {currency} ({source})")
        elif abs(delta) > limit:
            reasons.append(
                f"{label} changes the monthly amount by {format_money(abs(delta), currency)}, "
                f"over the {format_money(limit, currency)} limit ({source})"
            )
    if kind is ChangeKind.QUANTITY_DECREASE:
        drop = before - after
        units = when.quantity_decrease_over_units
        if units is not None and drop > units:
            reasons.append(
                f"quantity falls by {drop} ({before} to {after}), over the {units}-unit limit "
                f"({source})"
            )
        pct_limit = when.quantity_decrease_over_percent
        pct = Fraction(drop * 100, before)
        if pct_limit is not None and pct > Fraction(pct_limit):
            reasons.append(
                f"quantity falls by {_show_percent(pct)}% ({before} to {after}), over the "
                f"{_show_percent(Fraction(pct_limit))}% limit ({source})"
            )
    if kind is ChangeKind.DISCOUNT:
        d_limit = when.discount_over_percent
        if d_limit is not None and discount > Fraction(d_limit):
            reasons.append(
                f"a {_show_percent(discount)}% discount is over the "
                f"{_show_percent(Fraction(d_limit))}% limit ({source})"
            )
    return reasons


def _months_until(start: date, end: date) -> int:
    """Whole months from ``start`` to ``end``, a started month counting whole (0 if none)."""
    if start >= end:
        return 0
    n = max(0, (end.year - start.year) * 12 + end.month - start.month - 1)
    while billing_date(start, 1, n) < end:
        n += 1
    return n


def _early_termination_fee(
    fee: NoFee | FlatFee | RemainingMonthsFee,
    terms: TermsSnapshot,
    stops_paying: date,
    term_ends: date,
    source: str,
) -> int:
    if isinstance(fee, FlatFee):
        if terms.currency not in fee.amount_minor:
            raise ValueError(
                f"{source}.early_termination_fee has no amount for {terms.currency}; "
                "add it (Policy.check_catalog finds these gaps)"
            )
        return fee.amount_minor[terms.currency]
    if isinstance(fee, RemainingMonthsFee):
        months = _months_until(stops_paying, term_ends)
        exact = months * terms.monthly_amount() * Fraction(fee.percent) / 100
        return round_minor(exact, terms.currency)
    return 0


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_policy(text: str) -> Policy:
    """Parse and validate a policy YAML document.

    Raises:
        ValueError: For YAML that does not parse or is not a mapping; pydantic's
            ``ValidationError`` (a ``ValueError``) naming the field path of every problem.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"policy is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(
            "a policy document is a YAML mapping with approver_groups, default, segments, plans"
        )
    return Policy.model_validate(data)


@cache
def default_policy() -> Policy:
    """The policy shipped in ``models/data/policy.yaml`` (parsed once; the model is frozen)."""
    text = resources.files("models").joinpath("data/policy.yaml").read_text()
    return load_policy(text)
