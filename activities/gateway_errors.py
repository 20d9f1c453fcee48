"""Classification of payment-gateway errors: the one place that turns Stripe errors into outcomes.

Two questions are answered here and nowhere else:

* *What kind of decline is this?* :func:`classify_decline` maps Stripe's ``code`` /
  ``decline_code`` / ``advice_code`` to a :class:`DeclineCategory` that dunning policy acts on.
* *What should Temporal do with this exception?* :func:`to_application_error` turns a Stripe
  exception into a typed, non-retryable ``ApplicationError`` when retrying cannot help, and leaves
  transient errors (connection failures, 5xx) unchanged so the activity retry policy retries them.
  It is closed by default: an exception it does not recognise is returned unchanged.

:func:`gateway_call` applies the mapping around an activity body.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar, cast

import stripe
import structlog
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from models.errors import ErrorCode, OmsError

log = structlog.get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class DeclineCategory(StrEnum):
    """What a decline means for the next attempt.

    * ``hard``: the issuer will not approve this card (or these card details) again; retrying the
      same card is pointless and card networks fine merchants for it. Ask for a new card.
    * ``soft``: the issuer may approve later (funds, limits, outages, unspecified reasons); dunning
      may retry the same card on its schedule.
    * ``authentication_required``: the issuer wants the cardholder to authenticate (3-D Secure).
      An off-session retry cannot succeed; the customer has to come back on-session.
    """

    HARD = "hard"
    SOFT = "soft"
    AUTHENTICATION_REQUIRED = "authentication_required"


_H = DeclineCategory.HARD
_S = DeclineCategory.SOFT
_A = DeclineCategory.AUTHENTICATION_REQUIRED

# Stripe decline codes (https://docs.stripe.com/declines/codes) and the card-related error codes
# (https://docs.stripe.com/error-codes) share one table: a CardError carries ``code`` (e.g.
# ``card_declined``, ``expired_card``) and, for issuer declines, a more specific ``decline_code``.
# Grouping follows the networks' retry rules (Visa decline categories, Mastercard merchant advice
# codes): "issuer never approves" and "data is wrong" are hard; "cannot approve now" is soft.
_CATEGORY: Mapping[str, DeclineCategory] = {
    # --- authentication: only the cardholder, on-session, can fix these ---------------------------
    "authentication_required": _A,
    "payment_intent_authentication_failure": _A,  # 3-D Secure attempted and failed
    "offline_pin_required": _A,  # card-present: the card wants a PIN
    "online_or_offline_pin_required": _A,
    # --- hard: issuer flagged the card or the cardholder revoked us ------------------------------
    "stolen_card": _H,
    "lost_card": _H,
    "pickup_card": _H,
    "fraudulent": _H,
    "restricted_card": _H,
    "security_violation": _H,
    "merchant_blacklist": _H,
    "do_not_try_again": _H,  # the issuer says so in as many words
    "revocation_of_all_authorizations": _H,  # cardholder stopped all recurring charges
    "revocation_of_authorization": _H,  # ... or ours; retrying invites chargebacks
    "stop_payment_order": _H,
    # --- hard: the stored card details are wrong or stale; the same details fail again ----------
    "expired_card": _H,
    "incorrect_number": _H,
    "invalid_number": _H,
    "invalid_account": _H,
    "incorrect_cvc": _H,
    "invalid_cvc": _H,
    "incorrect_zip": _H,
    "invalid_expiry_month": _H,
    "invalid_expiry_year": _H,
    "new_account_information_available": _H,  # card reissued: get the new details
    # --- hard: this card can never pay this kind of charge ----------------------------------------
    "card_not_supported": _H,
    "currency_not_supported": _H,
    "transaction_not_allowed": _H,
    "service_not_allowed": _H,
    "not_permitted": _H,
    "invalid_amount": _H,  # same amount, same answer
    "testmode_decline": _H,  # a live card used with a test key
    "incorrect_pin": _H,  # card-present PIN problems need the cardholder
    "invalid_pin": _H,
    "pin_try_exceeded": _H,
    # --- soft: may succeed later with the same card --------------------------------------------
    "insufficient_funds": _S,
    "withdrawal_count_limit_exceeded": _S,
    "card_velocity_exceeded": _S,
    "processing_error": _S,
    "issuer_not_available": _S,
    "try_again_later": _S,
    "reenter_transaction": _S,
    "no_action_taken": _S,
    "approve_with_id": _S,
    "call_issuer": _S,
    "duplicate_transaction": _S,  # a retry days later is not a duplicate
    "card_decline_rate_limit_exceeded": _S,  # Stripe's own 24h throttle on repeated declines
    # Unspecified issuer refusals. Stripe's guidance for both is "contact the issuer", and the
    # networks place them in "cannot approve at this time" (Visa category 3), so the industry
    # (Stripe Smart Retries, Recurly, Chargebee) retries them on a dunning schedule.
    "do_not_honor": _S,
    "generic_decline": _S,
    "card_declined": _S,  # the ``code`` of every issuer decline; the decline_code says more
}

# Stripe's ``advice_code`` (https://docs.stripe.com/declines/card#retrying-issuer-declines) relays
# the network's merchant advice. "Do not try again" and "confirm card data" forbid retrying the same
# details whatever the decline code says (networks fine retries after them).
_ADVICE_FORBIDS_RETRY = frozenset({"do_not_try_again", "confirm_card_data"})


def classify_decline(
    code: str | None, decline_code: str | None, advice_code: str | None = None
) -> DeclineCategory:
    """Classify a card decline from Stripe's error fields.

    Precedence: authentication first (nothing but the cardholder helps), then the network's advice
    when it forbids a retry, then the specific ``decline_code``, then the generic ``code``.

    Unknown codes are ``soft``. Stripe documents that new decline codes may appear and advises
    treating an unrecognised one as ``generic_decline``. The costs are also lopsided: a soft
    decline wrongly classified gets a few more attempts on the bounded dunning schedule (and a
    network advice code still stops them), while a wrong ``hard`` drops a paying customer at once.

    Args:
        code: The error ``code`` (``card_declined``, ``expired_card``, ...), if any.
        decline_code: The issuer's ``decline_code`` (``insufficient_funds``, ...), if any.
        advice_code: Stripe's ``advice_code`` (``try_again_later``, ``do_not_try_again``, ...).

    Returns:
        The decline's category.
    """
    known = [_CATEGORY.get(c) for c in (decline_code, code) if c]
    if _A in known:
        return _A
    if advice_code in _ADVICE_FORBIDS_RETRY:
        return _H
    for category in known:
        if category is not None:
            return category
    return _S


def _error_field(exc: stripe.StripeError, name: str) -> str | None:
    """A string field of the error body (``decline_code``, ``charge``, ...), None when absent."""
    value = getattr(exc.error, name, None) if exc.error is not None else None
    return value if isinstance(value, str) and value else None


def decline_details(exc: stripe.CardError) -> dict[str, str | None]:
    """The decline fields of a CardError, JSON-friendly (safe to put in an ApplicationError)."""
    code = exc.code or _error_field(exc, "code")
    decline_code = _error_field(exc, "decline_code")
    advice_code = _error_field(exc, "advice_code")
    return {
        "code": code,
        "decline_code": decline_code,
        "advice_code": advice_code,
        "category": classify_decline(code, decline_code, advice_code).value,
        "charge_id": _error_field(exc, "charge"),
        "message": exc.user_message,
    }


def retry_after(
    headers: Mapping[str, str] | None, *, now: datetime | None = None
) -> timedelta | None:
    """The delay a ``Retry-After`` header asks for (seconds or an HTTP date), None if absent/bad."""
    if not headers:
        return None
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    try:
        return timedelta(seconds=max(0.0, float(value)))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(timedelta(0), when - (now or datetime.now(UTC)))


def to_application_error(exc: Exception) -> Exception:
    """Map a gateway exception to what the activity should raise.

    * ``OmsError`` (a business error raised by the gateway) -> non-retryable ``ApplicationError``
      whose type is its code.
    * ``stripe.CardError`` -> non-retryable ``ApplicationError(type=PAYMENT_DECLINED)`` with one
      details dict: code, decline_code, advice_code, category, charge_id, message.
    * ``stripe.RateLimitError`` -> retryable ``ApplicationError(type=GATEWAY_UNAVAILABLE)`` carrying
      ``next_retry_delay`` when the response had ``Retry-After``; otherwise unchanged.
    * ``stripe.APIConnectionError``, ``stripe.APIError`` -> unchanged, so the retry policy retries.
    * ``stripe.AuthenticationError`` / ``stripe.PermissionError`` -> retryable
      ``ApplicationError(type=GATEWAY_UNAVAILABLE)``: an outage until the key is fixed, never a
      decline and never a failed workflow.
    * ``stripe.InvalidRequestError`` / ``stripe.IdempotencyError`` -> non-retryable
      ``ApplicationError(type=INVALID_REQUEST)``: the same request gets the same answer.
    * Anything else -> unchanged (closed by default).

    ``GATEWAY_UNAVAILABLE`` (a rate limit, a rejected key) is always retryable: that type must not
    be listed in a retry policy's ``non_retryable_error_types``.

    Args:
        exc: The exception raised by a gateway call.

    Returns:
        The exception to raise instead (``exc`` itself when it should propagate as is).
    """
    if isinstance(exc, OmsError):
        return ApplicationError(
            exc.message, {"code": exc.code.value}, type=exc.code.value, non_retryable=True
        )
    if isinstance(exc, stripe.CardError):
        details = decline_details(exc)
        return ApplicationError(
            f"payment declined ({details['decline_code'] or details['code']}, "
            f"{details['category']}): {details['message']}",
            details,
            type=ErrorCode.PAYMENT_DECLINED.value,
            non_retryable=True,
            # A decline is a business outcome, not a fault: keep it out of error logs and metrics.
            category=ApplicationErrorCategory.BENIGN,
        )
    if isinstance(exc, stripe.RateLimitError):
        delay = retry_after(exc.headers)
        if delay is None:
            return exc
        return ApplicationError(
            f"payment gateway rate limit; retry after {delay.total_seconds():g}s",
            {"http_status": exc.http_status},
            type=ErrorCode.GATEWAY_UNAVAILABLE.value,
            non_retryable=False,
            next_retry_delay=delay,
        )
    if isinstance(exc, stripe.APIConnectionError | stripe.APIError):
        return exc
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        # A revoked or rotated key is an outage of ours, not the customer's decline: it heals when
        # the key is fixed, so the call is retried with back-off (the retry policy caps the
        # interval) and the subscription waits instead of failing. Stripe's message masks the key,
        # but it adds nothing an operator needs: keep it out.
        return ApplicationError(
            "payment gateway refused our credentials; check the configured Stripe API key",
            {"http_status": exc.http_status, "request_id": exc.request_id},
            type=ErrorCode.GATEWAY_UNAVAILABLE.value,
            non_retryable=False,
        )
    if isinstance(exc, stripe.InvalidRequestError | stripe.IdempotencyError):
        return ApplicationError(
            f"payment gateway rejected the request: {exc.user_message}",
            {
                "http_status": exc.http_status,
                "code": exc.code,
                "param": getattr(exc, "param", None),
                "request_id": exc.request_id,
            },
            type=ErrorCode.INVALID_REQUEST.value,
            non_retryable=True,
        )
    return exc


class _GatewayCall:
    """Context manager and decorator that re-raises gateway errors as mapped."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if not isinstance(exc, Exception):
            return False  # no error, or KeyboardInterrupt/CancelledError-like: never touch those
        mapped = to_application_error(exc)
        if mapped is exc:
            return False
        log.info(
            "gateway_error_mapped",
            error=type(exc).__name__,
            error_type=getattr(mapped, "type", None),
            non_retryable=getattr(mapped, "non_retryable", None),
        )
        raise mapped from exc

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        return self.__exit__(exc_type, exc, tb)

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(func):
            async_func = cast(Callable[..., Awaitable[Any]], func)

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with self:
                    return await async_func(*args, **kwargs)

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with self:
                return func(*args, **kwargs)

        return wrapper


def gateway_call() -> _GatewayCall:
    """Apply :func:`to_application_error` to errors raised inside the block or function.

    Usable as ``with gateway_call(): ...``, ``async with gateway_call(): ...`` or as a decorator
    (``@gateway_call()``) on a sync or async activity. Put it *inside* ``@activity.defn`` so the
    mapped error is what Temporal sees.
    """
    return _GatewayCall()
