"""What a subscription bills for a period: the bridge between its terms and the invoice lines.

The workflow calls these for every amount it shows, notifies or invoices; it does no arithmetic on
money itself. A subscription whose service starts inside a period (aligned to an anchor day it did
not start on) pays a leading prorated piece for that first period, per billing-math.md.
"""

from __future__ import annotations

from datetime import date

from models.calendar import Interval, period_bounds
from models.invoice import InvoiceLine, LineKind, period_charge_line
from models.proration import prorate


def billed_span(
    anchor: date, interval: Interval, n: int, billing_start: date
) -> tuple[tuple[date, date], tuple[date, date]]:
    """``(span, period)`` that period ``n`` bills: the whole period, or its leading piece."""
    period = period_bounds(anchor, interval, n)
    if not billing_start < period[1]:
        raise ValueError(f"period {n} ({period[0]}..{period[1]}) ends before {billing_start}")
    start = max(period[0], billing_start)
    return (start, period[1]), period


def period_lines(
    *,
    anchor: date,
    interval: Interval,
    n: int,
    billing_start: date,
    currency: str,
    unit_amount_minor: int,
    quantity: int,
    description: str,
) -> list[InvoiceLine]:
    """The charge line(s) of period ``n``: a full period charge or a leading prorated piece."""
    span, period = billed_span(anchor, interval, n, billing_start)
    if span == period:
        return [
            period_charge_line(
                currency=currency,
                unit_amount_minor=unit_amount_minor,
                quantity=quantity,
                period=period,
                description=description,
            )
        ]
    amount = prorate(unit_amount_minor * quantity, currency, span, period)
    days, length = (span[1] - span[0]).days, (period[1] - period[0]).days
    return [
        InvoiceLine(
            kind=LineKind.PRORATION_CHARGE,
            description=f"{description}, {days}/{length} days",
            amount_minor=amount,
            currency=currency,
            quantity=quantity,
            unit_amount_minor=unit_amount_minor,
            period_start=span[0],
            period_end=span[1],
        )
    ]


def period_amount(
    *,
    anchor: date,
    interval: Interval,
    n: int,
    billing_start: date,
    currency: str,
    unit_amount_minor: int,
    quantity: int,
) -> int:
    """The total charged for period ``n`` before credits (what notices announce)."""
    lines = period_lines(
        anchor=anchor,
        interval=interval,
        n=n,
        billing_start=billing_start,
        currency=currency,
        unit_amount_minor=unit_amount_minor,
        quantity=quantity,
        description="",
    )
    return sum(line.amount_minor for line in lines)


# Stripe's minimum charge amounts (https://docs.stripe.com/currencies#minimum-and-maximum-charge-amounts)
# in minor units; a total above zero and below this is never sent to the gateway (billing-math.md,
# "Minimum charge"). Currencies not listed use the equivalent of 0.50 USD in their own unit's
# smallest sensible amount: 50 minor units.
GATEWAY_MINIMUM_MINOR: dict[str, int] = {
    "USD": 50,
    "EUR": 50,
    "GBP": 30,
    "JPY": 50,
    "AUD": 50,
    "CAD": 50,
    "CHF": 50,
    "DKK": 250,
    "NOK": 300,
    "SEK": 300,
    "HKD": 400,
    "SGD": 50,
    "NZD": 50,
    "MXN": 1000,
    "INR": 50,
    "KWD": 100,  # Stripe's three-decimal currencies
    "BHD": 100,
    "OMR": 100,
}


def gateway_minimum_minor(currency: str) -> int:
    """The smallest total the gateway accepts for ``currency``, in minor units."""
    return GATEWAY_MINIMUM_MINOR.get(currency.upper(), 50)


def below_gateway_minimum(total_minor: int, currency: str) -> bool:
    """True for a total above zero that the gateway would refuse as too small."""
    return 0 < total_minor < gateway_minimum_minor(currency)


def allocate_refund(
    amount_minor: int, payments: list[tuple[str, int]]
) -> tuple[list[tuple[str, int]], int]:
    """Split a refund over card payments, newest first, each up to what it has left.

    Args:
        amount_minor: What policy refunds (>= 0).
        payments: ``(intent_id, refundable_minor)`` of the period's card payments, oldest first.

    Returns:
        ``(refunds, rest)``: the ``(intent_id, amount_minor)`` refunds to make (none is zero and
        none exceeds its payment's refundable amount) and what could not be refunded (it goes back
        to the customer's balance).
    """
    if amount_minor < 0:
        raise ValueError(f"a refund cannot be negative, got {amount_minor}")
    rest = amount_minor
    refunds: list[tuple[str, int]] = []
    for intent_id, refundable in reversed(payments):
        if rest == 0:
            break
        take = min(rest, max(0, refundable))
        if take:
            refunds.append((intent_id, take))
            rest -= take
    return refunds, rest
