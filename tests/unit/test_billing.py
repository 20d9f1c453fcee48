"""The period lines a subscription bills: full periods and the leading prorated piece."""

from __future__ import annotations

from datetime import date

import pytest

from models.billing import billed_span, period_amount, period_lines
from models.calendar import Interval


def test_a_period_starting_on_its_billing_date_is_one_full_charge_line() -> None:
    [line] = period_lines(
        anchor=date(2024, 1, 31),
        interval=Interval.MONTHLY,
        n=1,
        billing_start=date(2024, 1, 31),
        currency="USD",
        unit_amount_minor=3000,
        quantity=2,
        description="Pro",
    )
    assert (line.kind, line.amount_minor) == ("period_charge", 6000)
    assert (line.period_start, line.period_end) == (date(2024, 2, 29), date(2024, 3, 31))


@pytest.mark.parametrize(
    ("currency", "unit", "start", "expected"),
    [
        ("USD", 1000, date(2024, 3, 15), 548),  # 17/31 days of 10.00
        ("JPY", 1000, date(2024, 3, 22), 323),  # 10/31 days of 1,000
        ("KWD", 1000, date(2024, 4, 24), 233),  # 7/30 days of 1.000
    ],
)
def test_service_starting_inside_a_period_pays_the_leading_piece_rounded_once(
    currency: str, unit: int, start: date, expected: int
) -> None:
    anchor = date(2024, 1, 1)
    kwargs = dict(
        anchor=anchor,
        interval=Interval.MONTHLY,
        billing_start=start,
        currency=currency,
        unit_amount_minor=unit,
        quantity=1,
    )
    n = 2 if start.month == 3 else 3
    assert period_amount(n=n, **kwargs) == expected  # type: ignore[arg-type]
    [line] = period_lines(n=n, description="x", **kwargs)  # type: ignore[arg-type]
    assert line.kind == "proration_charge" and line.period_start == start


def test_a_period_that_ends_before_service_starts_is_refused() -> None:
    with pytest.raises(ValueError, match="ends before"):
        billed_span(date(2024, 1, 1), Interval.MONTHLY, 0, date(2024, 3, 1))
