"""Order intake behind the security boundary (issue 11), over HTTP on the real stack.

One test per attack or refusal: anonymous callers, a customer billing someone else's account, a
partner key used for its own and for another account, another tenant's dead letters and credit
accounts, the same order id from another principal, the same order id with other terms, a trial
the plan does not offer, card numbers in what intake stores. Each checks the answer (status,
code, rule) and that nothing was reserved, recorded or charged where nothing should be.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import Session, select

from activities.auth_store import AuthStore
from activities.intake_store import CreditAccountSeed, IntakeStore
from activities.intake_tables import DeadLetter, IntakeOrder
from activities.tables import AuditLog, Payment, Subscription
from models.identity import Role
from models.ids import customer_id_for_email
from models.redact import MASK
from tests.intake import (
    VISA,
    intake_api,
    sample,
    sample_json,
    stripe_signature,
    test_config,
    test_settings,
)
from tests.support.auth import authenticator, headers_for, operator_headers, principal
from tests.workflows import conftest as workflow_fixtures
from tests.workflows.conftest import TEST_API_KEY, Stack

stack = workflow_fixtures.stack

ADA = "ada@example.com"
MALLORY = "mallory@example.com"


@dataclass
class Env:
    stack: Stack
    api: httpx.AsyncClient  # the default tenant's operator
    anonymous: httpx.AsyncClient
    store: IntakeStore
    acme_pm: str

    @property
    def engine(self) -> Any:
        return self.stack.store.engine

    def card(self) -> str:
        return self.stack.gateway.create_test_payment_method(VISA)

    def web(self, **changes: Any) -> str:
        """The web sample with a real card token and ``changes``."""
        data = sample_json("web_order.json")
        data["payment"]["token"] = self.card()
        data.update(changes)
        return json.dumps(data)


@pytest.fixture
async def env(
    stack: Stack, db_url: str, localstripe_url: str, tmp_path: Path
) -> AsyncIterator[Env]:
    store = IntakeStore(stack.store.engine)
    store.set_stock("BEANS-1KG", 20)
    acme_pm = stack.gateway.create_test_payment_method(VISA)
    for account_id, trusted in (("acme", True), ("globex", False)):
        store.upsert_credit_account(
            CreditAccountSeed(
                account_id=account_id,
                credit_limit_minor=50_000_000,
                trusted_partner=trusted,
                paid_invoices=48,
                billing_email=f"billing@{account_id}.example",
                payment_method_id=acme_pm,
            )
        )
    config = test_config(db_url, localstripe_url, TEST_API_KEY)
    app: FastAPI
    async with (
        intake_api(config, stack.service, test_settings(tmp_path)) as (api, app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api"
        ) as anonymous,
    ):
        yield Env(stack, api, anonymous, store, acme_pm)


def error_of(resp: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = resp.json()["error"]
    assert set(body) >= {"code", "message"}
    assert len(body["message"]) > 15
    return body


def customer_headers(env: Env, email: str, principal_id: str | None = None) -> dict[str, str]:
    customer = customer_id_for_email(email)
    return headers_for(
        env.engine, Role.CUSTOMER, principal_id or f"c-{customer}", customer_id=customer
    )


def orders(env: Env) -> list[IntakeOrder]:
    with Session(env.engine) as s:
        return list(s.exec(select(IntakeOrder)).all())


def count(env: Env, table: Any) -> int:
    return env.stack.store.count(table)


async def recorded(env: Env, subscription_id: str) -> Subscription:
    """The subscription row (the workflow writes it right after accepting the start)."""
    deadline = time.monotonic() + 10
    while True:
        row = env.stack.store.get_subscription(subscription_id)
        if row is not None or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert row is not None
    return row


# --- authentication and permissions -------------------------------------------------------


async def test_anonymous_callers_get_401_everywhere_but_liveness_and_the_signed_webhook(
    env: Env,
) -> None:
    resp = await env.anonymous.post("/orders/web", content=env.web())
    assert resp.status_code == 401
    assert error_of(resp)["code"] == "UNAUTHENTICATED"
    assert resp.headers["www-authenticate"] == "Bearer"
    for method, path in [
        ("POST", "/orders/partner"),
        ("GET", "/orders/web/schema"),
        ("GET", "/intake/orders"),
        ("GET", "/intake/rejections"),
        ("GET", "/intake/dlq"),
        ("GET", "/intake/dlq/1"),
        ("POST", "/intake/dlq/1/replay"),
        ("POST", "/intake/dlq/1/discard"),
        ("GET", "/health/ready"),
        ("GET", "/metrics"),
    ]:
        answer = await env.anonymous.request(method, path)
        assert answer.status_code == 401, (method, path, answer.text)
    bad_key = await env.anonymous.post(
        "/orders/web", content=env.web(), headers={"Authorization": "Bearer omsk_nope_nope"}
    )
    assert bad_key.status_code == 401
    assert (await env.anonymous.get("/health/live")).json() == {"ok": True}
    assert orders(env) == [] and count(env, DeadLetter) == 0  # nothing was even read

    # The Stripe webhook has no bearer credentials: its signature authenticates it, and it acts
    # as the stripe-checkout service principal of the default tenant.
    data = sample_json("stripe_checkout_session_completed.json")
    data["data"]["object"]["setup_intent"]["payment_method"] = env.card()
    payload = json.dumps(data)
    signed = await env.anonymous.post(
        "/orders/stripe-checkout",
        content=payload,
        headers={"Stripe-Signature": stripe_signature(payload)},
    )
    assert signed.status_code == 201, signed.text
    sub = await recorded(env, signed.json()["subscription_id"])
    assert sub.tenant_id == "default"
    audit = env.stack.service.audit(sub.id)
    assert (audit[0]["actor"], audit[0]["channel"]) == ("stripe-checkout", "intake:stripe-checkout")
    unsigned = await env.anonymous.post("/orders/stripe-checkout", content=payload)
    assert unsigned.status_code == 401 and error_of(unsigned)["code"] == "SIGNATURE_INVALID"


@pytest.mark.parametrize(
    ("role", "method", "path", "permission"),
    [
        (Role.APPROVER, "POST", "/orders/web", "orders:submit"),
        (Role.ADMIN, "POST", "/orders/web", "orders:submit"),
        (Role.CUSTOMER, "GET", "/intake/dlq", "intake:read"),
        (Role.CUSTOMER, "GET", "/intake/orders", "intake:read"),
        (Role.CUSTOMER, "GET", "/intake/rejections", "intake:read"),
        (Role.SERVICE, "POST", "/intake/dlq/1/replay", "intake:manage"),
        (Role.APPROVER, "POST", "/intake/dlq/1/discard", "intake:manage"),
        (Role.CUSTOMER, "GET", "/metrics", "health:read"),
        (Role.CUSTOMER, "GET", "/health/ready", "health:read"),
    ],
)
async def test_a_principal_without_the_routes_permission_gets_403(
    env: Env, role: Role, method: str, path: str, permission: str
) -> None:
    headers = headers_for(env.engine, role, f"p-{role.value}", customer_id="cust_x")
    resp = await env.api.request(method, path, headers=headers, content=env.web())
    assert resp.status_code == 403, resp.text
    error = error_of(resp)
    assert error["code"] == "FORBIDDEN" and permission in error["message"]
    assert orders(env) == []


async def test_channels_take_orders_only_from_their_roles(env: Env) -> None:
    customer = customer_headers(env, ADA)
    partner = await partner_key(env)
    refused = [
        ("partner", sample("partner_orders.csv"), customer),
        ("referral", sample("referral_batch.json"), customer),
        ("web", env.web(), partner),
        ("mobile", sample("mobile_order.json"), partner),
    ]
    for channel, body, headers in refused:
        resp = await env.api.post(f"/orders/{channel}", content=body, headers=headers)
        assert resp.status_code == 403, (channel, resp.text)
        error = error_of(resp)
        assert (error["code"], error["rule"]) == ("FORBIDDEN", "access.channel")
    assert orders(env) == [] and count(env, DeadLetter) == 0


# --- account authorization ---------------------------------------------------------------


async def test_the_issues_attack_a_customer_invoicing_another_account_is_refused_and_costs_nothing(
    env: Env,
) -> None:
    """Issue 11: an order naming a seeded account with ``payment.method: invoice`` started a
    Business yearly subscription for five seats and charged the account's card $4,950."""
    attack = json.dumps(
        {
            "order_id": "web-attack-1",
            "customer": {"email": MALLORY, "account_id": "acme"},
            "line": {"plan_id": "business", "interval": "yearly", "quantity": 5},
            "payment": {"method": "invoice"},
            "trial_days": 0,
        }
    )
    resp = await env.api.post("/orders/web", content=attack, headers=customer_headers(env, MALLORY))
    assert resp.status_code == 403, resp.text
    error = error_of(resp)
    assert (error["code"], error["rule"]) == ("ACCOUNT_NOT_AUTHORIZED", "access.account")
    assert "acme" in error["message"] and "dead_letter_id" not in error

    # Naming no account bills the e-mail's own account: someone else's e-mail is refused too.
    env.store.upsert_credit_account(
        CreditAccountSeed(
            account_id=customer_id_for_email("cfo@acme.example"),
            credit_limit_minor=50_000_000,
            paid_invoices=12,
            billing_email="cfo@acme.example",
            payment_method_id=env.acme_pm,
        )
    )
    by_email = json.loads(attack)
    by_email.update(order_id="web-attack-2", customer={"email": "cfo@acme.example"})
    resp = await env.api.post(
        "/orders/web", content=json.dumps(by_email), headers=customer_headers(env, MALLORY)
    )
    assert resp.status_code == 403 and error_of(resp)["code"] == "ACCOUNT_NOT_AUTHORIZED"

    # A card order naming the account (to get its relaxed rules) is refused the same way.
    claim_terms = env.web(
        order_id="web-attack-3", customer={"email": MALLORY, "account_id": "acme"}
    )
    resp = await env.api.post(
        "/orders/web", content=claim_terms, headers=customer_headers(env, MALLORY)
    )
    assert resp.status_code == 403 and error_of(resp)["rule"] == "access.account"

    # Nothing was recorded, reserved, started or charged.
    assert orders(env) == [] and count(env, DeadLetter) == 0
    for account_id in ("acme", customer_id_for_email("cfo@acme.example")):
        account = env.store.credit_account(account_id)
        assert account is not None and account.reserved_minor == 0
    assert count(env, Subscription) == 0 and count(env, Payment) == 0
    metrics = (await env.api.get("/metrics")).text
    assert (
        'oms_intake_orders_rejected_total{channel="web",code="ACCOUNT_NOT_AUTHORIZED",'
        'rule="access.account"} 3.0'
    ) in metrics

    # The same order from a principal authorized for the account goes through (the rules still
    # judge it: here Business yearly has a 14-day trial, so trial_days 0 is refused).
    authorized = json.loads(attack)
    authorized.pop("trial_days")
    resp = await env.api.post(
        "/orders/web",
        content=json.dumps(authorized),
        headers=headers_for(
            env.engine, Role.CUSTOMER, "acme-buyer", customer_id="cust_acme", accounts=("acme",)
        ),
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["account_id"] == "acme"
    sub = await recorded(env, resp.json()["subscription_id"])
    assert sub.customer_id == "cust_acme"  # the principal's customer, not the payload's
    audit = env.stack.service.audit(sub.id)
    assert (audit[0]["actor"], audit[0]["channel"]) == ("acme-buyer", "intake:web")


async def partner_key(env: Env, partner_id: str = "acme") -> dict[str, str]:
    """A real API key (``omsk_...``) for a partner principal allowed to bill its own account."""
    principal(
        env.engine,
        Role.PARTNER,
        f"partner-{partner_id}",
        partner_id=partner_id,
        accounts=(partner_id,),
    )
    key = authenticator(env.engine).create_api_key(f"partner-{partner_id}")
    assert key.startswith("omsk_")
    return {"Authorization": f"Bearer {key}", "Content-Type": "text/csv"}


async def test_a_partner_key_orders_for_its_own_account_and_is_refused_for_others(env: Env) -> None:
    key = await partner_key(env)
    mine = (
        "partner_id,partner_order_id,sku,quantity,customer_email,billing\n"
        "acme,PO-10,OMS-PRO-M,2,it@bluth.example,invoice\n"
    )
    resp = await env.api.post("/orders/partner", content=mine, headers=key)
    assert resp.status_code == 200, resp.text
    [ok] = resp.json()["results"]
    assert ok["outcome"] == "accepted" and ok["order"]["account_id"] == "acme"
    sub = await recorded(env, ok["order"]["subscription_id"])
    audit = env.stack.service.audit(sub.id)
    assert audit[0]["actor"] == "partner-acme"
    acme = env.store.credit_account("acme")
    assert acme is not None and acme.reserved_minor == 6000  # 2 x $30

    others = (
        "partner_id,partner_order_id,sku,quantity,customer_email,billing,account_id\n"
        "acme,PO-11,OMS-PRO-M,2,x@bluth.example,invoice,globex\n"  # another account
        "globex,PO-12,OMS-PRO-M,2,y@bluth.example,invoice,\n"  # another partner's line
        "acme,PO-13,OMS-PRO-M,1,z@bluth.example,card,globex\n"  # claiming globex's terms
    )
    resp = await env.api.post("/orders/partner", content=others, headers=key)
    assert resp.status_code == 200
    body = resp.json()
    assert body["summary"]["rejected"] == 3 and body["summary"]["accepted"] == 0
    by_line = {r["index"]: r for r in body["results"]}
    assert {
        i: (r["http_status"], r["error"]["code"], r["error"]["rule"]) for i, r in by_line.items()
    } == {
        2: (403, "ACCOUNT_NOT_AUTHORIZED", "access.account"),
        3: (403, "ACCOUNT_NOT_AUTHORIZED", "access.partner"),
        4: (403, "ACCOUNT_NOT_AUTHORIZED", "access.account"),
    }
    globex = env.store.credit_account("globex")
    assert globex is not None and globex.reserved_minor == 0
    assert [o.channel_order_id for o in orders(env)] == ["acme:PO-10"]

    # The key reads nothing of intake and sends nothing but its CSV files.
    assert (await env.api.get("/intake/dlq", headers=key)).status_code == 403


async def test_another_tenants_credit_account_is_unknown(env: Env) -> None:
    t2 = operator_headers(env.engine, "t2")
    invoice = env.web(
        order_id="t2-1",
        customer={"email": "buyer@t2.example", "account_id": "acme"},
        payment={"method": "invoice"},
    )
    resp = await env.api.post("/orders/web", content=invoice, headers=t2)
    assert resp.status_code == 422, resp.text
    error = error_of(resp)
    assert (error["code"], error["rule"]) == ("CREDIT_LIMIT_EXCEEDED", "credit.account")
    acme = env.store.credit_account("acme")
    assert acme is not None and acme.reserved_minor == 0

    # t2 may have an account called acme of its own: a different account.
    env.store.upsert_credit_account(
        CreditAccountSeed(
            account_id="acme",
            tenant_id="t2",
            credit_limit_minor=10_000_000,
            paid_invoices=5,
            billing_email="billing@acme-t2.example",
            payment_method_id=env.acme_pm,
        )
    )
    again = await env.api.post("/orders/web", content=invoice, headers=t2)
    assert again.status_code == 201, again.text
    sub = await recorded(env, again.json()["subscription_id"])
    assert sub.tenant_id == "t2"
    mine, theirs = env.store.credit_account("acme", "t2"), env.store.credit_account("acme")
    assert mine is not None and mine.reserved_minor == 6000
    assert (
        theirs is not None
        and theirs.reserved_minor == 0
        and theirs.credit_limit_minor == 50_000_000
    )


# --- tenants ------------------------------------------------------------------------------


async def test_another_tenants_dead_letter_answers_404_exactly_like_an_unknown_id(env: Env) -> None:
    broken = await env.api.post("/orders/web", content=env.web(customer={}))
    assert broken.status_code == 400
    dl_id = error_of(broken)["dead_letter_id"]
    t2 = operator_headers(env.engine, "t2")
    unknown_id = dl_id + 1000
    for method, path in [
        ("GET", "/intake/dlq/{}"),
        ("POST", "/intake/dlq/{}/replay"),
        ("POST", "/intake/dlq/{}/discard"),
    ]:
        theirs = await env.api.request(method, path.format(dl_id), headers=t2)
        nobodys = await env.api.request(method, path.format(unknown_id), headers=t2)
        assert theirs.status_code == nobodys.status_code == 404, theirs.text
        assert error_of(theirs)["code"] == "NOT_FOUND"
        assert theirs.json() == json.loads(nobodys.text.replace(str(unknown_id), str(dl_id)))
    assert (await env.api.get("/intake/dlq", headers=t2)).json() == []
    assert (await env.api.get("/intake/orders", headers=t2)).json() == []
    assert (await env.api.get("/intake/rejections", headers=t2)).json() == []
    mine = (await env.api.get(f"/intake/dlq/{dl_id}")).json()
    assert mine["status"] == "open" and mine["principal_id"] == "default-operator"


async def test_an_order_of_another_tenant_starts_a_subscription_in_that_tenant(env: Env) -> None:
    t2 = operator_headers(env.engine, "t2")
    resp = await env.api.post("/orders/web", content=env.web(order_id="web-t2"), headers=t2)
    assert resp.status_code == 201, resp.text
    sub = await recorded(env, resp.json()["subscription_id"])
    assert sub.tenant_id == "t2"
    [row] = orders(env)
    assert (row.tenant_id, row.principal_id) == ("t2", "t2-operator")
    with Session(env.engine) as s:
        audit = s.exec(select(AuditLog).where(AuditLog.subscription_id == sub.id)).first()
    assert audit is not None and (audit.tenant_id, audit.actor) == ("t2", "t2-operator")
    listed = (await env.api.get("/intake/orders", headers=t2)).json()
    assert [o["order_id"] for o in listed] == [resp.json()["order_id"]]
    assert (await env.api.get("/intake/orders")).json() == []  # not the default tenant's


# --- idempotency --------------------------------------------------------------------------


async def test_the_same_order_id_from_another_principal_is_another_order_and_never_leaks(
    env: Env,
) -> None:
    ada = customer_headers(env, ADA)
    first = await env.api.post("/orders/web", content=env.web(), headers=ada)
    assert first.status_code == 201, first.text
    mallory = customer_headers(env, MALLORY)
    copy = env.web(customer={"email": MALLORY, "timezone": "Europe/London"})  # same order_id
    second = await env.api.post("/orders/web", content=copy, headers=mallory)
    assert second.status_code == 201, second.text  # a new order, not Ada's answer
    a, b = first.json(), second.json()
    assert a["channel_order_id"] == b["channel_order_id"] == "web-1001"
    assert a["order_id"] != b["order_id"] and a["subscription_id"] != b["subscription_id"]
    assert a["subscription_id"] not in second.text and a["customer_id"] not in second.text
    assert b["customer_id"] == customer_id_for_email(MALLORY)
    # Each principal's repeat answers with its own order.
    assert (await env.api.post("/orders/web", content=copy, headers=mallory)).json() == b
    rows = sorted((o.principal_id, o.status) for o in orders(env))
    assert rows == sorted(
        [
            (f"c-{customer_id_for_email(ADA)}", "accepted"),
            (f"c-{customer_id_for_email(MALLORY)}", "accepted"),
        ]
    )


async def test_the_same_order_id_with_other_terms_is_409_and_the_first_order_stands(
    env: Env,
) -> None:
    payload = env.web()
    first = await env.api.post("/orders/web", content=payload)
    assert first.status_code == 201, first.text
    await recorded(env, first.json()["subscription_id"])
    changed = json.loads(payload)
    changed["line"]["quantity"] = 9
    resp = await env.api.post("/orders/web", content=json.dumps(changed))
    assert resp.status_code == 409, resp.text
    error = error_of(resp)
    assert (error["code"], error["rule"]) == ("IDEMPOTENCY_KEY_REUSED", "order.idempotency")
    assert first.json()["subscription_id"] not in resp.text
    # A copy that does not even parse is no better (it is not dead-lettered either).
    broken = json.loads(payload)
    broken["customer"] = {}
    resp = await env.api.post("/orders/web", content=json.dumps(broken))
    assert resp.status_code == 409 and count(env, DeadLetter) == 0
    # Fields that are not terms (when it was placed, the customer's name) are the same order.
    cosmetic = json.loads(payload)
    cosmetic["placed_at"] = "2026-11-22T08:00:00Z"
    cosmetic["customer"]["name"] = "A. Lovelace"
    again = await env.api.post("/orders/web", content=json.dumps(cosmetic))
    assert again.status_code == 200 and again.json() == first.json()
    [row] = orders(env)
    assert row.quantity == 2 and count(env, Subscription) == 1

    # A rejected order started nothing: a corrected copy is judged again (and accepted).
    too_many = env.web(order_id="web-2002", line={"plan_id": "pro", "quantity": 11})
    assert (await env.api.post("/orders/web", content=too_many)).status_code == 422
    fixed = json.loads(too_many)
    fixed["line"]["quantity"] = 3
    accepted = await env.api.post("/orders/web", content=json.dumps(fixed))
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["quantity"] == 3


# --- trial and prices from the plan -------------------------------------------------------


async def test_trial_days_from_the_payload_are_refused_unless_they_are_the_plans(env: Env) -> None:
    cases = [
        ("web", env.web(order_id="w-t0", trial_days=0)),  # Pro has a 14-day trial
        ("web", env.web(order_id="w-t90", trial_days=90)),
    ]
    mobile = sample_json("mobile_order.json")
    mobile["paymentToken"] = env.card()
    mobile["subscription"]["trialDays"] = 365
    cases.append(("mobile", json.dumps(mobile)))
    for channel, body in cases:
        resp = await env.api.post(f"/orders/{channel}", content=body)
        assert resp.status_code == 422, resp.text
        error = error_of(resp)
        assert (error["code"], error["rule"]) == ("TRIAL_NOT_OFFERED", "catalog.trial")
        assert "14-day trial" in error["message"]
    assert count(env, Subscription) == 0

    same = await env.api.post("/orders/web", content=env.web(order_id="w-t14", trial_days=14))
    assert same.status_code == 201, same.text
    assert same.json()["trial_end"] == same.json()["first_invoice_date"]


async def test_a_price_in_a_payload_is_never_used(env: Env) -> None:
    # Web and mobile refuse unknown fields; a partner file's unknown columns are ignored; the
    # Stripe session's amount_total is not read. Every charge uses the catalog's price.
    web = json.loads(env.web())
    web["line"]["unit_amount_minor"] = 1
    resp = await env.api.post("/orders/web", content=json.dumps(web))
    assert resp.status_code == 400 and error_of(resp)["field"] == "line.unit_amount_minor"
    key = await partner_key(env)
    csv_text = (
        "partner_id,partner_order_id,sku,quantity,customer_email,billing,unit_price\n"
        "acme,PO-20,OMS-PRO-M,1,it@bluth.example,invoice,0.01\n"
    )
    [line] = (await env.api.post("/orders/partner", content=csv_text, headers=key)).json()[
        "results"
    ]
    assert line["outcome"] == "accepted" and line["order"]["first_charge_minor"] == 3000
    data = sample_json("stripe_checkout_session_completed.json")
    data["data"]["object"]["setup_intent"]["payment_method"] = env.card()
    data["data"]["object"]["amount_total"] = 1
    data["data"]["object"]["metadata"]["plan_id"] = "pro"
    payload = json.dumps(data)
    resp = await env.anonymous.post(
        "/orders/stripe-checkout",
        content=payload,
        headers={"Stripe-Signature": stripe_signature(payload)},
    )
    assert resp.status_code == 201 and resp.json()["first_charge_minor"] == 3000


# --- redaction ----------------------------------------------------------------------------


async def test_card_numbers_are_masked_in_everything_intake_stores(env: Env) -> None:
    # A malformed order carrying a card number in a free-text field: dead-lettered, masked.
    data = json.loads(env.web(order_id="web-card-1"))
    data["customer"] = {"name": "card 4242 4242 4242 4242 exp 12/30"}  # no e-mail: malformed
    resp = await env.api.post("/orders/web", content=json.dumps(data))
    assert resp.status_code == 400
    dl_id = error_of(resp)["dead_letter_id"]
    shown = (await env.api.get(f"/intake/dlq/{dl_id}")).json()
    assert MASK in shown["payload"] and "4242 4242" not in shown["payload"]
    assert json.loads(shown["payload"])["customer"]["name"] == f"card {MASK} exp 12/30"

    # A card number instead of a token: refused as before, and not stored anywhere.
    data = json.loads(env.web(order_id="4111-1111-1111-1111"))
    data["payment"]["token"] = "5555 5555 5555 4444"
    resp = await env.api.post("/orders/web", content=json.dumps(data))
    assert resp.status_code == 422
    error = error_of(resp)
    assert (error["code"], error["rule"]) == ("CARD_NUMBER_REFUSED", "payment.token")

    # An order that cannot be parsed and whose id is a card number, dead-lettered: masked too.
    raw = '{"order_id": "4000056655665556", "customer": {"email": "x@example.com"}'
    resp = await env.api.post("/orders/web", content=raw)
    assert resp.status_code == 400

    with Session(env.engine) as s:
        stored = [
            *(o.model_dump_json() for o in s.exec(select(IntakeOrder)).all()),
            *(d.model_dump_json() for d in s.exec(select(DeadLetter)).all()),
        ]
    text = "\n".join(stored)
    # Whole numbers, as sent and as bare digits (short fragments can occur in timestamps).
    for number in (
        "4111-1111-1111-1111",
        "4111111111111111",
        "5555 5555 5555 4444",
        "5555555555554444",
        "4000056655665556",
        "4242424242424242",
    ):
        assert number not in text, number
    assert MASK in text
    [row] = orders(env)
    assert row.channel_order_id == MASK and row.error_code == "CARD_NUMBER_REFUSED"


# --- replays act for the sender -----------------------------------------------------------


async def test_a_replay_acts_for_the_principal_that_sent_the_dead_letter(env: Env) -> None:
    key = await partner_key(env)
    bad = (
        "partner_id,partner_order_id,sku,quantity,customer_email,billing,account_id\n"
        "acme,PO-30,OMS-GOLD-M,1,it@bluth.example,invoice,acme\n"
    )

    async def dead_letter(order_id: str) -> int:
        body = bad.replace("PO-30", order_id)
        [line] = (await env.api.post("/orders/partner", content=body, headers=key)).json()[
            "results"
        ]
        dl_id: int = line["error"]["dead_letter_id"]
        return dl_id

    first, second, third = [await dead_letter(f"PO-3{i}") for i in range(3)]
    assert (await env.api.get(f"/intake/dlq/{first}")).json()["principal_id"] == "partner-acme"

    # The operator's correction bills globex: the partner may not, so neither may its replay.
    # Nothing was decided about the order: the letter stays open for a better correction.
    to_globex = bad.replace("OMS-GOLD-M", "OMS-PRO-M").replace(",acme\n", ",globex\n")
    resp = await env.api.post(f"/intake/dlq/{first}/replay", content=to_globex)
    assert resp.status_code == 200, resp.text
    [refused] = resp.json()["result"]["results"]
    assert refused["error"]["code"] == "ACCOUNT_NOT_AUTHORIZED"
    assert resp.json()["dead_letter"]["status"] == "open"
    globex = env.store.credit_account("globex")
    assert globex is not None and globex.reserved_minor == 0

    fixed = bad.replace("PO-30", "PO-31").replace("OMS-GOLD-M", "OMS-PRO-M")
    resp = await env.api.post(f"/intake/dlq/{second}/replay", content=fixed)
    [accepted] = resp.json()["result"]["results"]
    assert accepted["outcome"] == "accepted", resp.text
    assert resp.json()["dead_letter"]["status"] == "replayed"
    sub = await recorded(env, accepted["order"]["subscription_id"])
    audit = env.stack.service.audit(sub.id)
    assert audit[0]["actor"] == "partner-acme"
    assert "replayed by default-operator" in (audit[0]["reason"] or "")
    # The partner's own resend of the corrected line is the same order.
    again = await env.api.post("/orders/partner", content=fixed, headers=key)
    assert again.json()["results"][0]["outcome"] == "duplicate"

    # A sender that is no longer active cannot be acted for: the replay is refused.
    AuthStore(env.engine).disable_principal("partner-acme")
    resp = await env.api.post(f"/intake/dlq/{third}/replay")
    assert resp.status_code == 403 and "no longer an active principal" in error_of(resp)["message"]
    assert (await env.api.get(f"/intake/dlq/{third}")).json()["status"] == "open"
