"""``models.redact``: card-like digit runs are masked wherever they appear; nothing else changes."""

from __future__ import annotations

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from models.redact import MASK, contains_card, luhn_valid, redact_cards

TEST_CARDS = [
    "4242424242424242",  # Visa
    "4000056655665556",  # Visa debit
    "5555555555554444",  # Mastercard
    "378282246310005",  # Amex (15)
    "6011111111111117",  # Discover
    "3056930009020004",  # Diners (16)
    "4222222222222",  # Visa (13)
    "6200000000000005",  # UnionPay
    "4000000000000000006",  # 19 digits
]


def with_check_digit(body: str) -> str:
    """``body`` plus the digit that makes it Luhn-valid."""
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


def group(digits: str, sizes: list[int], sep: str) -> str:
    parts, i = [], 0
    for size in sizes:
        if i >= len(digits):
            break
        parts.append(digits[i : i + size])
        i += size
    if i < len(digits):
        parts.append(digits[i:])
    return sep.join(parts)


cards = st.integers(min_value=12, max_value=18).flatmap(
    lambda n: st.text(alphabet="0123456789", min_size=n, max_size=n).map(with_check_digit)
)
separators = st.sampled_from(["", " ", "-", " - ", "  "])
group_sizes = st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=6)
# Text around a number that cannot extend it: no digits next to it.
surroundings = st.text(
    alphabet=st.characters(blacklist_categories=["Nd"], blacklist_characters="-"), max_size=30
)


def test_known_test_cards_are_luhn_valid_and_masked_in_every_usual_format() -> None:
    for number in TEST_CARDS:
        assert luhn_valid(number)
        for shown in (number, group(number, [4, 4, 4, 4], " "), group(number, [4, 6, 5], "-")):
            assert redact_cards(f"card {shown}!") == f"card {MASK}!"
            assert contains_card(shown)


def test_json_and_csv_stay_valid_after_masking() -> None:
    payload = json.dumps({"payment": {"token": "4242 4242 4242 4242"}, "note": "5555555555554444"})
    redacted = redact_cards(payload)
    assert json.loads(redacted) == {"payment": {"token": MASK}, "note": MASK}
    line = "acme,PO-1,4242-4242-4242-4242,it@bluth.example"
    assert redact_cards(line).split(",") == ["acme", "PO-1", MASK, "it@bluth.example"]


def test_a_card_followed_by_its_security_code_still_loses_the_card_number() -> None:
    assert redact_cards("4242 4242 4242 4242 123") == f"{MASK} 123"
    assert redact_cards("pay with 4242424242424242 cvc 123") == f"pay with {MASK} cvc 123"


def test_numbers_that_are_not_cards_are_kept() -> None:
    kept = [
        "4242424242424241",  # fails Luhn
        "424242424242",  # 12 digits
        "42424242424242424242",  # 20 digits in one group: a long number
        "order 1763720000 placed 2026-11-21T10:15:00Z",
        "+44 20 7946 0958",
        "cust_0123456789abcdef",
        "",
    ]
    for text in kept:
        assert redact_cards(text) == text
        assert not contains_card(text)


@settings(max_examples=300)
@given(cards, group_sizes, separators, surroundings, surroundings)
def test_any_card_number_in_any_grouping_is_masked(
    number: str, sizes: list[int], sep: str, before: str, after: str
) -> None:
    shown = group(number, sizes, sep) if sep else number
    text = before + shown + after
    out = redact_cards(text)
    assert out == before + MASK + after
    assert number not in re.sub(r"\D", "", out.replace(MASK, "|"))


@given(st.text(max_size=200))
def test_redaction_is_idempotent_and_never_adds_digits(text: str) -> None:
    once = redact_cards(text)
    assert redact_cards(once) == once
    assert sum(c.isdigit() for c in once) <= sum(c.isdigit() for c in text)


@given(st.text(alphabet=st.characters(blacklist_categories=["Nd"]), max_size=200))
def test_text_without_digits_is_unchanged(text: str) -> None:
    assert redact_cards(text) == text


@given(
    st.integers(min_value=13, max_value=19).flatmap(
        lambda n: st.text(alphabet="0123456789", min_size=n, max_size=n)
    )
)
def test_a_single_run_is_masked_exactly_when_it_passes_luhn(digits: str) -> None:
    assert (redact_cards(digits) == MASK) == luhn_valid(digits)
