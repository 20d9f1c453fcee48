"""The policy's vocabulary: segments, change kinds, timings, credit handling, and their words.

These enums are the values policy rules and decisions are written in; the phrase helpers at the end
turn them into the words refusal and approval sentences use.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from models.errors import ErrorCode
from models.money import BillingInputError

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
# Words for sentences
# ---------------------------------------------------------------------------------------------


def _label(kind: ChangeKind) -> str:
    return kind.value.replace("_", " ")


def _a(label: str) -> str:
    return f"{'an' if label[:1] in 'aeiou' else 'a'} {label}"


def _timing_words(timing: Timing) -> str:
    return "immediately" if timing is Timing.IMMEDIATELY else "at period end"


def _credit_words(handling: CreditHandling) -> str:
    return "the card as a refund" if handling is CreditHandling.REFUND else "account credit"
