"""``web``: the storefront's checkout JSON (one subscription per checkout).

Schema: ``models/channels/schemas/web.json`` (generated from :class:`WebOrderPayload`); format and
examples in ``docs/intake.md``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.calendar import Interval
from models.orders import (
    AdapterContext,
    BillingMode,
    CanonicalOrder,
    Channel,
    OrderHint,
    ParsedItem,
    ParsedPayload,
    dig,
    int_or_none,
    load_json,
    malformed_item,
    str_or_none,
)

WHAT = "web order"


class WebCustomer(BaseModel):
    """Who buys."""

    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=320)
    name: str | None = Field(default=None, max_length=200)
    account_id: str | None = Field(
        default=None, max_length=64, description="credit-ledger account (invoice billing)"
    )
    timezone: str | None = Field(default=None, max_length=64, description="IANA zone")


class WebLine(BaseModel):
    """The subscription bought."""

    model_config = ConfigDict(extra="forbid")

    plan_id: str = Field(min_length=1, max_length=64)
    interval: Interval = Interval.MONTHLY
    quantity: int = Field(default=1, ge=1)


class WebPayment(BaseModel):
    """How it is paid: a gateway token for cards, or an invoice to the customer's account."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["card", "invoice"] = "card"
    token: str | None = Field(default=None, max_length=64, description="pm_... for cards")


class WebOrderPayload(BaseModel):
    """The storefront's checkout, as posted to ``POST /orders/web``."""

    model_config = ConfigDict(extra="forbid", title="Web storefront checkout")

    order_id: str = Field(min_length=1, max_length=200, description="the storefront's order id")
    placed_at: datetime | None = None
    currency: str = Field(default="USD", pattern=r"^[A-Za-z]{3}$")
    customer: WebCustomer
    line: WebLine
    payment: WebPayment = Field(default_factory=WebPayment)
    trial_days: int | None = Field(default=None, ge=0, description="default: the plan's trial")
    anchor_day: int | None = Field(default=None, ge=1, le=31, description="bill on this day")


def _hint(data: object) -> OrderHint:
    return OrderHint(
        plan_id=str_or_none(dig(data, "line", "plan_id")),
        interval=str_or_none(dig(data, "line", "interval")),
        currency=str_or_none(dig(data, "currency")),
        quantity=int_or_none(dig(data, "line", "quantity")),
        account_id=str_or_none(dig(data, "customer", "account_id")),
        channel_order_id=str_or_none(dig(data, "order_id")),
    )


def parse(text: str, ctx: AdapterContext) -> ParsedPayload:
    """One storefront checkout -> one canonical order (or one item error naming the field)."""
    data = load_json(text, WHAT)
    try:
        p = WebOrderPayload.model_validate(data)
    except ValidationError as err:
        return ParsedPayload(
            channel=Channel.WEB, items=[malformed_item(err, WHAT, text, _hint(data))]
        )
    order = CanonicalOrder(
        channel=Channel.WEB,
        channel_order_id=p.order_id,
        email=p.customer.email.strip(),
        plan_id=p.line.plan_id,
        interval=p.line.interval,
        currency=p.currency.upper(),
        quantity=p.line.quantity,
        billing=BillingMode(p.payment.method),
        payment_method_id=p.payment.token,
        account_id=p.customer.account_id,
        timezone=p.customer.timezone,
        anchor_day=p.anchor_day,
        trial_days=p.trial_days,
    )
    return ParsedPayload(
        channel=Channel.WEB, items=[ParsedItem(index=0, raw=text, order=order, hint=_hint(data))]
    )
