"""The attacks of issue 11, each refused with its code, through the HTTP API.

(a) changing another customer's subscription, (b) approving as someone else, (d) reading another
principal's result through a shared idempotency key, (e) the edge: huge, unreadable or wrongly
typed bodies, floods and unexpected errors. (c), billing a credit account through an anonymous
intake order, is proven in tests/intake; the access matrix checks its 401.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

import starter.api as api_module
from starter.api import create_app
from tests.support.auth import headers_for, with_auth
from tests.workflows.conftest import TEST_API_KEY, Stack
from workers.config import Config

VISA = "4242424242424242"
TENANT = "acme"
OTHER_TENANT = "globex"


@dataclass
class Api:
    client: httpx.AsyncClient
    engine: Engine
    stack: Stack

    def as_(self, role: str, pid: str, tenant: str = TENANT, **kw: Any) -> dict[str, str]:
        """Headers for the principal ``pid`` (written to the store, replaced if it exists)."""
        return headers_for(self.engine, role, pid, tenant_id=tenant, **kw)

    def card(self) -> str:
        return self.stack.gateway.create_test_payment_method(VISA)


def config(db_url: str, localstripe_url: str = "http://127.0.0.1:1", **auth: Any) -> Config:
    return Config.model_validate(
        with_auth(
            {
                "database": {"url": db_url},
                "gateway": {"api_base": localstripe_url, "api_key": TEST_API_KEY},
            },
            **auth,
        )
    )


@pytest.fixture
async def api(stack: Stack, db_url: str, localstripe_url: str) -> AsyncIterator[Api]:
    app = create_app(config(db_url, localstripe_url), service=stack.service)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield Api(client, stack.store.engine, stack)


def error(resp: httpx.Response, status: int, code: str) -> str:
    """Assert the one error shape with ``status`` and ``code``; the message."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    assert body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    return message


async def created(api: Api, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    payload = {"email": "owner@example.com", "plan_id": "pro", "payment_method_id": api.card()}
    resp = await api.client.post("/subscriptions", json={**payload, **body}, headers=headers)
    assert resp.status_code == 201, resp.text
    answer: dict[str, Any] = resp.json()
    return answer


# --- (a) changing another customer's subscription -------------------------------------------


async def test_a_changing_another_customer_s_subscription_is_refused_and_charges_nothing(
    api: Api,
) -> None:
    victim = api.as_("customer", "victim", customer_id="cus_victim")
    sub = (await created(api, victim, quantity=2))["subscription_id"]
    before_payments = len(api.stack.store.payments(sub))
    before_invoices = len(api.stack.store.list_invoices(sub))
    before_intents = sum(1 for _ in api.stack.gateway.list_payment_intents())
    attack = {"quantity": 9, "when": "now"}
    url = f"/subscriptions/{sub}/changes"

    error(await api.client.post(url, json=attack), 401, "UNAUTHENTICATED")
    unknown = error(
        await api.client.post(
            "/subscriptions/sub_0000000000000000/changes",
            json=attack,
            headers=api.as_("customer", "mallory", customer_id="cus_mallory"),
        ),
        404,
        "NOT_FOUND",
    )
    attackers = {
        "a customer of the same tenant": api.as_("customer", "mallory", customer_id="cus_mallory"),
        "a customer of another tenant": api.as_(
            "customer", "eve", tenant=OTHER_TENANT, customer_id="cus_eve"
        ),
        "the victim's customer id in another tenant": api.as_(
            "customer", "twin", tenant=OTHER_TENANT, customer_id="cus_victim"
        ),
        "an operator of another tenant": api.as_("operator", "ops-globex", tenant=OTHER_TENANT),
    }
    for who, headers in attackers.items():
        message = error(await api.client.post(url, json=attack, headers=headers), 404, "NOT_FOUND")
        # Exactly the answer an id nobody has gets: the subscription's existence does not leak.
        assert message == unknown.replace("sub_0000000000000000", sub), who

    assert len(api.stack.store.payments(sub)) == before_payments
    assert len(api.stack.store.list_invoices(sub)) == before_invoices
    assert sum(1 for _ in api.stack.gateway.list_payment_intents()) == before_intents
    state = (await api.client.get(f"/subscriptions/{sub}", headers=victim)).json()
    assert state["quantity"] == 2
    # The victim itself may make that change (the refusals above are about who, not what).
    mine = await api.client.post(url, json=attack, headers=victim)
    assert mine.status_code == 200 and mine.json()["outcome"] == "applied", mine.text


# --- (b) approving as someone else ----------------------------------------------------------


async def _pending_downgrade(api: Api, requester: dict[str, str], rid: str) -> tuple[str, str]:
    """A 20-seat pro subscription and a downgrade to 5 that waits for billing-approvers."""
    sub = (await created(api, requester, quantity=20, trial_days=0))["subscription_id"]
    down = await api.client.post(
        f"/subscriptions/{sub}/changes",
        json={"quantity": 5, "request_id": rid},
        headers=requester,
    )
    assert down.status_code == 200 and down.json()["outcome"] == "pending_approval", down.text
    return sub, down.json()["request_id"]


async def test_b_approving_takes_the_approver_from_the_credential_only(api: Api) -> None:
    sam = api.as_("operator", "sam")
    sub, rid = await _pending_downgrade(api, sam, "downgrade-1")
    url = f"/approvals/{rid}/approve"
    forged = {"approver": "carol", "reason": "carol said yes"}

    error(await api.client.post(url, json=forged), 401, "UNAUTHENTICATED")
    bob = api.as_("approver", "bob", groups=("billing-approvers",))
    message = error(await api.client.post(url, json=forged, headers=bob), 422, "INVALID_REQUEST")
    assert "approver" in message  # the unknown field is named
    # An approver outside the request's groups, with a valid body.
    dave = api.as_("approver", "dave", groups=("account-managers",))
    error(
        await api.client.post(url, json={"reason": "fine"}, headers=dave),
        403,
        "APPROVER_NOT_AUTHORIZED",
    )
    # "carol" is a finance director in the policy's directory, but this principal named carol
    # has no groups in the principal store: the store decides, not the name.
    carol = api.as_("approver", "carol")
    error(
        await api.client.post(url, json={"reason": "fine"}, headers=carol),
        403,
        "APPROVER_NOT_AUTHORIZED",
    )
    error(
        await api.client.post(url, json={"reason": "fine"}, headers=api.as_("operator", "olga")),
        403,
        "FORBIDDEN",
    )
    other_tenant = api.as_("approver", "bo", tenant=OTHER_TENANT, groups=("billing-approvers",))
    error(
        await api.client.post(url, json={"reason": "fine"}, headers=other_tenant),
        404,
        "NOT_FOUND",
    )
    # The requester, now also an approver of the group, may not approve its own request.
    sam_approver = api.as_("approver", "sam", groups=("billing-approvers",))
    error(
        await api.client.post(url, json={"reason": "mine"}, headers=sam_approver),
        403,
        "SELF_APPROVAL",
    )
    pending = (await api.client.get(f"/approvals/{rid}", headers=bob)).json()
    assert pending["status"] == "pending"

    ok = await api.client.post(url, json={"reason": "within budget"}, headers=bob)
    assert ok.status_code == 200 and ok.json()["status"] == "approved", ok.text
    audit = (await api.client.get(f"/subscriptions/{sub}/audit", headers=bob)).json()
    decided = [row for row in audit if row["action"] == "approval_approved"]
    assert [(row["actor"], row["channel"]) for row in decided] == [("bob", "api")]
    assert decided[0]["request_id"] == rid
    requested = [row for row in audit if row["request_id"] == rid and row["actor"] == "sam"]
    assert requested, audit
    assert not any(row["actor"] == "carol" for row in audit)


async def test_b_an_approval_request_id_of_one_tenant_never_names_another_s_request(
    api: Api,
) -> None:
    """Two tenants may send the same client request id. Each gets its own request, and each
    tenant's approvers see and decide only their own tenant's request."""
    ops_a = api.as_("operator", "ops-a")
    ops_b = api.as_("operator", "ops-b", tenant=OTHER_TENANT)
    sub_a, rid_a = await _pending_downgrade(api, ops_a, "shared-rid")
    bob_a = api.as_("approver", "bob-a", groups=("billing-approvers",))
    bob_b = api.as_("approver", "bob-b", tenant=OTHER_TENANT, groups=("billing-approvers",))

    sub_b = (await created(api, ops_b, quantity=20, trial_days=0))["subscription_id"]
    down_b = await api.client.post(
        f"/subscriptions/{sub_b}/changes",
        json={"quantity": 5, "request_id": "shared-rid"},
        headers=ops_b,
    )
    # The request id derives from (tenant, subscription, key): the same client key names two
    # different requests, so nothing of tenant A's can be reached through it.
    assert down_b.status_code == 200 and down_b.json()["outcome"] == "pending_approval", down_b.text
    assert down_b.json()["request_id"] != rid_a

    listed_a = (await api.client.get("/approvals", headers=bob_a)).json()
    assert [(a["request_id"], a["subscription_id"]) for a in listed_a] == [(rid_a, sub_a)]
    listed_b = (await api.client.get("/approvals", headers=bob_b)).json()
    assert all(a["subscription_id"] == sub_b for a in listed_b), listed_b
    # Tenant A's approver decides tenant A's request, and only that one.
    ok = await api.client.post(f"/approvals/{rid_a}/approve", json={"reason": "ok"}, headers=bob_a)
    assert ok.status_code == 200 and ok.json()["subscription_id"] == sub_a, ok.text
    pending_b = (await api.client.get(f"/subscriptions/{sub_b}/pending", headers=ops_b)).json()
    assert pending_b["scheduled"] == []


# --- (d) idempotency keys -------------------------------------------------------------------


async def test_d_the_same_idempotency_key_from_two_principals_creates_two_subscriptions(
    api: Api,
) -> None:
    alice = api.as_("customer", "alice", customer_id="cus_alice")
    bob = api.as_("customer", "bob", customer_id="cus_bob")
    key = {"Idempotency-Key": "checkout-1"}
    body = {"email": "same@example.com", "plan_id": "starter", "payment_method_id": api.card()}

    first = await api.client.post("/subscriptions", json=body, headers=alice | key)
    assert first.status_code == 201, first.text
    body_b = {**body, "payment_method_id": api.card()}
    second = await api.client.post("/subscriptions", json=body_b, headers=bob | key)
    assert second.status_code == 201, second.text
    assert second.json()["subscription_id"] != first.json()["subscription_id"]
    for who, answer in ((alice, first), (bob, second)):
        row = api.stack.store.get_subscription(answer.json()["subscription_id"])
        assert row is not None
        mine = (await api.client.get("/subscriptions", headers=who)).json()
        assert [s["subscription_id"] for s in mine] == [answer.json()["subscription_id"]]
    assert {
        api.stack.store.get_subscription(a.json()["subscription_id"]).customer_id  # type: ignore[union-attr]
        for a in (first, second)
    } == {"cus_alice", "cus_bob"}

    # Alice's retry (same key, same body) is her first result; another body is refused.
    again = await api.client.post("/subscriptions", json=body, headers=alice | key)
    assert again.status_code == 201 and again.json() == first.json()
    other = {**body, "plan_id": "pro"}
    error(
        await api.client.post("/subscriptions", json=other, headers=alice | key),
        409,
        "IDEMPOTENCY_KEY_REUSED",
    )


async def test_d_a_request_key_on_a_subscription_is_never_another_principal_s_result(
    api: Api,
) -> None:
    ops = api.as_("operator", "ops-1")
    ops2 = api.as_("operator", "ops-2")
    sub = (await created(api, ops, quantity=3))["subscription_id"]
    url = f"/subscriptions/{sub}/changes"
    first = await api.client.post(url, json={"quantity": 4, "request_id": "rq-7"}, headers=ops)
    assert first.status_code == 200 and first.json()["outcome"] == "applied", first.text
    again = await api.client.post(url, json={"quantity": 4, "request_id": "rq-7"}, headers=ops)
    assert again.status_code == 200 and again.json() == first.json()
    for headers, body in (
        (ops, {"quantity": 6, "request_id": "rq-7"}),  # another body
        (ops2, {"quantity": 4, "request_id": "rq-7"}),  # another principal, the same body
    ):
        error(await api.client.post(url, json=body, headers=headers), 409, "IDEMPOTENCY_KEY_REUSED")
    header_key = await api.client.post(
        url, json={"quantity": 5}, headers=ops | {"Idempotency-Key": "rq-7"}
    )
    error(header_key, 409, "IDEMPOTENCY_KEY_REUSED")  # the header and request_id are one key


# --- (e) the edge ---------------------------------------------------------------------------


async def _edge_client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        # raise_app_exceptions=False: answer as a server does (Starlette re-raises unexpected
        # errors after answering, for the server to log).
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


@pytest.fixture
async def edge(engine: Engine, db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The API without Temporal (nothing here gets that far), a 2 KiB body limit."""
    app = create_app(config(db_url, max_body_bytes=2048))
    async for client in _edge_client(app):
        client.headers.update(headers_for(engine, "operator", "edge-ops"))
        yield client


def documented(app_doc: dict[str, Any], path: str, method: str) -> set[int]:
    return {int(s) for s in app_doc["paths"][path][method]["responses"] if s.isdigit()}


async def test_e_a_body_over_the_limit_is_413_declared_or_streamed(
    edge: httpx.AsyncClient,
) -> None:
    big = b'{"email": "' + b"x" * 4096 + b'"}'

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 512):
            yield big[start : start + 512]

    json_type = {"Content-Type": "application/json"}
    for path in ("/subscriptions", "/orders/web"):
        declared = await edge.post(path, content=big, headers=json_type)
        error(declared, 413, "PAYLOAD_TOO_LARGE")
        # No Content-Length (chunked): counted while read.
        streamed = await edge.post(path, content=chunks(), headers=json_type)
        error(streamed, 413, "PAYLOAD_TOO_LARGE")
    anonymous = await edge.post(
        "/subscriptions", content=big, headers={**json_type, "Authorization": ""}
    )
    error(anonymous, 413, "PAYLOAD_TOO_LARGE")  # refused before anything reads it


async def test_e_unreadable_json_and_wrong_content_types_answer_a_documented_error(
    edge: httpx.AsyncClient,
) -> None:
    doc = (await edge.get("/openapi.json")).json()
    allowed = documented(doc, "/subscriptions", "post")
    body = b'{"email": "a@example.com", "plan_id": "pro"}'
    cases = [
        (b'{"email": ', "application/json", 400, "MALFORMED_PAYLOAD"),
        (b"\xff\xfe not utf-8", "application/json", 400, "MALFORMED_PAYLOAD"),
        (b'{"email": "\xff"}', "application/json", 400, "MALFORMED_PAYLOAD"),
        (body, "text/plain", 422, "INVALID_REQUEST"),
        (body, "application/x-www-form-urlencoded", 422, "INVALID_REQUEST"),
        (body, None, 422, "INVALID_REQUEST"),
        (b"[1, 2]", "application/json", 422, "INVALID_REQUEST"),
        (b'"a string"', "application/json", 422, "INVALID_REQUEST"),
    ]
    for content, content_type, status, code in cases:
        headers = {"Content-Type": content_type} if content_type else {}
        resp = await edge.post("/subscriptions", content=content, headers=headers)
        message = error(resp, status, code)
        assert status in allowed, (status, sorted(allowed))
        if status == 422:
            assert "JSON object" in message, message
    error(await edge.put("/catalog"), 405, "METHOD_NOT_ALLOWED")
    error(await edge.get("/no/such/route"), 404, "NOT_FOUND")


async def test_e_missing_or_bad_credentials_are_401_with_a_challenge(
    edge: httpx.AsyncClient,
) -> None:
    for value in ("", "Basic b3BzOnB3", "Bearer nope", "Bearer omsk_x_y"):
        resp = await edge.get("/catalog", headers={"Authorization": value})
        error(resp, 401, "UNAUTHENTICATED")
        assert resp.headers["WWW-Authenticate"] == "Bearer"


async def test_e_over_the_principal_rate_limit_is_429_with_retry_after(
    engine: Engine, db_url: str
) -> None:
    app = create_app(config(db_url, rate_limit_principal="3/minute"))
    async for client in _edge_client(app):
        flooder = headers_for(engine, "operator", "flooder")
        for _ in range(3):
            assert (await client.get("/catalog", headers=flooder)).status_code == 200
        resp = await client.get("/catalog", headers=flooder)
        message = error(resp, 429, "RATE_LIMITED")
        assert 1 <= int(resp.headers["Retry-After"]) <= 60
        assert resp.headers["Retry-After"] in message
        # The limit is the principal's: another one is served.
        other = headers_for(engine, "operator", "bystander")
        assert (await client.get("/catalog", headers=other)).status_code == 200


async def test_e_over_the_ip_rate_limit_is_429_before_authentication(
    engine: Engine, db_url: str
) -> None:
    app = create_app(config(db_url, rate_limit_ip="3/minute"))
    async for client in _edge_client(app):
        for _ in range(3):
            error(await client.get("/catalog"), 401, "UNAUTHENTICATED")
        resp = await client.get("/catalog", headers=headers_for(engine, "operator", "ops"))
        error(resp, 429, "RATE_LIMITED")
        assert int(resp.headers["Retry-After"]) >= 1
        assert (await client.get("/health/live")).status_code == 200  # liveness is never limited


async def test_e_an_unexpected_error_is_500_internal_without_its_text(
    edge: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> None:
        raise RuntimeError("connection to postgres://oms:hunter2@db failed")

    monkeypatch.setattr(api_module, "default_catalog", broken)
    resp = await edge.get("/catalog")
    message = error(resp, 500, "INTERNAL")
    assert "hunter2" not in resp.text and "RuntimeError" not in resp.text
    assert "postgres" not in resp.text and "Traceback" not in resp.text
    assert "reference" in message
