"""Invoice lines and invoice composition: one rounding per line, credit consumed before cards.

Lines are pydantic models because they cross the Temporal boundary through the pydantic data
converter. Every line is already rounded (integer minor units); composing an invoice only adds
integers, so lines are never netted before rounding. Credits and discounts are negative lines.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction
from typing import Self

from pydantic import BaseModel, Field, StrictInt, field_validator, model_validator

from models.calendar import ensure_range
from models.errors import ErrorCode
from models.money import (
    BillingInputError,
    ensure_non_negative_int,
    normalize_currency,
    round_minor,
)

__all__ = [
    "ComposedInvoice",
    "InvoiceLine",
    "LineKind",
    "compose_invoice",
    "discount_line",
    "period_charge_line",
    "setup_credit_line",
]


class LineKind(StrEnum):
    """What an invoice line is for. Credits, discounts and applied account credit are negative."""

    PERIOD_CHARGE = "period_charge"
    PRORATION_CREDIT = "proration_credit"
    PRORATION_CHARGE = "proration_charge"
    SETUP_CREDIT = "setup_credit"
    DISCOUNT = "discount"
    ACCOUNT_CREDIT_APPLIED = "account_credit_applied"
    EARLY_TERMINATION_FEE = "early_termination_fee"
    BALANCE_CARRIED = "balance_carried"  # an earlier total below the gateway minimum, owed now


class InvoiceLine(BaseModel, frozen=True):
    """One rounded invoice line.

    Attributes:
        kind: What the line is for.
        description: Text shown to the customer.
        amount_minor: The line total in minor units, already rounded once; credits are negative.
        currency: Upper-case ISO 4217 code.
        quantity: Units the line covers (informational; ``amount_minor`` is authoritative).
        unit_amount_minor: Price per unit for a full period, when the line derives from one.
        period_start: First local date the line covers, inclusive.
        period_end: Local date the covered span ends, exclusive (half-open like billing periods).
    """

    kind: LineKind
    description: str
    amount_minor: StrictInt
    currency: str
    quantity: StrictInt = Field(default=1, ge=0)
    unit_amount_minor: StrictInt | None = None
    period_start: date | None = None
    period_end: date | None = None

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        return normalize_currency(value)

    @model_validator(mode="after")
    def _period_is_a_range(self) -> Self:
        if (self.period_start is None) != (self.period_end is None):
            raise ValueError("period_start and period_end must be given together")
        if (
            self.period_start is not None
            and self.period_end is not None
            and self.period_end < self.period_start
        ):
            raise ValueError(
                f"period_end {self.period_end} is before period_start {self.period_start}"
            )
        return self


class ComposedInvoice(BaseModel, frozen=True):
    """An invoice's lines and totals after account credit is applied.

    Attributes:
        currency: Upper-case ISO 4217 code of every line.
        lines: The input lines, plus an ``account_credit_applied`` line when credit was used.
        subtotal_minor: Sum of the input lines (may be negative when credits exceed charges).
        credit_applied_minor: Account credit consumed by this invoice (>= 0).
        total_minor: What is charged to the card (>= 0, never below zero).
        credit_remaining_minor: Account credit left afterwards, including any negative subtotal
            turned into credit.
    """

    currency: str
    lines: list[InvoiceLine]
    subtotal_minor: StrictInt
    credit_applied_minor: StrictInt = Field(ge=0)
    total_minor: StrictInt = Field(ge=0)
    credit_remaining_minor: StrictInt = Field(ge=0)


def period_charge_line(
    *,
    currency: str,
    unit_amount_minor: int,
    quantity: int,
    period: tuple[date, date],
    description: str,
) -> InvoiceLine:
    """The full charge for one billing period: ``unit_amount_minor * quantity``, no proration.

    Args:
        currency: ISO 4217 code.
        unit_amount_minor: Price per unit per period (>= 0).
        quantity: Units (>= 0).
        period: The half-open period ``(B_n, B_(n+1))`` the charge covers.
        description: Text shown to the customer.

    Raises:
        BillingInputError: For a negative or non-int price or quantity, an empty or reversed
            period, or an unknown currency.
    """
    code = normalize_currency(currency)
    unit = ensure_non_negative_int(unit_amount_minor, "unit_amount_minor")
    qty = ensure_non_negative_int(quantity, "quantity")
    start, end = ensure_range(period, "period", allow_empty=False)
    return InvoiceLine(
        kind=LineKind.PERIOD_CHARGE,
        description=description,
        amount_minor=unit * qty,
        currency=code,
        quantity=qty,
        unit_amount_minor=unit,
        period_start=start,
        period_end=end,
    )


def discount_line(
    *,
    currency: str,
    base_amount_minor: int,
    description: str,
    percent: Fraction | Decimal | int | None = None,
    amount_off_minor: int | None = None,
    period: tuple[date, date] | None = None,
) -> InvoiceLine:
    """A negative discount line against ``base_amount_minor``: a percentage or a fixed amount.

    A percentage is exact (``Fraction``/``Decimal``/``int``, never ``float``) and rounded once:
    ``-R(base * percent / 100)``. A fixed amount is capped at the base, so a discount never turns
    the discounted charge negative.

    Args:
        currency: ISO 4217 code.
        base_amount_minor: The charge the discount applies to (>= 0).
        description: Text shown to the customer.
        percent: Percentage off, 0..100; exclusive with ``amount_off_minor``.
        amount_off_minor: Minor units off (>= 0); exclusive with ``percent``.
        period: The span the discount covers, if any.

    Raises:
        BillingInputError: Unless exactly one of ``percent``/``amount_off_minor`` is given and
            valid, or for a bad base, period or currency.
    """
    code = normalize_currency(currency)
    base = ensure_non_negative_int(base_amount_minor, "base_amount_minor")
    if (percent is None) == (amount_off_minor is None):
        raise BillingInputError(
            ErrorCode.INVALID_REQUEST, "give exactly one of percent or amount_off_minor"
        )
    if percent is not None:
        if isinstance(percent, bool) or not isinstance(percent, Fraction | Decimal | int):
            raise BillingInputError(
                ErrorCode.INVALID_AMOUNT,
                f"percent must be exact (Fraction, Decimal or int), got {type(percent).__name__}",
            )
        exact = Fraction(percent)
        if not 0 <= exact <= 100:
            raise BillingInputError(
                ErrorCode.INVALID_AMOUNT, f"percent must be between 0 and 100, got {percent}"
            )
        amount = round_minor(base * exact / 100, code)
    else:
        amount = min(ensure_non_negative_int(amount_off_minor, "amount_off_minor"), base)
    start, end = (
        ensure_range(period, "period", allow_empty=False) if period is not None else (None, None)
    )
    return InvoiceLine(
        kind=LineKind.DISCOUNT,
        description=description,
        amount_minor=-amount,
        currency=code,
        period_start=start,
        period_end=end,
    )


def setup_credit_line(*, currency: str, amount_minor: int, description: str) -> InvoiceLine:
    """A negative line crediting ``amount_minor`` against a setup fee.

    Args:
        currency: ISO 4217 code.
        amount_minor: The credit's size as a non-negative number; the line carries it negated.
        description: Text shown to the customer.

    Raises:
        BillingInputError: For a negative or non-int amount or an unknown currency.
    """
    amount = ensure_non_negative_int(amount_minor, "amount_minor")
    return InvoiceLine(
        kind=LineKind.SETUP_CREDIT,
        description=description,
        amount_minor=-amount,
        currency=normalize_currency(currency),
    )


def compose_invoice(
    *, currency: str, lines: list[InvoiceLine], account_credit_minor: int
) -> ComposedInvoice:
    """Total an invoice, consuming account credit before anything is charged to a card.

    The subtotal is the plain sum of the (already rounded) lines. Available account credit pays as
    much of a positive subtotal as it can; the total never goes below zero, and a negative subtotal
    (credits exceed charges) becomes account credit rather than a negative charge.

    Args:
        currency: ISO 4217 code of the invoice; every line must be in it.
        lines: The invoice's lines (no ``account_credit_applied`` line yet).
        account_credit_minor: The account's credit balance before this invoice (>= 0).

    Raises:
        BillingInputError: For a line in another currency (``INVALID_CURRENCY``), a line that
            already applies account credit, or a negative or non-int credit balance.
    """
    code = normalize_currency(currency)
    credit = ensure_non_negative_int(account_credit_minor, "account_credit_minor")
    for line in lines:
        if line.currency != code:
            raise BillingInputError(
                ErrorCode.INVALID_CURRENCY,
                f"line {line.description!r} is in {line.currency}, the invoice is in {code}: "
                "mixed currencies",
            )
        if line.kind is LineKind.ACCOUNT_CREDIT_APPLIED:
            # Applying credit twice would spend the same balance twice.
            raise BillingInputError(
                ErrorCode.INVALID_REQUEST,
                "lines already include applied account credit; pass the lines before credit",
            )
    subtotal = sum(line.amount_minor for line in lines)
    applied = min(credit, max(subtotal, 0))
    composed = list(lines)
    if applied:
        composed.append(
            InvoiceLine(
                kind=LineKind.ACCOUNT_CREDIT_APPLIED,
                description="Account credit applied",
                amount_minor=-applied,
                currency=code,
            )
        )
    return ComposedInvoice(
        currency=code,
        lines=composed,
        subtotal_minor=subtotal,
        credit_applied_minor=applied,
        total_minor=max(subtotal, 0) - applied,
        credit_remaining_minor=credit - applied + max(-subtotal, 0),
    )
