"""Stable error codes: one enum used where errors are raised, in retry policies and at the edges.

A code is part of the public contract (CLI ``--json`` output, HTTP error bodies, workflow update
rejections), so existing values never change meaning; new ones may be added.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Machine-readable error codes. The value travels as ``ApplicationError.type``."""

    # Bad input (HTTP 400/422)
    INVALID_AMOUNT = "INVALID_AMOUNT"
    INVALID_CURRENCY = "INVALID_CURRENCY"
    INVALID_DATE_RANGE = "INVALID_DATE_RANGE"
    INVALID_INTERVAL = "INVALID_INTERVAL"
    INVALID_TIMEZONE = "INVALID_TIMEZONE"
    INVALID_REQUEST = "INVALID_REQUEST"
    UNKNOWN_PLAN = "UNKNOWN_PLAN"
    CURRENCY_NOT_OFFERED = "CURRENCY_NOT_OFFERED"
    INTERVAL_NOT_OFFERED = "INTERVAL_NOT_OFFERED"
    PAYMENT_METHOD_REQUIRED = "PAYMENT_METHOD_REQUIRED"
    PAYMENT_METHOD_INVALID = "PAYMENT_METHOD_INVALID"
    CARD_NUMBER_REFUSED = "CARD_NUMBER_REFUSED"
    LIVE_KEY_REFUSED = "LIVE_KEY_REFUSED"

    # State conflicts (HTTP 404/409)
    SUBSCRIPTION_NOT_FOUND = "SUBSCRIPTION_NOT_FOUND"
    SUBSCRIPTION_EXISTS = "SUBSCRIPTION_EXISTS"
    SUBSCRIPTION_CANCELED = "SUBSCRIPTION_CANCELED"
    NOT_CANCELING = "NOT_CANCELING"

    # Payments (HTTP 402)
    PAYMENT_DECLINED = "PAYMENT_DECLINED"

    # Infrastructure (HTTP 503)
    TEMPORAL_UNAVAILABLE = "TEMPORAL_UNAVAILABLE"
    GATEWAY_UNAVAILABLE = "GATEWAY_UNAVAILABLE"
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    TIMEOUT = "TIMEOUT"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.SUBSCRIPTION_NOT_FOUND: 404,
    ErrorCode.SUBSCRIPTION_EXISTS: 409,
    ErrorCode.SUBSCRIPTION_CANCELED: 409,
    ErrorCode.NOT_CANCELING: 409,
    ErrorCode.PAYMENT_DECLINED: 402,
    ErrorCode.TEMPORAL_UNAVAILABLE: 503,
    ErrorCode.GATEWAY_UNAVAILABLE: 503,
    ErrorCode.DATABASE_UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
}


def http_status(code: ErrorCode | str) -> int:
    """The HTTP status an error code maps to (422 for any bad-input code)."""
    try:
        return HTTP_STATUS.get(ErrorCode(code), 422)
    except ValueError:
        return 500


class OmsError(Exception):
    """A business error with a stable code and a sentence a person can act on."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
