"""Money: integer minor units per ISO 4217, exact rationals, one rounding rule.

Every amount is an ``int`` count of the currency's minor unit (cents for USD, yen for JPY, fils
for KWD). Intermediate values are ``fractions.Fraction`` until :func:`round_minor`, the spec's
``R(x)``, turns them into an ``int`` once per invoice line (``shared/specs/billing-math.md``).
Floats are refused everywhere: a float amount is a bug, not an input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from models.errors import ErrorCode

__all__ = [
    "BillingInputError",
    "Money",
    "ensure_int",
    "ensure_non_negative_int",
    "format_money",
    "minor_unit_exponent",
    "normalize_currency",
    "parse_amount",
    "round_minor",
]


class BillingInputError(ValueError):
    """A ``ValueError`` that also carries the stable :class:`ErrorCode` for the edges.

    Every bad input to the billing math raises this, so callers that only know ``ValueError``
    keep working while the CLI and API can report the most specific code.

    Attributes:
        code: The error code an edge (CLI, API, update validator) reports.
        message: The sentence a person can act on.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ISO 4217 list one as published 2026-01-01 (SIX Group), currencies with a minor unit. Codes
# whose minor unit is "N.A." (XAU, XDR, XTS, XXX, ...) are not money you can bill and are absent.
# Plain strings split once at import: cheap enough for the workflow sandbox pass-through.
_EXPONENT_0 = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_EXPONENT_3 = "BHD IQD JOD KWD LYD OMR TND"
_EXPONENT_4 = "CLF UYW"
_EXPONENT_2 = (
    "AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BMD BND BOB BOV BRL BSD BTN BWP BYN BZD "
    "CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP "
    "GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK "
    "LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO "
    "NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS "
    "SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST "
    "XAD XCD XCG YER ZAR ZMW ZWG "
    # Withdrawn recently (euro adoption, redenominations): kept so invoices issued before the
    # switch can still be read and reformatted.
    "ANG BGN CUC HRK SLL ZWL"
)
_EXPONENTS: dict[str, int] = {
    code: exponent
    for exponent, codes in ((0, _EXPONENT_0), (2, _EXPONENT_2), (3, _EXPONENT_3), (4, _EXPONENT_4))
    for code in codes.split()
}

# Only symbols that name one currency unambiguously; "$" alone means USD here, every other
# dollar is shown with its code.
_SYMBOLS: dict[str, str] = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "INR": "₹", "KRW": "₩"}

_AMOUNT_RE = re.compile(r"^(?P<sign>[+-]?)(?P<whole>\d+)(?:\.(?P<frac>\d+))?$")


def ensure_int(value: object, name: str) -> int:
    """Return ``value`` if it is a true ``int``; refuse ``bool``, ``float`` and everything else.

    Args:
        value: The value to check.
        name: The field name used in the error message.

    Raises:
        BillingInputError: ``INVALID_AMOUNT`` when ``value`` is not an ``int``.
    """
    # bool is an int subclass; True cents is always a bug.
    if isinstance(value, bool) or not isinstance(value, int):
        raise BillingInputError(
            ErrorCode.INVALID_AMOUNT,
            f"{name} must be an integer number of minor units, got {type(value).__name__} "
            f"{value!r}",
        )
    return value


def ensure_non_negative_int(value: object, name: str) -> int:
    """Return ``value`` if it is an ``int`` >= 0.

    Args:
        value: The value to check.
        name: The field name used in the error message.

    Raises:
        BillingInputError: ``INVALID_AMOUNT`` when not an ``int`` or negative.
    """
    checked = ensure_int(value, name)
    if checked < 0:
        raise BillingInputError(
            ErrorCode.INVALID_AMOUNT, f"{name} must not be negative, got {checked}"
        )
    return checked


def normalize_currency(currency: object) -> str:
    """Return the upper-case ISO 4217 code for ``currency``.

    Args:
        currency: A three-letter code in any case, e.g. ``"usd"``.

    Raises:
        BillingInputError: ``INVALID_CURRENCY`` for a non-string or unknown code.
    """
    if not isinstance(currency, str):
        raise BillingInputError(
            ErrorCode.INVALID_CURRENCY,
            f"currency must be an ISO 4217 code string, got {type(currency).__name__}",
        )
    code = currency.strip().upper()
    if code not in _EXPONENTS:
        raise BillingInputError(
            ErrorCode.INVALID_CURRENCY, f"unknown currency {currency!r}: not an ISO 4217 code"
        )
    return code


def minor_unit_exponent(currency: str) -> int:
    """The ISO 4217 exponent of ``currency``: 0 for JPY, 2 for USD, 3 for KWD.

    Args:
        currency: A three-letter ISO 4217 code, any case.

    Raises:
        BillingInputError: (a ``ValueError``) for an unknown currency code.
    """
    return _EXPONENTS[normalize_currency(currency)]


def round_minor(value: Fraction | int, currency: str) -> int:
    """The spec's ``R(x)``: round an exact amount of minor units half away from zero.

    ``value`` is already in minor units, so rounding to the currency's minor unit is rounding to
    an integer. ``currency`` is validated so a bad code fails here rather than later.

    Args:
        value: An exact number of minor units.
        currency: The ISO 4217 code the amount is in.

    Raises:
        BillingInputError: For a float (or other inexact) value or an unknown currency.
    """
    normalize_currency(currency)
    if isinstance(value, bool) or not isinstance(value, Fraction | int):
        raise BillingInputError(
            ErrorCode.INVALID_AMOUNT,
            f"amount to round must be an exact Fraction or int, got {type(value).__name__}",
        )
    exact = Fraction(value)
    whole, remainder = divmod(abs(exact.numerator), exact.denominator)
    # ROUND_HALF_UP on the magnitude, sign reapplied: -5.5 -> -6, never toward +inf.
    if 2 * remainder >= exact.denominator:
        whole += 1
    return -whole if exact < 0 else whole


@dataclass(frozen=True)
class Money:
    """An amount in integer minor units of one currency.

    Attributes:
        amount_minor: The amount in minor units (cents, yen, fils); may be negative.
        currency: Upper-case ISO 4217 code (input is normalized).
    """

    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        ensure_int(self.amount_minor, "amount_minor")
        # frozen: normalize through object.__setattr__, the documented dataclass escape hatch.
        object.__setattr__(self, "currency", normalize_currency(self.currency))

    @classmethod
    def zero(cls, currency: str) -> Money:
        """Zero in ``currency``."""
        return cls(0, currency)

    def _same_currency(self, other: Money, op: str) -> None:
        if other.currency != self.currency:
            raise BillingInputError(
                ErrorCode.INVALID_CURRENCY,
                f"cannot {op} {other.currency} and {self.currency}: mixed currencies",
            )

    def __add__(self, other: object) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "add")
        return Money(self.amount_minor + other.amount_minor, self.currency)

    def __sub__(self, other: object) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "subtract")
        return Money(self.amount_minor - other.amount_minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount_minor, self.currency)

    def __str__(self) -> str:
        return format_money(self.amount_minor, self.currency)


def format_money(amount_minor: int, currency: str) -> str:
    """Format minor units for people: ``$1,234.56``, ``¥1,235``, ``-$5.48``, ``KWD 0.233``.

    Currencies with an unambiguous symbol get it as a prefix; every other currency is shown as
    its code, a space, and the amount. The sign always comes first.

    Args:
        amount_minor: The amount in minor units.
        currency: The ISO 4217 code, any case.

    Raises:
        BillingInputError: For a non-int amount or an unknown currency.
    """
    ensure_int(amount_minor, "amount_minor")
    code = normalize_currency(currency)
    exponent = _EXPONENTS[code]
    whole, minor = divmod(abs(amount_minor), 10**exponent)
    number = f"{whole:,}" + (f".{minor:0{exponent}d}" if exponent else "")
    sign = "-" if amount_minor < 0 else ""
    symbol = _SYMBOLS.get(code)
    return f"{sign}{symbol}{number}" if symbol else f"{sign}{code} {number}"


def parse_amount(text: str, currency: str) -> int:
    """Parse a decimal amount in major units into minor units: ``"12.34"`` USD -> ``1234``.

    Accepts an optional sign, digits and at most as many decimals as the currency's exponent
    (``"1000"`` JPY, ``"0.233"`` KWD). No exponents, separators or symbols: what was typed is
    exactly what is billed.

    Args:
        text: The amount as typed, e.g. ``"30.00"``.
        currency: The ISO 4217 code the amount is in.

    Raises:
        BillingInputError: ``INVALID_AMOUNT`` for malformed text or too many decimals,
            ``INVALID_CURRENCY`` for an unknown currency.
    """
    exponent = minor_unit_exponent(currency)
    if not isinstance(text, str):
        raise BillingInputError(
            ErrorCode.INVALID_AMOUNT, f"amount must be text, got {type(text).__name__}"
        )
    match = _AMOUNT_RE.match(text.strip())
    if match is None:
        raise BillingInputError(
            ErrorCode.INVALID_AMOUNT, f"amount {text!r} is not a decimal number like 12.34"
        )
    frac: str = match["frac"] or ""
    if len(frac) > exponent:
        raise BillingInputError(
            ErrorCode.INVALID_AMOUNT,
            f"amount {text!r} has too many decimals: {normalize_currency(currency)} allows at most "
            f"{exponent}",
        )
    minor: int = int(match["whole"]) * 10**exponent + int(frac.ljust(exponent, "0") or "0")
    return -minor if match["sign"] == "-" else minor
