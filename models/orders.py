"""The canonical subscription order: what every intake channel's payload becomes.

Channel adapters (``models/channels``) turn a channel's own payload into a list of
:class:`ParsedItem`, each holding either a :class:`CanonicalOrder` or an :class:`ItemError` that
names the field at fault. Everything downstream (rules, the intake service, the store) speaks only
this model. Nothing here does I/O.

An order belongs to a **scope**: the tenant and the principal that sent it (set by the intake
service from the authenticated principal with :meth:`CanonicalOrder.scoped`, never from the
payload). The same channel order id in two scopes names two different orders: their ids, their
subscription request ids and their idempotency records differ.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.calendar import Interval
from models.catalog import Catalog
from models.errors import ErrorCode, OmsError
from models.identity import DEFAULT_TENANT
from models.ids import customer_id_for_email

__all__ = [
    "BATCH_CHANNELS",
    "AdapterContext",
    "BillingMode",
    "CanonicalOrder",
    "Channel",
    "ItemError",
    "OrderHint",
    "ParsedItem",
    "ParsedPayload",
    "Referral",
    "describe_validation_error",
    "intake_request_id",
    "load_json",
    "order_fingerprint",
    "order_id_for",
    "order_key",
    "parse_channel",
    "periods_per_year",
    "term_value_minor",
]


class Channel(StrEnum):
    """Where an order came from. The value is the URL segment of ``POST /orders/{channel}``."""

    WEB = "web"
    MOBILE = "mobile"
    PARTNER = "partner"
    STRIPE_CHECKOUT = "stripe-checkout"
    REFERRAL = "referral"


# Channels whose payload holds many orders (answered with a per-item summary).
BATCH_CHANNELS = frozenset({Channel.PARTNER, Channel.REFERRAL})


def parse_channel(name: str) -> Channel:
    """The :class:`Channel` called ``name``, or ``OmsError(UNKNOWN_CHANNEL)`` listing them."""
    try:
        return Channel(name)
    except ValueError:
        names = ", ".join(c.value for c in Channel)
        raise OmsError(
            ErrorCode.UNKNOWN_CHANNEL, f"unknown order channel {name[:40]!r}; use one of {names}"
        ) from None


class BillingMode(StrEnum):
    """How the subscription is paid: a card token, or an invoice on the account's credit line."""

    CARD = "card"
    INVOICE = "invoice"


class Referral(BaseModel):
    """What a referral enrollment carries besides the order itself."""

    model_config = ConfigDict(frozen=True)

    program: str
    referrer_id: str | None = None
    referrer_email: str | None = None
    bonus_credit_minor: int = Field(default=0, ge=0)
    upgraded_from_plan_id: str | None = None


class CanonicalOrder(BaseModel):
    """One subscription order, whatever channel it came through.

    ``(tenant_id, principal_id, channel, channel_order_id)`` identifies it: the same channel order
    id sent twice by the same principal is the same order; sent by another principal it is
    another order. ``principal_id`` None is the scope of orders received before intake
    authenticated its callers (all in the default tenant; their ids are kept).
    """

    model_config = ConfigDict(frozen=True)

    channel: Channel
    channel_order_id: str = Field(min_length=1, max_length=200)
    email: str
    plan_id: str
    interval: Interval
    currency: str = Field(min_length=3, max_length=3)
    quantity: int = 1
    billing: BillingMode = BillingMode.CARD
    payment_method_id: str | None = None
    account_id: str | None = None
    timezone: str | None = None
    anchor_day: int | None = None
    trial_days: int | None = None
    locale: str | None = None
    partner_id: str | None = None
    referral: Referral | None = None
    # Channel extras worth keeping (device platform, Stripe event id, CSV line...).
    source: dict[str, str] = Field(default_factory=dict)
    # The scope: who sent it (the authenticated principal), never read from a payload.
    tenant_id: str = DEFAULT_TENANT
    principal_id: str | None = None

    def scoped(self, tenant_id: str, principal_id: str | None) -> CanonicalOrder:
        """This order in the scope of a tenant and principal."""
        return self.model_copy(update={"tenant_id": tenant_id, "principal_id": principal_id})

    @property
    def key(self) -> str:
        """``channel:channel_order_id``: how people name the order (not unique across scopes)."""
        return order_key(self.channel, self.channel_order_id)

    @property
    def order_id(self) -> str:
        """Our id for this order: unique, stable, derived from its scope and the channel's id."""
        return order_id_for(self.channel, self.channel_order_id, self.tenant_id, self.principal_id)

    @property
    def request_id(self) -> str:
        """The idempotency key the subscription is created with (same order, same subscription)."""
        return intake_request_id(
            self.channel, self.channel_order_id, self.tenant_id, self.principal_id
        )

    @property
    def fingerprint(self) -> str:
        """A digest of the order's terms: the same order id must come back with the same terms."""
        return order_fingerprint(self)

    @property
    def customer_id(self) -> str:
        return customer_id_for_email(self.email)

    @property
    def account_key(self) -> str:
        """The credit-ledger account the order is judged by: its account, else its customer."""
        return self.account_id or self.customer_id


class OrderHint(BaseModel):
    """Whatever could be read from a payload that failed to parse (to rank its dead letter)."""

    model_config = ConfigDict(frozen=True)

    plan_id: str | None = None
    interval: str | None = None
    currency: str | None = None
    quantity: int | None = None
    account_id: str | None = None
    channel_order_id: str | None = None


class ItemError(BaseModel):
    """Why one item of a payload could not become an order."""

    model_config = ConfigDict(frozen=True)

    code: ErrorCode
    message: str
    rule: str = "payload.schema"
    field: str | None = None


class ParsedItem(BaseModel):
    """One order of a payload, or why it is not one.

    Attributes:
        index: Position in the payload (the CSV line number for partner files, else 0-based).
        raw: A payload holding just this item, in the channel's own format, so it can be
            dead-lettered and replayed on its own.
        content_type: The media type of ``raw``.
    """

    model_config = ConfigDict(frozen=True)

    index: int
    raw: str
    content_type: str = "application/json"
    order: CanonicalOrder | None = None
    error: ItemError | None = None
    hint: OrderHint = Field(default_factory=OrderHint)

    @property
    def channel_order_id(self) -> str | None:
        if self.order is not None:
            return self.order.channel_order_id
        return self.hint.channel_order_id


class ParsedPayload(BaseModel):
    """What an adapter made of a whole payload."""

    model_config = ConfigDict(frozen=True)

    channel: Channel
    items: list[ParsedItem] = Field(default_factory=list)
    # Set when the payload is valid but carries no order (a Stripe event of another type).
    ignored: str | None = None


def order_key(channel: Channel | str, channel_order_id: str) -> str:
    """``channel:channel_order_id``."""
    return f"{Channel(channel).value}:{channel_order_id}"


def _digest(*parts: str, length: int) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:length]


def _scope(tenant_id: str, principal_id: str | None) -> tuple[str, ...]:
    # Orders from before authentication (no principal, default tenant) keep their original ids.
    if principal_id is None and tenant_id == DEFAULT_TENANT:
        return ()
    return ("scope", tenant_id, principal_id or "")


def order_id_for(
    channel: Channel | str,
    channel_order_id: str,
    tenant_id: str = DEFAULT_TENANT,
    principal_id: str | None = None,
) -> str:
    """Our order id for a channel's order in a scope: ``ord_`` and a digest."""
    parts = (*_scope(tenant_id, principal_id), Channel(channel).value, channel_order_id)
    return "ord_" + _digest("order", *parts, length=20)


def intake_request_id(
    channel: Channel | str,
    channel_order_id: str,
    tenant_id: str = DEFAULT_TENANT,
    principal_id: str | None = None,
) -> str:
    """The subscription request id of a channel's order in a scope (a valid id)."""
    parts = (*_scope(tenant_id, principal_id), Channel(channel).value, channel_order_id)
    return "intake-" + _digest("intake", *parts, length=32)


# What makes two copies of an order "the same order": its terms. Not compared: where it sits in
# a file and channel extras (``source``: a CSV line number, a device's app version, a Stripe event
# id), nor the scope (part of the order's identity already).
_NOT_TERMS = frozenset({"source", "tenant_id", "principal_id"})


def order_fingerprint(order: CanonicalOrder) -> str:
    """A digest of an order's terms (sha256 hex)."""
    terms = order.model_dump(mode="json", exclude=set(_NOT_TERMS))
    text = json.dumps(terms, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


_PERIODS_PER_YEAR: dict[Interval, int] = {
    Interval.WEEKLY: 52,
    Interval.BIWEEKLY: 26,
    Interval.MONTHLY: 12,
    Interval.QUARTERLY: 4,
    Interval.SEMIANNUAL: 2,
    Interval.YEARLY: 1,
}


def periods_per_year(interval: Interval) -> int:
    """How many billing periods of ``interval`` a one-year term has."""
    return _PERIODS_PER_YEAR[interval]


def term_value_minor(unit_amount_minor: int, quantity: int, interval: Interval) -> int:
    """An order's value over its term (one year of renewals), in minor units."""
    return unit_amount_minor * max(quantity, 0) * periods_per_year(interval)


def describe_validation_error(
    err: ValidationError, what: str, prefix: Sequence[str | int] = ()
) -> str:
    """One sentence naming the first bad field of a pydantic error, e.g.
    ``web order: field customer.email: Field required``."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in (*prefix, *first["loc"]))
    extra = len(err.errors()) - 1
    more = f" (and {extra} more problem{'s' if extra > 1 else ''})" if extra else ""
    return f"{what}: field {loc or '(root)'}: {first['msg']}{more}"


def first_error_field(err: ValidationError, prefix: Sequence[str | int] = ()) -> str:
    """The dotted path of the first bad field of a pydantic error."""
    return ".".join(str(p) for p in (*prefix, *err.errors()[0]["loc"]))


def dig(data: Any, *path: str) -> Any:
    """``data[path[0]][path[1]]...`` or None when any step is missing (for hints)."""
    for part in path:
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def str_or_none(value: Any) -> str | None:
    """``value`` as a short string when it is a scalar, else None (for hints)."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)[:200]
    return None


def int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


@dataclass(frozen=True)
class AdapterContext:
    """What an adapter may need besides the payload (all passed in: adapters do no I/O).

    Attributes:
        catalog: The plan catalog (partner SKUs and referral upgrades map onto it).
        now: The instant the payload was received (signature tolerance is measured from it).
        headers: Request headers, names lower-cased.
        webhook_secret: Stripe's endpoint secret (``whsec_...``) for ``stripe-checkout``.
        signature_tolerance_s: Oldest signed timestamp accepted, in seconds before ``now``.
        max_items: Most orders one batch payload may hold.
    """

    catalog: Catalog
    now: datetime
    headers: Mapping[str, str] = field(default_factory=dict)
    webhook_secret: str | None = None
    signature_tolerance_s: int = 300
    max_items: int = 10_000


def load_json(text: str, what: str) -> Any:
    """Parse JSON or raise ``OmsError(MALFORMED_PAYLOAD)`` saying where it broke."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise OmsError(
            ErrorCode.MALFORMED_PAYLOAD,
            f"{what} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}",
        ) from None


def malformed_item(
    err: ValidationError,
    what: str,
    raw: str,
    hint: OrderHint,
    index: int = 0,
    prefix: Sequence[str | int] = (),
    content_type: str = "application/json",
) -> ParsedItem:
    """A :class:`ParsedItem` for a payload that failed its schema, naming the first bad field."""
    return ParsedItem(
        index=index,
        raw=raw,
        content_type=content_type,
        hint=hint,
        error=ItemError(
            code=ErrorCode.MALFORMED_PAYLOAD,
            message=describe_validation_error(err, what, prefix),
            field=first_error_field(err, prefix),
        ),
    )
