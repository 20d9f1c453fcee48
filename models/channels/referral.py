"""``referral``: bulk enrollments from the referral program.

One batch names the referrer and lists the referred customers; each enrollment may carry a bonus
credit and a tier upgrade (the plan it is upgraded to), defaulting to the batch's. A tier upgrade
must name a plan of a higher tier and the same kind: the subscription is created on it and the
order keeps the plan it was upgraded from. Each enrollment is parsed on its own; its ``raw`` is the
batch with just that enrollment, so it can be dead-lettered and replayed alone.
Schema: ``models/channels/schemas/referral.json``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
    Referral,
    describe_validation_error,
    dig,
    int_or_none,
    load_json,
    malformed_item,
    str_or_none,
)

WHAT = "referral batch"


class ReferralReferrer(BaseModel):
    """Who referred (at least one of the two)."""

    model_config = ConfigDict(extra="forbid")

    customer_id: str | None = Field(default=None, max_length=64)
    email: str | None = Field(default=None, max_length=320)

    @model_validator(mode="after")
    def _someone(self) -> ReferralReferrer:
        if not self.customer_id and not self.email:
            raise ValueError("the referrer needs a customer_id or an email")
        return self


class ReferralEnrollment(BaseModel):
    """One referred customer."""

    model_config = ConfigDict(extra="forbid")

    referral_id: str = Field(min_length=1, max_length=120)
    email: str = Field(min_length=3, max_length=320)
    plan_id: str = Field(min_length=1, max_length=64)
    interval: Interval = Interval.MONTHLY
    currency: str = Field(default="USD", pattern=r"^[A-Za-z]{3}$")
    quantity: int = Field(default=1, ge=1)
    payment_method_id: str | None = Field(default=None, max_length=64)
    timezone: str | None = Field(default=None, max_length=64)
    bonus_credit_minor: int | None = Field(default=None, ge=0)
    tier_upgrade: str | None = Field(default=None, max_length=64, description="plan id")


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    program: str = Field(min_length=1, max_length=64)
    batch_id: str = Field(min_length=1, max_length=120)
    referrer: ReferralReferrer
    bonus_credit_minor: int = Field(default=0, ge=0, description="default for every enrollment")
    tier_upgrade: str | None = Field(default=None, max_length=64, description="default plan id")
    enrollments: list[Any] = Field(min_length=1)


class ReferralBatch(_Envelope):
    """A referral batch, as posted to ``POST /orders/referral``."""

    model_config = ConfigDict(extra="forbid", title="Referral program batch")

    enrollments: list[ReferralEnrollment] = Field(min_length=1)


def _hint(entry: Any, program: str) -> OrderHint:
    ref = str_or_none(dig(entry, "referral_id"))
    return OrderHint(
        plan_id=str_or_none(dig(entry, "tier_upgrade")) or str_or_none(dig(entry, "plan_id")),
        interval=str_or_none(dig(entry, "interval")),
        currency=str_or_none(dig(entry, "currency")),
        quantity=int_or_none(dig(entry, "quantity")),
        channel_order_id=f"{program}:{ref}" if ref else None,
    )


def parse(text: str, ctx: AdapterContext) -> ParsedPayload:
    """A referral batch -> one item per enrollment.

    Raises:
        OmsError: ``MALFORMED_PAYLOAD`` when the batch itself (program, referrer, list) is invalid
            or holds more than ``ctx.max_items`` enrollments.
    """
    data = load_json(text, WHAT)
    try:
        batch = _Envelope.model_validate(data)
    except ValidationError as err:
        raise OmsError(ErrorCode.MALFORMED_PAYLOAD, describe_validation_error(err, WHAT)) from None
    if len(batch.enrollments) > ctx.max_items:
        raise OmsError(
            ErrorCode.MALFORMED_PAYLOAD,
            f"referral batch has more than {ctx.max_items} enrollments; split it",
        )
    head = batch.model_dump(mode="json", exclude={"enrollments"})
    items: list[ParsedItem] = []
    for index, entry in enumerate(batch.enrollments):
        raw = json.dumps({**head, "enrollments": [entry]}, separators=(",", ":"))
        hint = _hint(entry, batch.program)
        try:
            e = ReferralEnrollment.model_validate(entry)
        except ValidationError as err:
            items.append(
                malformed_item(err, WHAT, raw, hint, index=index, prefix=("enrollments", index))
            )
            continue
        upgrade = e.tier_upgrade or batch.tier_upgrade
        plan_id = e.plan_id
        if upgrade and upgrade != e.plan_id:
            problem = _upgrade_problem(ctx, e.plan_id, upgrade)
            if problem is not None:
                code, message = problem
                items.append(
                    ParsedItem(
                        index=index,
                        raw=raw,
                        hint=hint,
                        error=ItemError(
                            code=code,
                            message=f"{WHAT}: enrollment {e.referral_id}: {message}",
                            field=f"enrollments.{index}.tier_upgrade",
                            rule="referral.tier_upgrade",
                        ),
                    )
                )
                continue
            plan_id = upgrade
        order = CanonicalOrder(
            channel=Channel.REFERRAL,
            channel_order_id=f"{batch.program}:{e.referral_id}",
            email=e.email.strip(),
            plan_id=plan_id,
            interval=e.interval,
            currency=e.currency.upper(),
            quantity=e.quantity,
            billing=BillingMode.CARD,
            payment_method_id=e.payment_method_id,
            timezone=e.timezone,
            referral=Referral(
                program=batch.program,
                referrer_id=batch.referrer.customer_id,
                referrer_email=batch.referrer.email,
                bonus_credit_minor=(
                    e.bonus_credit_minor
                    if e.bonus_credit_minor is not None
                    else batch.bonus_credit_minor
                ),
                upgraded_from_plan_id=e.plan_id if plan_id != e.plan_id else None,
            ),
            source={"batch_id": batch.batch_id},
        )
        items.append(ParsedItem(index=index, raw=raw, order=order, hint=hint))
    return ParsedPayload(channel=Channel.REFERRAL, items=items)


def _upgrade_problem(ctx: AdapterContext, base: str, target: str) -> tuple[ErrorCode, str] | None:
    try:
        to = ctx.catalog.plan(target)
    except OmsError as err:
        return err.code, f"tier upgrade: {err.message}"
    try:
        frm = ctx.catalog.plan(base)
    except OmsError:
        return None  # the rules report the unknown base plan only if no upgrade replaced it
    if to.kind != frm.kind or to.tier <= frm.tier:
        return (
            ErrorCode.CHANGE_NOT_ALLOWED,
            f"tier upgrade from {base} (tier {frm.tier}) to {target} (tier {to.tier}) is not an "
            "upgrade; name a plan of a higher tier",
        )
    return None
