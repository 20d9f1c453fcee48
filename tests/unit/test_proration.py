"""Proration: exact fractions, per-period pieces, change and cancellation quotes."""

from __future__ import annotations

from datetime import date, timedelta
from fractions import Fraction
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.calendar import Interval, period_bounds
from models.invoice import LineKind
from models.proration import (
    ChangeQuote,
    fraction,
    prorate,
    prorate_across,
    quote_cancellation,
    quote_change,
    split_span,
)

D = date
APRIL = (D(2024, 4, 1), D(2024, 5, 1))  # 30 days
JANUARY = (D(2024, 1, 1), D(2024, 2, 1))  # 31 days


@pytest.mark.parametrize(
    ("amount", "currency", "span", "period", "expected"),
    [
        # spec: upgrade 30.00 -> 60.00 on 2024-04-11 in a 30-day period, 20 days left
        (3000, "USD", (D(2024, 4, 11), D(2024, 5, 1)), APRIL, 2000),
        (6000, "USD", (D(2024, 4, 11), D(2024, 5, 1)), APRIL, 4000),
        # spec: 10.00 * 17/31 = 5.4838 -> 5.48
        (1000, "USD", (D(2024, 1, 15), D(2024, 2, 1)), JANUARY, 548),
        # spec: 1,000 JPY * 10/31 = 322.58 -> 323
        (1000, "JPY", (D(2024, 1, 22), D(2024, 2, 1)), JANUARY, 323),
        # spec: 1.000 KWD * 7/30 = 0.2333 -> 0.233
        (1000, "KWD", (D(2024, 4, 24), D(2024, 5, 1)), APRIL, 233),
        # whole and empty spans
        (3000, "USD", APRIL, APRIL, 3000),
        (3000, "USD", (D(2024, 4, 11), D(2024, 4, 11)), APRIL, 0),
        # negative amounts round symmetrically
        (-1000, "USD", (D(2024, 1, 15), D(2024, 2, 1)), JANUARY, -548),
        # leap-year February is 29 days: 29.00 * 1/29
        (2900, "USD", (D(2024, 2, 28), D(2024, 2, 29)), (D(2024, 2, 1), D(2024, 3, 1)), 100),
        # a yearly period in a leap year is 366 days
        (36600, "EUR", (D(2024, 12, 31), D(2025, 1, 1)), (D(2024, 1, 1), D(2025, 1, 1)), 100),
    ],
)
def test_prorate_matches_the_spec_examples(
    amount: int, currency: str, span: tuple[date, date], period: tuple[date, date], expected: int
) -> None:
    assert prorate(amount, currency, span, period) == expected


def test_fraction_is_exact_days_over_period_length() -> None:
    assert fraction((D(2024, 1, 15), D(2024, 2, 1)), JANUARY) == Fraction(17, 31)


@pytest.mark.parametrize(
    ("amount", "currency", "span", "period", "match"),
    [
        (3000, "USD", (D(2024, 4, 20), D(2024, 4, 11)), APRIL, "span end 2024-04-11 is before"),
        (3000, "USD", (D(2024, 3, 31), D(2024, 4, 11)), APRIL, "outside period"),
        (3000, "USD", (D(2024, 4, 11), D(2024, 5, 2)), APRIL, "outside period"),
        (3000, "USD", (D(2024, 4, 1), D(2024, 4, 1)), (D(2024, 4, 1), D(2024, 4, 1)), "empty"),
        (3000, "USD", APRIL, (D(2024, 5, 1), D(2024, 4, 1)), "period end 2024-04-01 is before"),
        (30.0, "USD", APRIL, APRIL, "integer number of minor units, got float"),
        (3000, "ABC", APRIL, APRIL, "unknown currency"),
        (3000, "USD", ("2024-04-01", D(2024, 5, 1)), APRIL, "must be a calendar date"),
        (3000, "USD", (D(2024, 4, 1),), APRIL, r"\(start, end\) pair"),
    ],
)
def test_prorate_refuses_bad_input(
    amount: object, currency: str, span: object, period: tuple[date, date], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        prorate(amount, currency, span, period)  # type: ignore[arg-type]


# ---- spans across billing dates -------------------------------------------------------------


def test_split_span_cuts_at_billing_dates_with_each_piece_in_its_own_period() -> None:
    pieces = split_span((D(2024, 1, 15), D(2024, 3, 10)), D(2024, 1, 1), Interval.MONTHLY)
    assert pieces == [
        ((D(2024, 1, 15), D(2024, 2, 1)), (D(2024, 1, 1), D(2024, 2, 1))),
        ((D(2024, 2, 1), D(2024, 3, 1)), (D(2024, 2, 1), D(2024, 3, 1))),
        ((D(2024, 3, 1), D(2024, 3, 10)), (D(2024, 3, 1), D(2024, 4, 1))),
    ]


def test_split_span_of_an_empty_span_has_no_pieces() -> None:
    assert split_span((D(2024, 1, 15), D(2024, 1, 15)), D(2024, 1, 1), Interval.WEEKLY) == []


def test_split_span_refuses_a_span_starting_before_the_anchor() -> None:
    with pytest.raises(ValueError, match="before the anchor"):
        split_span((D(2023, 12, 31), D(2024, 1, 15)), D(2024, 1, 1), Interval.MONTHLY)


def test_prorate_across_prices_each_piece_over_its_own_period_length() -> None:
    span = (D(2024, 1, 15), D(2024, 3, 10))
    # 31.00 * 17/31 + 31.00 * 29/29 + 31.00 * 9/31
    assert prorate_across(3100, "USD", span, D(2024, 1, 1), Interval.MONTHLY) == 1700 + 3100 + 900


def test_prorate_across_rounds_each_piece_not_the_exact_sum() -> None:
    span = (D(2024, 1, 31), D(2024, 2, 2))  # 1 day of January (31), 1 day of February (29)
    # R(1000/31) + R(1000/29) = 32 + 34 = 66, while R(exact sum 66.74) would be 67
    assert prorate_across(1000, "USD", span, D(2024, 1, 1), Interval.MONTHLY) == 66


@given(
    anchor=st.dates(min_value=D(1990, 1, 1), max_value=D(2090, 12, 31)),
    interval=st.sampled_from(list(Interval)),
    n=st.integers(0, 40),
    cuts=st.lists(st.integers(0, 400), max_size=8),
)
def test_exact_fractions_of_a_periods_pieces_sum_to_one(
    anchor: date, interval: Interval, n: int, cuts: list[int]
) -> None:
    start, end = period_bounds(anchor, interval, n)
    length = (end - start).days
    points = sorted({start, end, *(start + timedelta(days=c % length) for c in cuts)})
    pieces = list(pairwise(points))
    assert sum(fraction(piece, (start, end)) for piece in pieces) == 1


@given(
    anchor=st.dates(min_value=D(1990, 1, 1), max_value=D(2090, 12, 31)),
    interval=st.sampled_from(list(Interval)),
    offset=st.integers(0, 800),
    length=st.integers(0, 800),
)
def test_split_span_pieces_are_contiguous_and_cover_the_span(
    anchor: date, interval: Interval, offset: int, length: int
) -> None:
    s = anchor + timedelta(days=offset)
    e = s + timedelta(days=length)
    pieces = split_span((s, e), anchor, interval)
    cursor = s
    for (ps, pe), (qs, qe) in pieces:
        assert ps == cursor
        assert qs <= ps < pe <= qe
        cursor = pe
    assert cursor == e


# ---- mid-period changes ---------------------------------------------------------------------


def _change(**overrides: object) -> ChangeQuote:
    args: dict[str, object] = {
        "currency": "USD",
        "anchor": D(2024, 4, 1),
        "interval": Interval.MONTHLY,
        "change_date": D(2024, 4, 11),
        "billed_unit_amount_minor": 3000,
        "old_quantity": 1,
        "billed_amount_minor": 3000,
        "credits_already_issued_minor": 0,
        "new_unit_amount_minor": 6000,
        "new_quantity": 1,
    }
    args.update(overrides)
    return quote_change(**args)  # type: ignore[arg-type]


def test_upgrade_from_the_spec_credits_2000_and_charges_4000() -> None:
    quote = _change()
    credit, charge = quote.lines
    assert (credit.kind, credit.amount_minor) == (LineKind.PRORATION_CREDIT, -2000)
    assert (charge.kind, charge.amount_minor) == (LineKind.PRORATION_CHARGE, 4000)
    assert (credit.period_start, credit.period_end) == (D(2024, 4, 11), D(2024, 5, 1))
    assert (charge.period_start, charge.period_end) == (D(2024, 4, 11), D(2024, 5, 1))
    assert quote.total_minor == 2000
    assert quote.effective_date == D(2024, 4, 11)
    assert quote.next_billing_date == D(2024, 5, 1)
    assert quote.new_anchor == D(2024, 4, 1)
    assert quote.new_interval is Interval.MONTHLY


def test_change_lines_are_rounded_separately_and_never_netted_first() -> None:
    # 10.00 -> 20.00 with 17 of 31 days left: credit 5.48, charge 10.97, net 5.49 (not R(5.4838))
    quote = _change(
        anchor=D(2024, 1, 1),
        change_date=D(2024, 1, 15),
        billed_unit_amount_minor=1000,
        billed_amount_minor=1000,
        new_unit_amount_minor=2000,
    )
    assert [line.amount_minor for line in quote.lines] == [-548, 1097]
    assert quote.total_minor == 549


def test_credit_is_based_on_the_billed_price_not_the_catalog_price() -> None:
    # 20% discount was invoiced: 24.00 billed for a 30.00 plan
    quote = _change(billed_unit_amount_minor=2400, billed_amount_minor=2400)
    assert quote.lines[0].amount_minor == -1600


def test_credit_never_exceeds_what_is_left_of_the_billed_amount() -> None:
    quote = _change(credits_already_issued_minor=2500)
    assert quote.lines[0].amount_minor == -500


def test_quantity_change_is_a_change_with_the_same_unit_price() -> None:
    quote = _change(
        billed_unit_amount_minor=1000,
        old_quantity=3,
        billed_amount_minor=3000,
        new_unit_amount_minor=1000,
        new_quantity=5,
    )
    # credit 3 x 10.00 x 20/30, charge 5 x 10.00 x 20/30 = 33.333 -> 33.33
    assert [line.amount_minor for line in quote.lines] == [-2000, 3333]
    assert [line.quantity for line in quote.lines] == [3, 5]


def test_change_to_yearly_charges_a_leading_piece_up_to_the_yearly_billing_date() -> None:
    quote = _change(
        anchor=D(2024, 1, 15),
        new_unit_amount_minor=30000,
        new_interval=Interval.YEARLY,
    )
    credit, charge = quote.lines
    # monthly period [03-15, 04-15): 4 of 31 days left, 30.00 * 4/31 = 3.87
    assert credit.amount_minor == -387
    assert (charge.period_start, charge.period_end) == (D(2024, 4, 11), D(2025, 1, 15))
    # 279 of 366 days of the yearly period [2024-01-15, 2025-01-15): 22868.85 -> 22869
    assert charge.amount_minor == 22869
    assert quote.next_billing_date == D(2025, 1, 15)
    assert quote.new_interval is Interval.YEARLY


def test_change_with_new_anchor_on_the_change_day_charges_the_full_new_period() -> None:
    quote = _change(
        new_unit_amount_minor=30000, new_interval=Interval.YEARLY, new_anchor=D(2024, 4, 11)
    )
    assert quote.lines[1].amount_minor == 30000
    assert quote.next_billing_date == D(2025, 4, 11)
    assert quote.new_anchor == D(2024, 4, 11)


def test_change_with_a_future_new_anchor_charges_up_to_that_anchor() -> None:
    quote = _change(
        new_unit_amount_minor=36600, new_interval=Interval.YEARLY, new_anchor=D(2025, 1, 1)
    )
    charge = quote.lines[1]
    assert (charge.period_start, charge.period_end) == (D(2024, 4, 11), D(2025, 1, 1))
    assert charge.amount_minor == 36600 * 265 // 366  # exact: 100.00 per day of 2024
    assert quote.next_billing_date == D(2025, 1, 1)


@pytest.mark.parametrize(
    ("currency", "billed", "new", "lines"),
    [
        ("JPY", 1000, 2000, [-667, 1333]),  # 20/30 of 1000 = 666.67, of 2000 = 1333.33
        ("KWD", 1000, 1500, [-667, 1000]),
    ],
)
def test_change_in_zero_and_three_decimal_currencies(
    currency: str, billed: int, new: int, lines: list[int]
) -> None:
    quote = _change(
        currency=currency,
        billed_unit_amount_minor=billed,
        billed_amount_minor=billed,
        new_unit_amount_minor=new,
    )
    assert [line.amount_minor for line in quote.lines] == lines
    assert all(line.currency == currency for line in quote.lines)


def test_change_on_a_billing_day_credits_the_whole_new_period() -> None:
    quote = _change(change_date=D(2024, 5, 1), billed_amount_minor=3000)
    assert [line.amount_minor for line in quote.lines] == [-3000, 6000]
    assert quote.next_billing_date == D(2024, 6, 1)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"change_date": D(2024, 3, 31)}, "before the anchor"),
        ({"new_unit_amount_minor": -6000}, "new_unit_amount_minor must not be negative"),
        ({"billed_unit_amount_minor": -1}, "billed_unit_amount_minor must not be negative"),
        ({"new_unit_amount_minor": 60.0}, "got float"),
        ({"billed_amount_minor": 3000.0}, "got float"),
        ({"credits_already_issued_minor": 3001}, "exceeds billed_amount_minor"),
        ({"old_quantity": 0}, "old_quantity must be >= 1"),
        ({"new_quantity": 1.5}, "new_quantity must be an integer"),
        ({"currency": "DOGE"}, "unknown currency"),
        ({"interval": "fortnightly"}, "unknown interval"),
        ({"new_interval": "daily"}, "unknown interval"),
        ({"change_date": "2024-04-11"}, "change_date must be a calendar date"),
    ],
)
def test_quote_change_refuses_bad_input(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _change(**overrides)


# ---- cancellations --------------------------------------------------------------------------


def _cancel(**overrides: object) -> list[int]:
    args: dict[str, object] = {
        "currency": "USD",
        "anchor": D(2024, 4, 1),
        "interval": Interval.MONTHLY,
        "cancel_date": D(2024, 4, 24),
        "billed_unit_amount_minor": 3000,
        "quantity": 1,
        "billed_amount_minor": 3000,
        "credits_already_issued_minor": 0,
    }
    args.update(overrides)
    return [line.amount_minor for line in quote_cancellation(**args)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "amounts"),
    [
        ({}, [-700]),  # advance: 7 of 30 days unused
        (
            {"currency": "KWD", "billed_unit_amount_minor": 1000, "billed_amount_minor": 1000},
            [-233],
        ),
        ({"credits_already_issued_minor": 2500}, [-500]),
        ({"quantity": 2, "billed_amount_minor": 6000}, [-1400]),
        ({"billed_in_arrears": True}, [2300]),  # arrears: 23 of 30 days used
        ({"billed_in_arrears": True, "cancel_date": D(2024, 5, 1)}, [0]),
        ({"billed_in_arrears": True, "unit_amount_minor_for_arrears": 6000}, [4600]),
        (
            {"currency": "JPY", "anchor": D(2024, 1, 1), "cancel_date": D(2024, 1, 22),
             "billed_unit_amount_minor": 1000, "billed_amount_minor": 1000},
            [-323],
        ),
        # weekly: 5 of 7 days unused, 30.00 * 5/7 = 21.4286
        ({"interval": Interval.WEEKLY, "cancel_date": D(2024, 4, 3)}, [-2143]),
    ],
)  # fmt: skip
def test_quote_cancellation_credits_unused_time_or_charges_used_time(
    overrides: dict[str, object], amounts: list[int]
) -> None:
    assert _cancel(**overrides) == amounts


def test_cancellation_lines_say_what_they_cover() -> None:
    (advance,) = quote_cancellation(
        currency="USD",
        anchor=D(2024, 4, 1),
        interval=Interval.MONTHLY,
        cancel_date=D(2024, 4, 24),
        billed_unit_amount_minor=3000,
        quantity=1,
        billed_amount_minor=3000,
        credits_already_issued_minor=0,
    )
    assert advance.kind is LineKind.PRORATION_CREDIT
    assert (advance.period_start, advance.period_end) == (D(2024, 4, 24), D(2024, 5, 1))
    (arrears,) = quote_cancellation(
        currency="USD",
        anchor=D(2024, 4, 1),
        interval=Interval.MONTHLY,
        cancel_date=D(2024, 4, 24),
        billed_unit_amount_minor=3000,
        quantity=1,
        billed_amount_minor=0,
        credits_already_issued_minor=0,
        billed_in_arrears=True,
    )
    assert arrears.kind is LineKind.PRORATION_CHARGE
    assert (arrears.period_start, arrears.period_end) == (D(2024, 4, 1), D(2024, 4, 24))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"cancel_date": D(2024, 3, 1)}, "before the anchor"),
        ({"billed_unit_amount_minor": -3000}, "must not be negative"),
        ({"quantity": 0}, "quantity must be >= 1"),
        ({"billed_in_arrears": True, "unit_amount_minor_for_arrears": 12.5}, "got float"),
        ({"credits_already_issued_minor": 4000}, "exceeds billed_amount_minor"),
    ],
)
def test_quote_cancellation_refuses_bad_input(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _cancel(**overrides)


# ---- properties -----------------------------------------------------------------------------

currencies = st.sampled_from(["USD", "JPY", "KWD"])
anchors = st.dates(min_value=D(2000, 1, 1), max_value=D(2060, 12, 31))
prices = st.integers(0, 10_000_000)
quantities = st.integers(1, 50)


@given(
    currency=currencies,
    anchor=anchors,
    interval=st.sampled_from(list(Interval)),
    offset=st.integers(0, 1500),
    price_a=prices,
    qty_a=quantities,
    price_b=prices,
    qty_b=quantities,
)
def test_a_change_and_its_reverse_on_the_same_day_net_to_at_most_one_unit_per_line(
    currency: str,
    anchor: date,
    interval: Interval,
    offset: int,
    price_a: int,
    qty_a: int,
    price_b: int,
    qty_b: int,
) -> None:
    c = anchor + timedelta(days=offset)
    common = {"currency": currency, "anchor": anchor, "interval": interval, "change_date": c}
    there = quote_change(
        **common,  # type: ignore[arg-type]
        billed_unit_amount_minor=price_a,
        old_quantity=qty_a,
        billed_amount_minor=price_a * qty_a,
        credits_already_issued_minor=0,
        new_unit_amount_minor=price_b,
        new_quantity=qty_b,
    )
    # Plan B was invoiced only its charge for the rest of the period, so that is what is billed.
    back = quote_change(
        **common,  # type: ignore[arg-type]
        billed_unit_amount_minor=price_b,
        old_quantity=qty_b,
        billed_amount_minor=there.lines[1].amount_minor,
        credits_already_issued_minor=0,
        new_unit_amount_minor=price_a,
        new_quantity=qty_a,
    )
    lines = there.lines + back.lines
    assert abs(sum(line.amount_minor for line in lines)) <= len(lines)


@given(
    currency=currencies,
    anchor=anchors,
    interval=st.sampled_from(list(Interval)),
    offset=st.integers(0, 1500),
    unit=prices,
    qty=quantities,
    billed=st.integers(0, 10**9),
    credited_share=st.fractions(min_value=0, max_value=1),
    arrears=st.booleans(),
)
def test_credits_never_exceed_what_was_billed_less_credits_already_issued(
    currency: str,
    anchor: date,
    interval: Interval,
    offset: int,
    unit: int,
    qty: int,
    billed: int,
    credited_share: Fraction,
    arrears: bool,
) -> None:
    credited = int(billed * credited_share)
    c = anchor + timedelta(days=offset)
    change = quote_change(
        currency=currency,
        anchor=anchor,
        interval=interval,
        change_date=c,
        billed_unit_amount_minor=unit,
        old_quantity=qty,
        billed_amount_minor=billed,
        credits_already_issued_minor=credited,
        new_unit_amount_minor=unit,
        new_quantity=qty,
    )
    cancel = quote_cancellation(
        currency=currency,
        anchor=anchor,
        interval=interval,
        cancel_date=c,
        billed_unit_amount_minor=unit,
        quantity=qty,
        billed_amount_minor=billed,
        credits_already_issued_minor=credited,
        billed_in_arrears=arrears,
    )
    credit = change.lines[0].amount_minor
    assert -(billed - credited) <= credit <= 0
    if not arrears:
        assert -(billed - credited) <= cancel[0].amount_minor <= 0
    else:
        assert 0 <= cancel[0].amount_minor <= unit * qty


@given(
    anchor=anchors,
    interval=st.sampled_from(list(Interval)),
    n=st.integers(0, 30),
    cut=st.integers(0, 400),
    unit=prices,
    qty=quantities,
)
def test_arrears_charge_and_advance_credit_split_one_period_within_a_unit(
    anchor: date, interval: Interval, n: int, cut: int, unit: int, qty: int
) -> None:
    start, end = period_bounds(anchor, interval, n)
    c = start + timedelta(days=cut % (end - start).days)
    kwargs: dict[str, object] = {
        "currency": "USD",
        "anchor": anchor,
        "interval": interval,
        "cancel_date": c,
        "billed_unit_amount_minor": unit,
        "quantity": qty,
        "billed_amount_minor": unit * qty,
        "credits_already_issued_minor": 0,
    }
    (credit,) = quote_cancellation(**kwargs)  # type: ignore[arg-type]
    (used,) = quote_cancellation(**kwargs, billed_in_arrears=True)  # type: ignore[arg-type]
    assert abs(used.amount_minor + (-credit.amount_minor) - unit * qty) <= 1
