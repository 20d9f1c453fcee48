"""Channel adapters: each sample payload becomes canonical orders; bad ones name the field.

Pure: no I/O besides reading the samples. Stripe signatures are made and checked with the real
``stripe`` SDK to prove our own implementation of its v1 scheme is compatible both ways.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import stripe

from models.calendar import Interval
from models.catalog import default_catalog
from models.channels import (
    SCHEMA_MODELS,
    generated_schema,
    parse_payload,
    schema,
)
from models.channels.stripe_checkout import sign, verify_signature
from models.errors import ErrorCode, OmsError
from models.orders import (
    AdapterContext,
    BillingMode,
    CanonicalOrder,
    Channel,
    ParsedPayload,
    parse_channel,
)
from tests.intake import TEST_SECRET, sample, sample_json, stripe_signature

NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)


def ctx(**kw: Any) -> AdapterContext:
    values: dict[str, Any] = {"catalog": default_catalog(), "now": NOW}
    values.update(kw)
    return AdapterContext(**values)


def only_order(parsed: ParsedPayload) -> CanonicalOrder:
    assert len(parsed.items) == 1, parsed
    item = parsed.items[0]
    assert item.error is None, item.error
    assert item.order is not None
    return item.order


def only_error(parsed: ParsedPayload) -> tuple[ErrorCode, str, str | None]:
    assert len(parsed.items) == 1
    err = parsed.items[0].error
    assert err is not None and parsed.items[0].order is None
    return err.code, err.message, err.field


# --- web ----------------------------------------------------------------------------------


def test_web_checkout_becomes_one_card_order_with_the_storefront_order_id() -> None:
    order = only_order(parse_payload(Channel.WEB, sample("web_order.json"), ctx()))
    assert order.channel == Channel.WEB and order.channel_order_id == "web-1001"
    assert (order.email, order.plan_id, order.interval) == (
        "ada@example.com",
        "pro",
        Interval.MONTHLY,
    )
    assert (order.currency, order.quantity, order.billing) == ("USD", 2, BillingMode.CARD)
    assert order.payment_method_id == "pm_card_visa"
    assert order.timezone == "Europe/London" and order.trial_days is None  # the plan's trial
    assert order.key == "web:web-1001" and order.request_id.startswith("intake-")
    with_trial = {**json.loads(sample("web_order.json")), "trial_days": 14}
    parsed = only_order(parse_payload(Channel.WEB, json.dumps(with_trial), ctx()))
    assert parsed.trial_days == 14  # read as sent; the rules compare it with the plan's


def test_web_invoice_checkout_names_the_account_to_invoice() -> None:
    order = only_order(parse_payload(Channel.WEB, sample("web_invoice_order.json"), ctx()))
    assert order.billing == BillingMode.INVOICE and order.account_id == "initech"
    assert order.account_key == "initech" and order.payment_method_id is None


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["customer"].pop("email"), "customer.email"),
        (lambda d: d["line"].update(interval="fortnightly"), "line.interval"),
        (lambda d: d["line"].update(quantity=0), "line.quantity"),
        (lambda d: d.update(coupon="X"), "coupon"),
        (lambda d: d["payment"].update(method="cash"), "payment.method"),
        (lambda d: d.update(anchor_day=32), "anchor_day"),
    ],
)
def test_a_web_checkout_that_breaks_its_schema_is_an_item_error_naming_the_field(
    mutate: Any, field: str
) -> None:
    data = sample_json("web_order.json")
    mutate(data)
    code, message, named = only_error(parse_payload(Channel.WEB, json.dumps(data), ctx()))
    assert code == ErrorCode.MALFORMED_PAYLOAD
    assert named == field and f"field {field}" in message


def test_a_web_payload_that_is_not_json_is_refused_saying_where_it_broke() -> None:
    with pytest.raises(OmsError) as err:
        parse_payload(Channel.WEB, '{"order_id": "x",', ctx())
    assert err.value.code == ErrorCode.MALFORMED_PAYLOAD
    assert "not valid JSON" in err.value.message and "line 1" in err.value.message


def test_a_broken_payload_keeps_what_it_revealed_to_rank_its_dead_letter() -> None:
    data = sample_json("web_order.json")
    data["customer"].pop("email")
    item = parse_payload(Channel.WEB, json.dumps(data), ctx()).items[0]
    assert (item.hint.plan_id, item.hint.interval, item.hint.quantity) == ("pro", "monthly", 2)
    assert item.channel_order_id == "web-1001"


# --- mobile -------------------------------------------------------------------------------


def test_mobile_order_maps_its_own_names_and_takes_the_currency_from_the_locale() -> None:
    order = only_order(parse_payload(Channel.MOBILE, sample("mobile_order.json"), ctx()))
    assert order.channel_order_id == "ios-7f3a9c" and order.email == "grace@example.com"
    assert (order.plan_id, order.interval, order.currency) == ("pro", Interval.MONTHLY, "EUR")
    assert order.timezone == "Europe/Berlin" and order.locale == "de-DE"
    assert order.source == {"platform": "ios", "app_version": "5.2.1"}


@pytest.mark.parametrize(
    ("period", "interval"),
    [
        ("P1W", Interval.WEEKLY),
        ("P2W", Interval.BIWEEKLY),
        ("P3M", Interval.QUARTERLY),
        ("P1Y", Interval.YEARLY),
    ],
)
def test_mobile_billing_periods_are_iso_durations(period: str, interval: Interval) -> None:
    data = sample_json("mobile_order.json")
    data["subscription"].update(billingPeriod=period, currencyCode="usd")
    order = only_order(parse_payload(Channel.MOBILE, json.dumps(data), ctx()))
    assert order.interval == interval and order.currency == "USD"


def test_a_mobile_order_from_an_unknown_platform_names_device_platform() -> None:
    data = sample_json("mobile_order.json")
    data["device"]["platform"] = "symbian"
    code, _, field = only_error(parse_payload(Channel.MOBILE, json.dumps(data), ctx()))
    assert code == ErrorCode.MALFORMED_PAYLOAD and field == "device.platform"


# --- partner CSV --------------------------------------------------------------------------


def test_partner_file_gives_one_item_per_line_and_bad_lines_do_not_stop_the_others() -> None:
    parsed = parse_payload(Channel.PARTNER, sample("partner_orders.csv"), ctx())
    assert [i.index for i in parsed.items] == [2, 3, 4, 5]
    first, second, sku, qty = parsed.items
    assert first.order is not None and second.order is not None
    assert first.order.channel_order_id == "acme:PO-1" and first.order.partner_id == "acme"
    assert (first.order.plan_id, first.order.interval, first.order.quantity) == (
        "pro",
        Interval.MONTHLY,
        5,
    )
    assert first.order.billing == BillingMode.INVOICE and first.order.account_id == "acme"
    assert second.order.plan_id == "business" and second.order.interval == Interval.YEARLY
    assert second.order.timezone is None
    assert sku.error is not None and sku.error.code == ErrorCode.UNKNOWN_SKU
    assert sku.error.rule == "partner.sku" and "OMS-GOLD-M" in sku.error.message
    assert qty.error is not None and qty.error.code == ErrorCode.MALFORMED_PAYLOAD
    assert qty.error.field == "line 5.quantity"


def test_each_partner_line_is_a_csv_file_of_its_own_that_parses_to_the_same_order() -> None:
    parsed = parse_payload(Channel.PARTNER, sample("partner_orders.csv"), ctx())
    item = parsed.items[0]
    assert item.content_type == "text/csv" and item.raw.startswith("partner_id,")
    again = parse_payload(Channel.PARTNER, item.raw, ctx())
    assert again.items[0].order is not None and item.order is not None
    assert again.items[0].order.model_dump(exclude={"source"}) == item.order.model_dump(
        exclude={"source"}
    )


def test_partner_file_tolerates_a_bom_blank_lines_and_column_order() -> None:
    text = "\ufeffsku,customer_email,partner_order_id,partner_id\n\nOMS-PRO-Y,a@b.example,9,p1\n\n"
    parsed = parse_payload(Channel.PARTNER, text.encode(), ctx())
    order = only_order(parsed)
    assert (order.channel_order_id, order.plan_id, order.interval) == (
        "p1:9",
        "pro",
        Interval.YEARLY,
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("partner_id,sku\nacme,OMS-PRO-M\n", "lacks required column(s) partner_order_id"),
        ("partner_id,partner_order_id,sku,customer_email\n", "no order lines"),
        ("", "empty"),
    ],
)
def test_an_unusable_partner_file_is_refused_as_a_whole(text: str, words: str) -> None:
    with pytest.raises(OmsError) as err:
        parse_payload(Channel.PARTNER, text or " ", ctx())
    assert err.value.code == ErrorCode.MALFORMED_PAYLOAD and words in err.value.message


def test_a_partner_file_over_the_line_limit_is_refused() -> None:
    lines = "".join(f"acme,PO-{i},OMS-PRO-M,a{i}@b.example\n" for i in range(4))
    with pytest.raises(OmsError) as err:
        parse_payload(
            Channel.PARTNER,
            "partner_id,partner_order_id,sku,customer_email\n" + lines,
            ctx(max_items=3),
        )
    assert "more than 3 orders" in err.value.message


# --- stripe checkout ----------------------------------------------------------------------


def stripe_ctx(payload: str, header: str | None, secret: str | None = TEST_SECRET) -> Any:
    return ctx(
        now=datetime.now(UTC),
        headers={"stripe-signature": header} if header is not None else {},
        webhook_secret=secret,
    )


def test_a_checkout_session_signed_by_the_stripe_sdk_becomes_a_card_order() -> None:
    payload = sample("stripe_checkout_session_completed.json")
    order = only_order(
        parse_payload(
            Channel.STRIPE_CHECKOUT, payload, stripe_ctx(payload, stripe_signature(payload))
        )
    )
    assert order.channel_order_id == "cs_test_a1b2c3d4e5" and order.email == "linus@example.com"
    assert (order.plan_id, order.interval, order.currency) == ("starter", Interval.MONTHLY, "USD")
    assert order.payment_method_id == "pm_card_visa"  # from the expanded setup intent
    assert order.timezone == "America/New_York"
    assert order.source == {"event_id": "evt_1QabcDEFghiJKLmn", "stripe_customer": "cus_Qabc123"}


@pytest.mark.parametrize(
    ("header", "secret", "words"),
    [
        (None, TEST_SECRET, "header is missing"),
        ("t=1,v1=deadbeef", TEST_SECRET, "no signature matches"),
        ("v1=abc", TEST_SECRET, "no timestamp"),
        ("t=now,v1=abc", TEST_SECRET, "not a number"),
        ("SIGNED_WITH_OTHER_SECRET", TEST_SECRET, "no signature matches"),
        ("SIGNED", None, "no webhook secret is configured"),
        ("SIGNED_LONG_AGO", TEST_SECRET, "older than 300 s"),
    ],
)
def test_an_unsigned_or_wrongly_signed_event_is_refused(
    header: str | None, secret: str | None, words: str
) -> None:
    payload = sample("stripe_checkout_session_completed.json")
    if header == "SIGNED":
        header = stripe_signature(payload)
    elif header == "SIGNED_WITH_OTHER_SECRET":
        header = stripe_signature(payload, "whsec_someone_else")
    elif header == "SIGNED_LONG_AGO":
        header = stripe_signature(payload, timestamp=int(time.time()) - 301)
    with pytest.raises(OmsError) as err:
        parse_payload(Channel.STRIPE_CHECKOUT, payload, stripe_ctx(payload, header, secret))
    assert err.value.code == ErrorCode.SIGNATURE_INVALID and words in err.value.message


def test_a_tampered_payload_fails_the_signature_it_was_signed_with() -> None:
    payload = sample("stripe_checkout_session_completed.json")
    header = stripe_signature(payload)
    tampered = payload.replace('"starter"', '"business"')
    with pytest.raises(OmsError) as err:
        parse_payload(Channel.STRIPE_CHECKOUT, tampered, stripe_ctx(tampered, header))
    assert err.value.code == ErrorCode.SIGNATURE_INVALID


def test_any_matching_v1_signature_passes_as_during_a_secret_rotation() -> None:
    payload = sample("stripe_checkout_session_completed.json")
    ts = int(time.time())
    old = stripe_signature(payload, "whsec_old", ts).split(",")[1]
    header = f"{stripe_signature(payload, TEST_SECRET, ts)},{old},v0=ignored"
    assert verify_signature(payload, header, TEST_SECRET, time.time()) == ts
    assert verify_signature(payload, header, "whsec_old", time.time()) == ts


def test_our_signatures_verify_with_the_stripe_sdk_and_its_construct_event() -> None:
    payload = sample("stripe_checkout_session_completed.json")
    header = sign(payload, TEST_SECRET, int(time.time()))
    assert stripe.WebhookSignature.verify_header(payload, header, TEST_SECRET, tolerance=300)
    event = stripe.Webhook.construct_event(payload, header, TEST_SECRET)
    assert event["data"]["object"]["id"] == "cs_test_a1b2c3d4e5"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(payload, header, "whsec_wrong", tolerance=300)


def test_a_stripe_event_of_another_type_is_valid_but_carries_no_order() -> None:
    data = sample_json("stripe_checkout_session_completed.json")
    data["type"] = "invoice.paid"
    payload = json.dumps(data)
    parsed = parse_payload(
        Channel.STRIPE_CHECKOUT, payload, stripe_ctx(payload, stripe_signature(payload))
    )
    assert parsed.items == [] and parsed.ignored is not None and "invoice.paid" in parsed.ignored


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda s: s.update(payment_status="unpaid"), "data.object.payment_status"),
        (lambda s: s["metadata"].pop("plan_id"), "data.object.metadata.plan_id"),
        (lambda s: s["metadata"].update(interval="daily"), "data.object.metadata.interval"),
        (
            lambda s: s.update(customer_details=None, customer_email=None),
            "data.object.customer_details.email",
        ),
        (lambda s: s.update(id="sess_1"), "data.object.id"),
    ],
)
def test_a_signed_but_unusable_checkout_session_names_the_field(mutate: Any, field: str) -> None:
    data = sample_json("stripe_checkout_session_completed.json")
    mutate(data["data"]["object"])
    payload = json.dumps(data)
    code, message, named = only_error(
        parse_payload(
            Channel.STRIPE_CHECKOUT, payload, stripe_ctx(payload, stripe_signature(payload))
        )
    )
    assert code == ErrorCode.MALFORMED_PAYLOAD and named == field and field in message


# --- referral -----------------------------------------------------------------------------


def test_referral_batch_applies_the_tier_upgrade_and_bonus_credit_per_enrollment() -> None:
    parsed = parse_payload(Channel.REFERRAL, sample("referral_batch.json"), ctx())
    r1, r2, r3, r4 = parsed.items
    assert r1.order is not None and r1.order.referral is not None
    assert r1.order.channel_order_id == "friends-2026:r-1"
    assert r1.order.plan_id == "pro"  # the batch's upgrade from starter
    assert r1.order.referral.upgraded_from_plan_id == "starter"
    assert r1.order.referral.bonus_credit_minor == 500
    assert r1.order.referral.referrer_id == "cust_referrer0001"
    assert r2.order is not None and r2.order.referral is not None
    assert (r2.order.plan_id, r2.order.referral.bonus_credit_minor) == ("business", 1000)
    assert r3.error is not None and r3.error.code == ErrorCode.CHANGE_NOT_ALLOWED
    assert r3.error.rule == "referral.tier_upgrade" and "not an upgrade" in r3.error.message
    assert r4.error is not None and r4.error.field == "enrollments.3.email"


def test_each_referral_enrollment_replays_alone_as_a_batch_of_one() -> None:
    parsed = parse_payload(Channel.REFERRAL, sample("referral_batch.json"), ctx())
    alone = parse_payload(Channel.REFERRAL, parsed.items[0].raw, ctx())
    assert [i.order for i in alone.items] == [parsed.items[0].order]


def test_a_referral_batch_without_a_referrer_is_refused_as_a_whole() -> None:
    data = sample_json("referral_batch.json")
    data["referrer"] = {}
    with pytest.raises(OmsError) as err:
        parse_payload(Channel.REFERRAL, json.dumps(data), ctx())
    assert err.value.code == ErrorCode.MALFORMED_PAYLOAD and "referrer" in err.value.message


# --- common -------------------------------------------------------------------------------


def test_unknown_channels_and_non_utf8_bodies_are_refused_with_their_codes() -> None:
    with pytest.raises(OmsError) as unknown:
        parse_channel("fax")
    assert (
        unknown.value.code == ErrorCode.UNKNOWN_CHANNEL
        and "stripe-checkout" in unknown.value.message
    )
    with pytest.raises(OmsError) as binary:
        parse_payload(Channel.WEB, b"\xff\xfe{}", ctx())
    assert binary.value.code == ErrorCode.MALFORMED_PAYLOAD and "UTF-8" in binary.value.message


@pytest.mark.parametrize("channel", list(SCHEMA_MODELS))
def test_published_json_schemas_match_the_adapters(channel: Channel) -> None:
    generated = generated_schema(channel)
    if os.environ.get("OMS_REGEN_SCHEMAS"):  # regenerate: OMS_REGEN_SCHEMAS=1 pytest -k schemas
        from pathlib import Path

        import models.channels as pkg

        name = SCHEMA_MODELS[channel][0]
        path = Path(pkg.__file__).parent / "schemas" / name
        path.write_text(json.dumps(generated, indent=2, sort_keys=True) + "\n")
    assert schema(channel) == generated, (
        "schema file drifted: OMS_REGEN_SCHEMAS=1 pytest -k schemas"
    )
    assert schema(Channel.PARTNER) is None
