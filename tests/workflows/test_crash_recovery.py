"""Kill the worker while a renewal charge is in flight: the money still moves exactly once.

Everything is real: a ``temporal server start-dev`` (real time), localstripe, the database, and
the production worker (``build_worker``/``Dependencies``) in a subprocess
(``tests.support.crash_worker``). The only test double is a fault layered on the real gateway:
right after the renewal's confirm succeeded at the gateway, the activity thread writes a marker
file and hangs, so the payment row is still ``pending`` and the activity has not completed. The
test then SIGKILLs that worker and starts a clean one.

To get a *renewal* charge without waiting a month, the subscription starts 40 days in the past
(``OmsService.subscribe(now=...)``): period 0 and period 1 are both due, so the workflow charges
period 0, continues as new and charges period 1 at once. Nothing is mocked in between.

How long recovery takes is set by the charge activity's ``start_to_close_timeout``
(``GATEWAY_TIMEOUT`` in workflows/subscription.py, 60 s): the activity does not heartbeat, so the
server only notices the dead attempt when that timeout expires, then retries it on the new worker.
To keep the test short, after the kill it lowers that timeout for the in-flight attempt through
the server's own operator API (``UpdateActivityExecutionOptions``), as an operator could. The
recovery path is unchanged: the server times the attempt out and the retry runs on the new worker
with the same request. Without that call the test passes too, in about 66 s instead of about 20 s.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import Engine
from temporalio.api.activity.v1 import ActivityOptions
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.api.workflowservice.v1 import UpdateActivityExecutionOptionsRequest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.gateway import METADATA_IDEMPOTENCY_KEY, StripeGateway
from activities.store import Store
from models import search_attributes
from models.catalog import default_catalog
from models.ids import invoice_id, payment_idempotency_key, subscription_workflow_id
from models.subscription import Actor, SubscriptionStatus
from starter.service import OmsService, SubscribeRequest
from tests.support.crash_worker import KEY_FILTER_ENV, MARKER_ENV, WorkerProcess
from workers.servers import start_dev_server
from workflows.subscription import SubscriptionWorkflow

API_KEY = "sk_test_oms_crash"
VISA = "4242424242424242"
# Period 1 (the first renewal) starts a month (28-31 days) after the start, so it is due at once;
# period 2 is still about three weeks away.
STARTED_DAYS_AGO = 40
# The dead attempt's timeout once lowered; the retry on the new worker must fit in it too.
DEAD_ATTEMPT_TIMEOUT = timedelta(seconds=5)
# That timeout, the retry backoff, the workflow task leaving the dead worker's sticky queue
# (5 s), and the invoice settlement, with a wide margin for slow machines.
RECOVERY_TIMEOUT_S = 90


@dataclass
class Workers:
    """Worker subprocesses of one test; every one is killed when the test ends."""

    tmp: Path
    address: str
    namespace: str
    task_queue: str
    db_url: str
    gateway_url: str
    procs: list[WorkerProcess] = field(default_factory=list)

    async def start(self, name: str, env: dict[str, str]) -> WorkerProcess:
        """Start ``tests.support.crash_worker`` with ``env`` added; wait until it polls."""
        proc = WorkerProcess(
            name,
            self.tmp,
            address=self.address,
            namespace=self.namespace,
            task_queue=self.task_queue,
            database_url=self.db_url,
            stripe_api_base=self.gateway_url,
            stripe_api_key=API_KEY,
            env=env,
        )
        self.procs.append(proc)
        try:
            await proc.start_ready(30)
        except (RuntimeError, TimeoutError) as err:
            pytest.fail(f"worker {name} did not start: {err}")
        return proc

    def check_alive(self) -> None:
        """Fail with the worker's log when a worker that should run has exited."""
        for proc in self.procs:
            if not proc.stopping.is_set() and proc.poll() is not None:
                pytest.fail(f"worker exited with {proc.returncode}:\n{proc.log_tail(10**6)}")

    def logs(self) -> str:
        """The tail of every worker's log, for failure messages."""
        return "\n".join(f"--- {p.log_path.name}\n{p.log_tail(4000)}" for p in self.procs)

    def kill_all(self) -> None:
        for proc in self.procs:
            proc.stop(kill=True)


async def wait_until(
    predicate: Callable[[], bool], timeout_s: float, what: str, workers: Workers
) -> None:
    """Poll ``predicate`` until true; fail with the workers' logs (or exit) on timeout."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        workers.check_alive()
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}\n{workers.logs()}")
        await asyncio.sleep(0.2)


async def expire_in_flight_attempt_soon(
    client: Client, workflow_id: str, activity_type: str
) -> None:
    """Lower the start-to-close timeout of the workflow's one started ``activity_type`` attempt.

    Asserts first that exactly that attempt is in flight (started, first attempt): the charge
    the killed worker was running.
    """
    description = await client.get_workflow_handle(workflow_id).describe()
    pending = [
        p
        for p in description.raw_description.pending_activities
        if p.activity_type.name == activity_type
    ]
    assert [(p.state, p.attempt) for p in pending] == [
        (PendingActivityState.PENDING_ACTIVITY_STATE_STARTED, 1)
    ]
    timeout = Duration()
    timeout.FromTimedelta(DEAD_ATTEMPT_TIMEOUT)
    await client.workflow_service.update_activity_execution_options(
        UpdateActivityExecutionOptionsRequest(
            namespace=client.namespace,
            workflow_id=workflow_id,
            activity_id=pending[0].activity_id,
            activity_options=ActivityOptions(start_to_close_timeout=timeout),
            update_mask=FieldMask(paths=["start_to_close_timeout"]),
        )
    )


@pytest.fixture
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    """A real-time ``temporal server start-dev`` with our search attributes registered."""
    env = await start_dev_server(search_attributes=search_attributes.ALL)
    try:
        yield env
    finally:
        await env.shutdown()


async def test_worker_killed_after_the_renewal_confirm_leaves_exactly_one_payment_for_the_period(
    dev_server: WorkflowEnvironment,
    engine: Engine,
    db_url: str,
    localstripe_url: str,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    client = dev_server.client
    store = Store(engine)
    gateway = StripeGateway(API_KEY, api_base=localstripe_url, max_network_retries=0)
    task_queue = f"crash-{uuid.uuid4().hex[:8]}"
    service = OmsService(client, store, default_catalog(), task_queue=task_queue)
    marker = tmp_path / "confirmed.json"

    workers = Workers(
        tmp=tmp_path,
        address=client.service_client.config.target_host,
        namespace=client.namespace,
        task_queue=task_queue,
        db_url=db_url,
        gateway_url=localstripe_url,
    )
    try:
        first = await workers.start(
            "worker-1", {MARKER_ENV: str(marker), KEY_FILTER_ENV: ":period-1:"}
        )

        pm = gateway.create_test_payment_method(VISA)
        result = await service.subscribe(
            SubscribeRequest(
                email=f"{uuid.uuid4().hex[:8]}@example.com",
                plan_id="starter",
                payment_method_id=pm,
                trial_days=0,
            ),
            Actor(actor="crash-test", channel="cli"),
            now=datetime.now(UTC) - timedelta(days=STARTED_DAYS_AGO),
        )
        assert result.status == SubscriptionStatus.active  # period 0 is paid
        sub = result.subscription_id
        renewal_key = payment_idempotency_key(sub, 1, 0)

        # The renewal's confirm went through at the gateway; its outcome is not recorded yet.
        await wait_until(marker.exists, 60, "the renewal charge to be confirmed", workers)
        confirmed = json.loads(marker.read_text())
        assert (confirmed["attempt_key"], confirmed["status"]) == (renewal_key, "succeeded")
        in_flight = store.payment_by_key(renewal_key)
        assert in_flight is not None
        assert (in_flight.status, in_flight.gateway_intent_id) == (
            "pending",
            confirmed["intent_id"],
        )

        first.stop(kill=True)
        killed_at = time.monotonic()
        await expire_in_flight_attempt_soon(
            client, subscription_workflow_id(sub), "payments.charge"
        )
        await workers.start("worker-2", {MARKER_ENV: str(marker)})  # the marker exists: disarmed

        def renewed() -> bool:
            """The renewal's last write (after the payment and the invoice) is in the audit log."""
            return "renewed" in [a.action for a in store.audit_trail(sub)]

        await wait_until(renewed, RECOVERY_TIMEOUT_S, "the renewal to be recorded", workers)
        recovered_at = time.monotonic()

        handle = client.get_workflow_handle(subscription_workflow_id(sub))
        view = await handle.query(SubscriptionWorkflow.state)
        row = store.get_subscription(sub)
    finally:
        workers.kill_all()

    # At the gateway: one PaymentIntent for the renewal attempt, succeeded, the one confirmed
    # before the crash; and one charge per period for the customer.
    renewal_intents = [
        i
        for i in gateway.list_payment_intents()
        if i.metadata.get(METADATA_IDEMPOTENCY_KEY) == renewal_key
    ]
    assert [(i.id, i.status) for i in renewal_intents] == [(confirmed["intent_id"], "succeeded")]
    [intent] = renewal_intents
    assert intent.amount_minor == 900 and intent.currency == "USD"
    charges = _charges(localstripe_url, intent.customer_id or "")
    assert sorted(c["status"] for c in charges) == ["succeeded", "succeeded"]
    assert sum(1 for c in charges if c["payment_intent"] == intent.id) == 1

    # In the database: one payment row per period, the renewal's with that intent.
    payments = {p.idempotency_key: p for p in store.payments(sub)}
    assert set(payments) == {payment_idempotency_key(sub, 0, 0), renewal_key}
    renewal = payments[renewal_key]
    assert (renewal.status, renewal.gateway_intent_id, renewal.amount_minor) == (
        "succeeded",
        intent.id,
        900,
    )
    assert payments[payment_idempotency_key(sub, 0, 0)].status == "succeeded"
    invoices = {inv.id: inv for inv, _ in store.list_invoices(sub)}
    assert invoices[invoice_id(sub, 1)].status == "paid"
    assert invoices[invoice_id(sub, 1)].payment_intent_id == intent.id

    # The subscription carried on: active, period 1 billed, waiting for period 2.
    assert view.status == SubscriptionStatus.active
    assert view.period_index == 2
    assert row is not None and row.status == "active"
    actions = [a.action for a in store.audit_trail(sub)]
    assert actions == ["created", "activated", "renewed"]

    print(
        f"\ncrash recovery: {recovered_at - killed_at:.1f}s from kill to recorded renewal, "
        f"{time.monotonic() - started:.1f}s in all"
    )


def _charges(gateway_url: str, customer_id: str) -> list[dict[str, Any]]:
    """Every charge localstripe holds for a customer, read without the gateway."""
    response = httpx.get(
        f"{gateway_url}/v1/charges",
        params={"customer": customer_id, "limit": 100},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    )
    response.raise_for_status()
    data: list[dict[str, Any]] = response.json()["data"]
    return data
