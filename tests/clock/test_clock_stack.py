"""Test clocks on the real dev server (time skipping on), a real worker, localstripe and the DB.

One subscription with a trial is attached to a clock and moved through five months with
``oms clock advance``; a subscription without a clock runs in real time beside it. The API's
clock endpoints are driven the same way.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.gateway import StripeGateway
from activities.store import Store
from activities.tables import Payment
from models import search_attributes
from models.calendar import billing_date
from models.catalog import default_catalog
from models.subscription import Actor
from starter.api import create_app
from starter.service import OmsService, SubscribeRequest
from tests.support.auth import operator_headers, with_auth
from tests.support.procs import ROOT
from workers.config import Config
from workers.main import Dependencies, build_worker
from workers.servers import start_dev_server

API_KEY = "sk_test_clock"
VISA = "4242424242424242"
PRO_MONTHLY_USD = 3000


@pytest.fixture(scope="module")
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    """``temporal server start-dev`` with per-workflow time skipping and our attributes."""
    env = await start_dev_server(search_attributes=search_attributes.ALL, time_skipping=True)
    try:
        yield env
    finally:
        await env.shutdown()


@dataclass
class ClockStack:
    client: Client
    service: OmsService
    gateway: StripeGateway
    env: dict[str, str]  # what an `oms` process needs to reach this stack

    async def oms(self, *args: str) -> Any:
        """``oms ARGS --json`` in its own process; its JSON output (exit code 0 required)."""

        def go() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "starter.cli", *args, "--json"],
                env=self.env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )

        done = await asyncio.to_thread(go)
        assert done.returncode == 0, f"oms {' '.join(args)}: {done.stdout}\n{done.stderr}"
        return json.loads(done.stdout)


@pytest.fixture
async def stack(
    dev_server: WorkflowEnvironment, engine: Engine, db_url: str, localstripe_url: str
) -> AsyncIterator[ClockStack]:
    task_queue = f"clock-{uuid.uuid4().hex[:8]}"
    gateway = StripeGateway(API_KEY, api_base=localstripe_url, max_network_retries=0)
    service = OmsService(
        dev_server.client, Store(engine), default_catalog(), task_queue=task_queue, test_clocks=True
    )
    env = {
        **os.environ,
        "OMS_CONFIG": str(ROOT / "temporal-dev.yaml"),
        "OMS_TEMPORAL_ADDRESS": dev_server.client.service_client.config.target_host,
        "OMS_TASK_QUEUE": task_queue,
        "OMS_DATABASE_URL": db_url,
        "OMS_STRIPE_API_BASE": localstripe_url,
        "OMS_STRIPE_API_KEY": API_KEY,
        "OMS_TEST_CLOCKS": "true",
    }
    with ThreadPoolExecutor(max_workers=8) as executor:
        deps = Dependencies(engine, gateway)
        worker = build_worker(dev_server.client, task_queue, deps, executor)
        async with worker:
            yield ClockStack(dev_server.client, service, gateway, env)


def midnight_in(days: int) -> datetime:
    return datetime.combine(datetime.now(UTC).date() + timedelta(days=days), time(), tzinfo=UTC)


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def periods(store: Store, subscription_id: str) -> list[tuple[date, date, int, str]]:
    return [
        (inv.period_start, inv.period_end, inv.total_minor, inv.status)
        for inv, _ in store.list_invoices(subscription_id)
    ]


def succeeded_payments(engine: Engine, subscription_id: str) -> list[int]:
    with Session(engine) as s:
        rows = s.exec(
            select(Payment)
            .where(Payment.subscription_id == subscription_id, Payment.status == "succeeded")
            .order_by(Payment.id)  # type: ignore[arg-type]
        ).all()
    return [p.amount_minor for p in rows]


async def clock_workflows(client: Client, clock_id: str) -> set[str]:
    query = f"TestClockId = '{clock_id}'"
    for _ in range(50):  # visibility is eventually consistent
        found = {wf.id async for wf in client.list_workflows(query)}
        if found:
            return found
        await asyncio.sleep(0.1)
    return set()


async def test_a_trial_subscription_on_a_clock_moves_five_months_through_oms(
    stack: ClockStack, engine: Engine
) -> None:
    start = midnight_in(2)  # the clock starts ahead of the real time
    clock = await stack.oms("clock", "create", "--at", start.date().isoformat())
    clock_id = clock["clock_id"]
    assert set(clock) == {"clock_id", "now"} and instant(clock["now"]) == start

    pm = stack.gateway.create_test_payment_method(VISA)
    created = await stack.oms(
        "subscribe",
        "--email",
        "clock@example.com",
        "--plan",
        "pro",
        "--interval",
        "monthly",
        "--trial-days",
        "10",
        "--payment-method",
        pm,
        "--clock",
        clock_id,
    )
    sub = created["subscription_id"]
    trial_end = start.date() + timedelta(days=10)  # the subscription starts at the clock's time
    assert created["status"] == "trialing"
    assert created["trial_end"] == created["first_invoice_date"] == trial_end.isoformat()

    # A subscription without a clock, on the same server and worker: it stays in real time.
    real = await stack.service.subscribe(
        SubscribeRequest(
            email="realtime@example.com",
            plan_id="pro",
            trial_days=0,
            payment_method_id=stack.gateway.create_test_payment_method(VISA),
        ),
        Actor(actor="test", channel="test"),
    )
    assert real.status.value == "active"
    assert await clock_workflows(stack.client, clock_id) == {f"subscription:{sub}"}

    store = Store(engine)
    assert periods(store, sub) == []
    expected = [billing_date(trial_end, 1, n) for n in range(6)]
    before = instant((await stack.oms("clock", "now", clock_id))["now"])
    assert timedelta(0) <= before - start < timedelta(minutes=1)
    # One month at a time, then three at once (the workflow continues-as-new after every paid
    # period, so a long advance crosses several runs).
    for months, billed in ((1, 1), (1, 2), (3, 5)):
        advanced = await stack.oms("clock", "advance", clock_id, f"{months}mo")
        assert advanced["clock_id"] == clock_id and advanced["workflows"] == 1
        now = instant((await stack.oms("clock", "now", clock_id))["now"])
        assert now - instant(advanced["now"]) < timedelta(minutes=1)
        assert timedelta(days=28 * months) <= now - before <= timedelta(days=31 * months + 1)
        before = now
        # Trial end, then a renewal each month: invoiced for the right periods and paid.
        assert periods(store, sub) == [
            (expected[n], expected[n + 1], PRO_MONTHLY_USD, "paid") for n in range(billed)
        ]
        assert succeeded_payments(engine, sub) == [PRO_MONTHLY_USD] * billed

    invoices = await stack.oms("invoices", sub)
    assert [i["period_start"] for i in invoices] == [d.isoformat() for d in expected[:5]]
    status = await stack.oms("status", sub)
    assert status["status"] == "active"
    # The real-time subscription did not move: still its first (and only) charge.
    assert len(periods(store, real.subscription_id)) == 1
    assert succeeded_payments(engine, real.subscription_id) == [PRO_MONTHLY_USD]


async def test_the_api_creates_reads_and_advances_a_clock(
    stack: ClockStack, engine: Engine, db_url: str
) -> None:
    config = Config.model_validate(
        with_auth({"database": {"url": db_url}, "temporal": {"test_clocks": True}})
    )
    app = create_app(config, service=stack.service)
    start = midnight_in(3)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://api",
            timeout=120,
            headers=operator_headers(engine),
        ) as api,
    ):
        made = await api.post("/clocks", json={"at": start.isoformat()})
        assert made.status_code == 201, made.text
        clock_id = made.json()["clock_id"]
        assert instant(made.json()["now"]) == start

        sub = await api.post(
            "/subscriptions",
            json={
                "email": "api-clock@example.com",
                "plan_id": "pro",
                "trial_days": 0,
                "payment_method_id": stack.gateway.create_test_payment_method(VISA),
                "clock_id": clock_id,
            },
        )
        assert sub.status_code == 201, sub.text
        sub_id = sub.json()["subscription_id"]
        assert sub.json()["first_invoice_date"] == start.date().isoformat()

        moved = await api.post(f"/clocks/{clock_id}/advance", json={"duration": "1mo"})
        assert moved.status_code == 200, moved.text
        assert moved.json()["workflows"] == 1
        shown = (await api.get(f"/clocks/{clock_id}")).json()
        assert set(shown) == {"clock_id", "now", "created_at"}
        assert instant(shown["now"]).date() == billing_date(start.date(), 1, 1)

        renewal = billing_date(start.date(), 1, 1)
        assert [(p[0], p[3]) for p in periods(Store(engine), sub_id)] == [
            (start.date(), "paid"),
            (renewal, "paid"),
        ]

        missing = await api.get("/clocks/clk_0000000000000000")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "CLOCK_NOT_FOUND"
        bad = await api.post(f"/clocks/{clock_id}/advance", json={"duration": "1 week"})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "INVALID_REQUEST"
        past = await api.post("/clocks", json={"at": "2020-01-01"})
        assert past.status_code == 422 and "past" in past.json()["error"]["message"]
