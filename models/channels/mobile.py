"""``mobile``: the app's order JSON (camelCase names, nested user and device, a locale).

Billing periods are ISO 8601 durations (``P1M``); without ``currencyCode`` the currency follows the
locale's region (``de-DE`` -> EUR). Schema: ``models/channels/schemas/mobile.json``.
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

WHAT = "mobile order"

PERIODS: dict[str, Interval] = {
    "P1W": Interval.WEEKLY,
    "P2W": Interval.BIWEEKLY,
    "P1M": Interval.MONTHLY,
    "P3M": Interval.QUARTERLY,
    "P6M": Interval.SEMIANNUAL,
    "P1Y": Interval.YEARLY,
}

# Currency of a locale's region when the app sends none.
REGION_CURRENCY: dict[str, str] = {
    "US": "USD",
    "JP": "JPY",
    "KW": "KWD",
    "GB": "GBP",
    **{
        r: "EUR"
        for r in ("DE", "FR", "ES", "IT", "NL", "IE", "AT", "BE", "FI", "PT", "LU", "GR", "SK")
    },
}
DEFAULT_CURRENCY = "USD"


class MobileUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    emailAddress: str = Field(min_length=3, max_length=320)
    accountId: str | None = Field(default=None, max_length=64)
    tz: str | None = Field(default=None, max_length=64, description="IANA zone")
    locale: str | None = Field(
        default=None, pattern=r"^[a-z]{2,3}(-[A-Z]{2})?$", description="BCP 47, e.g. de-DE"
    )


class MobileDevice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    platform: Literal["ios", "android"]
    appVersion: str = Field(max_length=32)
    osVersion: str | None = Field(default=None, max_length=32)
    deviceId: str | None = Field(default=None, max_length=128)


class MobileSubscription(BaseModel):
    model_config = ConfigDict(extra="forbid")

    productId: str = Field(min_length=1, max_length=64, description="our plan id")
    billingPeriod: Literal["P1W", "P2W", "P1M", "P3M", "P6M", "P1Y"] = "P1M"
    qty: int = Field(default=1, ge=1)
    currencyCode: str | None = Field(default=None, pattern=r"^[A-Za-z]{3}$")
    trialDays: int | None = Field(default=None, ge=0)


class MobileOrderPayload(BaseModel):
    """The app's order, as posted to ``POST /orders/mobile``."""

    model_config = ConfigDict(extra="forbid", title="Mobile app order")

    orderRef: str = Field(min_length=1, max_length=200, description="the app's order id")
    createdAt: datetime | None = None
    user: MobileUser
    device: MobileDevice
    subscription: MobileSubscription
    paymentToken: str | None = Field(default=None, max_length=64, description="pm_...")


def currency_for(code: str | None, locale: str | None) -> str:
    """The order currency: the explicit code, else the locale region's, else USD."""
    if code:
        return code.upper()
    if locale and "-" in locale:
        return REGION_CURRENCY.get(locale.split("-")[1], DEFAULT_CURRENCY)
    return DEFAULT_CURRENCY


def _hint(data: object) -> OrderHint:
    period = str_or_none(dig(data, "subscription", "billingPeriod"))
    return OrderHint(
        plan_id=str_or_none(dig(data, "subscription", "productId")),
        interval=PERIODS[period].value if period in PERIODS else None,
        currency=str_or_none(dig(data, "subscription", "currencyCode")),
        quantity=int_or_none(dig(data, "subscription", "qty")),
        account_id=str_or_none(dig(data, "user", "accountId")),
        channel_order_id=str_or_none(dig(data, "orderRef")),
    )


def parse(text: str, ctx: AdapterContext) -> ParsedPayload:
    """One app order -> one canonical order (or one item error naming the field)."""
    data = load_json(text, WHAT)
    try:
        p = MobileOrderPayload.model_validate(data)
    except ValidationError as err:
        return ParsedPayload(
            channel=Channel.MOBILE, items=[malformed_item(err, WHAT, text, _hint(data))]
        )
    s = p.subscription
    order = CanonicalOrder(
        channel=Channel.MOBILE,
        channel_order_id=p.orderRef,
        email=p.user.emailAddress.strip(),
        plan_id=s.productId,
        interval=PERIODS[s.billingPeriod],
        currency=currency_for(s.currencyCode, p.user.locale),
        quantity=s.qty,
        billing=BillingMode.CARD,
        payment_method_id=p.paymentToken,
        account_id=p.user.accountId,
        timezone=p.user.tz,
        trial_days=s.trialDays,
        locale=p.user.locale,
        source={"platform": p.device.platform, "app_version": p.device.appVersion},
    )
    return ParsedPayload(
        channel=Channel.MOBILE,
        items=[ParsedItem(index=0, raw=text, order=order, hint=_hint(data))],
    )
