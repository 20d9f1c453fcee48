"""Money: ISO 4217 exponents, the one rounding rule R(x), formatting and parsing."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.errors import ErrorCode
from models.money import (
    BillingInputError,
    Money,
    format_money,
    minor_unit_exponent,
    parse_amount,
    round_minor,
)

ZERO_DECIMAL = [
    "JPY",
    "KRW",
    "VND",
    "CLP",
    "ISK",
    "UGX",
    "XAF",
    "XOF",
    "XPF",
    "KMF",
    "GNF",
    "PYG",
    "RWF",
    "VUV",
    "BIF",
    "DJF",
    "UYI",
]
THREE_DECIMAL = ["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"]
TWO_DECIMAL = [
    "USD",
    "EUR",
    "GBP",
    "CHF",
    "CAD",
    "AUD",
    "NZD",
    "CNY",
    "HKD",
    "SGD",
    "INR",
    "BRL",
    "MXN",
    "SEK",
    "NOK",
    "DKK",
    "PLN",
    "CZK",
    "HUF",
    "ZAR",
    "TRY",
    "AED",
    "SAR",
    "ILS",
    "THB",
    "TWD",
    "PHP",
    "IDR",
    "MYR",
    "EGP",
    "NGN",
    "KES",
    "COP",
    "ARS",
    "PEN",
    "UAH",
    "RON",
    "XCD",
    "XCG",
    "ZWG",
    "SLE",
]


@pytest.mark.parametrize(
    ("currency", "exponent"),
    [(c, 0) for c in ZERO_DECIMAL]
    + [(c, 3) for c in THREE_DECIMAL]
    + [(c, 2) for c in TWO_DECIMAL]
    + [("CLF", 4), ("UYW", 4)],
)
def test_minor_unit_exponent_follows_iso_4217(currency: str, exponent: int) -> None:
    assert minor_unit_exponent(currency) == exponent


@pytest.mark.parametrize("currency", ["usd", "Jpy", "kwd"])
def test_minor_unit_exponent_accepts_any_case(currency: str) -> None:
    assert minor_unit_exponent(currency) == minor_unit_exponent(currency.upper())


@pytest.mark.parametrize("currency", ["XYZ", "", "US", "USDD", "XAU", "XXX", "XDR"])
def test_minor_unit_exponent_refuses_unknown_or_non_monetary_codes(currency: str) -> None:
    with pytest.raises(ValueError, match="unknown currency") as info:
        minor_unit_exponent(currency)
    assert isinstance(info.value, BillingInputError)
    assert info.value.code is ErrorCode.INVALID_CURRENCY


def test_minor_unit_exponent_refuses_a_non_string() -> None:
    with pytest.raises(ValueError, match="currency must be an ISO 4217 code string"):
        minor_unit_exponent(840)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "currency", "expected"),
    [
        (Fraction(1000 * 17, 31), "USD", 548),  # spec: 10.00 * 17/31 = 5.4838 -> 5.48
        (Fraction(1000 * 10, 31), "JPY", 323),  # spec: 1000 JPY * 10/31 = 322.58 -> 323
        (Fraction(1000 * 7, 30), "KWD", 233),  # spec: 1.000 KWD * 7/30 = 0.2333 -> 0.233
        (Fraction(5, 2), "USD", 3),
        (Fraction(-5, 2), "USD", -3),
        (Fraction(3, 2), "USD", 2),
        (Fraction(1, 2), "USD", 1),
        (Fraction(-1, 2), "USD", -1),
        (Fraction(49, 100), "USD", 0),
        (Fraction(-49, 100), "USD", 0),
        (Fraction(51, 100), "USD", 1),
        (Fraction(-51, 100), "USD", -1),
        (7, "USD", 7),
        (0, "JPY", 0),
    ],
)
def test_round_minor_rounds_half_away_from_zero(
    value: Fraction | int, currency: str, expected: int
) -> None:
    assert round_minor(value, currency) == expected


def test_round_minor_refuses_a_float() -> None:
    with pytest.raises(ValueError, match="exact Fraction or int"):
        round_minor(5.5, "USD")  # type: ignore[arg-type]


def test_round_minor_refuses_an_unknown_currency() -> None:
    with pytest.raises(ValueError, match="unknown currency"):
        round_minor(Fraction(1, 2), "ABC")


@given(st.fractions(max_denominator=10_000).filter(lambda f: abs(f) < 10**12))
def test_round_minor_is_sign_symmetric_and_within_half_a_unit(value: Fraction) -> None:
    rounded = round_minor(value, "USD")
    assert round_minor(-value, "USD") == -rounded
    assert abs(rounded - value) <= Fraction(1, 2)


def test_money_normalizes_the_currency_code() -> None:
    assert Money(100, "usd") == Money(100, "USD")
    assert Money(100, "usd").currency == "USD"


@pytest.mark.parametrize(
    ("amount", "match"),
    [(1.5, "integer number of minor units, got float"), (True, "got bool"), ("100", "got str")],
)
def test_money_refuses_non_int_amounts(amount: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Money(amount, "USD")  # type: ignore[arg-type]


def test_money_refuses_an_unknown_currency() -> None:
    with pytest.raises(ValueError, match="unknown currency"):
        Money(100, "ZZZ")


def test_money_adds_subtracts_and_negates_in_one_currency() -> None:
    a, b = Money(1000, "USD"), Money(250, "USD")
    assert a + b == Money(1250, "USD")
    assert a - b == Money(750, "USD")
    assert -a == Money(-1000, "USD")
    assert Money.zero("jpy") == Money(0, "JPY")


@pytest.mark.parametrize("op", ["add", "subtract"])
def test_money_refuses_mixed_currencies(op: str) -> None:
    usd, eur = Money(100, "USD"), Money(100, "EUR")
    with pytest.raises(ValueError, match="mixed currencies"):
        _ = usd + eur if op == "add" else usd - eur


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (123456, "USD", "$1,234.56"),
        (1235, "JPY", "¥1,235"),
        (1200, "EUR", "€12.00"),
        (999, "GBP", "£9.99"),
        (233, "KWD", "KWD 0.233"),
        (-548, "USD", "-$5.48"),
        (0, "USD", "$0.00"),
        (5, "usd", "$0.05"),
        (123456789, "KWD", "KWD 123,456.789"),
        (-1, "JPY", "-¥1"),
        (100000000, "CHF", "CHF 1,000,000.00"),
        (-233, "KWD", "-KWD 0.233"),
        (12345, "CLF", "CLF 1.2345"),
        (5000, "CAD", "CAD 50.00"),
    ],
)
def test_format_money_shows_symbol_or_code_and_exact_decimals(
    amount: int, currency: str, text: str
) -> None:
    assert format_money(amount, currency) == text


def test_format_money_refuses_a_float_amount() -> None:
    with pytest.raises(ValueError, match="got float"):
        format_money(12.5, "USD")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("12.34", "USD", 1234),
        ("12", "USD", 1200),
        ("12.3", "USD", 1230),
        ("0.05", "USD", 5),
        ("1000", "JPY", 1000),
        ("0.233", "KWD", 233),
        ("1.000", "KWD", 1000),
        (" 7.50 ", "EUR", 750),
        ("-5.48", "USD", -548),
        ("+3", "usd", 300),
    ],
)
def test_parse_amount_converts_major_units_to_minor_units(
    text: str, currency: str, minor: int
) -> None:
    assert parse_amount(text, currency) == minor


@pytest.mark.parametrize(
    ("text", "currency", "match"),
    [
        ("12.345", "USD", "too many decimals: USD allows at most 2"),
        ("10.5", "JPY", "too many decimals: JPY allows at most 0"),
        ("0.2335", "KWD", "too many decimals"),
        ("1,234.56", "USD", "not a decimal number"),
        ("abc", "USD", "not a decimal number"),
        ("1e3", "USD", "not a decimal number"),
        ("", "USD", "not a decimal number"),
        ("12.", "USD", "not a decimal number"),
        ("NaN", "USD", "not a decimal number"),
        ("$5", "USD", "not a decimal number"),
        ("5", "XYZ", "unknown currency"),
    ],
)
def test_parse_amount_refuses_malformed_text(text: str, currency: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_amount(text, currency)


@given(st.integers(min_value=-(10**15), max_value=10**15), st.sampled_from(["USD", "JPY", "KWD"]))
def test_parse_amount_reads_back_every_minor_amount(amount: int, currency: str) -> None:
    exponent = minor_unit_exponent(currency)
    whole, minor = divmod(abs(amount), 10**exponent)
    text = ("-" if amount < 0 else "") + str(whole) + (f".{minor:0{exponent}d}" if exponent else "")
    assert parse_amount(text, currency) == amount
