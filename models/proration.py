"""Proration: exact fractions of half-open periods, rounded once per invoice line.

The fraction of a span ``[s, e)`` inside period ``[B_n, B_(n+1))`` is ``(e - s) / L_n`` in whole
calendar days, exact. A span crossing billing dates is split per period, each piece over its own
period length and each piece its own invoice line. The change/cancellation day ``c`` belongs to
the new state: old terms end at 00:00 local of ``c``. See ``shared/specs/billing-math.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from fractions import Fraction

from models.calendar import (
    Interval,
    ensure_count,
    ensure_date,
    ensure_range,
    parse_interval,
    period_bounds,
    period_containing,
    period_index_containing,
)
from models.errors import ErrorCode
from models.invoice import InvoiceLine, LineKind
from models.money import (
    BillingInputError,
    ensure_int,
    ensure_non_negative_int,
    format_money,
    normalize_currency,
    round_minor,
)

__all__ = [
    "ChangeQuote",
    "fraction",
    "prorate",
    "prorate_across",
    "quote_cancellation",
    "quote_change",
    "split_span",
]


def fraction(span: tuple[date, date], period: tuple[date, date]) -> Fraction:
    """The exact share ``(e - s) / (period_end - period_start)`` of ``span`` in ``period``.

    Args:
        span: Half-open ``(s, e)``; may be empty (``s == e`` gives 0).
        period: Half-open, non-empty ``(B_n, B_(n+1))`` containing ``span``.

    Raises:
        BillingInputError: ``INVALID_DATE_RANGE`` when an end precedes its start, the period is
            empty, or the span lies (partly) outside the period.
    """
    s, e = ensure_range(span, "span")
    ps, pe = ensure_range(period, "period", allow_empty=False)
    if s < ps or e > pe:
        raise BillingInputError(
            ErrorCode.INVALID_DATE_RANGE,
            f"span {s} to {e} is outside period {ps} to {pe}; split it with split_span",
        )
    return Fraction((e - s).days, (pe - ps).days)


def prorate(
    amount_minor: int, currency: str, span: tuple[date, date], period: tuple[date, date]
) -> int:
    """``R(amount * (span_end - span_start) / (period_end - period_start))``, rounded once.

    Rounding is half away from zero, so a negative amount prorates to exactly the negation of
    the positive one.

    Args:
        amount_minor: The full-period amount in minor units.
        currency: ISO 4217 code.
        span: Half-open ``(s, e)`` inside ``period``.
        period: Half-open, non-empty ``(B_n, B_(n+1))``.

    Raises:
        BillingInputError: (a ``ValueError``) for a non-int amount, unknown currency, or a span
            that is reversed or not inside the period.
    """
    amount = ensure_int(amount_minor, "amount_minor")
    code = normalize_currency(currency)
    return round_minor(amount * fraction(span, period), code)


def split_span(
    span: tuple[date, date], anchor: date, interval: Interval
) -> list[tuple[tuple[date, date], tuple[date, date]]]:
    """Cut ``span`` at the billing dates of ``(anchor, interval)``: ``[(piece, its period), ...]``.

    Args:
        span: Half-open ``(s, e)`` with ``s`` on or after the anchor.
        anchor: The anchor date the billing dates derive from.
        interval: The billing interval.

    Returns:
        The pieces in order, each with the period it lies in; empty for an empty span.

    Raises:
        BillingInputError: For a reversed span or one starting before the anchor.
    """
    s, e = ensure_range(span, "span")
    iv = parse_interval(interval)
    n = period_index_containing(anchor, iv, s)
    pieces: list[tuple[tuple[date, date], tuple[date, date]]] = []
    cursor = s
    while cursor < e:
        period = period_bounds(anchor, iv, n)
        piece_end = min(e, period[1])
        pieces.append(((cursor, piece_end), period))
        cursor = piece_end
        n += 1
    return pieces


def prorate_across(
    amount_minor: int, currency: str, span: tuple[date, date], anchor: date, interval: Interval
) -> int:
    """The sum of the per-period prorations of a span that may cross billing dates.

    Each piece is rounded on its own because each piece is its own invoice line; use
    :func:`split_span` to build those lines. This is their total, not ``R`` of the exact sum.

    Args:
        amount_minor: The full-period amount in minor units.
        currency: ISO 4217 code.
        span: Half-open ``(s, e)`` with ``s`` on or after the anchor.
        anchor: The anchor date the billing dates derive from.
        interval: The billing interval.

    Raises:
        BillingInputError: As :func:`split_span` and :func:`prorate`.
    """
    return sum(
        prorate(amount_minor, currency, piece, period)
        for piece, period in split_span(span, anchor, interval)
    )


@dataclass(frozen=True)
class ChangeQuote:
    """The lines a mid-period plan or quantity change produces, and the schedule after it.

    Attributes:
        lines: The credit line (negative) for the old terms, then the charge line (positive) for
            the new terms, each rounded once.
        effective_date: The change day ``c``; it belongs to the new terms.
        next_billing_date: The new plan's next billing date (end of the charge line's span).
        new_anchor: The anchor the new plan's billing dates derive from.
        new_interval: The new plan's interval.
    """

    lines: list[InvoiceLine]
    effective_date: date
    next_billing_date: date
    new_anchor: date
    new_interval: Interval

    @property
    def total_minor(self) -> int:
        """The net of the lines (each already rounded): what the change costs (< 0: credit)."""
        return sum(line.amount_minor for line in self.lines)


def _plan_label(unit_minor: int, quantity: int, currency: str, interval: Interval) -> str:
    return f"{quantity} x {format_money(unit_minor, currency)} {interval.value}"


def _unused_credit_line(
    *,
    currency: str,
    period: tuple[date, date],
    c: date,
    billed_unit_amount_minor: int,
    quantity: int,
    billed_amount_minor: int,
    credits_already_issued_minor: int,
    interval: Interval,
    description: str,
) -> InvoiceLine:
    """``-min(R(unit * qty * (B_(n+1) - c) / L_n), billed - credited)`` as a credit line."""
    billed = ensure_non_negative_int(billed_amount_minor, "billed_amount_minor")
    credited = ensure_non_negative_int(credits_already_issued_minor, "credits_already_issued_minor")
    if credited > billed:
        raise BillingInputError(
            ErrorCode.INVALID_AMOUNT,
            f"credits_already_issued_minor {credited} exceeds billed_amount_minor {billed}",
        )
    unit = ensure_non_negative_int(billed_unit_amount_minor, "billed_unit_amount_minor")
    unused = (c, period[1])
    # Based on what was invoiced for the period, never today's price, and never more than is left.
    amount = min(prorate(unit * quantity, currency, unused, period), billed - credited)
    return InvoiceLine(
        kind=LineKind.PRORATION_CREDIT,
        description=f"{description} ({_plan_label(unit, quantity, currency, interval)})",
        amount_minor=-amount,
        currency=currency,
        quantity=quantity,
        unit_amount_minor=unit,
        period_start=unused[0],
        period_end=unused[1],
    )


def quote_change(
    *,
    currency: str,
    anchor: date,
    interval: Interval,
    change_date: date,
    billed_unit_amount_minor: int,
    old_quantity: int,
    billed_amount_minor: int,
    credits_already_issued_minor: int,
    new_unit_amount_minor: int,
    new_quantity: int,
    new_interval: Interval | None = None,
    new_anchor: date | None = None,
    served_period: tuple[date, date] | None = None,
) -> ChangeQuote:
    """Quote a mid-period change (price, plan or quantity) at local date ``c``, billed in advance.

    Let period ``n`` of ``(anchor, interval)`` contain ``c``. Two lines, each rounded once:

    - credit ``-min(R(billed_unit * old_qty * (B_(n+1) - c) / L_n), billed - credited)``;
    - charge ``R(new_unit * new_qty * (B'_(m+1) - c) / L'_m)`` where period ``m`` of the new
      schedule ``(new_anchor, new_interval)`` contains ``c``.

    With neither ``new_interval`` nor ``new_anchor`` the new schedule is the old one, so the charge
    covers the same ``[c, B_(n+1))``. With another interval (monthly to yearly) the new plan keeps
    the current anchor unless ``new_anchor`` is given, and the charge is the leading piece up to
    the new plan's own next billing date. A ``new_anchor`` after ``c`` extends the new schedule
    backwards (its billing dates before the anchor), so the charge runs to its first billing date
    after ``c``. A quantity change is this with the same unit price.

    Args:
        currency: ISO 4217 code of both plans.
        anchor: Anchor of the current schedule.
        interval: Current billing interval.
        change_date: ``c``, the first local day on the new terms (on or after ``anchor``).
        billed_unit_amount_minor: Unit price actually invoiced for period ``n`` (after discounts).
        old_quantity: Quantity invoiced for period ``n`` (>= 1).
        billed_amount_minor: What was invoiced for the item in period ``n``.
        credits_already_issued_minor: Credits already issued against that amount.
        new_unit_amount_minor: New unit price per full new period.
        new_quantity: New quantity (>= 1).
        new_interval: New interval, if it changes.
        new_anchor: Anchor of the new schedule, if it changes.
        served_period: The paid period as it is served when a pause shifted it: ``(end - L, end)``
            with ``end`` the shifted end of the served span and ``L`` the paid period's original
            length (billing-math.md, "Pause"). It replaces period ``n`` of the schedule for the
            credit, and for the charge when the schedule does not change.

    Raises:
        BillingInputError: (a ``ValueError``) for negative or non-int amounts, quantities below 1,
            credits exceeding what was billed, ``c`` before the anchor, or an unknown currency or
            interval.
    """
    code = normalize_currency(currency)
    iv = parse_interval(interval)
    c = ensure_date(change_date, "change_date")
    old_qty = ensure_count(old_quantity, "old_quantity", 1)
    new_qty = ensure_count(new_quantity, "new_quantity", 1)
    new_unit = ensure_non_negative_int(new_unit_amount_minor, "new_unit_amount_minor")
    period = served_period or period_bounds(anchor, iv, period_index_containing(anchor, iv, c))
    credit = _unused_credit_line(
        currency=code,
        period=period,
        c=c,
        billed_unit_amount_minor=billed_unit_amount_minor,
        quantity=old_qty,
        billed_amount_minor=billed_amount_minor,
        credits_already_issued_minor=credits_already_issued_minor,
        interval=iv,
        description="Unused time on previous plan",
    )

    next_iv = iv if new_interval is None else parse_interval(new_interval)
    next_anchor = anchor if new_anchor is None else ensure_date(new_anchor, "new_anchor")
    if served_period is not None and new_interval is None and new_anchor is None:
        new_period = served_period
    else:
        new_period = period_containing(next_anchor, next_iv, c)
    span = (c, new_period[1])
    charge = InvoiceLine(
        kind=LineKind.PRORATION_CHARGE,
        description=f"Remaining time on new plan ({_plan_label(new_unit, new_qty, code, next_iv)})",
        amount_minor=prorate(new_unit * new_qty, code, span, new_period),
        currency=code,
        quantity=new_qty,
        unit_amount_minor=new_unit,
        period_start=span[0],
        period_end=span[1],
    )
    return ChangeQuote(
        lines=[credit, charge],
        effective_date=c,
        next_billing_date=new_period[1],
        new_anchor=next_anchor,
        new_interval=next_iv,
    )


def quote_cancellation(
    *,
    currency: str,
    anchor: date,
    interval: Interval,
    cancel_date: date,
    billed_unit_amount_minor: int,
    quantity: int,
    billed_amount_minor: int,
    credits_already_issued_minor: int,
    billed_in_arrears: bool = False,
    unit_amount_minor_for_arrears: int | None = None,
    served_period: tuple[date, date] | None = None,
) -> list[InvoiceLine]:
    """Quote the line a cancellation effective on local date ``c`` produces (exactly one line).

    Billed in advance: the credit of :func:`quote_change` for ``[c, B_(n+1))`` (whether it is
    refunded, kept as account credit or forfeited is the cancellation policy's call). Billed in
    arrears: a charge ``R(unit * qty * (c - B_n) / L_n)`` for the used ``[B_n, c)``, which is 0
    when ``c`` is a billing date (the previous period was billed in full on ``c``).

    Args:
        currency: ISO 4217 code.
        anchor: Anchor of the schedule.
        interval: Billing interval.
        cancel_date: ``c``, the first local day without service (on or after ``anchor``).
        billed_unit_amount_minor: Unit price invoiced for period ``n`` (after discounts).
        quantity: Quantity (>= 1).
        billed_amount_minor: What was invoiced for the item in period ``n`` (advance billing).
        credits_already_issued_minor: Credits already issued against that amount.
        billed_in_arrears: Whether the item is billed at the end of each period.
        unit_amount_minor_for_arrears: Unit price for the arrears charge; defaults to
            ``billed_unit_amount_minor``.
        served_period: As in :func:`quote_change`: the paid period as served after a pause.

    Raises:
        BillingInputError: As :func:`quote_change`.
    """
    code = normalize_currency(currency)
    iv = parse_interval(interval)
    c = ensure_date(cancel_date, "cancel_date")
    qty = ensure_count(quantity, "quantity", 1)
    period = served_period or period_bounds(anchor, iv, period_index_containing(anchor, iv, c))
    if not billed_in_arrears:
        return [
            _unused_credit_line(
                currency=code,
                period=period,
                c=c,
                billed_unit_amount_minor=billed_unit_amount_minor,
                quantity=qty,
                billed_amount_minor=billed_amount_minor,
                credits_already_issued_minor=credits_already_issued_minor,
                interval=iv,
                description="Unused time after cancellation",
            )
        ]
    unit = ensure_non_negative_int(
        billed_unit_amount_minor
        if unit_amount_minor_for_arrears is None
        else unit_amount_minor_for_arrears,
        "unit_amount_minor_for_arrears",
    )
    used = (period[0], c)
    return [
        InvoiceLine(
            kind=LineKind.PRORATION_CHARGE,
            description=f"Service up to cancellation ({_plan_label(unit, qty, code, iv)})",
            amount_minor=prorate(unit * qty, code, used, period),
            currency=code,
            quantity=qty,
            unit_amount_minor=unit,
            period_start=used[0],
            period_end=used[1],
        )
    ]
