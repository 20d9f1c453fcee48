"""``POST /orders/{channel}``, the dead-letter endpoints, health and metrics, in-process over the
real stack (time-skipping server, worker, DB, localstripe), mounted as the lead will mount it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from activities.intake_store import CreditAccountSeed, IntakeStore
from tests.intake import (
    VISA,
    intake_api,
    sample,
    sample_json,
    stripe_signature,
    test_config,
    test_settings,
)
from tests.workflows import conftest as workflow_fixtures
from tests.workflows.conftest import TEST_API_KEY, Stack

stack = workflow_fixtures.stack  # the real stack: time-skipping server, worker, DB, localstripe


@pytest.fixture
async def api(
    stack: Stack, db_url: str, localstripe_url: str, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    store = IntakeStore(stack.store.engine)
    store.set_stock("BEANS-1KG", 20)
    store.upsert_credit_account(
        CreditAccountSeed(
            account_id="acme",
            credit_limit_minor=50_000_000,
            trusted_partner=True,
            paid_invoices=48,
            billing_email="ap@acme.example",
            payment_method_id=stack.gateway.create_test_payment_method(VISA),
        )
    )
    config = test_config(db_url, localstripe_url, TEST_API_KEY)
    async with intake_api(config, stack.service, test_settings(tmp_path)) as (client, _):
        yield client


def card(stack: Stack, text: str) -> str:
    """``text`` with its sample token replaced by a real one from the gateway."""
    return text.replace("pm_card_visa", stack.gateway.create_test_payment_method(VISA))


def error_of(resp: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = resp.json()["error"]
    assert set(body) >= {"code", "message", "rule"}
    assert len(body["message"]) > 15
    return body


async def test_web_order_is_accepted_with_201_then_repeated_with_200_and_the_same_body(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    payload = card(stack, sample("web_order.json"))

    first = await api.post("/orders/web", content=payload)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["order_id"].startswith("ord_") and body["subscription_id"].startswith("sub_")
    assert (body["plan_id"], body["interval"], body["currency"]) == ("pro", "monthly", "USD")
    assert body["first_charge_minor"] == 6000 and body["first_invoice_date"]

    again = await api.post("/orders/web", content=payload)
    assert again.status_code == 200
    assert again.json() == body
    listed = (await api.get("/intake/orders", params={"status": "accepted"})).json()
    assert [o["subscription_id"] for o in listed] == [body["subscription_id"]]


async def test_mobile_order_is_accepted_in_the_locale_currency(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    resp = await api.post("/orders/mobile", content=card(stack, sample("mobile_order.json")))
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["currency"], body["first_charge_minor"]) == ("EUR", 2800)
    assert body["trial_end"] == body["first_invoice_date"]  # Pro's 14-day trial comes first


async def test_partner_csv_upload_answers_per_line_and_a_repeat_creates_nothing(
    api: httpx.AsyncClient,
) -> None:
    csv_text = sample("partner_orders.csv")
    resp = await api.post("/orders/partner", content=csv_text, headers={"Content-Type": "text/csv"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["summary"] == {
        "received": 4,
        "accepted": 2,
        "duplicate": 0,
        "rejected": 0,
        "dead_lettered": 2,
    }
    by_line = {r["index"]: r for r in body["results"]}
    assert by_line[2]["outcome"] == "accepted" and by_line[2]["http_status"] == 201
    assert by_line[2]["order"]["account_id"] == "acme"
    assert by_line[2]["order"]["billing"] == "invoice"
    assert by_line[4]["error"]["code"] == "UNKNOWN_SKU" and by_line[4]["error"]["dead_letter_id"]
    assert by_line[5]["error"]["field"] == "line 5.quantity"

    again = (await api.post("/orders/partner", content=csv_text)).json()
    assert again["summary"]["duplicate"] == 2 and again["summary"]["accepted"] == 0
    letters = (await api.get("/intake/dlq")).json()
    assert sorted(dl["attempts"] for dl in letters) == [2, 2]  # folded, not duplicated


async def test_signed_stripe_checkout_event_is_accepted_and_an_unsigned_one_refused_and_recorded(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    payload = card(stack, sample("stripe_checkout_session_completed.json"))
    signed = await api.post(
        "/orders/stripe-checkout",
        content=payload,
        headers={"Stripe-Signature": stripe_signature(payload)},
    )
    assert signed.status_code == 201, signed.text
    assert signed.json()["channel_order_id"] == "cs_test_a1b2c3d4e5"

    unsigned = await api.post("/orders/stripe-checkout", content=payload)
    assert unsigned.status_code == 401
    error = error_of(unsigned)
    assert (error["code"], error["rule"]) == ("SIGNATURE_INVALID", "payload.signature")
    letter = (await api.get(f"/intake/dlq/{error['dead_letter_id']}")).json()
    assert letter["channel"] == "stripe-checkout" and letter["payload"] == payload

    other = json.dumps({**json.loads(payload), "type": "customer.created"})
    ignored = await api.post(
        "/orders/stripe-checkout",
        content=other,
        headers={"Stripe-Signature": stripe_signature(other)},
    )
    assert ignored.status_code == 200 and "customer.created" in ignored.json()["ignored"]


async def test_referral_batch_enrolls_with_upgrades_and_bonus_and_dead_letters_bad_entries(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    resp = await api.post("/orders/referral", content=card(stack, sample("referral_batch.json")))
    assert resp.status_code == 200, resp.text
    results = {r["channel_order_id"]: r for r in resp.json()["results"]}
    r1 = results["friends-2026:r-1"]
    assert r1["outcome"] == "accepted" and r1["order"]["plan_id"] == "pro"
    assert r1["order"]["referral"] == {
        "program": "friends-2026",
        "referrer_id": "cust_referrer0001",
        "referrer_email": "champion@example.com",
        "bonus_credit_minor": 500,
        "upgraded_from_plan_id": "starter",
    }
    assert results["friends-2026:r-2"]["order"]["plan_id"] == "business"
    assert results["friends-2026:r-3"]["error"]["code"] == "CHANGE_NOT_ALLOWED"
    assert results["friends-2026:r-3"]["error"]["rule"] == "referral.tier_upgrade"
    assert results["friends-2026:r-4"]["error"]["field"] == "enrollments.3.email"


@pytest.mark.parametrize(
    ("channel", "changes", "status", "code", "rule"),
    [
        (
            "web",
            {"line": {"plan_id": "enterprise", "interval": "monthly"}},
            422,
            "SEGMENT_NOT_ALLOWED",
            "policy.segment_interval",
        ),
        (
            "web",
            {"line": {"plan_id": "pro", "quantity": 11}},
            422,
            "INVALID_QUANTITY",
            "order.quantity",
        ),
        (
            "web",
            {"payment": {"method": "card", "token": "4242424242424242"}},
            422,
            "CARD_NUMBER_REFUSED",
            "payment.token",
        ),
        (
            "web",
            {"line": {"plan_id": "coffee-beans", "interval": "weekly", "quantity": 7}},
            422,
            "OUT_OF_STOCK",
            "stock.coverage",
        ),
        (
            "web",
            {
                "customer": {"email": "buyer@hooli.example", "account_id": "nobody"},
                "payment": {"method": "invoice"},
            },
            422,
            "CREDIT_LIMIT_EXCEEDED",
            "credit.account",
        ),
        ("web", {"customer": {}}, 400, "MALFORMED_PAYLOAD", "payload.schema"),
    ],
)
async def test_refused_orders_answer_a_stable_code_the_rule_that_fired_and_a_sentence(
    api: httpx.AsyncClient,
    channel: str,
    changes: dict[str, Any],
    status: int,
    code: str,
    rule: str,
) -> None:
    data = sample_json("web_order.json")
    data.update(changes)
    resp = await api.post(f"/orders/{channel}", content=json.dumps(data))
    assert resp.status_code == status, resp.text
    error = error_of(resp)
    assert (error["code"], error["rule"]) == (code, rule)
    if status == 422:
        counts = (await api.get("/intake/rejections")).json()
        assert counts[0]["rule"] == rule and counts[0]["count"] == 1
    else:
        assert error["field"] == "customer.email" and error["dead_letter_id"]


async def test_physical_order_reserves_the_stock_of_its_first_deliveries(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    data = sample_json("web_order.json")
    data["line"] = {"plan_id": "coffee-beans", "interval": "weekly", "quantity": 2}
    resp = await api.post("/orders/web", content=card(stack, json.dumps(data)))
    assert resp.status_code == 201, resp.text
    assert resp.json()["reserved"] == {"sku": "BEANS-1KG", "quantity": 6}
    assert IntakeStore(stack.store.engine).stock("BEANS-1KG") == (20, 6)


async def test_unknown_channel_is_404_with_its_code(api: httpx.AsyncClient) -> None:
    resp = await api.post("/orders/fax", content="{}")
    assert resp.status_code == 404
    assert error_of(resp)["code"] == "UNKNOWN_CHANNEL"


async def test_dead_letters_list_by_priority_show_replay_corrected_and_discard(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    cheap = sample_json("web_order.json")
    cheap.update(order_id="w-cheap", line={"plan_id": "starter"}, customer={})
    dear = sample_json("web_order.json")
    dear.update(order_id="w-dear", line={"plan_id": "business", "interval": "yearly"}, customer={})
    for data in (cheap, dear):
        assert (await api.post("/orders/web", content=json.dumps(data))).status_code == 400

    listed = (await api.get("/intake/dlq")).json()
    assert [(dl["order_key"], dl["priority"]) for dl in listed] == [
        ("web:w-dear", 990),  # $990 a year
        ("web:w-cheap", 108),  # $9 x 12
    ]
    assert set(listed[0]) >= {"id", "channel", "reason", "priority", "attempts"}
    dear_id, cheap_id = listed[0]["id"], listed[1]["id"]
    shown = (await api.get(f"/intake/dlq/{dear_id}")).json()
    assert json.loads(shown["payload"])["order_id"] == "w-dear"

    fixed = {**dear, "customer": {"email": "dear@example.com"}}
    replay = await api.post(f"/intake/dlq/{dear_id}/replay", content=card(stack, json.dumps(fixed)))
    assert replay.status_code == 200, replay.text
    out = replay.json()
    assert out["status"] == 201 and out["result"]["plan_id"] == "business"
    assert out["dead_letter"]["status"] == "replayed"

    discarded = await api.post(f"/intake/dlq/{cheap_id}/discard", json={"reason": "test order"})
    assert discarded.status_code == 200 and discarded.json()["status"] == "discarded"
    assert (await api.get("/intake/dlq")).json() == []
    everything = (await api.get("/intake/dlq", params={"status": "all"})).json()
    assert {dl["status"] for dl in everything} == {"replayed", "discarded"}

    again = await api.post(f"/intake/dlq/{cheap_id}/replay")
    assert again.status_code == 422 and error_of(again)["code"] == "INVALID_REQUEST"
    missing = await api.get("/intake/dlq/999999")  # NOT_FOUND, as another tenant's letter
    assert missing.status_code == 404 and error_of(missing)["code"] == "NOT_FOUND"


async def test_health_live_ready_and_metrics(api: httpx.AsyncClient, stack: Stack) -> None:
    assert (await api.get("/health/live")).json() == {"ok": True}
    ready = await api.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) == {"temporal", "database", "gateway"}

    await api.post("/orders/web", content=card(stack, sample("web_order.json")))
    await api.post("/orders/web", content="not json")
    metrics = await api.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'oms_intake_orders_accepted_total{channel="web"} 1.0' in text
    assert 'oms_intake_dead_lettered_total{channel="web",code="MALFORMED_PAYLOAD"} 1.0' in text


async def test_each_json_channel_publishes_its_schema(api: httpx.AsyncClient) -> None:
    web = (await api.get("/orders/web/schema")).json()
    assert web["$id"].endswith("/web.json") and "customer" in web["required"]
    partner = (await api.get("/orders/partner/schema")).json()
    assert partner["format"] == "text/csv"
