"""Gateway error classification, fed real ``stripe`` exception objects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import stripe
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.gateway_errors import (
    DeclineCategory,
    classify_decline,
    gateway_call,
    retry_after,
    to_application_error,
)
from models.errors import ErrorCode, OmsError

HARD = DeclineCategory.HARD
SOFT = DeclineCategory.SOFT
AUTH = DeclineCategory.AUTHENTICATION_REQUIRED


def card_error(
    code: str = "card_declined",
    decline_code: str | None = None,
    advice_code: str | None = None,
    charge: str | None = "ch_123",
    message: str = "Your card was declined.",
) -> stripe.CardError:
    """A CardError as the SDK builds it from a 402 response."""
    body: dict[str, Any] = {"type": "card_error", "code": code, "message": message}
    if decline_code is not None:
        body["decline_code"] = decline_code
    if advice_code is not None:
        body["advice_code"] = advice_code
    if charge is not None:
        body["charge"] = charge
    return stripe.CardError(
        message,
        None,
        code,
        http_body=None,
        http_status=402,
        json_body={"error": body},
        headers={"request-id": "req_1"},
    )


def rate_limit_error(headers: dict[str, str] | None = None) -> stripe.RateLimitError:
    body = {"error": {"type": "invalid_request_error", "message": "Too many requests"}}
    return stripe.RateLimitError("Too many requests", None, 429, body, headers or {})


# --- classify_decline ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "decline_code", "advice_code", "expected"),
    [
        # issuer-flagged and revoked cards never pay again
        ("card_declined", "stolen_card", None, HARD),
        ("card_declined", "lost_card", None, HARD),
        ("card_declined", "pickup_card", None, HARD),
        ("card_declined", "fraudulent", None, HARD),
        ("card_declined", "restricted_card", None, HARD),
        ("card_declined", "do_not_try_again", None, HARD),
        ("card_declined", "revocation_of_authorization", None, HARD),
        ("card_declined", "invalid_account", None, HARD),
        ("card_declined", "card_not_supported", None, HARD),
        ("card_declined", "currency_not_supported", None, HARD),
        # wrong or stale card data: the error ``code`` alone is enough
        ("expired_card", None, None, HARD),
        ("incorrect_number", None, None, HARD),
        ("incorrect_cvc", None, None, HARD),
        ("card_declined", "expired_card", None, HARD),
        # may pay later
        ("card_declined", "insufficient_funds", None, SOFT),
        ("card_declined", "processing_error", None, SOFT),
        ("processing_error", None, None, SOFT),
        ("card_declined", "issuer_not_available", None, SOFT),
        ("card_declined", "try_again_later", None, SOFT),
        ("card_declined", "generic_decline", None, SOFT),
        ("card_declined", "do_not_honor", None, SOFT),
        ("card_declined", "card_velocity_exceeded", None, SOFT),
        ("card_declined", None, None, SOFT),  # what localstripe sends
        # the cardholder has to authenticate
        ("authentication_required", "authentication_required", None, AUTH),
        ("authentication_required", None, None, AUTH),
        ("card_declined", "authentication_required", None, AUTH),
        ("payment_intent_authentication_failure", None, None, AUTH),
        # network advice forbidding a retry wins over a soft decline code...
        ("card_declined", "insufficient_funds", "do_not_try_again", HARD),
        ("card_declined", "generic_decline", "confirm_card_data", HARD),
        # ...but "try later" advice does not soften a hard one
        ("card_declined", "stolen_card", "try_again_later", HARD),
        # unknown codes are treated like generic_decline, as Stripe advises
        ("card_declined", "some_future_code", None, SOFT),
        ("brand_new_code", None, None, SOFT),
        (None, None, None, SOFT),
        (None, "some_future_code", "do_not_try_again", HARD),
    ],
)
def test_classify_decline_follows_the_table(
    code: str | None, decline_code: str | None, advice_code: str | None, expected: DeclineCategory
) -> None:
    assert classify_decline(code, decline_code, advice_code) is expected


def test_decline_code_is_more_specific_than_code() -> None:
    # ``code`` says "declined, soft"; the issuer's decline_code says the card was stolen.
    assert classify_decline("card_declined", "stolen_card") is HARD
    # A hard ``code`` stays hard when the decline_code is unknown.
    assert classify_decline("expired_card", "some_future_code") is HARD


# --- to_application_error -----------------------------------------------------------------------


def test_card_error_becomes_non_retryable_payment_declined_with_details() -> None:
    err = to_application_error(card_error(decline_code="insufficient_funds", advice_code="x"))

    assert isinstance(err, ApplicationError)
    assert err.type == ErrorCode.PAYMENT_DECLINED
    assert err.non_retryable is True
    assert err.category is ApplicationErrorCategory.BENIGN
    (details,) = err.details
    assert details == {
        "code": "card_declined",
        "decline_code": "insufficient_funds",
        "advice_code": "x",
        "category": "soft",
        "charge_id": "ch_123",
        "message": "Your card was declined.",
    }


def test_hard_card_error_is_classified_hard() -> None:
    err = to_application_error(card_error(decline_code="stolen_card"))

    assert isinstance(err, ApplicationError)
    assert err.details[0]["category"] == "hard"


def test_localstripe_style_card_error_without_decline_code_is_soft() -> None:
    # localstripe answers 402 with type invalid_request_error and only code=card_declined.
    exc = stripe.CardError(
        "Your card was declined.",
        None,
        "card_declined",
        http_status=402,
        json_body={
            "error": {
                "type": "invalid_request_error",
                "code": "card_declined",
                "charge": "ch_9",
                "message": "Your card was declined.",
            }
        },
    )
    err = to_application_error(exc)

    assert isinstance(err, ApplicationError)
    assert err.type == ErrorCode.PAYMENT_DECLINED
    assert err.details[0]["category"] == "soft"
    assert err.details[0]["decline_code"] is None
    assert err.details[0]["charge_id"] == "ch_9"


def test_rate_limit_with_retry_after_seconds_sets_next_retry_delay() -> None:
    err = to_application_error(rate_limit_error({"Retry-After": "7"}))

    assert isinstance(err, ApplicationError)
    assert err.type == ErrorCode.GATEWAY_UNAVAILABLE
    assert err.non_retryable is False
    assert err.next_retry_delay == timedelta(seconds=7)


def test_rate_limit_header_name_is_case_insensitive() -> None:
    err = to_application_error(rate_limit_error({"retry-after": "1.5"}))

    assert isinstance(err, ApplicationError)
    assert err.next_retry_delay == timedelta(seconds=1.5)


def test_rate_limit_without_retry_after_is_returned_unchanged() -> None:
    exc = rate_limit_error()

    assert to_application_error(exc) is exc


def test_retry_after_accepts_an_http_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

    assert retry_after({"Retry-After": "Thu, 01 Jan 2026 12:00:30 GMT"}, now=now) == timedelta(
        seconds=30
    )
    assert retry_after({"Retry-After": "Thu, 01 Jan 2026 11:00:00 GMT"}, now=now) == timedelta(0)
    assert retry_after({"Retry-After": "soon"}, now=now) is None
    assert retry_after({"Retry-After": "-5"}, now=now) == timedelta(0)
    assert retry_after(None) is None


@pytest.mark.parametrize(
    "exc",
    [
        stripe.APIConnectionError("Connection refused", should_retry=True),
        stripe.APIError("Internal error", None, 500, {"error": {"type": "api_error"}}, {}),
        stripe.APIError("Bad gateway", None, 502, None, {}),
        stripe.APIError("No status", None, None, None, {}),
        ValueError("not a gateway error"),
        stripe.SignatureVerificationError("bad signature", "t=1,v1=x"),
    ],
    ids=["connection", "api-500", "api-502", "api-no-status", "value-error", "unknown-stripe"],
)
def test_transient_and_unknown_errors_are_returned_unchanged(exc: Exception) -> None:
    assert to_application_error(exc) is exc


@pytest.mark.parametrize(
    "exc",
    [
        stripe.AuthenticationError(
            "Invalid API Key provided: sk_test_****abcd",
            None,
            401,
            {"error": {"type": "invalid_request_error"}},
            {},
        ),
        stripe.PermissionError(
            "The provided key does not have access", None, 403, {"error": {}}, {}
        ),
    ],
    ids=["authentication", "permission"],
)
def test_credential_errors_are_retried_as_a_gateway_outage(exc: Exception) -> None:
    # A revoked or rotated key heals when ops fix it: the charge waits, it never fails or declines.
    err = to_application_error(exc)

    assert isinstance(err, ApplicationError)
    assert err.type == ErrorCode.GATEWAY_UNAVAILABLE
    assert err.non_retryable is False
    assert "sk_test" not in str(err) and "sk_test" not in repr(err.details)


def test_invalid_request_is_non_retryable_invalid_request() -> None:
    exc = stripe.InvalidRequestError(
        "No such payment_intent: 'pi_x'",
        "intent",
        "resource_missing",
        http_status=404,
        json_body={"error": {"type": "invalid_request_error", "code": "resource_missing"}},
    )
    err = to_application_error(exc)

    assert isinstance(err, ApplicationError)
    assert err.type == ErrorCode.INVALID_REQUEST
    assert err.non_retryable is True
    assert err.details[0]["code"] == "resource_missing"
    assert err.details[0]["param"] == "intent"


def test_idempotency_conflict_is_non_retryable_invalid_request() -> None:
    exc = stripe.IdempotencyError(
        "Keys for idempotent requests can only be used with the same parameters",
        None,
        400,
        {"error": {"type": "idempotency_error"}},
        {},
    )
    err = to_application_error(exc)

    assert isinstance(err, ApplicationError)
    assert err.type == ErrorCode.INVALID_REQUEST
    assert err.non_retryable is True


def test_oms_error_becomes_application_error_typed_by_its_code() -> None:
    err = to_application_error(OmsError(ErrorCode.PAYMENT_METHOD_INVALID, "No such card."))

    assert isinstance(err, ApplicationError)
    assert err.type == ErrorCode.PAYMENT_METHOD_INVALID
    assert err.non_retryable is True
    assert err.message == "No such card."


# --- gateway_call ---------------------------------------------------------------------------------


def test_gateway_call_raises_the_mapped_error_chained_to_the_original() -> None:
    original = card_error(decline_code="lost_card")

    with pytest.raises(ApplicationError) as info, gateway_call():
        raise original

    assert info.value.type == ErrorCode.PAYMENT_DECLINED
    assert info.value.__cause__ is original


def test_gateway_call_lets_transient_errors_through_untouched() -> None:
    original = stripe.APIConnectionError("Connection refused")

    with pytest.raises(stripe.APIConnectionError) as info, gateway_call():
        raise original

    assert info.value is original


def test_gateway_call_as_decorator_on_a_sync_function() -> None:
    @gateway_call()
    def charge(fail: bool) -> str:
        if fail:
            raise card_error(decline_code="insufficient_funds")
        return "ok"

    assert charge(False) == "ok"
    assert charge.__name__ == "charge"
    with pytest.raises(ApplicationError) as info:
        charge(True)
    assert info.value.details[0]["category"] == "soft"


async def test_gateway_call_as_decorator_on_an_async_function() -> None:
    @gateway_call()
    async def charge(fail: bool) -> str:
        if fail:
            raise card_error(code="authentication_required", decline_code="authentication_required")
        return "ok"

    assert await charge(False) == "ok"
    with pytest.raises(ApplicationError) as info:
        await charge(True)
    assert info.value.details[0]["category"] == "authentication_required"


async def test_gateway_call_as_async_context_manager() -> None:
    with pytest.raises(ApplicationError) as info:
        async with gateway_call():
            raise OmsError(ErrorCode.INVALID_AMOUNT, "The amount must be positive.")

    assert info.value.type == ErrorCode.INVALID_AMOUNT
