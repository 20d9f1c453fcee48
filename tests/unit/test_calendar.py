"""Calendar: anchor-clamped billing dates, periods, first-invoice alignment, local days in zones."""

from __future__ import annotations

import os
import time
from calendar import monthrange
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.calendar import (
    Interval,
    billing_date,
    first_billing,
    interval_billing_date,
    local_date,
    local_midnight_utc,
    parse_interval,
    period_bounds,
    period_containing,
    period_index_containing,
    validate_timezone,
)
from models.errors import ErrorCode
from models.money import BillingInputError
from models.proration import prorate

MONTH_INTERVALS = [Interval.MONTHLY, Interval.QUARTERLY, Interval.SEMIANNUAL, Interval.YEARLY]
dates = st.dates(min_value=date(1900, 1, 1), max_value=date(2400, 12, 31))


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# ---- billing dates -------------------------------------------------------------------------


def test_billing_dates_of_anchor_jan_31_match_the_spec() -> None:
    anchor = date(2024, 1, 31)
    got = [billing_date(anchor, 1, n) for n in (1, 2, 3)]
    assert got == [date(2024, 2, 29), date(2024, 3, 31), date(2024, 4, 30)]


@pytest.mark.parametrize(
    ("anchor", "every_months", "expected"),
    [
        # month-end anchors clamp, and never drift: the anchor's day comes back when it fits
        (date(2023, 1, 29), 1, [date(2023, 2, 28), date(2023, 3, 29), date(2023, 4, 29)]),
        (date(2024, 1, 29), 1, [date(2024, 2, 29), date(2024, 3, 29), date(2024, 4, 29)]),
        (date(2023, 1, 30), 1, [date(2023, 2, 28), date(2023, 3, 30), date(2023, 4, 30)]),
        (date(2024, 1, 30), 1, [date(2024, 2, 29), date(2024, 3, 30), date(2024, 4, 30)]),
        (date(2023, 1, 31), 1, [date(2023, 2, 28), date(2023, 3, 31), date(2023, 4, 30)]),
        # anchor Feb 29 gives Mar 29 (the anchor day is 29, not "end of month")
        (date(2024, 2, 29), 1, [date(2024, 3, 29), date(2024, 4, 29), date(2024, 5, 29)]),
        # leap years for yearly: Feb 28 in common years, back to Feb 29 in leap years
        (date(2024, 2, 29), 12, [date(2025, 2, 28), date(2026, 2, 28), date(2027, 2, 28)]),
        (date(2096, 2, 29), 12, [date(2097, 2, 28), date(2098, 2, 28), date(2099, 2, 28)]),
        (date(2023, 3, 15), 12, [date(2024, 3, 15), date(2025, 3, 15), date(2026, 3, 15)]),
        # quarterly and semiannual month-end anchors
        (date(2024, 11, 30), 3, [date(2025, 2, 28), date(2025, 5, 30), date(2025, 8, 30)]),
        (date(2023, 11, 30), 3, [date(2024, 2, 29), date(2024, 5, 30), date(2024, 8, 30)]),
        (date(2024, 8, 31), 6, [date(2025, 2, 28), date(2025, 8, 31), date(2026, 2, 28)]),
        (date(2024, 12, 31), 1, [date(2025, 1, 31), date(2025, 2, 28), date(2025, 3, 31)]),
    ],
)
def test_billing_dates_clamp_to_month_end_and_are_recomputed_from_the_anchor(
    anchor: date, every_months: int, expected: list[date]
) -> None:
    assert [billing_date(anchor, every_months, n) for n in (1, 2, 3)] == expected


def test_billing_date_zero_is_the_anchor() -> None:
    assert billing_date(date(2024, 1, 31), 1, 0) == date(2024, 1, 31)


def test_billing_dates_after_feb_29_in_2100_skip_the_non_leap_century() -> None:
    assert billing_date(date(2096, 2, 29), 12, 4) == date(2100, 2, 28)
    assert billing_date(date(2096, 2, 29), 12, 8) == date(2104, 2, 29)


@pytest.mark.parametrize(
    ("anchor", "interval", "n", "expected"),
    [
        (date(2024, 2, 26), Interval.WEEKLY, 1, date(2024, 3, 4)),
        (date(2024, 2, 26), Interval.BIWEEKLY, 2, date(2024, 3, 25)),
        (date(2023, 12, 25), Interval.WEEKLY, 1, date(2024, 1, 1)),
        (date(2024, 1, 31), Interval.MONTHLY, 1, date(2024, 2, 29)),
        (date(2024, 1, 31), Interval.QUARTERLY, 1, date(2024, 4, 30)),
        (date(2024, 1, 31), Interval.SEMIANNUAL, 1, date(2024, 7, 31)),
        (date(2024, 1, 31), Interval.YEARLY, 1, date(2025, 1, 31)),
    ],
)
def test_interval_billing_date_handles_month_and_day_intervals(
    anchor: date, interval: Interval, n: int, expected: date
) -> None:
    assert interval_billing_date(anchor, interval, n) == expected


@pytest.mark.parametrize(
    ("interval", "months", "days"),
    [
        (Interval.MONTHLY, 1, None),
        (Interval.QUARTERLY, 3, None),
        (Interval.SEMIANNUAL, 6, None),
        (Interval.YEARLY, 12, None),
        (Interval.WEEKLY, None, 7),
        (Interval.BIWEEKLY, None, 14),
    ],
)
def test_each_interval_is_months_or_days_never_both(
    interval: Interval, months: int | None, days: int | None
) -> None:
    assert (interval.months, interval.days) == (months, days)


@pytest.mark.parametrize(
    ("text", "interval"),
    [
        ("monthly", Interval.MONTHLY),
        ("Semi-Annual", Interval.SEMIANNUAL),
        ("bi_weekly", Interval.BIWEEKLY),
    ],
)
def test_parse_interval_accepts_spelling_variants(text: str, interval: Interval) -> None:
    assert parse_interval(text) is interval


def test_parse_interval_refuses_unknown_names_with_the_interval_code() -> None:
    with pytest.raises(ValueError, match="unknown interval 'daily'") as info:
        parse_interval("daily")
    assert isinstance(info.value, BillingInputError)
    assert info.value.code is ErrorCode.INVALID_INTERVAL


@pytest.mark.parametrize(
    ("anchor", "every_months", "n", "match"),
    [
        (date(2024, 1, 31), 1, -1, "n must be >= 0"),
        (date(2024, 1, 31), 0, 1, "every_months must be >= 1"),
        (date(2024, 1, 31), 1.0, 1, "every_months must be an integer"),
        (date(2024, 1, 31), 1, True, "n must be an integer"),
        (datetime(2024, 1, 31, 12), 1, 1, "anchor must be a calendar date, got datetime"),
        ("2024-01-31", 1, 1, "anchor must be a calendar date, got str"),
        (date(9999, 6, 1), 12, 1, "outside years 1..9999"),
    ],
)
def test_billing_date_refuses_bad_arguments(
    anchor: object, every_months: object, n: object, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        billing_date(anchor, every_months, n)  # type: ignore[arg-type]


@given(
    anchor=dates,
    interval=st.sampled_from(MONTH_INTERVALS),
    count=st.integers(min_value=1, max_value=60),
)
def test_month_billing_dates_strictly_increase_and_never_drift_from_the_anchor_day(
    anchor: date, interval: Interval, count: int
) -> None:
    k = interval.months
    assert k is not None
    previous = anchor
    for n in range(1, count + 1):
        b = billing_date(anchor, k, n)
        assert b > previous
        assert b.day == min(anchor.day, monthrange(b.year, b.month)[1])
        assert (b.year * 12 + b.month) - (anchor.year * 12 + anchor.month) == n * k
        previous = b


@given(anchor=dates, interval=st.sampled_from(list(Interval)), offset=st.integers(0, 3000))
def test_period_index_containing_finds_the_half_open_period_holding_the_date(
    anchor: date, interval: Interval, offset: int
) -> None:
    d = anchor + timedelta(days=offset)
    n = period_index_containing(anchor, interval, d)
    start, end = period_bounds(anchor, interval, n)
    assert start <= d < end
    assert period_containing(anchor, interval, d) == (start, end)


# ---- periods -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("anchor", "interval", "n", "bounds"),
    [
        (date(2024, 1, 31), Interval.MONTHLY, 0, (date(2024, 1, 31), date(2024, 2, 29))),
        (date(2024, 1, 31), Interval.MONTHLY, 1, (date(2024, 2, 29), date(2024, 3, 31))),
        (date(2024, 4, 1), Interval.MONTHLY, 0, (date(2024, 4, 1), date(2024, 5, 1))),
        (date(2024, 1, 1), Interval.WEEKLY, 2, (date(2024, 1, 15), date(2024, 1, 22))),
        (date(2024, 2, 29), Interval.YEARLY, 0, (date(2024, 2, 29), date(2025, 2, 28))),
    ],
)
def test_period_bounds_are_consecutive_billing_dates(
    anchor: date, interval: Interval, n: int, bounds: tuple[date, date]
) -> None:
    assert period_bounds(anchor, interval, n) == bounds


@pytest.mark.parametrize(
    ("anchor", "interval", "d", "n"),
    [
        (date(2024, 1, 31), Interval.MONTHLY, date(2024, 1, 31), 0),
        (date(2024, 1, 31), Interval.MONTHLY, date(2024, 2, 28), 0),
        (date(2024, 1, 31), Interval.MONTHLY, date(2024, 2, 29), 1),  # billing day opens period 1
        (date(2024, 1, 31), Interval.MONTHLY, date(2024, 3, 30), 1),
        (date(2024, 1, 31), Interval.MONTHLY, date(2024, 3, 31), 2),
        (date(2024, 1, 1), Interval.WEEKLY, date(2024, 1, 7), 0),
        (date(2024, 1, 1), Interval.WEEKLY, date(2024, 1, 8), 1),
        (date(2024, 1, 1), Interval.BIWEEKLY, date(2024, 1, 28), 1),
        (date(2024, 11, 30), Interval.QUARTERLY, date(2025, 2, 27), 0),
        (date(2024, 11, 30), Interval.QUARTERLY, date(2025, 2, 28), 1),
    ],
)
def test_period_index_containing_treats_the_billing_day_as_the_new_period(
    anchor: date, interval: Interval, d: date, n: int
) -> None:
    assert period_index_containing(anchor, interval, d) == n


def test_period_index_containing_refuses_a_date_before_the_anchor() -> None:
    with pytest.raises(ValueError, match="before the anchor"):
        period_index_containing(date(2024, 4, 1), Interval.MONTHLY, date(2024, 3, 31))


def test_period_containing_extends_the_schedule_backwards_before_the_anchor() -> None:
    assert period_containing(date(2025, 1, 1), Interval.YEARLY, date(2024, 4, 11)) == (
        date(2024, 1, 1),
        date(2025, 1, 1),
    )


# ---- first invoice and leading proration ----------------------------------------------------


def test_first_billing_without_anchor_day_anchors_on_the_start_with_no_leading_piece() -> None:
    fb = first_billing(date(2024, 1, 31), Interval.MONTHLY)
    assert fb.anchor == date(2024, 1, 31)
    assert fb.first_invoice_date == date(2024, 1, 31)
    assert fb.leading_span is None and fb.leading_period is None
    assert fb.next_billing_date == date(2024, 2, 29)


@pytest.mark.parametrize(
    ("start", "interval", "day", "anchor", "span", "period"),
    [
        (
            date(2024, 4, 11), Interval.MONTHLY, 1, date(2024, 4, 1),
            (date(2024, 4, 11), date(2024, 5, 1)), (date(2024, 4, 1), date(2024, 5, 1)),
        ),
        (
            date(2024, 4, 10), Interval.MONTHLY, 15, date(2024, 3, 15),
            (date(2024, 4, 10), date(2024, 4, 15)), (date(2024, 3, 15), date(2024, 4, 15)),
        ),
        # B_0 clamped to Feb 29; the anchor keeps day 31 so B_1 is Mar 31, not Mar 29
        (
            date(2024, 3, 10), Interval.MONTHLY, 31, date(2024, 1, 31),
            (date(2024, 3, 10), date(2024, 3, 31)), (date(2024, 2, 29), date(2024, 3, 31)),
        ),
        (
            date(2024, 5, 10), Interval.QUARTERLY, 1, date(2024, 5, 1),
            (date(2024, 5, 10), date(2024, 8, 1)), (date(2024, 5, 1), date(2024, 8, 1)),
        ),
        # yearly on the 29th of February: the anchor is the last Feb 29, dates clamp to Feb 28
        (
            date(2027, 3, 5), Interval.YEARLY, 29, date(2024, 2, 29),
            (date(2027, 3, 5), date(2028, 2, 29)), (date(2027, 2, 28), date(2028, 2, 29)),
        ),
    ],
)  # fmt: skip
def test_first_billing_with_anchor_day_charges_a_leading_piece_up_to_b1(
    start: date,
    interval: Interval,
    day: int,
    anchor: date,
    span: tuple[date, date],
    period: tuple[date, date],
) -> None:
    fb = first_billing(start, interval, anchor_day=day)
    assert fb.anchor == anchor
    assert fb.first_invoice_date == start
    assert fb.leading_span == span
    assert fb.leading_period == period
    assert fb.next_billing_date == span[1]


@pytest.mark.parametrize(
    ("start", "day", "next_billing"),
    [
        (date(2024, 4, 1), 1, date(2024, 5, 1)),
        (date(2024, 2, 29), 31, date(2024, 3, 31)),  # start on the clamped anchor day
    ],
)
def test_first_billing_starting_on_the_anchor_day_has_no_leading_piece(
    start: date, day: int, next_billing: date
) -> None:
    fb = first_billing(start, Interval.MONTHLY, anchor_day=day)
    assert fb.leading_span is None and fb.leading_period is None
    assert fb.next_billing_date == next_billing


def test_leading_charge_follows_the_spec_formula() -> None:
    fb = first_billing(date(2024, 4, 11), Interval.MONTHLY, anchor_day=1)
    assert fb.leading_span is not None and fb.leading_period is not None
    # R(30.00 * (B_1 - s) / (B_1 - B_0)) = 30.00 * 20/30
    assert prorate(3000, "USD", fb.leading_span, fb.leading_period) == 2000


@pytest.mark.parametrize(
    ("interval", "day", "match"),
    [
        (Interval.WEEKLY, 1, "month intervals only"),
        (Interval.MONTHLY, 0, "anchor_day must be >= 1"),
        (Interval.MONTHLY, 32, "anchor_day must be 1..31"),
    ],
)
def test_first_billing_refuses_bad_anchor_days(interval: Interval, day: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        first_billing(date(2024, 4, 11), interval, anchor_day=day)


@given(start=dates, interval=st.sampled_from(MONTH_INTERVALS), day=st.integers(1, 31))
def test_first_billing_leading_piece_lies_in_the_anchor_aligned_period(
    start: date, interval: Interval, day: int
) -> None:
    fb = first_billing(start, interval, anchor_day=day)
    n = period_index_containing(fb.anchor, interval, start)
    b0, b1 = period_bounds(fb.anchor, interval, n)
    assert b0 <= start < b1
    assert fb.next_billing_date == b1
    assert b0.day == min(day, monthrange(b0.year, b0.month)[1])
    # later billing dates keep the chosen day (clamped), never drifting
    for m in range(n + 1, n + 14):
        b = interval_billing_date(fb.anchor, interval, m)
        assert b.day == min(day, monthrange(b.year, b.month)[1])
    if start == b0:
        assert fb.leading_span is None
    else:
        assert fb.leading_span == (start, b1)
        assert fb.leading_period == (b0, b1)


# ---- local days in IANA zones --------------------------------------------------------------


@pytest.mark.parametrize(
    ("d", "tz", "instant"),
    [
        (date(2024, 4, 1), "UTC", utc(2024, 4, 1)),
        # America/New_York: spring forward and fall back at 02:00, midnight itself unaffected
        (date(2024, 3, 10), "America/New_York", utc(2024, 3, 10, 5)),
        (date(2024, 3, 11), "America/New_York", utc(2024, 3, 11, 4)),
        (date(2024, 11, 3), "America/New_York", utc(2024, 11, 3, 4)),
        (date(2024, 11, 4), "America/New_York", utc(2024, 11, 4, 5)),
        # Europe/London: BST starts/ends at 01:00 UTC
        (date(2024, 3, 31), "Europe/London", utc(2024, 3, 31)),
        (date(2024, 4, 1), "Europe/London", utc(2024, 3, 31, 23)),
        (date(2024, 10, 27), "Europe/London", utc(2024, 10, 26, 23)),
        (date(2024, 10, 28), "Europe/London", utc(2024, 10, 28)),
        # Australia/Lord_Howe: a 30-minute DST shift (+11:00 <-> +10:30)
        (date(2024, 4, 7), "Australia/Lord_Howe", utc(2024, 4, 6, 13)),
        (date(2024, 4, 8), "Australia/Lord_Howe", utc(2024, 4, 7, 13, 30)),
        (date(2024, 10, 6), "Australia/Lord_Howe", utc(2024, 10, 5, 13, 30)),
        (date(2024, 10, 7), "Australia/Lord_Howe", utc(2024, 10, 6, 13)),
        # America/Santiago skips 00:00 on DST day: the day starts at 01:00 local (-03)
        (date(2023, 9, 3), "America/Santiago", utc(2023, 9, 3, 4)),
        # Asia/Beirut also jumps from 00:00 to 01:00
        (date(2023, 3, 26), "Asia/Beirut", utc(2023, 3, 25, 22)),
        # America/Toronto 1919: 23:30 jumped to 00:30, so the day began at 00:30 local
        (date(1919, 3, 31), "America/Toronto", utc(1919, 3, 31, 4, 30)),
        # Pacific/Apia skipped 2011-12-30: it starts with the next existing day, 12-31 00:00 +14
        (date(2011, 12, 29), "Pacific/Apia", utc(2011, 12, 29, 10)),
        (date(2011, 12, 30), "Pacific/Apia", utc(2011, 12, 30, 10)),
        (date(2011, 12, 31), "Pacific/Apia", utc(2011, 12, 30, 10)),
    ],
)
def test_local_midnight_utc_is_the_first_instant_of_the_local_day(
    d: date, tz: str, instant: datetime
) -> None:
    got = local_midnight_utc(d, tz)
    assert got == instant
    assert got.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("d", "tz", "hours"),
    [
        (date(2024, 3, 10), "America/New_York", 23),
        (date(2024, 11, 3), "America/New_York", 25),
        (date(2024, 3, 31), "Europe/London", 23),
        (date(2024, 10, 27), "Europe/London", 25),
        (date(2024, 10, 6), "Australia/Lord_Howe", 23.5),
        (date(2024, 4, 7), "Australia/Lord_Howe", 24.5),
        (date(2023, 9, 3), "America/Santiago", 23),
        (date(2024, 4, 6), "America/Santiago", 25),
        (date(2011, 12, 29), "Pacific/Apia", 24),
        (date(2011, 12, 30), "Pacific/Apia", 0),  # the day that never happened has no length
    ],
)
def test_local_day_lengths_follow_dst_but_billing_dates_do_not_move(
    d: date, tz: str, hours: float
) -> None:
    length = local_midnight_utc(d + timedelta(days=1), tz) - local_midnight_utc(d, tz)
    assert length == timedelta(hours=hours)


def test_skipped_apia_day_maps_to_the_next_existing_local_date() -> None:
    start = local_midnight_utc(date(2011, 12, 30), "Pacific/Apia")
    assert local_date(start, "Pacific/Apia") == date(2011, 12, 31)
    assert local_date(start - timedelta(seconds=1), "Pacific/Apia") == date(2011, 12, 29)


ZONES = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "Pacific/Apia",
    "America/Santiago",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "America/St_Johns",
]


@given(
    d=st.dates(min_value=date(1970, 1, 2), max_value=date(2037, 12, 31)), tz=st.sampled_from(ZONES)
)
def test_local_midnight_utc_starts_the_day_no_earlier_and_no_later(d: date, tz: str) -> None:
    start = local_midnight_utc(d, tz)
    assert local_date(start, tz) >= d
    assert local_date(start - timedelta(seconds=1), tz) < d


def test_local_date_converts_an_aware_instant_into_the_zone() -> None:
    assert local_date(utc(2024, 3, 10, 4, 59), "America/New_York") == date(2024, 3, 9)
    assert local_date(utc(2024, 3, 10, 5), "America/New_York") == date(2024, 3, 10)


def test_local_date_refuses_a_naive_datetime() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        local_date(datetime(2024, 3, 10, 5), "UTC")


def test_validate_timezone_returns_a_known_iana_name() -> None:
    assert validate_timezone("Australia/Lord_Howe") == "Australia/Lord_Howe"


@pytest.mark.parametrize(
    "tz", ["Mars/Olympus_Mons", "", "../etc/passwd", "/etc/localtime", "EST5EDT6"]
)
def test_validate_timezone_refuses_unknown_names_with_the_timezone_code(tz: str) -> None:
    with pytest.raises(ValueError, match="time zone") as info:
        validate_timezone(tz)
    assert isinstance(info.value, BillingInputError)
    assert info.value.code is ErrorCode.INVALID_TIMEZONE


def _calendar_results(anchor: date, d: date, tz: str) -> tuple[object, ...]:
    return (
        [billing_date(anchor, 1, n) for n in range(13)],
        period_index_containing(anchor, Interval.MONTHLY, max(anchor, d)),
        local_midnight_utc(d, tz),
        local_date(local_midnight_utc(d, tz) + timedelta(hours=12), tz),
        first_billing(d, Interval.QUARTERLY, anchor_day=31),
    )


@given(
    anchor=st.dates(min_value=date(1990, 1, 1), max_value=date(2035, 12, 31)),
    d=st.dates(min_value=date(1990, 1, 1), max_value=date(2035, 12, 31)),
    tz=st.sampled_from(ZONES),
)
def test_results_do_not_depend_on_the_machine_time_zone(anchor: date, d: date, tz: str) -> None:
    saved = os.environ.get("TZ")
    results = []
    try:
        for machine_tz in ["UTC", "Pacific/Kiritimati", "America/St_Johns", "Asia/Kathmandu"]:
            os.environ["TZ"] = machine_tz
            time.tzset()
            results.append(_calendar_results(anchor, d, tz))
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()
    assert all(r == results[0] for r in results)
