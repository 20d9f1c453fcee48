"""Invoice lines and composition: rounded lines, credit consumed first, totals never negative."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.errors import ErrorCode
from models.invoice import (
    InvoiceLine,
    LineKind,
    compose_invoice,
    discount_line,
    period_charge_line,
    setup_credit_line,
)
from models.money import BillingInputError

APRIL = (date(2024, 4, 1), date(2024, 5, 1))


def line(
    amount: int, currency: str = "USD", kind: LineKind = LineKind.PERIOD_CHARGE
) -> InvoiceLine:
    return InvoiceLine(
        kind=kind, description=f"line {amount}", amount_minor=amount, currency=currency
    )


def test_period_charge_line_charges_unit_price_times_quantity_for_the_period() -> None:
    got = period_charge_line(
        currency="usd", unit_amount_minor=3000, quantity=3, period=APRIL, description="Pro"
    )
    assert got.kind is LineKind.PERIOD_CHARGE
    assert got.amount_minor == 9000
    assert (got.currency, got.quantity, got.unit_amount_minor) == ("USD", 3, 3000)
    assert (got.period_start, got.period_end) == APRIL


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"unit_amount_minor": -1}, "unit_amount_minor must not be negative"),
        ({"unit_amount_minor": 30.0}, "got float"),
        ({"quantity": -1}, "quantity must not be negative"),
        (
            {"period": (date(2024, 5, 1), date(2024, 4, 1))},
            "period end 2024-04-01 is before its start",
        ),
        (
            {"period": (date(2024, 4, 1), date(2024, 4, 1))},
            "period 2024-04-01 to 2024-04-01 is empty",
        ),
        ({"period": (date(2024, 4, 1),)}, r"\(start, end\) pair"),
        ({"currency": "EURO"}, "unknown currency"),
    ],
)
def test_period_charge_line_refuses_bad_input(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "currency": "USD",
        "unit_amount_minor": 3000,
        "quantity": 1,
        "period": APRIL,
        "description": "Pro",
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        period_charge_line(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("amount_minor", 12.5, "amount_minor"),
        ("amount_minor", 12.0, "amount_minor"),
        ("amount_minor", True, "amount_minor"),
        ("currency", "ZZZ", "unknown currency"),
        ("period_end", date(2024, 3, 1), "before period_start"),
        ("period_start", None, "given together"),
    ],
)
def test_invoice_line_validates_its_fields(field: str, value: object, match: str) -> None:
    data: dict[str, object] = {
        "kind": LineKind.PERIOD_CHARGE,
        "description": "x",
        "amount_minor": 100,
        "currency": "USD",
        "period_start": date(2024, 4, 1),
        "period_end": date(2024, 5, 1),
    }
    data[field] = value
    with pytest.raises(ValueError, match=match):
        InvoiceLine.model_validate(data)


def test_invoice_line_survives_a_json_round_trip() -> None:
    original = period_charge_line(
        currency="KWD", unit_amount_minor=1000, quantity=2, period=APRIL, description="Plan"
    )
    assert InvoiceLine.model_validate_json(original.model_dump_json()) == original


@pytest.mark.parametrize(
    ("amounts", "credit", "applied", "total", "remaining"),
    [
        ([3000], 0, 0, 3000, 0),
        ([3000], 1000, 1000, 2000, 0),
        ([3000], 5000, 3000, 0, 2000),
        ([-2000, 4000], 0, 0, 2000, 0),  # the spec's upgrade: lines stay separate
        ([-2000, 4000], 2500, 2000, 0, 500),
        ([-4000, 2000], 500, 0, 0, 2500),  # negative subtotal becomes account credit
        ([], 700, 0, 0, 700),
    ],
)
def test_compose_invoice_spends_account_credit_before_the_card_and_never_goes_negative(
    amounts: list[int], credit: int, applied: int, total: int, remaining: int
) -> None:
    invoice = compose_invoice(
        currency="USD", lines=[line(a) for a in amounts], account_credit_minor=credit
    )
    assert invoice.subtotal_minor == sum(amounts)
    assert (invoice.credit_applied_minor, invoice.total_minor) == (applied, total)
    assert invoice.credit_remaining_minor == remaining


def test_compose_invoice_adds_an_account_credit_line_only_when_credit_is_used() -> None:
    used = compose_invoice(currency="USD", lines=[line(3000)], account_credit_minor=1000)
    assert [(item.kind, item.amount_minor) for item in used.lines] == [
        (LineKind.PERIOD_CHARGE, 3000),
        (LineKind.ACCOUNT_CREDIT_APPLIED, -1000),
    ]
    unused = compose_invoice(currency="USD", lines=[line(3000)], account_credit_minor=0)
    assert [item.kind for item in unused.lines] == [LineKind.PERIOD_CHARGE]


def test_compose_invoice_refuses_lines_in_another_currency() -> None:
    with pytest.raises(ValueError, match="mixed currencies") as info:
        compose_invoice(currency="USD", lines=[line(100), line(100, "EUR")], account_credit_minor=0)
    assert isinstance(info.value, BillingInputError)
    assert info.value.code is ErrorCode.INVALID_CURRENCY


@pytest.mark.parametrize(("credit", "match"), [(-1, "must not be negative"), (1.5, "got float")])
def test_compose_invoice_refuses_a_bad_credit_balance(credit: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        compose_invoice(currency="USD", lines=[line(100)], account_credit_minor=credit)  # type: ignore[arg-type]


def test_compose_invoice_refuses_lines_that_already_apply_credit() -> None:
    with pytest.raises(ValueError, match="already include applied account credit"):
        compose_invoice(
            currency="USD",
            lines=[line(100), line(-50, kind=LineKind.ACCOUNT_CREDIT_APPLIED)],
            account_credit_minor=0,
        )


@given(
    amounts=st.lists(st.integers(-(10**9), 10**9), max_size=12),
    credit=st.integers(0, 10**10),
)
def test_no_invoice_total_goes_below_zero_and_credit_is_conserved(
    amounts: list[int], credit: int
) -> None:
    invoice = compose_invoice(
        currency="JPY", lines=[line(a, "JPY") for a in amounts], account_credit_minor=credit
    )
    assert invoice.total_minor >= 0
    assert 0 <= invoice.credit_applied_minor <= credit
    # money is neither created nor lost: the subtotal is paid by card plus credit drawn down
    credit_used = credit - invoice.credit_remaining_minor
    assert invoice.subtotal_minor == invoice.total_minor + credit_used
    if invoice.subtotal_minor >= 0:
        assert sum(item.amount_minor for item in invoice.lines) == invoice.total_minor


@pytest.mark.parametrize(
    ("base", "percent", "expected"),
    [
        (999, Fraction(25, 2), -125),  # 12.5% of 9.99 = 1.24875 -> 1.25
        (3000, 20, -600),
        (1000, Fraction(1, 3), -3),  # 1/3 % of 10.00 = 0.0333 -> 0.03
        (1000, Decimal("33.35"), -334),  # 333.5 -> 334, half away from zero
        (1000, 100, -1000),
        (1000, 0, 0),
    ],
)
def test_percentage_discount_is_exact_and_rounded_once(
    base: int, percent: Fraction | Decimal | int, expected: int
) -> None:
    got = discount_line(currency="USD", base_amount_minor=base, percent=percent, description="d")
    assert got.kind is LineKind.DISCOUNT
    assert got.amount_minor == expected


@pytest.mark.parametrize(("base", "off", "expected"), [(3000, 500, -500), (300, 500, -300)])
def test_amount_discount_never_exceeds_the_base(base: int, off: int, expected: int) -> None:
    got = discount_line(
        currency="USD", base_amount_minor=base, amount_off_minor=off, description="d", period=APRIL
    )
    assert got.amount_minor == expected
    assert (got.period_start, got.period_end) == APRIL


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of percent or amount_off_minor"),
        ({"percent": 10, "amount_off_minor": 100}, "exactly one"),
        ({"percent": 12.5}, "percent must be exact"),
        ({"percent": 101}, "between 0 and 100"),
        ({"percent": -1}, "between 0 and 100"),
        ({"amount_off_minor": -5}, "amount_off_minor must not be negative"),
    ],
)
def test_discount_line_refuses_bad_input(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        discount_line(currency="USD", base_amount_minor=1000, description="d", **kwargs)  # type: ignore[arg-type]


def test_setup_credit_line_is_negative() -> None:
    got = setup_credit_line(currency="eur", amount_minor=1500, description="Setup waived")
    assert (got.kind, got.amount_minor, got.currency) == (LineKind.SETUP_CREDIT, -1500, "EUR")


def test_setup_credit_line_refuses_a_negative_magnitude() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        setup_credit_line(currency="EUR", amount_minor=-1, description="x")
