"""The decisions a policy returns: allowed or refused, when, and whether approval is needed.

Decisions are pydantic models so they cross the Temporal boundary with the pydantic converter.
"""

from __future__ import annotations

from datetime import date
from typing import Self, TypedDict

from pydantic import BaseModel, ConfigDict, Field

from models.errors import ErrorCode, OmsError
from models.invoice import InvoiceLine, LineKind
from models.policy.rules import ApprovalSla
from models.policy.vocabulary import ChangeKind, CreditHandling, Timing


class _ApprovalFields(TypedDict, total=False):
    """The approval part of a decision, as keyword arguments (typed for mypy --strict)."""

    needs_approval: bool
    approval_reasons: list[str]
    approver_groups: list[str]
    sla: ApprovalSla | None


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
