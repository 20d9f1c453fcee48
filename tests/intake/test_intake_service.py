"""The intake flow over the real stack (time-skipping server, worker, DB, localstripe).

Failures are injected on top of the real path with small doubles: a service factory that reports
Temporal unavailable (as ``Runtime.service`` does when it cannot connect), a service whose first
calls fail with a gRPC ``UNAVAILABLE``, a store whose database "goes down". Everything else is real.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from temporalio.service import RPCError, RPCStatusCode

from activities.auth_store import AuthStore
from activities.intake_store import CreditAccountSeed, IntakeStore
from models.catalog import default_catalog
from models.errors import ErrorCode, OmsError
from models.identity import DEFAULT_TENANT, Principal, Role
from models.ids import customer_id_for_email
from models.subscription import StartResult
from starter.intake import IntakeService, Outcome
from tests.intake import VISA, sample, sample_json, stripe_signature, test_settings
from tests.workflows import conftest as workflow_fixtures
from tests.workflows.conftest import Stack

stack = workflow_fixtures.stack

# Orders here are sent as the default tenant's operator (``make`` writes it to the principal
# store: a replay acts for the letter's sender, read from there). tests/intake/test_access.py
# sends them as customers, partners and other tenants.
OP = Principal(id="default-operator", tenant_id=DEFAULT_TENANT, role=Role.OPERATOR)


class Temporal:
    """What ``Runtime.service`` returns: the real service, or the error it raises when Temporal
    cannot be reached."""

    def __init__(self, stack: Stack) -> None:
        self.real = stack.service
        self.up = True
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        if not self.up:
            raise OmsError(ErrorCode.TEMPORAL_UNAVAILABLE, "cannot reach Temporal at 127.0.0.1:1")
        return self.real


class Flaky:
    """The real service, but the first ``failures`` subscribe calls fail like an unreachable
    frontend (gRPC UNAVAILABLE)."""

    def __init__(self, stack: Stack, failures: int) -> None:
        self.real = stack.service
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> Flaky:
        return self

    async def subscribe(self, *args: Any, **kwargs: Any) -> StartResult:
        self.calls += 1
        if self.calls <= self.failures:
            raise RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")
        return await self.real.subscribe(*args, **kwargs)


class Refusing:
    """A service whose workflow refuses every start (as for an ended subscription)."""

    async def __call__(self) -> Refusing:
        return self

    async def subscribe(self, *args: Any, **kwargs: Any) -> StartResult:
        raise OmsError(
            ErrorCode.SUBSCRIPTION_EXISTS, "subscription sub_x already existed and ended"
        )


class DownStore(IntakeStore):
    """The real store, except that while ``down`` the database cannot be reached."""

    down = False

    def _fail(self) -> None:
        if self.down:
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    def claim(self, *args: Any, **kwargs: Any) -> Any:
        self._fail()
        return super().claim(*args, **kwargs)

    def add_dead_letter(self, *args: Any, **kwargs: Any) -> Any:
        self._fail()
        return super().add_dead_letter(*args, **kwargs)


class BuggyStore(IntakeStore):
    def claim(self, *args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug")


def make(
    stack: Stack, tmp: Path, service: Any = None, store: IntakeStore | None = None, **settings: Any
) -> IntakeService:
    AuthStore(stack.store.engine).put_principal(OP)
    return IntakeService(
        service or Temporal(stack),
        store or IntakeStore(stack.store.engine),
        default_catalog(),
        test_settings(tmp, **settings),
    )


def web_order(stack: Stack, **changes: Any) -> str:
    data = sample_json("web_order.json")
    data["payment"]["token"] = stack.gateway.create_test_payment_method(VISA)
    for key, value in changes.items():
        data[key] = value
    return json.dumps(data)


def beans_order(stack: Stack, order_id: str = "web-beans-1") -> str:
    return web_order(
        stack,
        order_id=order_id,
        line={"plan_id": "coffee-beans", "interval": "weekly", "quantity": 2},
    )


async def test_transient_temporal_failures_are_retried_with_backoff_then_the_order_is_accepted(
    stack: Stack, tmp_path: Path
) -> None:
    flaky = Flaky(stack, failures=2)
    intake = make(stack, tmp_path, service=flaky)
    resp = await intake.handle("web", web_order(stack), principal=OP)
    assert resp.status_code == 201, resp.body()
    assert flaky.calls == 3
    text = intake.metrics.exposition().decode()
    assert 'oms_intake_retries_total{channel="web",code="TEMPORAL_UNAVAILABLE"} 2.0' in text
    assert 'oms_intake_orders_accepted_total{channel="web"} 1.0' in text


async def test_an_order_outlasting_the_budget_is_dead_lettered_then_replayed_once_temporal_is_up(
    stack: Stack, tmp_path: Path
) -> None:
    temporal = Temporal(stack)
    temporal.up = False
    store = IntakeStore(stack.store.engine)
    store.set_stock("BEANS-1KG", 100)
    # A roomy budget so every attempt is made whatever the machine's load.
    intake = make(stack, tmp_path, service=temporal, store=store, budget_s=2.0)

    payload = beans_order(stack)
    resp = await intake.handle("web", payload, principal=OP)
    assert resp.status_code == 503
    error = resp.body()["error"]
    assert error["code"] == "TEMPORAL_UNAVAILABLE" and error["rule"] == "dependency.temporal"
    assert temporal.calls == 4  # max_attempts
    letters = await intake.dead_letters(OP)
    assert [dl["id"] for dl in letters] == [error["dead_letter_id"]]
    dl = letters[0]
    # Two 1 kg bags weekly at $24 for a new customer: 2 x 24 x 52 x weight 1.0.
    assert (dl["channel"], dl["attempts"], dl["priority"]) == ("web", temporal.calls, 2496)
    order = store.get_order("web", "web-beans-1")
    assert order is not None and order.status == "dead_lettered"
    assert store.stock("BEANS-1KG") == (100, 6)  # the stock stays held for the replay

    temporal.up = True
    letter, replayed = await intake.replay(dl["id"], principal=OP)
    assert replayed.status_code == 201, replayed.body()
    assert letter["status"] == "replayed"  # closed by the accepted order itself
    assert letter["resolution"]["subscription_id"] == replayed.body()["subscription_id"]
    assert store.stock("BEANS-1KG") == (100, 6)
    again = await intake.handle("web", payload, principal=OP)
    assert again.status_code == 200 and again.body() == replayed.body()


class SlowDown:
    """Temporal is down and each attempt takes 100 ms to find out; records when attempts start."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    async def __call__(self) -> Any:
        self.starts.append(time.monotonic())
        await asyncio.sleep(0.1)
        raise OmsError(ErrorCode.TEMPORAL_UNAVAILABLE, "connection refused")


async def test_no_retry_starts_after_the_request_budget(stack: Stack, tmp_path: Path) -> None:
    slow = SlowDown()
    intake = make(stack, tmp_path, service=slow, budget_s=0.15)
    began = time.monotonic()
    resp = await intake.handle("web", web_order(stack), principal=OP)
    assert resp.status_code == 503
    assert 1 <= len(slow.starts) <= 2  # a second try fits only if the first ended in time
    assert all(t - began < 0.15 for t in slow.starts[1:])
    [dl] = await intake.dead_letters(OP)
    assert dl["attempts"] == len(slow.starts)


async def test_resending_a_dead_lettered_order_closes_its_dead_letter_when_it_gets_through(
    stack: Stack, tmp_path: Path
) -> None:
    temporal = Temporal(stack)
    temporal.up = False
    intake = make(stack, tmp_path, service=temporal)
    payload = web_order(stack)
    failed = await intake.handle("web", payload, principal=OP)
    again = await intake.handle(
        "web", payload, principal=OP
    )  # the channel retried: folds into one letter
    assert failed.body()["error"]["dead_letter_id"] == again.body()["error"]["dead_letter_id"]
    [dl] = await intake.dead_letters(OP)
    assert dl["attempts"] == temporal.calls  # every attempt of both requests

    temporal.up = True
    ok = await intake.handle("web", payload, principal=OP)
    assert ok.status_code == 201
    assert await intake.dead_letters(OP) == []
    closed = await intake.dead_letter(OP, dl["id"])
    assert closed["status"] == "replayed"


async def test_with_the_database_down_the_dead_letter_is_spooled_and_moved_in_later(
    stack: Stack, tmp_path: Path
) -> None:
    store = DownStore(stack.store.engine)
    intake = make(stack, tmp_path, store=store)
    store.down = True
    resp = await intake.handle("web", web_order(stack), principal=OP)
    assert resp.status_code == 503
    error = resp.body()["error"]
    assert error["code"] == "DATABASE_UNAVAILABLE" and "dead_letter_id" not in error
    assert "intake spool" in error["message"]
    spool = tmp_path / "spool.jsonl"
    assert json.loads(spool.read_text())["order_key"] == "web:web-1001"
    assert "oms_intake_spooled_total" in intake.metrics.exposition().decode()

    store.down = False
    [dl] = await intake.dead_letters(OP)  # listing moves the spool into the table first
    assert dl["order_key"] == "web:web-1001" and dl["error_code"] == "DATABASE_UNAVAILABLE"
    assert not spool.exists()


async def test_a_bug_in_the_flow_is_dead_lettered_as_internal_not_lost(
    stack: Stack, tmp_path: Path
) -> None:
    intake = make(stack, tmp_path, store=BuggyStore(stack.store.engine))
    resp = await intake.handle("web", web_order(stack), principal=OP)
    assert resp.status_code == 500
    error = resp.body()["error"]
    assert error["code"] == "INTERNAL" and error["dead_letter_id"]
    [dl] = await intake.dead_letters(OP)
    assert "KeyError" in dl["reason"] and dl["rule"] == "intake.internal"


async def test_the_same_order_sent_concurrently_starts_one_subscription(
    stack: Stack, tmp_path: Path
) -> None:
    intake = make(stack, tmp_path)
    payload = web_order(stack)
    responses = await asyncio.gather(
        *(intake.handle("web", payload, principal=OP) for _ in range(5))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200, 200, 200, 201]
    bodies = {json.dumps(r.body(), sort_keys=True) for r in responses}
    assert len(bodies) == 1
    rows = intake.store.list_orders()
    assert len(rows) == 1 and rows[0].status == "accepted"


async def test_a_start_refused_by_the_workflow_is_a_rejection_that_releases_the_stock(
    stack: Stack, tmp_path: Path
) -> None:
    store = IntakeStore(stack.store.engine)
    store.set_stock("BEANS-1KG", 100)
    intake = make(stack, tmp_path, service=Refusing(), store=store)
    resp = await intake.handle("web", beans_order(stack), principal=OP)
    assert resp.status_code == 409
    assert resp.body()["error"] == {
        "code": "SUBSCRIPTION_EXISTS",
        "message": "subscription sub_x already existed and ended",
        "rule": "workflow.start",
    }
    assert store.stock("BEANS-1KG") == (100, 0)
    order = store.get_order("web", "web-beans-1")
    assert order is not None and (order.status, order.rule) == ("rejected", "workflow.start")


async def test_an_invoice_order_reserves_credit_and_starts_with_the_account_method_on_file(
    stack: Stack, tmp_path: Path
) -> None:
    store = IntakeStore(stack.store.engine)
    pm = stack.gateway.create_test_payment_method(VISA)
    store.upsert_credit_account(
        CreditAccountSeed(
            account_id="initech",
            credit_limit_minor=5_000_000,
            enterprise=True,
            paid_invoices=12,
            payment_method_id=pm,
            billing_email="ap@initech.example",
        )
    )
    intake = make(stack, tmp_path, store=store)
    resp = await intake.handle("web", sample("web_invoice_order.json"), principal=OP)
    assert resp.status_code == 201, resp.body()
    body = resp.body()
    assert (body["plan_id"], body["interval"], body["billing"], body["rule_set"]) == (
        "enterprise",
        "yearly",
        "invoice",
        "relaxed",
    )
    account = store.credit_account("initech")
    assert account is not None and account.reserved_minor == 1_200_000
    sub = stack.store.get_subscription(body["subscription_id"])
    deadline = time.monotonic() + 10
    while sub is None and time.monotonic() < deadline:  # the workflow records it right after
        await asyncio.sleep(0.05)
        sub = stack.store.get_subscription(body["subscription_id"])
    assert sub is not None and sub.payment_method_id == pm
    assert body["customer_id"] == customer_id_for_email("ap@initech.example")  # the payer
    assert body["account_id"] == "initech"


async def test_a_stripe_event_replayed_later_is_checked_against_its_receipt_time(
    stack: Stack, tmp_path: Path
) -> None:
    temporal = Temporal(stack)
    temporal.up = False
    data = sample_json("stripe_checkout_session_completed.json")
    data["data"]["object"]["setup_intent"]["payment_method"] = (
        stack.gateway.create_test_payment_method(VISA)
    )
    payload = json.dumps(data)
    header = stripe_signature(payload)
    intake = make(stack, tmp_path, service=temporal)
    failed = await intake.handle(
        "stripe-checkout", payload, {"Stripe-Signature": header}, principal=OP
    )
    assert failed.status_code == 503

    temporal.up = True
    intake.clock = lambda: datetime.now(UTC) + timedelta(hours=6)  # long past the tolerance
    letter, replayed = await intake.replay(failed.body()["error"]["dead_letter_id"], principal=OP)
    assert replayed.status_code == 201, replayed.body()
    assert letter["status"] == "replayed"


async def test_rejections_and_dead_letters_are_counted_by_channel_and_rule(
    stack: Stack, tmp_path: Path
) -> None:
    intake = make(stack, tmp_path)
    mobile = sample_json("mobile_order.json")
    mobile["subscription"].update(billingPeriod="P3M", currencyCode="USD")
    rejected = await intake.handle("mobile", json.dumps(mobile), principal=OP)
    assert rejected.status_code == 422
    assert rejected.body()["error"]["rule"] == "policy.channel_interval"
    broken = await intake.handle("web", "{not json", principal=OP)
    assert broken.status_code == 400 and broken.body()["error"]["dead_letter_id"]
    unknown = await intake.handle("fax", "{}", principal=OP)
    assert unknown.status_code == 404 and unknown.body()["error"]["rule"] == "channel.known"
    text = intake.metrics.exposition().decode()
    assert (
        'oms_intake_orders_rejected_total{channel="mobile",code="CHANNEL_NOT_ALLOWED",'
        'rule="policy.channel_interval"} 1.0'
    ) in text
    assert 'oms_intake_dead_lettered_total{channel="web",code="MALFORMED_PAYLOAD"} 1.0' in text
    assert 'oms_intake_orders_received_total{channel="unknown"} 1.0' in text
    assert "oms_intake_request_seconds_bucket" in text
    rows = await intake.orders(OP, status="rejected")
    assert [(r["channel"], r["rule"], r["rule_set"]) for r in rows] == [
        ("mobile", "policy.channel_interval", "strict")
    ]


@pytest.mark.parametrize("line", [3, 4])
async def test_a_bad_partner_line_is_replayed_alone_once_corrected(
    stack: Stack, tmp_path: Path, line: int
) -> None:
    store = IntakeStore(stack.store.engine)
    store.upsert_credit_account(
        CreditAccountSeed(
            account_id="acme",
            credit_limit_minor=50_000_000,
            trusted_partner=True,
            paid_invoices=48,
            payment_method_id=stack.gateway.create_test_payment_method(VISA),
            billing_email="ap@acme.example",
        )
    )
    intake = make(stack, tmp_path, store=store)
    csv_text = sample("partner_orders.csv")
    resp = await intake.handle("partner", csv_text, principal=OP)
    assert resp.status_code == 200
    assert resp.summary() == {
        "received": 4,
        "accepted": 2,
        "duplicate": 0,
        "rejected": 0,
        "dead_lettered": 2,
    }
    bad = next(i for i in resp.items if i.index == line + 1)
    assert bad.outcome == Outcome.DEAD_LETTERED and bad.error is not None
    dl = await intake.dead_letter(OP, bad.error.dead_letter_id or 0)
    fixed = dl["payload"].replace("OMS-GOLD-M", "OMS-PRO-M").replace(",two,", ",2,")
    letter, replayed = await intake.replay(dl["id"], fixed, principal=OP)
    assert replayed.status_code == 200 and replayed.summary()["accepted"] == 1
    assert letter["status"] == "replayed"
    again = await intake.handle("partner", csv_text, principal=OP)  # the file again: nothing new
    # The two good lines are repeats. The corrected line's order exists now with other terms than
    # its broken original, which is refused (409, nothing written) instead of dead-lettered again;
    # the other broken line folds into its open letter.
    assert again.summary() == {
        "received": 4,
        "accepted": 0,
        "duplicate": 2,
        "rejected": 1,
        "dead_lettered": 1,
    }
    original = next(i for i in again.items if i.index == line + 1)
    assert original.status_code == 409 and original.error is not None
    assert original.error.code == "IDEMPOTENCY_KEY_REUSED"
    open_letters = await intake.dead_letters(OP)
    assert len(open_letters) == 1 and open_letters[0]["attempts"] == 2


async def test_a_replay_with_other_terms_is_refused_and_its_letter_stays_open(
    stack: Stack, tmp_path: Path
) -> None:
    temporal = Temporal(stack)
    temporal.up = False
    store = IntakeStore(stack.store.engine)
    store.set_stock("BEANS-1KG", 100)
    intake = make(stack, tmp_path, service=temporal, store=store, budget_s=2.0)
    payload = beans_order(stack)
    failed = await intake.handle("web", payload, principal=OP)
    assert failed.status_code == 503
    dl_id = failed.body()["error"]["dead_letter_id"]

    temporal.up = True
    changed = json.loads(payload)
    changed["line"]["quantity"] = 3  # the order may have started with 2: not another order
    letter, replayed = await intake.replay(dl_id, json.dumps(changed), principal=OP)
    assert replayed.status_code == 409
    assert replayed.body()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert letter["status"] == "open"  # nothing was decided: still to replay or discard
    assert store.stock("BEANS-1KG") == (100, 6)  # the order's reservation is still held

    discarded = await intake.discard(OP, dl_id, "resent under a new order id")
    assert discarded["status"] == "discarded" and discarded["resolution"]["by"] == OP.id
    assert store.stock("BEANS-1KG") == (100, 0)
