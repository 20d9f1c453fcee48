"""``stripe-checkout``: Stripe's ``checkout.session.completed`` webhook event.

The ``Stripe-Signature`` header is verified first with Stripe's documented v1 scheme (HMAC-SHA256
of ``"{t}.{payload}"`` with the endpoint secret, hex, ``t=...,v1=...``, timestamps older than the
tolerance refused), implemented here so only ``activities/gateway.py`` imports ``stripe``; the
tests prove it agrees with the SDK's ``stripe.WebhookSignature``. An unsigned or wrongly signed
event raises ``OmsError(SIGNATURE_INVALID)``. Events of other types are valid but carry no order
(``ParsedPayload.ignored``).

Our Checkout integration puts the order terms in the session's ``metadata`` (``plan_id``,
``interval``, ``quantity``, ``payment_method_id``, ``timezone``, ``account_id``, ``trial_days``,
``anchor_day``); the payment method may instead come from an expanded ``setup_intent``.
Schema: ``models/channels/schemas/stripe_checkout.json``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.calendar import Interval
from models.errors import ErrorCode, OmsError
from models.orders import (
    AdapterContext,
    BillingMode,
    CanonicalOrder,
    Channel,
    ItemError,
    OrderHint,
    ParsedItem,
    ParsedPayload,
    dig,
    int_or_none,
    load_json,
    malformed_item,
    str_or_none,
)

WHAT = "stripe checkout event"
EVENT_TYPE = "checkout.session.completed"
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300
SIGNATURE_HEADER = "stripe-signature"
PAID = frozenset({"paid", "no_payment_required"})


# --- signatures ---------------------------------------------------------------------------


def compute_signature(payload: str, secret: str, timestamp: int) -> str:
    """Hex HMAC-SHA256 of ``"{timestamp}.{payload}"`` keyed with the endpoint secret."""
    signed = f"{timestamp}.{payload}".encode()
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(payload: str, secret: str, timestamp: int) -> str:
    """A ``Stripe-Signature`` header value for ``payload`` (for tests, tools and the bench)."""
    return f"t={timestamp},{SCHEME}={compute_signature(payload, secret, timestamp)}"


def verify_signature(
    payload: str,
    header: str | None,
    secret: str | None,
    now: float,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> int:
    """Check a ``Stripe-Signature`` header; returns its timestamp.

    Args:
        payload: The request body exactly as received (decoded as UTF-8).
        header: The ``Stripe-Signature`` header value.
        secret: The endpoint's signing secret (``whsec_...``).
        now: The current POSIX time (the receipt time when replaying a dead letter).
        tolerance_s: Refuse timestamps older than this many seconds.

    Raises:
        OmsError: ``SIGNATURE_INVALID`` saying what is wrong.
    """

    def refuse(why: str) -> OmsError:
        return OmsError(ErrorCode.SIGNATURE_INVALID, f"stripe-checkout event refused: {why}")

    if not secret or not secret.strip():
        raise refuse("no webhook secret is configured (set OMS_STRIPE_WEBHOOK_SECRET)")
    if not header:
        raise refuse("the Stripe-Signature header is missing")
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise refuse("the Stripe-Signature timestamp is not a number") from None
        elif key == SCHEME:
            signatures.append(value)
    if timestamp is None:
        raise refuse("the Stripe-Signature header has no timestamp (t=...)")
    if not signatures:
        raise refuse(f"the Stripe-Signature header has no {SCHEME} signature")
    expected = compute_signature(payload, secret, timestamp)
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise refuse("no signature matches the payload and the configured webhook secret")
    if tolerance_s and timestamp < now - tolerance_s:
        raise refuse(f"the signature timestamp {timestamp} is older than {tolerance_s} s")
    return timestamp


# --- payload ------------------------------------------------------------------------------


class StripeCustomerDetails(BaseModel):
    model_config = ConfigDict(extra="ignore")

    email: str | None = None


class StripeSetupIntent(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    payment_method: str | None = None


class StripeCheckoutSession(BaseModel):
    """The fields of a Checkout Session we read (Stripe sends many more; they are ignored)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(pattern=r"^cs_[A-Za-z0-9_]+$", max_length=200)
    object: Literal["checkout.session"]
    mode: Literal["payment", "setup", "subscription"]
    status: Literal["complete"] | None = None
    payment_status: Literal["paid", "no_payment_required", "unpaid"]
    customer: str | None = None
    customer_email: str | None = None
    customer_details: StripeCustomerDetails | None = None
    currency: str | None = Field(default=None, pattern=r"^[A-Za-z]{3}$")
    amount_total: int | None = None
    client_reference_id: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    setup_intent: str | StripeSetupIntent | None = None


class _SessionData(BaseModel):
    model_config = ConfigDict(extra="ignore")

    object: StripeCheckoutSession


class StripeCheckoutEvent(BaseModel):
    """A ``checkout.session.completed`` event, as posted to ``POST /orders/stripe-checkout``."""

    model_config = ConfigDict(extra="ignore", title="Stripe checkout.session.completed event")

    id: str = Field(pattern=r"^evt_[A-Za-z0-9_]+$")
    object: Literal["event"]
    type: Literal["checkout.session.completed"]
    created: int
    livemode: bool = False
    data: _SessionData


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    type: str


class _Terms(BaseModel):
    """The order terms our integration puts in the session metadata (all strings in Stripe)."""

    model_config = ConfigDict(extra="ignore")

    plan_id: str = Field(min_length=1, max_length=64)
    interval: Interval = Interval.MONTHLY
    quantity: int = Field(default=1, ge=1)
    payment_method_id: str | None = None
    timezone: str | None = None
    account_id: str | None = None
    trial_days: int | None = Field(default=None, ge=0)
    anchor_day: int | None = Field(default=None, ge=1, le=31)
    currency: str | None = None


def _hint(data: Any) -> OrderHint:
    meta = dig(data, "data", "object", "metadata")
    return OrderHint(
        plan_id=str_or_none(dig(meta, "plan_id")),
        interval=str_or_none(dig(meta, "interval")),
        currency=str_or_none(dig(data, "data", "object", "currency")),
        quantity=int_or_none(dig(meta, "quantity")),
        account_id=str_or_none(dig(meta, "account_id")),
        channel_order_id=str_or_none(dig(data, "data", "object", "id")),
    )


def parse(text: str, ctx: AdapterContext) -> ParsedPayload:
    """Verify the signature, then one completed Checkout Session -> one canonical order."""
    verify_signature(
        text,
        ctx.headers.get(SIGNATURE_HEADER),
        ctx.webhook_secret,
        ctx.now.timestamp(),
        ctx.signature_tolerance_s,
    )
    data = load_json(text, WHAT)
    hint = _hint(data)
    try:
        envelope = _Envelope.model_validate(data)
    except ValidationError as err:
        return ParsedPayload(
            channel=Channel.STRIPE_CHECKOUT, items=[malformed_item(err, WHAT, text, hint)]
        )
    if envelope.type != EVENT_TYPE:
        return ParsedPayload(
            channel=Channel.STRIPE_CHECKOUT,
            ignored=f"event {envelope.id} of type {envelope.type} carries no order",
        )
    try:
        event = StripeCheckoutEvent.model_validate(data)
    except ValidationError as err:
        return ParsedPayload(
            channel=Channel.STRIPE_CHECKOUT, items=[malformed_item(err, WHAT, text, hint)]
        )
    session = event.data.object
    try:
        terms = _Terms.model_validate(session.metadata)
    except ValidationError as err:
        return ParsedPayload(
            channel=Channel.STRIPE_CHECKOUT,
            items=[malformed_item(err, WHAT, text, hint, prefix=("data", "object", "metadata"))],
        )

    def bad(field: str, message: str) -> ParsedPayload:
        return ParsedPayload(
            channel=Channel.STRIPE_CHECKOUT,
            items=[
                ParsedItem(
                    index=0,
                    raw=text,
                    hint=hint,
                    error=ItemError(
                        code=ErrorCode.MALFORMED_PAYLOAD,
                        message=f"{WHAT}: field {field}: {message}",
                        field=field,
                    ),
                )
            ],
        )

    if session.payment_status not in PAID:
        return bad(
            "data.object.payment_status",
            f"is {session.payment_status!r}; the order starts on "
            "checkout.session.async_payment_succeeded (replay this event then)",
        )
    email = (session.customer_details.email if session.customer_details else None) or (
        session.customer_email
    )
    if not email:
        return bad("data.object.customer_details.email", "the session has no customer e-mail")
    currency = session.currency or terms.currency
    if not currency:
        return bad("data.object.currency", "the session has no currency")
    pm = terms.payment_method_id
    if pm is None and isinstance(session.setup_intent, StripeSetupIntent):
        pm = session.setup_intent.payment_method
    source = {"event_id": event.id}
    if session.customer:
        source["stripe_customer"] = session.customer
    order = CanonicalOrder(
        channel=Channel.STRIPE_CHECKOUT,
        channel_order_id=session.id,
        email=email.strip(),
        plan_id=terms.plan_id,
        interval=terms.interval,
        currency=currency.upper(),
        quantity=terms.quantity,
        billing=BillingMode.CARD,
        payment_method_id=pm,
        account_id=terms.account_id,
        timezone=terms.timezone,
        trial_days=terms.trial_days,
        anchor_day=terms.anchor_day,
        source=source,
    )
    return ParsedPayload(
        channel=Channel.STRIPE_CHECKOUT,
        items=[ParsedItem(index=0, raw=text, order=order, hint=hint)],
    )
