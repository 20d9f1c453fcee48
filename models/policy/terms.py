"""Classifying a change of terms: the terms compared, the kinds of change, the amount delta."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from pydantic import BaseModel, ConfigDict, field_validator

from models.calendar import Interval
from models.catalog import Plan
from models.errors import ErrorCode, OmsError
from models.money import normalize_currency, round_minor
from models.policy.fields import NonNegativeInt, Percent
from models.policy.vocabulary import ChangeKind


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
