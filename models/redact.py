"""Redaction of card numbers from text before it is stored or logged (pure, no I/O).

A *card-like* number is a run of 13 to 19 digits, optionally grouped by spaces or dashes
(``4242 4242 4242 4242``, ``4242-4242-4242-4242``, ``4242 - 4242 ...``: one to three separator
characters between groups), that passes the Luhn check. Such runs are replaced by :data:`MASK`.
The mask holds no quote, comma or backslash, so a JSON string or a CSV field that carried a card
number stays a valid JSON string or CSV field.

How runs are found: a maximal run of digit groups joined by separators is masked as a whole when
it is card-like. Otherwise, when it is made of several groups, every contiguous stretch of
whole groups that is card-like is masked (a card number followed by its security code,
``4242 4242 4242 4242 123``, loses the card number). A single group of more than 19 digits is a
long number, not a card, and is kept; digits glued to other digits are never split.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "MAX_DIGITS", "MIN_DIGITS", "contains_card", "luhn_valid", "redact_cards"]

MASK = "[card redacted]"
MIN_DIGITS = 13
MAX_DIGITS = 19

# Digit groups joined by 1-3 spaces or dashes; not preceded or followed by a digit.
_RUN = re.compile(r"(?<!\d)\d+(?:[ -]{1,3}\d+)*(?!\d)")
_GROUP = re.compile(r"\d+")


def luhn_valid(digits: str) -> bool:
    """True when ``digits`` (digits only) pass the Luhn checksum."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_like(digits: str) -> bool:
    return MIN_DIGITS <= len(digits) <= MAX_DIGITS and luhn_valid(digits)


def _spans(run: str) -> list[tuple[int, int]]:
    """The spans (start, end) of ``run`` to mask, left to right and not overlapping."""
    groups = [(m.start(), m.end(), m.group()) for m in _GROUP.finditer(run)]
    whole = "".join(g for _, _, g in groups)
    if _card_like(whole):
        return [(0, len(run))]
    if len(groups) == 1:
        return []
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(groups):
        found = None
        digits = ""
        for j in range(i, len(groups)):
            digits += groups[j][2]
            if len(digits) > MAX_DIGITS:
                break
            if _card_like(digits):
                found = j  # keep the longest card-like stretch starting at group i
        if found is None:
            i += 1
            continue
        spans.append((groups[i][0], groups[found][1]))
        i = found + 1
    return spans


def redact_cards(text: str) -> str:
    """``text`` with every card-like digit run replaced by :data:`MASK`."""
    if not text or sum(ch.isdigit() for ch in text) < MIN_DIGITS:
        return text
    out: list[str] = []
    last = 0
    for m in _RUN.finditer(text):
        run = m.group()
        if sum(ch.isdigit() for ch in run) < MIN_DIGITS:
            continue
        for start, end in _spans(run):
            out.append(text[last : m.start() + start])
            out.append(MASK)
            last = m.start() + end
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def contains_card(text: str) -> bool:
    """True when ``text`` holds a card-like digit run."""
    return redact_cards(text) != text
