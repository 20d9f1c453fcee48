"""Role x operation: every route of ``create_app``, every role, other tenants and customers.

The table below lists every route the app serves (``test_every_route_is_in_the_matrix`` fails on
a route it does not list, so a new route cannot skip it). For each route the refusals are
derived from ``models/data/roles.yaml`` (``tests/support/access_matrix.py``): anonymous 401,
every role without the permission 403, a principal that may not see the object 404; the table
says what each role holding the permission gets, explicitly: success, or a business error that
can only come after authorization passed (``why``).

Enrollment (docs/enrollment.md) is the one deliberate exception to "every route needs a bearer
credential": its documents, plans, start and sign-in-link routes are public
(``ENROLLMENT_PUBLIC``), and an enrollment's own routes take its token (``Enrollment-Token``) or
a principal with ``enrollments:manage``: their matrix adds the token holders to the roles.

One stack per test; the calls run in table order (refusals change nothing; the allowed calls
move one subscription through reads, an approval, changes, a pause, a card, a cancellation).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlmodel import Session

from activities.intake_tables import DeadLetter
from models.identity import Permission as P
from starter.api import create_app
from starter.auth import Authenticator
from starter.enrollment.legal import current_privacy, current_terms
from starter.intake import IntakeSettings
from tests.support.access_matrix import (
    ANONYMOUS,
    CAST,
    INSIDERS,
    NO_BODY,
    PUBLIC_ROUTES,
    STRIPE,
    STRIPE_SIGNATURE,
    TENANT_A,
    Call,
    Check,
    Outcome,
    Route,
    Scope,
    Values,
    app_routes,
    expand,
    missing_allowed,
)
from tests.support.auth import principal, token_for, with_auth
from tests.workflows.conftest import TEST_API_KEY, Stack
from workers.config import Config

VISA = "4242424242424242"
WEBHOOK_SECRET = "whsec_test_matrix"
REFUSALS = {"UNAUTHENTICATED", "FORBIDDEN", "NOT_FOUND"}

CUSTOMER = "mx-customer-a"
OPERATOR = "mx-operator-a"
APPROVER = "mx-approver-a"
PARTNER = "mx-partner-a"
SERVICE = "mx-service-a"
ADMIN = "mx-admin-a"
OUTSIDE_LIST_READERS = ("mx-operator-b", "mx-customer-b", "mx-customer-a2", "mx-approver-b")


def lists(key: str, value: str, present: bool = True) -> Check:
    """A check: the JSON list does (or does not) hold a row whose ``key`` is ``value`` (with
    this run's placeholders filled)."""

    def check(body: Any, v: Values) -> bool:
        found = {str(row[key]) for row in body}
        return (value.format(**v) in found) == present

    return check


def ok(who: str, status: int = 200, check: Any = None, body: Any = NO_BODY) -> Call:
    return Call(who, status, body=body, check=check)


def business(who: str, status: int, code: str, why: str, body: Any = NO_BODY) -> Call:
    """An allowed role's business error: it can only come after authorization passed."""
    assert code not in REFUSALS
    return Call(who, status, code, body=body, why=why)


def health_answer(body: Any, _: Values) -> bool:
    return isinstance(body, dict) and set(body.get("checks", {})) >= {"database"}


# Placeholders filled at run time: {sub} the subscription under test (tenant A, its customer
# mx-customer-a), {approval} the approval request opened on it, {dead_letter} a dead letter of
# tenant A, {endpoint} a webhook endpoint of tenant A, {key} an API key id, {pm} a fresh payment
# method.
def core_routes() -> list[Route]:
    sub = "/subscriptions/{sub}"
    readers = (CUSTOMER, OPERATOR, APPROVER, SERVICE)
    return [
        Route(
            "GET",
            "/catalog",
            "/catalog",
            P.CATALOG_READ,
            tuple(ok(m.name) for m in INSIDERS.values()),
        ),
        Route(
            "GET",
            "/subscriptions",
            "/subscriptions",
            P.SUBSCRIPTIONS_READ,
            tuple(ok(who, check=lists("subscription_id", "{sub}")) for who in readers),
            outsiders=tuple(
                ok(who, check=lists("subscription_id", "{sub}", present=False))
                for who in OUTSIDE_LIST_READERS
            ),
        ),
        *(
            Route(
                "GET",
                f"/subscriptions/{{subscription_id}}{tail}",
                f"{sub}{tail}",
                P.SUBSCRIPTIONS_READ,
                tuple(ok(who) for who in readers),
                Scope.CUSTOMER_OBJECT,
            )
            for tail in ("", "/timeline", "/invoices")
        ),
        Route(
            "GET",
            "/subscriptions/{subscription_id}/pending",
            f"{sub}/pending",
            P.SUBSCRIPTIONS_READ,
            tuple(
                ok(
                    who,
                    check=lambda b, v: [a["request_id"] for a in b["approvals"]] == [v["approval"]],
                )
                for who in readers
            ),
            Scope.CUSTOMER_OBJECT,
        ),
        Route(
            "GET",
            "/subscriptions/{subscription_id}/audit",
            f"{sub}/audit",
            P.AUDIT_READ,
            (ok(CUSTOMER), ok(OPERATOR), ok(APPROVER)),
            Scope.CUSTOMER_OBJECT,
        ),
        Route(
            "GET",
            "/approvals",
            "/approvals",
            P.APPROVALS_READ,
            (
                ok(OPERATOR, check=lists("request_id", "{approval}")),
                ok(APPROVER, check=lists("request_id", "{approval}")),
            ),
            outsiders=tuple(
                ok(who, check=lists("request_id", "{approval}", present=False))
                for who in ("mx-operator-b", "mx-approver-b")
            ),
        ),
        Route(
            "GET",
            "/approvals/{request_id}",
            "/approvals/{approval}",
            P.APPROVALS_READ,
            (ok(OPERATOR), ok(APPROVER)),
            Scope.OBJECT,
        ),
        Route(
            "POST",
            "/approvals/{request_id}/{verdict}",
            "/approvals/{approval}/approve",
            P.APPROVALS_DECIDE,
            (ok(APPROVER, check=lambda b, v: b["status"] == "approved"),),
            Scope.OBJECT,
            body={"reason": "the access matrix approves"},
        ),
        Route(
            "DELETE",
            "/subscriptions/{subscription_id}/pending/{request_id}",
            f"{sub}/pending/{{approval}}",
            P.SUBSCRIPTIONS_MANAGE,
            (
                # The request is an operator's: a customer may not withdraw it; an operator may.
                Call(CUSTOMER, 403, "FORBIDDEN", why="someone else made the request"),
                ok(OPERATOR, check=lambda b, v: b["scheduled"] == []),
            ),
            Scope.CUSTOMER_OBJECT,
        ),
        Route(
            "POST",
            "/subscriptions/{subscription_id}/changes",
            f"{sub}/changes",
            P.SUBSCRIPTIONS_MANAGE,
            (
                ok(CUSTOMER, check=lambda b, v: b["outcome"] == "applied", body={"quantity": 21}),
                ok(OPERATOR, check=lambda b, v: b["outcome"] == "applied", body={"quantity": 22}),
            ),
            Scope.CUSTOMER_OBJECT,
            body={"quantity": 9, "when": "now"},
        ),
        Route(
            "POST",
            "/subscriptions/{subscription_id}/pause",
            f"{sub}/pause",
            P.SUBSCRIPTIONS_MANAGE,
            (
                ok(CUSTOMER, check=lambda b, v: b["status"] == "paused"),
                business(OPERATOR, 409, "SUBSCRIPTION_PAUSED", "the customer paused it already"),
            ),
            Scope.CUSTOMER_OBJECT,
            body={},
        ),
        Route(
            "POST",
            "/subscriptions/{subscription_id}/resume",
            f"{sub}/resume",
            P.SUBSCRIPTIONS_MANAGE,
            (
                ok(CUSTOMER, check=lambda b, v: b["status"] == "active"),
                business(OPERATOR, 409, "NOT_PAUSED", "the customer resumed it already"),
            ),
            Scope.CUSTOMER_OBJECT,
        ),
        Route(
            "POST",
            "/subscriptions/{subscription_id}/payment-method",
            f"{sub}/payment-method",
            P.PAYMENT_METHODS_UPDATE,
            (ok(CUSTOMER), ok(OPERATOR)),
            Scope.CUSTOMER_OBJECT,
            body={"payment_method_id": "{pm}"},
        ),
        Route(
            "POST",
            "/subscriptions/{subscription_id}/retry",
            f"{sub}/retry",
            P.SUBSCRIPTIONS_RETRY,
            (ok(OPERATOR, check=lambda b, v: b["status"] == "active"),),
            Scope.CUSTOMER_OBJECT,
        ),
        Route(
            "POST",
            "/subscriptions/{subscription_id}/cancel",
            f"{sub}/cancel",
            P.SUBSCRIPTIONS_MANAGE,
            (
                ok(CUSTOMER, check=lambda b, v: b["cancel_at_period_end"] is True),
                ok(OPERATOR, check=lambda b, v: b["cancel_at_period_end"] is True),
            ),
            Scope.CUSTOMER_OBJECT,
            body={"at_period_end": True},
        ),
        Route(
            "POST",
            "/subscriptions/{subscription_id}/uncancel",
            f"{sub}/uncancel",
            P.SUBSCRIPTIONS_MANAGE,
            (
                ok(CUSTOMER, check=lambda b, v: b["cancel_at_period_end"] is False),
                business(OPERATOR, 409, "NOT_CANCELING", "the customer uncanceled it already"),
            ),
            Scope.CUSTOMER_OBJECT,
        ),
        Route(
            "POST",
            "/subscriptions",
            "/subscriptions",
            P.SUBSCRIPTIONS_CREATE,
            (ok(CUSTOMER, 201), ok(OPERATOR, 201)),
            body={"email": "mx-new@example.com", "plan_id": "starter", "payment_method_id": "{pm}"},
        ),
        Route(
            "POST",
            "/clocks",
            "/clocks",
            P.CLOCKS_MANAGE,
            (business(OPERATOR, 403, "TEST_CLOCKS_DISABLED", "clocks are off in this stack"),),
            body={},
        ),
        Route(
            "GET",
            "/clocks/{clock_id}",
            "/clocks/clk_mx",
            P.CLOCKS_MANAGE,
            (business(OPERATOR, 403, "TEST_CLOCKS_DISABLED", "clocks are off in this stack"),),
        ),
        Route(
            "POST",
            "/clocks/{clock_id}/advance",
            "/clocks/clk_mx/advance",
            P.CLOCKS_MANAGE,
            (business(OPERATOR, 403, "TEST_CLOCKS_DISABLED", "clocks are off in this stack"),),
            body={"duration": "1d"},
        ),
        Route(
            "GET",
            "/health",
            "/health",
            P.HEALTH_READ,
            tuple(Call(who, (200, 503), check=health_answer) for who in (OPERATOR, SERVICE, ADMIN)),
        ),
        Route(
            "GET",
            "/kpis",
            "/kpis",
            P.KPIS_READ,
            (ok(OPERATOR, check=lambda b, v: b["subscriptions_live"] >= 1),),
            outsiders=(ok("mx-operator-b", check=lambda b, v: b["subscriptions_live"] == 0),),
        ),
        Route(
            "GET",
            "/admin/principals",
            "/admin/principals",
            P.PRINCIPALS_MANAGE,
            (ok(ADMIN, check=lists("id", OPERATOR)),),
        ),
        Route(
            "PUT",
            "/admin/principals/{principal_id}",
            "/admin/principals/mx-made",
            P.PRINCIPALS_MANAGE,
            (ok(ADMIN),),
            body={
                "id": "mx-made",
                "tenant_id": TENANT_A,
                "role": "customer",
                "customer_id": "mx-made-customer",
            },
        ),
        Route(
            "POST",
            "/admin/principals/{principal_id}/keys",
            "/admin/principals/mx-made/keys",
            P.KEYS_MANAGE,
            (ok(ADMIN, 201, check=lambda b, v: b["api_key"].startswith("omsk_")),),
            body={},
        ),
        Route(
            "POST",
            "/admin/principals/{principal_id}/tokens",
            "/admin/principals/mx-made/tokens",
            P.KEYS_MANAGE,
            (ok(ADMIN, 201),),
        ),
        Route(
            "DELETE",
            "/admin/keys/{key_id}",
            "/admin/keys/{key}",
            P.KEYS_MANAGE,
            (ok(ADMIN, check=lambda b, v: b["revoked"] is True),),
        ),
        Route(
            "DELETE",
            "/admin/principals/{principal_id}",
            "/admin/principals/mx-made",
            P.PRINCIPALS_MANAGE,
            (ok(ADMIN, check=lambda b, v: b["disabled"] is True),),
        ),
        Route(
            "GET",
            "/admin/tenants",
            "/admin/tenants",
            P.TENANTS_MANAGE,
            (ok(ADMIN, check=lists("id", TENANT_A)),),
        ),
    ]


def webhook_routes() -> list[Route]:
    """Webhook endpoints and deliveries (starter/webhooks_api.py): the tenant's own only."""
    return [
        Route(
            "POST",
            "/webhooks/endpoints",
            "/webhooks/endpoints",
            P.WEBHOOKS_MANAGE,
            (ok(OPERATOR, 201, check=lambda b, v: b["endpoint_id"].startswith("we_")),),
            body={"url": "https://hooks.example.com/mx"},
        ),
        Route(
            "GET",
            "/webhooks/endpoints",
            "/webhooks/endpoints",
            P.WEBHOOKS_MANAGE,
            (ok(OPERATOR, check=lists("endpoint_id", "{endpoint}")),),
            outsiders=(
                ok("mx-operator-b", check=lists("endpoint_id", "{endpoint}", present=False)),
            ),
        ),
        Route(
            "GET",
            "/webhooks/deliveries",
            "/webhooks/deliveries",
            P.WEBHOOKS_MANAGE,
            (ok(OPERATOR),),
        ),
        Route(
            "POST",
            "/webhooks/deliveries/{delivery_id}/replay",
            "/webhooks/deliveries/424242/replay",
            P.WEBHOOKS_MANAGE,
            (Call(OPERATOR, 404, "NOT_FOUND", why="no delivery has that id"),),
        ),
        Route(
            "DELETE",
            "/webhooks/endpoints/{endpoint_id}",
            "/webhooks/endpoints/{endpoint}",
            P.WEBHOOKS_MANAGE,
            (ok(OPERATOR),),
            Scope.OBJECT,
        ),
    ]


def intake_routes() -> list[Route]:
    """Intake, health and metrics (starter/intake_api.py). The permissions are those the issue
    implies: submitting orders (and reading a channel's schema) is ``orders:submit``; orders,
    rejections and dead letters are ``intake:read``/``intake:manage``; readiness and metrics are
    ``health:read``. A dead letter of another tenant does not exist (404)."""
    health = (OPERATOR, SERVICE, ADMIN)
    dl = "/intake/dlq/{dead_letter}"

    def unreadable(body: Any, _: Values) -> bool:
        return bool(body["error"]["code"] == "MALFORMED_PAYLOAD")

    return [
        Route(
            "POST",
            "/orders/{channel}",
            "/orders/web",
            P.ORDERS_SUBMIT,
            (
                *(Call(who, 400, check=unreadable) for who in (CUSTOMER, OPERATOR, SERVICE)),
                Call(PARTNER, 403, "FORBIDDEN", why="partners send CSV to /orders/partner"),
            ),
            content=b'{"not": "an order"}',
        ),
        Route(
            "POST",
            "/orders/stripe-checkout",
            "/orders/stripe-checkout",
            P.ORDERS_SUBMIT,
            (ok(STRIPE, check=lambda b, v: "ignored" in b),),
            content=b'{"id": "evt_mx", "type": "customer.created", "data": {"object": {}}}',
            credential=STRIPE_SIGNATURE,
        ),
        Route(
            "GET",
            "/orders/{channel}/schema",
            "/orders/web/schema",
            P.CATALOG_READ,
            tuple(ok(m.name) for m in INSIDERS.values()),
        ),
        Route("GET", "/intake/orders", "/intake/orders", P.INTAKE_READ, (ok(OPERATOR),)),
        Route("GET", "/intake/rejections", "/intake/rejections", P.INTAKE_READ, (ok(OPERATOR),)),
        Route(
            "GET",
            "/intake/dlq",
            "/intake/dlq",
            P.INTAKE_READ,
            (ok(OPERATOR, check=lists("id", "{dead_letter}")),),
            outsiders=(ok("mx-operator-b", check=lists("id", "{dead_letter}", present=False)),),
        ),
        Route(
            "GET",
            "/intake/dlq/{dead_letter_id}",
            dl,
            P.INTAKE_READ,
            (ok(OPERATOR),),
            Scope.OBJECT,
        ),
        Route(
            "POST",
            "/intake/dlq/{dead_letter_id}/replay",
            f"{dl}/replay",
            P.INTAKE_MANAGE,
            (ok(OPERATOR),),
            Scope.OBJECT,
        ),
        Route(
            "POST",
            "/intake/dlq/{dead_letter_id}/discard",
            f"{dl}/discard",
            P.INTAKE_MANAGE,
            (ok(OPERATOR),),
            Scope.OBJECT,
            body={"reason": "the access matrix discards it"},
        ),
        Route(
            "GET",
            "/health/ready",
            "/health/ready",
            P.HEALTH_READ,
            tuple(Call(who, (200, 503), check=health_answer) for who in health),
        ),
        Route("GET", "/metrics", "/metrics", P.HEALTH_READ, tuple(ok(who) for who in health)),
    ]


# Sign-up: public by design (the edge's per-IP rate limit applies). Checked below, and without
# the bearer scheme in OpenAPI (POST /enrollments documents it as optional: assisted sign-up).
ENROLLMENT_PUBLIC = frozenset(
    {
        ("GET", "/enrollments/terms"),
        ("GET", "/plans"),
        ("POST", "/enrollments"),
        ("POST", "/auth/sign-in-link"),
    }
)
ENROLLEE = "enrollee"  # holds {enr}'s token
OTHER_ENROLLEE = "other-enrollee"  # holds another enrollment's token
WRONG_TOKEN = "wrong-token"
ENROLLMENT_TOKEN = "enrollment-token"  # Route.credential: the token or a bearer credential


def some_error(*codes: str) -> Check:
    """A check: the error's code is one of ``codes`` (a step's answer that may vary in time,
    e.g. whether the first code was sent yet)."""

    def check(body: Any, _: Values) -> bool:
        return isinstance(body, dict) and body.get("error", {}).get("code") in codes

    return check


def enrollment_routes() -> list[Route]:
    """An enrollment's own routes (starter/enrollment_api.py) on {enr}, started anonymously in
    tenant A (its merchant tenant): the enrollee's token and tenant A's operator may act; every
    other role is refused by role, tenant B's operator and other tokens get 404."""
    enr = "/enrollments/{enr}"

    def both(status: int | tuple[int, ...], check: Check | None = None) -> tuple[Call, ...]:
        return (
            *(Call(who, status, check=check) for who in (ENROLLEE, OPERATOR)),
            Call(OTHER_ENROLLEE, 404, "NOT_FOUND", why="another enrollment's token"),
            Call(WRONG_TOKEN, 404, "NOT_FOUND", why="a token nobody has"),
        )

    def route(method: str, tail: str, calls: tuple[Call, ...], body: Any = NO_BODY) -> Route:
        return Route(
            method,
            f"/enrollments/{{enrollment_id}}{tail}",
            f"{enr}{tail}",
            P.ENROLLMENTS_MANAGE,
            calls,
            Scope.OBJECT,
            body=body,
            credential=ENROLLMENT_TOKEN,
        )

    awaiting = lambda b, v: b["status"] == "awaiting_verification"  # noqa: E731
    return [
        route("GET", "", both(200, awaiting)),
        route(
            "POST",
            "/verify",
            both(422, some_error("CODE_INVALID", "CODE_EXPIRED")),
            body={"code": "000000"},
        ),
        route("POST", "/resend", both((200, 429))),
        route(
            "PUT",
            "/plan",
            both(200, lambda b, v: b["choice"]["plan_id"] == "business"),
            body={"plan_id": "business", "interval": "monthly", "currency": "USD"},
        ),
        route("GET", "/quote", both(200, lambda b, v: b["plan_id"] == "business")),
        route(
            "POST",
            "/payment-method",
            both(409, some_error("NOT_VERIFIED")),
            body={"payment_method_id": "{pm}"},
        ),
    ]


def all_routes() -> list[Route]:
    return core_routes() + webhook_routes() + intake_routes() + enrollment_routes()


def test_every_route_is_in_the_matrix() -> None:
    """A route the table does not list fails here: new routes cannot skip the matrix."""
    app = create_app(Config.model_validate(with_auth({})))
    served = app_routes(app)
    listed = [r.key for r in all_routes()]
    assert len(listed) == len(set(listed)), "a route is listed twice"
    public = PUBLIC_ROUTES | ENROLLMENT_PUBLIC
    assert served - set(listed) - public == set(), "routes missing from the access matrix"
    assert set(listed) - served == set(), "the matrix lists routes the app does not serve"
    assert served >= public
    for route in all_routes():
        assert not missing_allowed(route), (
            f"{route.key}: no allowed call for {missing_allowed(route)}"
        )
    # OpenAPI documents the bearer scheme on every route that needs it, and only there.
    doc = app.openapi()
    bearer_routes = {
        (method.upper(), path)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if op.get("security") == [{"HTTPBearer": []}]
    }
    signed = {r.key for r in all_routes() if r.credential == STRIPE_SIGNATURE}
    tokened = {r.key for r in all_routes() if r.credential == ENROLLMENT_TOKEN}
    assert bearer_routes == {r.key for r in all_routes()} - signed - tokened
    security = {
        (method.upper(), path): op.get("security")
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    }
    for key in tokened:  # the token or a bearer credential
        assert security[key] == [{"EnrollmentToken": []}, {"HTTPBearer": []}], key
    assert security[("POST", "/enrollments")] == [{"HTTPBearer": []}, {}]  # optional
    for key in ENROLLMENT_PUBLIC - {("POST", "/enrollments")}:
        assert not security[key], key


@dataclass
class World:
    """The objects the matrix runs on and a client per principal."""

    client: httpx.AsyncClient
    headers: dict[str, dict[str, str]]
    values: dict[str, str]
    stack: Stack

    def fill(self, value: Any) -> Any:
        if isinstance(value, str):
            if value == "{pm}":
                return self.stack.gateway.create_test_payment_method(VISA)
            return value.format(**self.values) if "{" in value else value
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        return value

    async def send(self, route: Route, call: Call) -> Outcome:
        body = route.body if call.body is NO_BODY else call.body
        kwargs: dict[str, Any] = {"headers": self.headers.get(call.who, {})}
        if route.content is not None:
            kwargs["content"] = route.content
            if call.who == STRIPE:
                signature = stripe.WebhookSignature.generate_signature_header(
                    route.content.decode(), WEBHOOK_SECRET, timestamp=int(time.time())
                )
                kwargs["headers"] = {"Stripe-Signature": signature}
        elif body is not NO_BODY:
            kwargs["json"] = self.fill(body)
        resp = await self.client.request(route.method, self.fill(route.url), **kwargs)
        try:
            answer: Any = resp.json()
        except ValueError:
            answer = resp.text
        outcome = Outcome(route, call, resp.status_code, answer)
        if resp.status_code not in call.statuses():
            outcome.problems.append("status")
        if resp.status_code >= 400:
            error = answer.get("error") if isinstance(answer, dict) else None
            if not isinstance(error, dict) or not {"code", "message"} <= set(error):
                outcome.problems.append("not the error shape")
            elif call.code is not None and error["code"] != call.code:
                outcome.problems.append(f"code {error['code']}")
        elif call.code is not None:
            outcome.problems.append("expected an error")
        if call.check is not None and not outcome.problems:
            try:
                passed = call.check(answer, self.values)
            except (KeyError, TypeError, IndexError) as err:
                passed, outcome.problems = False, [f"check raised {err!r}"]
            if not passed and not outcome.problems:
                outcome.problems.append("check failed")
        return outcome

    async def run(self, routes: list[Route]) -> list[Outcome]:
        failures = []
        for route in routes:
            for call in expand(route):
                outcome = await self.send(route, call)
                if outcome.problems:
                    failures.append(outcome)
        return failures


@pytest.fixture
async def world(
    stack: Stack, db_url: str, localstripe_url: str, tmp_path: Path
) -> AsyncIterator[World]:
    engine = stack.store.engine
    config = Config.model_validate(
        with_auth(
            {
                "database": {"url": db_url},
                "gateway": {"api_base": localstripe_url, "api_key": TEST_API_KEY},
                "enrollment": {"tenant_id": TENANT_A},  # public sign-ups enroll with tenant A
            }
        )
    )
    app: FastAPI = create_app(config, service=stack.service)
    app.state.intake_settings = IntakeSettings(
        webhook_secret=WEBHOOK_SECRET,
        spool_path=str(tmp_path / "spool.jsonl"),
        attempt_timeout_s=15.0,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            w = World(client, {ANONYMOUS: {}}, {}, stack)

            def enrol(name: str, customer_id: str | None = None) -> None:
                m = CAST[name]
                p = principal(
                    engine,
                    m.role,
                    m.name,
                    tenant_id=m.tenant_id,
                    customer_id=customer_id,
                    groups=m.groups,
                    partner_id=m.partner_id,
                    accounts=m.accounts,
                )
                w.headers[name] = {"Authorization": f"Bearer {token_for(engine, p)}"}

            enrol(OPERATOR)
            created = await client.post(
                "/subscriptions",
                json={
                    "email": "mx-target@example.com",
                    "plan_id": "pro",
                    "quantity": 20,
                    "trial_days": 0,
                    "payment_method_id": stack.gateway.create_test_payment_method(VISA),
                },
                headers=w.headers[OPERATOR],
            )
            assert created.status_code == 201, created.text
            sub = created.json()["subscription_id"]
            row = stack.store.get_subscription(sub)
            assert row is not None and row.tenant_id == TENANT_A
            for name, member in CAST.items():
                if name != OPERATOR:
                    target = member.customer == "target"
                    enrol(name, row.customer_id if target else member.customer)
            # A downgrade from 20 to 5 seats needs approval by billing-approvers.
            down = await client.post(
                f"/subscriptions/{sub}/changes",
                json={"quantity": 5, "request_id": "mx-down"},
                headers=w.headers[OPERATOR],
            )
            assert down.json()["outcome"] == "pending_approval", down.text
            with Session(engine) as s:
                now = datetime.now(UTC)
                letter = DeadLetter(
                    tenant_id=TENANT_A,
                    channel="web",
                    open_key="mx-letter",
                    payload="{not json",
                    reason="the access matrix's dead letter",
                    error_code="MALFORMED_PAYLOAD",
                    received_at=now,
                    created_at=now,
                    updated_at=now,
                )
                s.add(letter)
                s.commit()
                s.refresh(letter)
            principal(engine, "customer", "mx-keyholder", tenant_id=TENANT_A, customer_id="kh")
            key = Authenticator(config.auth, app.state.rt.auth_store).create_api_key("mx-keyholder")
            endpoint = await client.post(
                "/webhooks/endpoints",
                json={"url": "https://hooks.example.com/tenant-a"},
                headers=w.headers[OPERATOR],
            )
            assert endpoint.status_code == 201, endpoint.text
            tokens = []
            for email in ("mx-enrollee@example.com", "mx-other-enrollee@example.com"):
                started = await client.post("/enrollments", json=sign_up(email))
                assert started.status_code == 201, started.text
                tokens.append(started.json())
            w.headers[ENROLLEE] = {"Enrollment-Token": tokens[0]["token"]}
            w.headers[OTHER_ENROLLEE] = {"Enrollment-Token": tokens[1]["token"]}
            w.headers[WRONG_TOKEN] = {"Enrollment-Token": "enrtok_" + "x" * 32}
            w.values = {
                "enr": tokens[0]["enrollment_id"],
                "sub": sub,
                "approval": down.json()["request_id"],
                "dead_letter": str(letter.id),
                "key": key.split("_")[1],
                "endpoint": endpoint.json()["endpoint_id"],
            }
            yield w


def sign_up(email: str) -> dict[str, Any]:
    return {
        "email": email,
        "plan_id": "pro",
        "interval": "monthly",
        "currency": "USD",
        "terms_version": current_terms().version,
        "privacy_version": current_privacy().version,
    }


def report(failures: list[Outcome]) -> str:
    return f"{len(failures)} matrix cases failed:\n" + "\n".join(str(f) for f in failures)


async def test_access_matrix_subscriptions_approvals_admin(world: World) -> None:
    failures = await world.run(core_routes())
    assert not failures, report(failures)


async def test_access_matrix_webhooks(world: World) -> None:
    failures = await world.run(webhook_routes())
    assert not failures, report(failures)


async def test_access_matrix_intake_health_metrics(world: World) -> None:
    failures = await world.run(intake_routes())
    assert not failures, report(failures)


async def test_access_matrix_enrollments(world: World) -> None:
    failures = await world.run(enrollment_routes())
    assert not failures, report(failures)


async def test_enrollment_public_routes(world: World) -> None:
    """Sign-up is public: documents, plans, start and the sign-in link need no credential; a
    bearer credential on start must hold ``enrollments:manage`` (assisted sign-up)."""
    client, headers = world.client, world.headers
    assert (await client.get("/enrollments/terms")).json()["terms_version"]
    assert (await client.get("/plans", params={"currency": "EUR"})).status_code == 200
    anonymous = await client.post("/enrollments", json=sign_up("mx-anon@example.com"))
    assert anonymous.status_code == 201, anonymous.text
    assert anonymous.json()["token"].startswith("enrtok_")
    assisted = await client.post(
        "/enrollments", json=sign_up("mx-assisted@example.com"), headers=headers[OPERATOR]
    )
    assert assisted.status_code == 201, assisted.text
    refused = await client.post(
        "/enrollments", json=sign_up("mx-c@example.com"), headers=headers[CUSTOMER]
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "FORBIDDEN"
    bad = await client.post(
        "/enrollments", json=sign_up("mx-bad@example.com"), headers={"Authorization": "Bearer x"}
    )
    assert bad.status_code == 401
    link = await client.post("/auth/sign-in-link", json={"token": "nobody-has-this-link"})
    assert link.status_code == 401 and link.json()["error"]["code"] == "UNAUTHENTICATED"
    # No token and no credential on an enrollment's own route: 401.
    enr = world.values["enr"]
    assert (await client.get(f"/enrollments/{enr}")).status_code == 401


async def test_public_routes_answer_without_credentials(engine: Engine, db_url: str) -> None:
    app = create_app(Config.model_validate(with_auth({"database": {"url": db_url}})))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            for method, path in sorted(PUBLIC_ROUTES):
                resp = await client.request(method, path)
                assert resp.status_code == 200, (method, path, resp.status_code)
