"""The HTTP API over a real workflow stack (time-skipping server, DB, localstripe)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from starter.api import create_app
from tests.support.auth import headers_for, operator_headers, with_auth
from tests.workflows.conftest import TEST_API_KEY, Stack
from workers.config import Config


@pytest.fixture
async def api(stack: Stack, db_url: str, localstripe_url: str) -> AsyncIterator[httpx.AsyncClient]:
    config = Config.model_validate(
        with_auth(
            {
                "database": {"url": db_url},
                "gateway": {"api_base": localstripe_url, "api_key": TEST_API_KEY},
            }
        )
    )
    app = create_app(config, service=stack.service)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = operator_headers(stack.store.engine)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api", headers=headers
        ) as client:
            yield client


async def test_create_answers_201_with_first_invoice_and_is_listed_and_readable(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    pm = stack.gateway.create_test_payment_method("4242424242424242")
    resp = await api.post(
        "/subscriptions",
        json={"email": "cy@example.com", "plan_id": "starter", "payment_method_id": pm},
        headers={"Idempotency-Key": "api-create-1"},
    )
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["status"] == "active"
    assert body["first_charge_minor"] == 900 and body["currency"] == "USD"
    sub = body["subscription_id"]

    again = await api.post(
        "/subscriptions",
        json={"email": "cy@example.com", "plan_id": "starter", "payment_method_id": pm},
        headers={"Idempotency-Key": "api-create-1"},
    )
    assert again.status_code == 201 and again.json() == body

    listed = (await api.get("/subscriptions", params={"status": "active"})).json()
    assert [r["subscription_id"] for r in listed] == [sub]
    state = (await api.get(f"/subscriptions/{sub}")).json()
    assert state["status"] == "active" and state["plan_id"] == "starter"
    invoices = (await api.get(f"/subscriptions/{sub}/invoices")).json()
    assert [i["total_minor"] for i in invoices] == [900]

    canceled = await api.post(f"/subscriptions/{sub}/cancel", json={"at_period_end": False})
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    refused = await api.post(f"/subscriptions/{sub}/cancel", json={"at_period_end": True})
    assert refused.status_code in (404, 409)
    assert refused.json()["error"]["code"] in ("SUBSCRIPTION_CANCELED", "NOT_FOUND")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"plan_id": "nope", "payment_method_id": "pm_x123"}, 422, "UNKNOWN_PLAN"),
        (
            {"plan_id": "pro", "currency": "GBP", "payment_method_id": "pm_x123"},
            422,
            "CURRENCY_NOT_OFFERED",
        ),
        (
            {"plan_id": "enterprise", "interval": "monthly", "payment_method_id": "pm_x123"},
            422,
            "INTERVAL_NOT_OFFERED",
        ),
        ({"plan_id": "pro"}, 422, "PAYMENT_METHOD_REQUIRED"),
        (
            {"plan_id": "pro", "payment_method_id": "4242 4242 4242 4242"},
            422,
            "CARD_NUMBER_REFUSED",
        ),
        (
            {"plan_id": "pro", "payment_method_id": "pm_x123", "timezone": "Mars/Base"},
            422,
            "INVALID_TIMEZONE",
        ),
        ({"plan_id": "pro", "payment_method_id": "pm_doesnotexist"}, 422, "PAYMENT_METHOD_INVALID"),
        ({"payment_method_id": "pm_x123"}, 422, "INVALID_REQUEST"),
    ],
)
async def test_bad_create_requests_get_a_stable_code_and_a_sentence(
    api: httpx.AsyncClient, body: dict[str, object], status: int, code: str
) -> None:
    resp = await api.post("/subscriptions", json={"email": "dee@example.com", **body})
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code
    assert len(error["message"]) > 10


async def test_unknown_subscription_is_404_with_its_code(api: httpx.AsyncClient) -> None:
    resp = await api.get("/subscriptions/sub_missing000")
    assert resp.status_code == 404
    # The same code as for another tenant's subscription: no existence leak.
    assert resp.json()["error"]["code"] == "NOT_FOUND"


async def test_health_reports_each_dependency(api: httpx.AsyncClient) -> None:
    resp = await api.get("/health")
    checks = resp.json()["checks"]
    assert set(checks) == {"temporal", "database", "gateway"}
    assert checks["database"]["ok"] and checks["gateway"]["ok"]


async def test_changes_and_approvals_through_the_api(api: httpx.AsyncClient, stack: Stack) -> None:
    pm = stack.gateway.create_test_payment_method("4242424242424242")
    created = await api.post(
        "/subscriptions",
        json={
            "email": "ap@example.com",
            "plan_id": "pro",
            "quantity": 20,
            "trial_days": 0,
            "payment_method_id": pm,
        },
    )
    sub = created.json()["subscription_id"]

    engine = stack.store.engine
    sam = headers_for(engine, "operator", "sam")
    up = await api.post(f"/subscriptions/{sub}/changes", json={"quantity": 21}, headers=sam)
    assert up.status_code == 200, up.text
    body = up.json()
    assert body["outcome"] == "applied" and body["request_id"]

    assert [line["amount_minor"] < 0 for line in body["lines"]] == [True, False]

    down = await api.post(
        f"/subscriptions/{sub}/changes",
        json={"quantity": 5, "request_id": "api-dec"},
        headers=sam,
    )
    assert down.json()["outcome"] == "pending_approval"
    rid = down.json()["request_id"]  # the client's key, scoped to its principal
    bob = headers_for(engine, "approver", "bob", groups=("billing-approvers",))
    listed = (await api.get("/approvals", headers=bob)).json()
    assert [(a["request_id"], a["subscription_id"]) for a in listed] == [(rid, sub)]
    assert listed[0]["deadline"]
    assert listed[0]["requested_by"] == "sam"

    # sam, now also an approver of the group, may not approve sam's own request.
    sam_approver = headers_for(engine, "approver", "sam", groups=("billing-approvers",))
    wrong = await api.post(f"/approvals/{rid}/approve", json={"reason": "me"}, headers=sam_approver)
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "SELF_APPROVAL"
    ok = await api.post(f"/approvals/{rid}/approve", json={"reason": "fine"}, headers=bob)
    assert ok.status_code == 200 and ok.json()["status"] == "approved"
    pending = (await api.get(f"/subscriptions/{sub}/pending")).json()
    assert [c["request_id"] for c in pending["scheduled"]] == [rid]
    withdrawn = await api.delete(f"/subscriptions/{sub}/pending/{rid}")
    assert withdrawn.status_code == 200 and withdrawn.json()["scheduled"] == []
    audit = (await api.get(f"/subscriptions/{sub}/audit")).json()
    assert {"sam", "bob"} <= {row["actor"] for row in audit}

    new_pm = stack.gateway.create_test_payment_method("4242424242424242")
    updated = await api.post(
        f"/subscriptions/{sub}/payment-method", json={"payment_method_id": new_pm}
    )
    assert updated.status_code == 200 and updated.json()["retried"] is False
    paused = await api.post(f"/subscriptions/{sub}/pause", json={"request_id": "api-p"})
    assert paused.json()["status"] == "paused"
    resumed = await api.post(f"/subscriptions/{sub}/resume")
    assert resumed.json()["status"] == "active"
