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
