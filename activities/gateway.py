"""The payment gateway port: Stripe through its official SDK; the only module importing ``stripe``.

``StripeGateway`` wraps one ``stripe.StripeClient`` (never the global ``stripe.api_key``) and
returns small frozen models, so nothing above this module sees a Stripe object. The same code talks
to real Stripe in production and to ``localstripe`` locally and in tests (``api_base``).

Money moves only in :meth:`StripeGateway.confirm_payment_intent`; creating an intent only records
the attempt, so the caller can store the intent id before any money can move. Every method is safe
to call twice: Stripe idempotency keys cover transport retries within 24 hours, and the methods
that move money or create objects also look at the gateway's own state first, because
idempotency keys expire (a dunning retry can come days later) and localstripe ignores them.

Methods are synchronous: activities run them in a thread pool. Stripe exceptions propagate;
activities wrap their bodies in :func:`activities.gateway_errors.gateway_call`, which maps them
(declines and bad requests become non-retryable ``ApplicationError`` s, transient failures are
left for Temporal's retry policy).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Final, cast

import stripe
import structlog
from pydantic import BaseModel, ConfigDict, Field

from activities.gateway_errors import DeclineCategory, classify_decline
from models.errors import ErrorCode, OmsError

if TYPE_CHECKING:
    from stripe.params import (
        CustomerCreateParams,
        PaymentIntentConfirmParams,
        PaymentIntentCreateParams,
        RefundCreateParams,
        SetupIntentCreateParams,
    )

log = structlog.get_logger(__name__)

_LIVE_KEY_PREFIXES: Final = ("sk_live_", "rk_live_")

# Statuses where confirming again would be wrong: the payment went through, is on its way, or the
# intent is closed. ``requires_capture`` means the money is authorised.
_SETTLED_STATUSES: Final = frozenset({"succeeded", "processing", "requires_capture", "canceled"})

# Refunds in these states count against what is left to refund.
_LIVE_REFUND_STATUSES: Final = frozenset({"succeeded", "pending", "requires_action"})

METADATA_IDEMPOTENCY_KEY: Final = "idempotency_key"

_MAX_KEY_LEN: Final = 240


class Decline(BaseModel):
    """Why a payment attempt failed, as reported by the gateway."""

    model_config = ConfigDict(frozen=True)

    code: str
    """Stripe error code (``card_declined``, ``expired_card``, ``authentication_required``, ...)."""
    decline_code: str | None
    """The issuer's reason when given (``insufficient_funds``, ...); localstripe never sends one."""
    message: str
    """Stripe's message, fit to show the customer. Never contains card data."""
    category: DeclineCategory
    charge_id: str | None
    advice_code: str | None = None
    """Stripe's retry advice (``try_again_later``, ``do_not_try_again``, ...) when given."""


class IntentInfo(BaseModel):
    """A PaymentIntent as the rest of the system sees it."""

    model_config = ConfigDict(frozen=True)

    id: str
    status: str
    """Stripe's status: ``requires_confirmation``, ``succeeded``, ``requires_payment_method``..."""
    amount_minor: int
    currency: str
    """Upper-case ISO 4217 code."""
    customer_id: str | None
    payment_method_id: str | None
    metadata: dict[str, str] = Field(default_factory=dict)
    decline: Decline | None = None
    """Filled when the last attempt failed (``requires_payment_method``) or needs the customer to
    authenticate (``requires_action``)."""
    latest_charge_id: str | None = None


class SetupInfo(BaseModel):
    """A SetupIntent (a card saved without a charge) as the rest of the system sees it."""

    model_config = ConfigDict(frozen=True)

    id: str
    status: str
    """Stripe's status: ``succeeded``, ``requires_action`` (3-D Secure), ``requires_payment_method``
    (declined), ``canceled`` (localstripe, after a decline)..."""
    payment_method_id: str | None
    """The saved card (a test id such as ``pm_card_visa`` becomes a real ``pm_`` object)."""
    decline: Decline | None = None
    """Filled when the card was declined or needs the cardholder to authenticate."""


class RefundInfo(BaseModel):
    """A refund of (part of) a payment."""

    model_config = ConfigDict(frozen=True)

    id: str
    intent_id: str
    amount_minor: int
    currency: str
    """Upper-case ISO 4217 code."""
    status: str
    """Stripe's refund status: ``pending``, ``succeeded``, ``failed``, ``canceled``..."""


class PaymentMethodInfo(BaseModel):
    """The displayable facts of a saved card (never the number)."""

    model_config = ConfigDict(frozen=True)

    id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    customer_id: str | None


def luhn_ok(number: str) -> bool:
    """True when the digit string passes the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _id_of(value: object) -> str | None:
    """The id of an expandable field: a string id, an expanded object, or None."""
    if value is None or isinstance(value, str):
        return value
    found = getattr(value, "id", None)
    return found if isinstance(found, str) else None


def _opt_str(obj: object, name: str) -> str | None:
    """A string attribute of a Stripe object, None when absent or empty.

    localstripe omits fields real Stripe always sends (e.g. ``decline_code``), and a missing field
    on a ``StripeObject`` raises ``AttributeError``.
    """
    value = getattr(obj, name, None) if obj is not None else None
    return value if isinstance(value, str) and value else None


def _plain_metadata(value: object) -> dict[str, str]:
    if isinstance(value, stripe.StripeObject):
        value = value.to_dict()
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _decline_from(error: object, fallback: stripe.CardError | None = None) -> Decline | None:
    """A Decline from a PaymentIntent's ``last_payment_error`` and/or the CardError just raised."""
    if error is None and fallback is None:
        return None
    fb = fallback.error if fallback is not None else None
    code = _opt_str(error, "code") or (fallback.code if fallback else None) or _opt_str(fb, "code")
    decline_code = _opt_str(error, "decline_code") or _opt_str(fb, "decline_code")
    advice_code = _opt_str(error, "advice_code") or _opt_str(fb, "advice_code")
    message = (
        _opt_str(error, "message")
        or (fallback.user_message if fallback else None)
        or "The payment was declined."
    )
    return Decline(
        code=code or "card_declined",
        decline_code=decline_code,
        message=message,
        category=classify_decline(code, decline_code, advice_code),
        charge_id=_opt_str(error, "charge") or _opt_str(fb, "charge"),
        advice_code=advice_code,
    )


def _intent_info(
    intent: stripe.PaymentIntent, card_error: stripe.CardError | None = None
) -> IntentInfo:
    decline: Decline | None = None
    if intent.status == "requires_payment_method":
        decline = _decline_from(getattr(intent, "last_payment_error", None), card_error)
    elif intent.status == "requires_action":
        # Off-session, real Stripe fails such a confirm with ``authentication_required`` instead;
        # localstripe parks the intent in requires_action. Both mean "the customer must come back".
        decline = Decline(
            code="authentication_required",
            decline_code=None,
            message="The card issuer requires the cardholder to authenticate this payment.",
            category=DeclineCategory.AUTHENTICATION_REQUIRED,
            charge_id=None,
        )
    return IntentInfo(
        id=intent.id,
        status=str(intent.status),
        amount_minor=int(intent.amount),
        currency=str(intent.currency).upper(),
        customer_id=_id_of(intent.customer),
        payment_method_id=_id_of(intent.payment_method),
        metadata=_plain_metadata(intent.metadata),
        decline=decline,
        latest_charge_id=_id_of(getattr(intent, "latest_charge", None)),
    )


def _setup_info(setup: stripe.SetupIntent, card_error: stripe.CardError | None = None) -> SetupInfo:
    decline: Decline | None = None
    status = str(setup.status)
    error = getattr(setup, "last_setup_error", None)
    if status == "requires_action":
        decline = Decline(
            code="authentication_required",
            decline_code=None,
            message="The card issuer requires the cardholder to authenticate this card.",
            category=DeclineCategory.AUTHENTICATION_REQUIRED,
            charge_id=None,
        )
    elif card_error is not None or error is not None or status == "canceled":
        # Real Stripe leaves a declined SetupIntent in requires_payment_method with
        # last_setup_error; localstripe cancels it and says nothing more.
        decline = _decline_from(error, card_error) or Decline(
            code="card_declined",
            decline_code=None,
            message="The card was declined.",
            category=classify_decline("card_declined", None),
            charge_id=None,
        )
    return SetupInfo(
        id=setup.id,
        status=status,
        payment_method_id=_id_of(setup.payment_method),
        decline=decline,
    )


def _refund_info(refund: stripe.Refund, intent_id: str) -> RefundInfo:
    return RefundInfo(
        id=refund.id,
        intent_id=_id_of(getattr(refund, "payment_intent", None)) or intent_id,
        amount_minor=int(refund.amount),
        currency=str(refund.currency).upper(),
        status=refund.status or "pending",
    )


def _is_not_found(exc: stripe.InvalidRequestError) -> bool:
    # Real Stripe says code=resource_missing; localstripe sends a bare 404 without a code.
    return exc.http_status == 404 or exc.code == "resource_missing"


def _check_metadata(metadata: dict[str, str]) -> None:
    # Stripe's limits; checked here so the caller gets a clear error before any request.
    if len(metadata) > 50:
        raise OmsError(ErrorCode.INVALID_REQUEST, "Stripe metadata allows at most 50 keys.")
    for key, value in metadata.items():
        if not key or len(key) > 40 or "[" in key or "]" in key:
            raise OmsError(
                ErrorCode.INVALID_REQUEST,
                f"Metadata key {key!r} must be 1-40 characters without square brackets.",
            )
        if len(value) > 500:
            raise OmsError(
                ErrorCode.INVALID_REQUEST, f"Metadata value for {key!r} exceeds 500 characters."
            )


def _check_idempotency_key(key: str) -> None:
    # Stripe allows 255 characters; the margin leaves room for the ":confirm" suffix.
    if not key or len(key) > _MAX_KEY_LEN:
        raise OmsError(
            ErrorCode.INVALID_REQUEST,
            f"An idempotency key of 1-{_MAX_KEY_LEN} characters is required.",
        )


class StripeGateway:
    """Stripe through one ``StripeClient``; real Stripe or localstripe depending on ``api_base``.

    Args:
        api_key: Secret or restricted key. Never logged.
        api_base: Base URL of a Stripe-compatible server (localstripe); None for real Stripe.
        max_network_retries: SDK-level retries of connection errors, 409 and 5xx (with the same
            idempotency key). Temporal retries the activity on top of that.
        timeout_s: Per-request HTTP timeout.
    """

    def __init__(
        self,
        api_key: str,
        api_base: str | None = None,
        max_network_retries: int = 2,
        timeout_s: float = 20,
    ) -> None:
        if not api_key:
            raise OmsError(ErrorCode.INVALID_REQUEST, "A Stripe API key is required.")
        self._live_key = api_key.startswith(_LIVE_KEY_PREFIXES)
        self._api_base = api_base.rstrip("/") if api_base else None
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": self._api_base} if self._api_base else {},
            max_network_retries=max_network_retries,
            http_client=stripe.RequestsClient(timeout=timeout_s),
        )

    @property
    def endpoint(self) -> str:
        """Where requests go (for logs and health output; contains no secret)."""
        return self._api_base or "https://api.stripe.com"

    # --- plumbing -----------------------------------------------------------------------------

    def _retrieve_intent(self, intent_id: str) -> stripe.PaymentIntent:
        return self._client.v1.payment_intents.retrieve(intent_id)

    # --- health ---------------------------------------------------------------------------------

    def ping(self) -> None:
        """A cheap authenticated call (balance retrieve) for health checks.

        Raises:
            OmsError: ``GATEWAY_UNAVAILABLE`` with a sentence saying what failed.
        """
        try:
            self._client.v1.balance.retrieve()
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            raise OmsError(
                ErrorCode.GATEWAY_UNAVAILABLE,
                f"Payment gateway at {self.endpoint} refused the configured API key.",
            ) from exc
        except stripe.StripeError as exc:
            raise OmsError(
                ErrorCode.GATEWAY_UNAVAILABLE,
                f"Payment gateway at {self.endpoint} is not answering: {exc.user_message}",
            ) from exc

    # --- customers ----------------------------------------------------------------------------

    def create_customer(self, *, email: str, metadata: dict[str, str], idempotency_key: str) -> str:
        """Create a gateway customer, or return the one an earlier call with this key created.

        Args:
            email: The customer's e-mail address.
            metadata: Our identifiers (e.g. the OMS customer id); ``idempotency_key`` is added.
            idempotency_key: Stable for the business operation (e.g. derived from the customer id).

        Returns:
            The gateway customer id (``cus_...``).
        """
        _check_idempotency_key(idempotency_key)
        meta = {**metadata, METADATA_IDEMPOTENCY_KEY: idempotency_key}
        _check_metadata(meta)
        # The key expires after 24h at Stripe and localstripe ignores it: look first.
        existing = self._client.v1.customers.list(params={"email": email, "limit": 100})
        for customer in existing.auto_paging_iter():
            if _plain_metadata(customer.metadata).get(METADATA_IDEMPOTENCY_KEY) == idempotency_key:
                log.info("gateway_customer_reused", gateway_customer_id=customer.id)
                return customer.id
        params: CustomerCreateParams = {"email": email, "metadata": meta}
        customer = self._client.v1.customers.create(
            params=params, options={"idempotency_key": idempotency_key}
        )
        log.info("gateway_customer_created", gateway_customer_id=customer.id)
        return customer.id

    # --- payment methods ------------------------------------------------------------------------

    def create_test_payment_method(
        self,
        card_number: str,
        exp_month: int = 12,
        exp_year: int | None = None,
        cvc: str = "123",
        *,
        today: date | None = None,
    ) -> str:
        """Tokenize a raw test card number. Only for the local fake gateway.

        Raw card numbers must never travel from our servers to real Stripe (that would put us in
        PCI DSS scope): real cards are tokenized in the customer's browser by Stripe.js. So this
        refuses live keys and the real Stripe endpoint outright, before looking at the number.

        Args:
            card_number: Digits only, 12-19 long, passing Luhn (e.g. ``4242424242424242``).
            exp_month: 1-12.
            exp_year: Four-digit year; defaults to three years after ``today``.
            cvc: Three or four digits.
            today: The date the default expiry is computed from (UTC today when None).

        Returns:
            The payment method id (``pm_...``).

        Raises:
            OmsError: ``LIVE_KEY_REFUSED`` for a live key or the real endpoint; ``INVALID_REQUEST``
                for a malformed number, month, year or CVC.
        """
        if self._live_key or self._api_base is None:
            raise OmsError(
                ErrorCode.LIVE_KEY_REFUSED,
                "Raw card numbers are accepted only by the local fake gateway (a test key and an "
                "api_base); with real Stripe, collect cards with Stripe.js and pass the pm_ id.",
            )
        if not (card_number.isascii() and card_number.isdigit() and 12 <= len(card_number) <= 19):
            raise OmsError(
                ErrorCode.INVALID_REQUEST, "A card number must be 12 to 19 digits, nothing else."
            )
        if not luhn_ok(card_number):
            raise OmsError(
                ErrorCode.INVALID_REQUEST, "The card number fails its checksum; check for typos."
            )
        if exp_year is None:
            exp_year = (today or datetime.now(UTC).date()).year + 3
        if not 1 <= exp_month <= 12:
            raise OmsError(ErrorCode.INVALID_REQUEST, "The expiry month must be 1 to 12.")
        if not 2000 <= exp_year <= 2099:
            raise OmsError(ErrorCode.INVALID_REQUEST, "The expiry year must be a four-digit year.")
        if not (cvc.isascii() and cvc.isdigit() and len(cvc) in (3, 4)):
            raise OmsError(ErrorCode.INVALID_REQUEST, "The CVC must be 3 or 4 digits.")
        pm = self._client.v1.payment_methods.create(
            params={
                "type": "card",
                "card": {
                    "number": card_number,
                    "exp_month": exp_month,
                    "exp_year": exp_year,
                    "cvc": cvc,
                },
            }
        )
        # last4 is not cardholder data under PCI DSS; the number itself is never logged.
        log.info("test_payment_method_created", payment_method_id=pm.id, last4=card_number[-4:])
        return pm.id

    def retrieve_payment_method(self, pm_id: str) -> PaymentMethodInfo:
        """The displayable facts of a card payment method.

        Raises:
            OmsError: ``PAYMENT_METHOD_INVALID`` when it does not exist or is not a card.
        """
        try:
            pm = self._client.v1.payment_methods.retrieve(pm_id)
        except stripe.InvalidRequestError as exc:
            if _is_not_found(exc):
                raise OmsError(
                    ErrorCode.PAYMENT_METHOD_INVALID, f"Payment method {pm_id!r} does not exist."
                ) from exc
            raise
        card = getattr(pm, "card", None)
        if pm.type != "card" or card is None:
            raise OmsError(
                ErrorCode.PAYMENT_METHOD_INVALID, f"Payment method {pm_id!r} is not a card."
            )
        return PaymentMethodInfo(
            id=pm.id,
            brand=str(card.brand),
            last4=str(card.last4),
            exp_month=int(card.exp_month),
            exp_year=int(card.exp_year),
            customer_id=_id_of(pm.customer),
        )

    def attach_payment_method(self, pm_id: str, customer_id: str) -> None:
        """Attach a payment method to a customer; a no-op when it is already theirs.

        Raises:
            OmsError: ``PAYMENT_METHOD_INVALID`` when it does not exist or belongs to another
                customer.
            stripe.CardError: the issuer declined the card while saving it (mapped to
                ``PAYMENT_DECLINED`` by ``gateway_call``).
        """
        current = self.retrieve_payment_method(pm_id)
        if current.customer_id == customer_id:
            return
        if current.customer_id is not None:
            raise OmsError(
                ErrorCode.PAYMENT_METHOD_INVALID,
                f"Payment method {pm_id!r} is saved for another customer; add the card again.",
            )
        self._client.v1.payment_methods.attach(pm_id, params={"customer": customer_id})
        log.info(
            "payment_method_attached", payment_method_id=pm_id, gateway_customer_id=customer_id
        )

    # --- saving a card without a charge (SetupIntents) ------------------------------------------

    def create_setup_intent(
        self, *, customer_id: str, metadata: dict[str, str], idempotency_key: str
    ) -> str:
        """Create a SetupIntent for a customer's card (off-session use later); its ``seti_`` id.

        The payment method goes on :meth:`confirm_setup_intent` (localstripe accepts it only
        there). Nothing is charged; a repeat within Stripe's idempotency window returns the same
        intent (localstripe ignores keys: a repeat there makes another one, which costs nothing).
        """
        _check_idempotency_key(idempotency_key)
        meta = {**metadata, METADATA_IDEMPOTENCY_KEY: idempotency_key}
        _check_metadata(meta)
        params: dict[str, Any] = {
            "customer": customer_id,
            "usage": "off_session",
            "payment_method_types": ["card"],
            "metadata": meta,
        }
        setup = self._client.v1.setup_intents.create(
            params=cast("SetupIntentCreateParams", params),
            options={"idempotency_key": idempotency_key},
        )
        log.info("setup_intent_created", setup_intent_id=setup.id, idempotency_key=idempotency_key)
        return setup.id

    def confirm_setup_intent(self, intent_id: str, payment_method_id: str) -> SetupInfo:
        """Confirm a SetupIntent with a card: the issuer validates it, nothing is charged.

        Safe to repeat: an intent that already has an outcome (saved, declined, waiting for
        3-D Secure) is reported as it is, never confirmed again. A decline is not raised: it
        comes back with ``decline`` filled, classified like a payment's.

        Raises:
            OmsError: ``PAYMENT_METHOD_INVALID`` when the payment method does not exist.
        """
        setup = self._client.v1.setup_intents.retrieve(intent_id)
        if str(setup.status) not in ("requires_payment_method", "requires_confirmation") or (
            getattr(setup, "last_setup_error", None) is not None
        ):
            log.info("setup_intent_confirm_skipped", setup_intent_id=intent_id, status=setup.status)
            return _setup_info(setup)
        try:
            setup = self._client.v1.setup_intents.confirm(
                intent_id, params={"payment_method": payment_method_id}
            )
        except stripe.CardError as exc:
            info = _setup_info(self._client.v1.setup_intents.retrieve(intent_id), card_error=exc)
            log.info(
                "setup_intent_declined",
                setup_intent_id=intent_id,
                code=info.decline.code if info.decline else exc.code,
                category=info.decline.category if info.decline else None,
            )
            return info
        except stripe.InvalidRequestError as exc:
            if _is_not_found(exc) or getattr(exc, "param", None) == "payment_method":
                raise OmsError(
                    ErrorCode.PAYMENT_METHOD_INVALID,
                    f"Payment method {payment_method_id!r} does not exist or cannot be saved; "
                    "add the card again.",
                ) from exc
            raise
        info = _setup_info(setup)
        log.info("setup_intent_confirmed", setup_intent_id=intent_id, status=info.status)
        return info

    # --- payments -------------------------------------------------------------------------------

    def create_payment_intent(
        self,
        *,
        amount_minor: int,
        currency: str,
        customer_id: str,
        payment_method_id: str,
        idempotency_key: str,
        metadata: dict[str, str],
        description: str | None = None,
    ) -> IntentInfo:
        """Create a PaymentIntent without confirming it: no money moves until confirm.

        Args:
            amount_minor: Amount in the currency's minor units, passed through unchanged (cents,
                yen for JPY, fils for KWD).
            currency: ISO 4217 code, any case.
            customer_id: The gateway customer (``cus_...``).
            payment_method_id: A card attached to that customer.
            idempotency_key: The attempt's key; sent to Stripe and stored in metadata so
                reconciliation can match intents to attempts after Stripe forgot the key.
            metadata: Our identifiers (invoice, subscription, attempt).
            description: Shown in the Stripe Dashboard.

        Returns:
            The intent, status ``requires_confirmation``.
        """
        if amount_minor <= 0:
            raise OmsError(ErrorCode.INVALID_AMOUNT, "The amount to charge must be positive.")
        if not (len(currency) == 3 and currency.isascii() and currency.isalpha()):
            raise OmsError(ErrorCode.INVALID_CURRENCY, f"{currency!r} is not an ISO 4217 code.")
        _check_idempotency_key(idempotency_key)
        meta = {**metadata, METADATA_IDEMPOTENCY_KEY: idempotency_key}
        _check_metadata(meta)
        params: dict[str, Any] = {
            "amount": amount_minor,
            "currency": currency.lower(),
            "customer": customer_id,
            "payment_method": payment_method_id,
            # Cards only: with Stripe's default automatic payment methods a server-side confirm
            # would also need a return_url for redirect-based methods we never use.
            "payment_method_types": ["card"],
            "metadata": meta,
            # No ``confirm``: it defaults to false, and ``off_session`` goes on the confirm call.
        }
        if description is not None:
            params["description"] = description
        intent = self._client.v1.payment_intents.create(
            # A plain dict: the SDK's typed params (API version 2026-10-28) no longer list
            # ``payment_method_types``.
            params=cast("PaymentIntentCreateParams", params),
            options={"idempotency_key": idempotency_key},
        )
        log.info(
            "payment_intent_created",
            intent_id=intent.id,
            amount_minor=amount_minor,
            currency=currency.upper(),
            idempotency_key=idempotency_key,
        )
        return _intent_info(intent)

    def retrieve_payment_intent(self, intent_id: str) -> IntentInfo:
        """The current state of a PaymentIntent."""
        return _intent_info(self._retrieve_intent(intent_id))

    def confirm_payment_intent(
        self, intent_id: str, *, idempotency_key: str, off_session: bool = True
    ) -> IntentInfo:
        """Confirm (charge) a PaymentIntent; safe to call again for the same intent.

        The intent is read first, and not confirmed again when the payment already succeeded, is
        processing, is authorised, was canceled, failed (its decline is returned: a failed intent
        is never re-confirmed; a new attempt creates a new intent with a new key) or waits for the
        customer to authenticate.

        ``off_session=True`` (the default) tells Stripe the customer is not present: a
        merchant-initiated charge of a saved card. Stripe then applies the SCA exemptions for such
        charges and, when the issuer insists on authentication, fails with
        ``authentication_required`` instead of waiting for a customer who is not there. Stripe
        accepts ``off_session`` on create only together with ``confirm=true``, which would move
        money at create time; so it goes here.

        A card decline is not raised: it comes back as status ``requires_payment_method`` with
        ``decline`` filled.

        The key sent to Stripe is ``idempotency_key + ":confirm"``. Stripe rejects a key reused
        for a different request (``IdempotencyError``), so without the suffix passing the
        attempt's key to both create and confirm, the natural thing to do, would fail in
        production only (localstripe ignores keys).

        Raises:
            OmsError: ``PAYMENT_METHOD_REQUIRED`` when the intent has no payment method.
        """
        _check_idempotency_key(idempotency_key)
        intent = self._retrieve_intent(intent_id)
        if not self._needs_confirm(intent):
            log.info("payment_intent_confirm_skipped", intent_id=intent_id, status=intent.status)
            return _intent_info(intent)
        params: PaymentIntentConfirmParams = {"off_session": True} if off_session else {}
        try:
            intent = self._client.v1.payment_intents.confirm(
                intent_id,
                params=params,
                options={"idempotency_key": f"{idempotency_key}:confirm"},
            )
        except stripe.CardError as exc:
            # The error body lacks the intent's new state; read it (requires_payment_method).
            info = _intent_info(self._retrieve_intent(intent_id), card_error=exc)
            log.info(
                "payment_intent_declined",
                intent_id=intent_id,
                code=info.decline.code if info.decline else exc.code,
                decline_code=info.decline.decline_code if info.decline else None,
                category=info.decline.category if info.decline else None,
            )
            return info
        except stripe.InvalidRequestError:
            # A concurrent confirm may have won the race (Stripe: payment_intent_unexpected_state;
            # localstripe: 400). If the intent has moved on, report where it is.
            after = self._retrieve_intent(intent_id)
            if self._needs_confirm(after):
                raise
            log.info("payment_intent_confirmed_elsewhere", intent_id=intent_id, status=after.status)
            return _intent_info(after)
        info = _intent_info(intent)
        log.info(
            "payment_intent_confirmed",
            intent_id=intent_id,
            status=info.status,
            category=info.decline.category if info.decline else None,
        )
        return info

    @staticmethod
    def _needs_confirm(intent: stripe.PaymentIntent) -> bool:
        """True when confirming is the next step; False when the attempt has an outcome."""
        status = intent.status
        if status in _SETTLED_STATUSES or status == "requires_action":
            return False
        if status == "requires_payment_method":
            if getattr(intent, "last_payment_error", None) is not None:
                return False  # failed: report the decline, never charge the same intent again
            raise OmsError(
                ErrorCode.PAYMENT_METHOD_REQUIRED,
                f"Payment {intent.id} has no payment method to charge; add a card first.",
            )
        return True

    def list_payment_intents(self, *, page_size: int = 100) -> Iterator[IntentInfo]:
        """Every PaymentIntent, page by page (for reconciliation).

        Filters are left out on purpose: localstripe implements none of them for this list.
        Real Stripe returns newest first; localstripe oldest first.
        """
        if not 1 <= page_size <= 100:
            raise OmsError(ErrorCode.INVALID_REQUEST, "page_size must be between 1 and 100.")
        page = self._client.v1.payment_intents.list(params={"limit": page_size})
        for intent in page.auto_paging_iter():
            yield _intent_info(intent)

    def refund(
        self, *, intent_id: str, amount_minor: int, idempotency_key: str, metadata: dict[str, str]
    ) -> RefundInfo:
        """Refund (part of) a succeeded payment; a repeat with the same key returns the first one.

        Args:
            intent_id: The succeeded PaymentIntent.
            amount_minor: Amount to give back, in minor units, at most what is left to refund.
            idempotency_key: Stable for the business operation (e.g. the credit note id).
            metadata: Our identifiers; ``idempotency_key`` is added.

        Raises:
            OmsError: ``INVALID_AMOUNT`` for a non-positive amount or more than is left;
                ``INVALID_REQUEST`` when the payment did not succeed.
        """
        if amount_minor <= 0:
            raise OmsError(ErrorCode.INVALID_AMOUNT, "The amount to refund must be positive.")
        _check_idempotency_key(idempotency_key)
        meta = {**metadata, METADATA_IDEMPOTENCY_KEY: idempotency_key}
        _check_metadata(meta)
        intent = self._retrieve_intent(intent_id)
        if intent.status != "succeeded":
            raise OmsError(
                ErrorCode.INVALID_REQUEST,
                f"Payment {intent_id} has status {intent.status}; only a succeeded payment can be "
                "refunded.",
            )
        # Look for an earlier refund with this key first: Stripe forgets keys after 24h and
        # localstripe ignores them, and a second refund would give the money back twice.
        refunded = 0
        listing = self._client.v1.refunds.list(params={"payment_intent": intent_id, "limit": 100})
        for existing in listing.auto_paging_iter():
            if _plain_metadata(existing.metadata).get(METADATA_IDEMPOTENCY_KEY) == idempotency_key:
                log.info("refund_reused", refund_id=existing.id, intent_id=intent_id)
                return _refund_info(existing, intent_id)
            if (existing.status or "pending") in _LIVE_REFUND_STATUSES:
                refunded += int(existing.amount)
        # Stripe enforces this too; localstripe does not, and the message here is clearer.
        remaining = int(intent.amount) - refunded
        if amount_minor > remaining:
            raise OmsError(
                ErrorCode.INVALID_AMOUNT,
                f"Cannot refund {amount_minor}: only {remaining} of payment {intent_id} is left "
                "to refund.",
            )
        params: RefundCreateParams = {
            "payment_intent": intent_id,
            "amount": amount_minor,
            "metadata": meta,
        }
        refund = self._client.v1.refunds.create(
            params=params, options={"idempotency_key": idempotency_key}
        )
        log.info(
            "refund_created",
            refund_id=refund.id,
            intent_id=intent_id,
            amount_minor=amount_minor,
            status=refund.status,
        )
        return _refund_info(refund, intent_id)
