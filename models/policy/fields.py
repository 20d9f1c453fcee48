"""Field types of the policy document: durations, percentages, amounts per currency.

Also the base of every part of the document (immutable, unknown keys refused) and the check of
a rule's default timing against its permitted timings.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)

from models.money import normalize_currency
from models.policy.vocabulary import Timing

_DURATION_RE = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_TIMEDELTA: TypeAdapter[timedelta] = TypeAdapter(timedelta)


def parse_duration(value: object) -> timedelta:
    """Parse a duration such as ``"4h"``, ``"2d"``, ``"1w2d"``, ``"90m"`` or ISO 8601 ``"P2D"``.

    Bare numbers are refused: ``2`` could mean hours or days, and an SLA off by 24x is the kind of
    mistake a policy file must not allow.

    Args:
        value: A ``timedelta`` or a string with units (w, d, h, m, s) or an ISO 8601 duration.

    Raises:
        ValueError: For a bare number or an unreadable string.
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        match = _DURATION_RE.fullmatch(text)
        if text and match is not None:
            weeks, days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
            return timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)
        if text.startswith("p"):  # ISO 8601, as pydantic serializes a timedelta to JSON
            try:
                return _TIMEDELTA.validate_python(value)
            except ValidationError:
                pass
    raise ValueError(
        f"duration {value!r} needs a unit: write e.g. '4h', '2d', '1w2d' or ISO 8601 'P2D'"
    )


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Percent = Annotated[Decimal, Field(ge=0, le=100)]
NonNegativeInt = Annotated[int, Field(ge=0, strict=True)]


def _normalize_amounts(value: dict[str, int]) -> dict[str, int]:
    normalized: dict[str, int] = {}
    for code, amount in value.items():
        key = normalize_currency(code)  # a ValueError: pydantic reports it with the field path
        if key in normalized:
            raise ValueError(f"currency {key} is listed twice")
        normalized[key] = amount
    if not normalized:
        raise ValueError("list at least one currency, e.g. {USD: 5000}")
    return normalized


# Amounts in minor units per currency, e.g. {USD: 5000, JPY: 7000}.
AmountsByCurrency = Annotated[dict[str, NonNegativeInt], AfterValidator(_normalize_amounts)]


class _Doc(BaseModel):
    """A part of the policy document: immutable, and unknown keys are errors (typos surface)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _permitted(timing: Timing, timings: list[Timing] | None, where: str) -> None:
    if timings is None:
        return
    if not timings:
        raise ValueError(f"{where}: timings must list at least one of immediately, period_end")
    if len(set(timings)) != len(timings):
        raise ValueError(f"{where}: timings lists a timing twice")
    if timing not in timings:
        raise ValueError(f"{where}: the default timing {timing.value} is not in timings")
