"""Calendar: anchor-clamped billing dates, half-open periods, local dates in IANA zones.

Billing dates are local calendar dates in the account's billing time zone. They are always
recomputed from the anchor (``B_n`` from ``A``, never from ``B_(n-1)``), so a Jan 31 anchor gives
Feb 29, Mar 31, Apr 30 and never drifts to the 28th/29th/30th. Period ``n`` is ``[B_n, B_(n+1))``.
Nothing here reads the clock or the machine's time zone: every instant is computed from the
arguments with ``zoneinfo``.
"""

from __future__ import annotations

import calendar as _stdlib_calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from models.errors import ErrorCode
from models.money import BillingInputError

__all__ = [
    "FirstBilling",
    "Interval",
    "billing_date",
    "days_in_month",
    "ensure_count",
    "ensure_date",
    "ensure_range",
    "first_billing",
    "interval_billing_date",
    "local_date",
    "local_midnight_utc",
    "parse_interval",
    "period_bounds",
    "period_containing",
    "period_index_containing",
    "validate_timezone",
]


class Interval(StrEnum):
    """A billing interval: a whole number of months or of days (exactly one is set)."""

    MONTHLY = "monthly"
    QUARTERLY = "quarterly"
    SEMIANNUAL = "semiannual"
    YEARLY = "yearly"
    WEEKLY = "weekly"
    BIWEEKLY = "biweekly"

    @property
    def months(self) -> int | None:
        """Length in calendar months, or ``None`` for a day interval."""
        return _MONTHS.get(self)

    @property
    def days(self) -> int | None:
        """Length in days, or ``None`` for a month interval."""
        return _DAYS.get(self)


_MONTHS: dict[Interval, int] = {
    Interval.MONTHLY: 1,
    Interval.QUARTERLY: 3,
    Interval.SEMIANNUAL: 6,
    Interval.YEARLY: 12,
}
_DAYS: dict[Interval, int] = {Interval.WEEKLY: 7, Interval.BIWEEKLY: 14}


def parse_interval(value: object) -> Interval:
    """Return the :class:`Interval` named by ``value`` (case-insensitive; ``-``/``_`` ignored).

    Args:
        value: An ``Interval`` or its name, e.g. ``"monthly"``, ``"Semi-Annual"``, ``"bi_weekly"``.

    Raises:
        BillingInputError: ``INVALID_INTERVAL`` for anything else.
    """
    if isinstance(value, Interval):
        return value
    if isinstance(value, str):
        key = value.strip().lower().replace("-", "").replace("_", "")
        try:
            return Interval(key)
        except ValueError:
            pass
    names = ", ".join(i.value for i in Interval)
    raise BillingInputError(
        ErrorCode.INVALID_INTERVAL, f"unknown interval {value!r}; expected one of {names}"
    )


def ensure_date(value: object, name: str) -> date:
    """Return ``value`` if it is a calendar ``date`` (a ``datetime`` is refused).

    Args:
        value: The value to check.
        name: The field name used in the error message.

    Raises:
        BillingInputError: ``INVALID_DATE_RANGE`` when ``value`` is not a plain ``date``.
    """
    # datetime subclasses date; an instant where a local date is expected hides a time-zone bug.
    if isinstance(value, datetime) or not isinstance(value, date):
        raise BillingInputError(
            ErrorCode.INVALID_DATE_RANGE,
            f"{name} must be a calendar date, got {type(value).__name__} {value!r}",
        )
    return value


def ensure_count(value: object, name: str, minimum: int) -> int:
    """Return ``value`` if it is an ``int`` (not ``bool``) of at least ``minimum``.

    Args:
        value: The value to check (an index, interval length, quantity or day of month).
        name: The field name used in the error message.
        minimum: The smallest allowed value.

    Raises:
        BillingInputError: ``INVALID_REQUEST`` for a non-int or a value below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise BillingInputError(
            ErrorCode.INVALID_REQUEST, f"{name} must be an integer, got {type(value).__name__}"
        )
    if value < minimum:
        raise BillingInputError(
            ErrorCode.INVALID_REQUEST, f"{name} must be >= {minimum}, got {value}"
        )
    return value


def ensure_range(value: object, name: str, *, allow_empty: bool = True) -> tuple[date, date]:
    """Return ``value`` as a half-open ``(start, end)`` pair of dates with ``start <= end``.

    Args:
        value: A two-item tuple (or list) of calendar dates.
        name: The field name used in error messages, e.g. ``"span"``.
        allow_empty: Whether ``start == end`` is acceptable (a span may be empty, a period not).

    Raises:
        BillingInputError: ``INVALID_DATE_RANGE`` for a malformed pair, an end before its start,
            or an empty range when ``allow_empty`` is false.
    """
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise BillingInputError(
            ErrorCode.INVALID_DATE_RANGE, f"{name} must be a (start, end) pair of dates"
        )
    start = ensure_date(value[0], f"{name} start")
    end = ensure_date(value[1], f"{name} end")
    if end < start:
        raise BillingInputError(
            ErrorCode.INVALID_DATE_RANGE, f"{name} end {end} is before its start {start}"
        )
    if end == start and not allow_empty:
        raise BillingInputError(ErrorCode.INVALID_DATE_RANGE, f"{name} {start} to {end} is empty")
    return start, end


def days_in_month(year: int, month: int) -> int:
    """Number of days in ``month`` of ``year`` (Gregorian, leap years included)."""
    return _stdlib_calendar.monthrange(year, month)[1]


def _clamped(month_index: int, day: int) -> date:
    """The date with ``day`` clamped to the length of absolute month ``month_index``."""
    year, month0 = divmod(month_index, 12)
    if not 1 <= year <= 9999:
        raise BillingInputError(
            ErrorCode.INVALID_DATE_RANGE, f"billing date falls outside years 1..9999 (year {year})"
        )
    month = month0 + 1
    return date(year, month, min(day, days_in_month(year, month)))


def _month_index(d: date) -> int:
    return d.year * 12 + d.month - 1


def _billing_date_any(anchor: date, interval: Interval, n: int) -> date:
    """``B_n`` for any integer ``n``, negative included (periods before the anchor)."""
    months = interval.months
    if months is not None:
        return _clamped(_month_index(anchor) + n * months, anchor.day)
    days = interval.days
    assert days is not None  # an Interval is months or days, by construction
    try:
        return anchor + timedelta(days=n * days)
    except OverflowError:
        raise BillingInputError(
            ErrorCode.INVALID_DATE_RANGE,
            f"billing date {n} of {anchor} falls outside years 1..9999",
        ) from None


def _index_containing_any(anchor: date, interval: Interval, d: date) -> int:
    """The ``n`` with ``B_n <= d < B_(n+1)``; negative when ``d`` precedes the anchor."""
    months = interval.months
    if months is None:
        days = interval.days
        assert days is not None
        return (d - anchor).days // days
    # B_n's month is the anchor's month + n*k; floor division finds the last such month <= d's.
    n = (_month_index(d) - _month_index(anchor)) // months
    # Same month as d but a later day (d before the clamped anchor day): the period began earlier.
    if _billing_date_any(anchor, interval, n) > d:
        n -= 1
    return n


def billing_date(anchor: date, every_months: int, n: int) -> date:
    """``B_n`` for a month interval: the anchor's day clamped to the month ``n*k`` months on.

    Always computed from the anchor, never from ``B_(n-1)``: anchor Jan 31 gives Feb 29 (2024),
    Mar 31, Apr 30; anchor Feb 29 gives Mar 29.

    Args:
        anchor: The anchor date ``A`` (``B_0 == A``).
        every_months: The interval length ``k`` in months (>= 1).
        n: The billing date index (>= 0).

    Raises:
        BillingInputError: (a ``ValueError``) for a non-date anchor, ``k < 1``, ``n < 0`` or a
            date beyond year 9999.
    """
    ensure_date(anchor, "anchor")
    k = ensure_count(every_months, "every_months", 1)
    index = ensure_count(n, "n", 0)
    return _clamped(_month_index(anchor) + index * k, anchor.day)


def interval_billing_date(anchor: date, interval: Interval, n: int) -> date:
    """``B_n`` for any interval: month intervals clamp to the anchor day, day intervals add days.

    Args:
        anchor: The anchor date ``A``.
        interval: The billing interval.
        n: The billing date index (>= 0).

    Raises:
        BillingInputError: For bad arguments (see :func:`billing_date`).
    """
    ensure_date(anchor, "anchor")
    index = ensure_count(n, "n", 0)
    return _billing_date_any(anchor, parse_interval(interval), index)


def period_bounds(anchor: date, interval: Interval, n: int) -> tuple[date, date]:
    """Period ``n`` as the half-open range ``(B_n, B_(n+1))``.

    Args:
        anchor: The anchor date ``A``.
        interval: The billing interval.
        n: The period index (>= 0).

    Raises:
        BillingInputError: For bad arguments (see :func:`billing_date`).
    """
    ensure_date(anchor, "anchor")
    index = ensure_count(n, "n", 0)
    iv = parse_interval(interval)
    return _billing_date_any(anchor, iv, index), _billing_date_any(anchor, iv, index + 1)


def period_index_containing(anchor: date, interval: Interval, d: date) -> int:
    """The index ``n`` of the period ``[B_n, B_(n+1))`` that contains local date ``d``.

    Args:
        anchor: The anchor date ``A``.
        interval: The billing interval.
        d: A local date on or after the anchor.

    Raises:
        BillingInputError: ``INVALID_DATE_RANGE`` when ``d`` is before the anchor.
    """
    ensure_date(anchor, "anchor")
    ensure_date(d, "date")
    if d < anchor:
        raise BillingInputError(
            ErrorCode.INVALID_DATE_RANGE, f"date {d} is before the anchor {anchor}"
        )
    return _index_containing_any(anchor, parse_interval(interval), d)


def period_containing(anchor: date, interval: Interval, d: date) -> tuple[date, date]:
    """The period ``(B_n, B_(n+1))`` of the schedule ``(anchor, interval)`` that contains ``d``.

    Unlike :func:`period_index_containing`, ``d`` may precede the anchor: the schedule is then
    extended backwards with the same rule (``n < 0``). Quotes use this for a new plan whose anchor
    lies after the change day, so its charge runs up to its first billing date after that day.

    Args:
        anchor: The anchor date ``A``.
        interval: The billing interval.
        d: Any local date.

    Raises:
        BillingInputError: For non-date arguments, an unknown interval, or dates beyond 1..9999.
    """
    ensure_date(anchor, "anchor")
    ensure_date(d, "date")
    iv = parse_interval(interval)
    n = _index_containing_any(anchor, iv, d)
    return _billing_date_any(anchor, iv, n), _billing_date_any(anchor, iv, n + 1)


@dataclass(frozen=True)
class FirstBilling:
    """Where a new subscription's billing schedule starts and what its first invoice covers.

    Attributes:
        anchor: The date billing dates derive from (``B_n`` via :func:`interval_billing_date`).
            With an anchor day it is a date carrying that day in the same schedule, and may be
            earlier than ``start`` (e.g. 2024-02-29 for a yearly schedule on the 29th of February
            that starts in 2027).
        first_invoice_date: The day the first invoice is issued: always ``start``.
        leading_span: ``(start, B_1)``, the part of the first period to charge, or ``None`` when
            the subscription starts on a billing date (the first invoice is a full period).
        leading_period: ``(B_0, B_1)``, the period the leading span is prorated over, or ``None``.
        next_billing_date: The first regular billing date after the first invoice (``B_1``).
    """

    anchor: date
    first_invoice_date: date
    leading_span: tuple[date, date] | None
    leading_period: tuple[date, date] | None
    next_billing_date: date


def _phase_anchor(b0: date, anchor_day: int, months: int) -> date:
    """A date in ``b0``'s schedule whose day reproduces ``anchor_day`` clamping from then on.

    ``b0`` itself may be clamped (Feb 29 for day 31), and clamping from a clamped anchor would
    drift (Feb 29 -> Mar 29). Walk back whole intervals to a month long enough to hold the day;
    when no month in the schedule can (yearly in February or a 30-day month), the longest one seen
    gives the same clamped dates.
    """
    best: date | None = None
    base = _month_index(b0)
    # 8 years covers the leap-year gap around 1900/2100; shorter intervals find a month sooner.
    for step in range(0, 8 * 12 // months + 1):
        index = base - step * months
        if index < 12:  # before year 1
            break
        year, month0 = divmod(index, 12)
        length = days_in_month(year, month0 + 1)
        if length >= anchor_day:
            return date(year, month0 + 1, anchor_day)
        if best is None or length > best.day:
            best = date(year, month0 + 1, length)
    return best if best is not None else b0


def first_billing(start: date, interval: Interval, anchor_day: int | None = None) -> FirstBilling:
    """The first invoice and the schedule of a subscription starting on local date ``start``.

    Without ``anchor_day`` the subscription is anchored on its start: no leading piece, the first
    invoice covers ``[start, B_1)`` in full. With ``anchor_day`` (month intervals only) billing is
    aligned to that day of the month: ``B_0`` is the anchor-clamped date on or before ``start``
    (in the start's month, else the month before), ``B_1 = B_0 + k`` months (clamped), and the
    first invoice charges the leading piece ``[start, B_1)`` prorated over ``[B_0, B_1)``. Regular
    billing continues on ``B_1, B_2, ...``. A start on the (clamped) anchor day has no leading
    piece.

    Args:
        start: The local date service starts.
        interval: The billing interval.
        anchor_day: Day of the month (1..31) to align billing to, or ``None``.

    Raises:
        BillingInputError: For a bad date, an anchor day outside 1..31, or an anchor day with a
            day interval (``INVALID_INTERVAL``).
    """
    ensure_date(start, "start")
    iv = parse_interval(interval)
    if anchor_day is None:
        return FirstBilling(
            anchor=start,
            first_invoice_date=start,
            leading_span=None,
            leading_period=None,
            next_billing_date=_billing_date_any(start, iv, 1),
        )
    day = ensure_count(anchor_day, "anchor_day", 1)
    if day > 31:
        raise BillingInputError(ErrorCode.INVALID_REQUEST, f"anchor_day must be 1..31, got {day}")
    months = iv.months
    if months is None:
        raise BillingInputError(
            ErrorCode.INVALID_INTERVAL,
            f"anchor_day applies to month intervals only, not {iv.value}",
        )
    b0 = _clamped(_month_index(start), day)
    if b0 > start:
        b0 = _clamped(_month_index(start) - 1, day)
    anchor = _phase_anchor(b0, day, months)
    n0 = _index_containing_any(anchor, iv, start)
    b1 = _billing_date_any(anchor, iv, n0 + 1)
    if b0 == start:
        return FirstBilling(anchor, start, None, None, b1)
    return FirstBilling(anchor, start, (start, b1), (b0, b1), b1)


def _zone(tz: str) -> ZoneInfo:
    if not isinstance(tz, str) or not tz.strip():
        raise BillingInputError(
            ErrorCode.INVALID_TIMEZONE,
            f"time zone must be an IANA name like 'Europe/London', got {tz!r}",
        )
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError/OSError: malformed keys such as absolute paths or "../x".
        raise BillingInputError(
            ErrorCode.INVALID_TIMEZONE, f"unknown time zone {tz!r}: not an IANA zone name"
        ) from None


def validate_timezone(tz: str) -> str:
    """Return ``tz`` if it names an IANA time zone known to ``zoneinfo``.

    Args:
        tz: An IANA zone name, e.g. ``"America/New_York"`` or ``"UTC"``.

    Raises:
        BillingInputError: ``INVALID_TIMEZONE`` for an unknown or malformed name.
    """
    _zone(tz)
    return tz


def local_midnight_utc(d: date, tz: str) -> datetime:
    """The UTC instant local date ``d`` starts in zone ``tz``: its first instant.

    Usually local 00:00. Where 00:00 does not exist (clocks jump from 23:59:59 to 01:00, as in
    America/Santiago or Asia/Beirut on some DST days), the day starts at the transition instant.
    Where midnight happens twice (clocks fall back across it), the first occurrence counts.
    A date skipped entirely (Pacific/Apia, 2011-12-30) starts and ends at the same instant, the
    start of the next existing local day: such a day has zero length, so no period is charged
    for it and no billing is lost or doubled.

    Args:
        d: The local calendar date.
        tz: The IANA zone name.

    Returns:
        A timezone-aware ``datetime`` in UTC.

    Raises:
        BillingInputError: For a non-date ``d`` or an unknown zone.
    """
    ensure_date(d, "date")
    zone = _zone(tz)
    wall = datetime.combine(d, time())
    # fold=0 picks the earlier of two midnights; inside a gap it uses the pre-transition offset,
    # which lands at or after the transition.
    after = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if after.astimezone(zone).replace(tzinfo=None) == wall:
        return after
    # Midnight is in a gap. fold=1 (post-transition offset) lands before the transition; the
    # first instant whose local wall time reaches midnight lies between, found to the second.
    lo = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    low, high = 0, int((after - lo).total_seconds())
    while low < high:
        mid = (low + high) // 2
        if (lo + timedelta(seconds=mid)).astimezone(zone).replace(tzinfo=None) >= wall:
            high = mid
        else:
            low = mid + 1
    return lo + timedelta(seconds=low)


def local_date(instant: datetime, tz: str) -> date:
    """The local calendar date of ``instant`` in zone ``tz``.

    Args:
        instant: A timezone-aware instant (naive datetimes are refused: their zone is a guess).
        tz: The IANA zone name.

    Raises:
        BillingInputError: For a naive or non-datetime instant or an unknown zone.
    """
    if not isinstance(instant, datetime) or instant.utcoffset() is None:
        raise BillingInputError(
            ErrorCode.INVALID_REQUEST,
            f"instant must be a timezone-aware datetime, got {instant!r}",
        )
    return instant.astimezone(_zone(tz)).date()
