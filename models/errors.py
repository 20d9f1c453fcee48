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

    # Order intake (HTTP 400/422/401); each validation rule has its own code
    UNKNOWN_CHANNEL = "UNKNOWN_CHANNEL"
    MALFORMED_PAYLOAD = "MALFORMED_PAYLOAD"
    SIGNATURE_INVALID = "SIGNATURE_INVALID"
    UNKNOWN_SKU = "UNKNOWN_SKU"
    CREDIT_LIMIT_EXCEEDED = "CREDIT_LIMIT_EXCEEDED"
    ACCOUNT_ON_HOLD = "ACCOUNT_ON_HOLD"
    OUT_OF_STOCK = "OUT_OF_STOCK"
    CHANNEL_NOT_ALLOWED = "CHANNEL_NOT_ALLOWED"
    SEGMENT_NOT_ALLOWED = "SEGMENT_NOT_ALLOWED"
    RISK_REJECTED = "RISK_REJECTED"
    DEAD_LETTER_NOT_FOUND = "DEAD_LETTER_NOT_FOUND"
    # The payload asked for a trial the plan does not offer (trials come from the plan only)
    TRIAL_NOT_OFFERED = "TRIAL_NOT_OFFERED"

    # Changes, approvals, pauses (HTTP 403/409/422)
    CHANGE_NOT_ALLOWED = "CHANGE_NOT_ALLOWED"
    INVALID_QUANTITY = "INVALID_QUANTITY"
    APPROVER_NOT_AUTHORIZED = "APPROVER_NOT_AUTHORIZED"
    SELF_APPROVAL = "SELF_APPROVAL"
    STALE_REQUEST = "STALE_REQUEST"
    REQUEST_NOT_FOUND = "REQUEST_NOT_FOUND"
    SUBSCRIPTION_PAUSED = "SUBSCRIPTION_PAUSED"
    NOT_PAUSED = "NOT_PAUSED"
    MINIMUM_TERM = "MINIMUM_TERM"

    # State conflicts (HTTP 404/409)
    SUBSCRIPTION_NOT_FOUND = "SUBSCRIPTION_NOT_FOUND"
    SUBSCRIPTION_EXISTS = "SUBSCRIPTION_EXISTS"
    SUBSCRIPTION_CANCELED = "SUBSCRIPTION_CANCELED"
    NOT_CANCELING = "NOT_CANCELING"

    # Access (HTTP 401/403/404/409/413/429): who may do what (models/identity.py, docs/access.md)
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    ACCOUNT_NOT_AUTHORIZED = "ACCOUNT_NOT_AUTHORIZED"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    RATE_LIMITED = "RATE_LIMITED"
    CONFIG_INVALID = "CONFIG_INVALID"
    INTERNAL = "INTERNAL"

    # Enrollment (docs/enrollment.md): sign-up, verification of the address, first payment
    EMAIL_INVALID = "EMAIL_INVALID"
    PHONE_INVALID = "PHONE_INVALID"
    CONSENT_REQUIRED = "CONSENT_REQUIRED"
    PLAN_NOT_OFFERED = "PLAN_NOT_OFFERED"
    CODE_INVALID = "CODE_INVALID"
    CODE_EXPIRED = "CODE_EXPIRED"
    TOO_MANY_ATTEMPTS = "TOO_MANY_ATTEMPTS"
    RESEND_TOO_SOON = "RESEND_TOO_SOON"
    NOT_VERIFIED = "NOT_VERIFIED"
    PAYMENT_METHOD_DECLINED = "PAYMENT_METHOD_DECLINED"
    ENROLLMENT_EXPIRED = "ENROLLMENT_EXPIRED"
    ENROLLMENT_CLOSED = "ENROLLMENT_CLOSED"
    ALREADY_ENROLLED = "ALREADY_ENROLLED"

    # Test clocks (dev and test deployments only; HTTP 403/404)
    TEST_CLOCKS_DISABLED = "TEST_CLOCKS_DISABLED"
    CLOCK_NOT_FOUND = "CLOCK_NOT_FOUND"

    # Payments (HTTP 402)
    PAYMENT_DECLINED = "PAYMENT_DECLINED"
    # The gateway refused the request itself (a detached card, an amount it does not accept):
    # recorded as a hard decline so dunning asks for a new payment method.
    GATEWAY_REFUSED = "GATEWAY_REFUSED"

    # Infrastructure (HTTP 503)
    TEMPORAL_UNAVAILABLE = "TEMPORAL_UNAVAILABLE"
    GATEWAY_UNAVAILABLE = "GATEWAY_UNAVAILABLE"
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    # A write the database refuses as data (too long, a broken constraint): never retried as is; the
    # subscription raises NeedsAttention and retries on a back-off or when an operator asks.
    DATA_ERROR = "DATA_ERROR"
    IDEMPOTENCY_MISMATCH = "IDEMPOTENCY_MISMATCH"
    TIMEOUT = "TIMEOUT"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ACCOUNT_NOT_AUTHORIZED: 403,
    ErrorCode.IDEMPOTENCY_KEY_REUSED: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.CONFIG_INVALID: 500,
    ErrorCode.INTERNAL: 500,
    ErrorCode.SIGNATURE_INVALID: 401,
    ErrorCode.APPROVER_NOT_AUTHORIZED: 403,
    ErrorCode.SELF_APPROVAL: 403,
    ErrorCode.DEAD_LETTER_NOT_FOUND: 404,
    ErrorCode.TRIAL_NOT_OFFERED: 422,
    ErrorCode.REQUEST_NOT_FOUND: 404,
    ErrorCode.STALE_REQUEST: 409,
    ErrorCode.SUBSCRIPTION_PAUSED: 409,
    ErrorCode.NOT_PAUSED: 409,
    ErrorCode.MALFORMED_PAYLOAD: 400,
    ErrorCode.UNKNOWN_CHANNEL: 404,
    ErrorCode.SUBSCRIPTION_NOT_FOUND: 404,
    ErrorCode.SUBSCRIPTION_EXISTS: 409,
    ErrorCode.SUBSCRIPTION_CANCELED: 409,
    ErrorCode.NOT_CANCELING: 409,
    ErrorCode.TOO_MANY_ATTEMPTS: 429,
    ErrorCode.RESEND_TOO_SOON: 429,
    ErrorCode.NOT_VERIFIED: 409,
    ErrorCode.PAYMENT_METHOD_DECLINED: 402,
    ErrorCode.ENROLLMENT_EXPIRED: 410,
    ErrorCode.ENROLLMENT_CLOSED: 409,
    ErrorCode.ALREADY_ENROLLED: 409,
    ErrorCode.TEST_CLOCKS_DISABLED: 403,
    ErrorCode.CLOCK_NOT_FOUND: 404,
    ErrorCode.PAYMENT_DECLINED: 402,
    ErrorCode.GATEWAY_REFUSED: 402,
    ErrorCode.DATA_ERROR: 500,
    ErrorCode.IDEMPOTENCY_MISMATCH: 409,
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
