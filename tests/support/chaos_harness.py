"""Chaos run: many subscriptions renew while the worker is SIGKILLed and the gateway goes away.

Used by ``tests/workflows/test_chaos.py`` (small, in CI) and ``bench/chaos.py`` (large, as a
benchmark); :func:`run_chaos` is the whole experiment and returns its figures.

**Which Temporal server, and how renewals happen in real time.** The time-skipping test server is
no help here. It locks the virtual clock while an activity runs, so an attempt a killed worker was
running still costs its real timeout before the server retries it; and in a trial run, after a
killed worker's attempt timed out, its ``UnlockTimeSkippingWithSleep`` calls expired and the
workflow never completed. So the run uses the real dev server (``temporal server start-dev``) and
gets renewals without waiting months: each subscription is created *backdated*
(``OmsService.subscribe(now=...)``, as the crash test does) by its trial plus 2 to 5 whole billing
periods, so its workflow finds those periods due at once and bills them one after another,
continuing as new after each: the production catch-up path, in real time. Subscriptions are
created at random instants over the first part of the chaos window, so charges are in flight all
through it.

**The chaos** (seeded, so a run can be repeated):

- the worker (the production ``build_worker``/``Dependencies``, in a subprocess:
  ``tests.support.crash_worker`` with its fault disarmed) is SIGKILLed ``kills`` times at random
  instants (each after a random uptime, so it is busy) and restarted after a random pause. Nothing
  is sped up afterwards: the server retries the killed attempts when their own timeouts expire,
  exactly as in production (the charge's 30 s heartbeat timeout, the store activities' 30 s,
  provisioning's 60 s start-to-close timeouts in workflows/subscription.py); the kills fall in the
  first 60 % of the window so that this tail overlaps it;
- the gateway (localstripe, with a state file) is stopped once for ``outage_s`` seconds and
  restarted on the same port with the same state. Charges fail with connection errors meanwhile
  and are retried by the activity retry policy; they are not declines. The stop is a SIGTERM (the
  request in progress completes): real Stripe never loses or tears what it acknowledged, while a
  SIGKILLed localstripe can keep a half-built object in its state file (seen at 300
  subscriptions: its intent list then answered 500). ``outage_mode="hang"`` freezes it instead,
  so requests hang rather than fail (``python -m bench.chaos --outage-mode hang``).

**Afterwards** the worker and gateway are left running until every workflow is idle
(:func:`starter.simulate.workflow_busy`, twice in a row), then the database is reconciled against
the gateway (:func:`activities.reconcile.reconcile`).

Timing on this 2-vCPU machine: the default CI run (30 subscriptions, ~135 charges, 3 kills, a 6 s
outage, a 20 s window) takes 55 to 80 s: the window, then the wait for the killed attempts' own
timeouts (80 s when a kill caught a customer being provisioned: 60 s). Catch-up costs about a
second per period and subscription in series, as the dev server delays the first workflow task of
a run that continued as new. ``python -m bench.chaos --subscriptions 300`` (1368 charges, 8 kills,
a 10 s outage) took about 5 minutes, mostly localstripe rewriting its whole state file on every
write.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import structlog
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlmodel import col

from activities.db import create_db_engine, create_schema
from activities.gateway import StripeGateway
from activities.reconcile import ReconciliationReport, reconcile
from activities.store import Store
from activities.tables import Invoice, Payment, Subscription
from models import search_attributes
from models.catalog import Catalog, default_catalog
from models.errors import ErrorCode, OmsError
from models.subscription import Actor
from starter.fakestripe import FakeStripeProcess
from starter.service import OmsService
from starter.simulate import SimCustomer, plan_customers, wait_idle
from tests.support.crash_worker import WorkerProcess
from workers.servers import start_dev_server

log = structlog.get_logger(__name__)

API_KEY = "sk_test_oms_chaos"
VISA = "4242424242424242"
RETRYABLE = {ErrorCode.TIMEOUT, ErrorCode.TEMPORAL_UNAVAILABLE}
T = TypeVar("T")


@dataclass
class ChaosConfig:
    """The size and the faults of one run."""

    subscriptions: int = 30
    seed: int = 1
    kills: int = 3
    outage_s: float = 6.0
    # down: the gateway process is killed and restarted (connections refused meanwhile);
    # hang: it is frozen (SIGSTOP) and thawed (connections accepted, never answered meanwhile).
    outage_mode: str = "down"
    window_s: float | None = None  # default: grows with the number of subscriptions
    settle_timeout_s: float = 240.0
    min_periods: int = 2  # whole billing periods each subscription is backdated by
    max_periods: int = 5

    @property
    def window(self) -> float:
        return self.window_s or max(20.0, self.subscriptions * 0.25)


class ChaosReport(BaseModel):
    """What happened and what the reconciliation found."""

    subscriptions: int
    seed: int
    created: int
    statuses: dict[str, int]
    invoices: int
    renewals: int
    payments: int
    kills: int
    charges_interrupted: int  # begun before a kill, finished by a retry on a later worker
    outage_s: float
    chaos_s: float
    settle_s: float
    wall_s: float
    events: list[str]
    reconciliation: ReconciliationReport

    def figures(self) -> dict[str, object]:
        """The headline numbers (what ``bench/chaos.py`` prints)."""
        return {
            **self.model_dump(exclude={"reconciliation", "events"}),
            **self.reconciliation.summary(),
        }


@dataclass
class RestartingWorker:
    """The production worker in a subprocess (crash_worker, fault disarmed); one at a time,
    a new process (``worker-N``) after each kill."""

    workdir: Path
    address: str
    namespace: str
    task_queue: str
    db_url: str
    gateway_url: str
    started: int = 0
    current: WorkerProcess | None = None
    logs: list[Path] = field(default_factory=list)

    async def start(self) -> None:
        """Start a worker and wait until it polls (bounded)."""
        self.started += 1
        self.current = WorkerProcess(
            f"worker-{self.started}",
            self.workdir,
            address=self.address,
            namespace=self.namespace,
            task_queue=self.task_queue,
            database_url=self.db_url,
            stripe_api_base=self.gateway_url,
            stripe_api_key=API_KEY,
        )
        self.logs.append(self.current.log_path)
        await self.current.start_ready(60)

    def kill(self) -> None:
        """SIGKILL the running worker (no shutdown: in-flight activities are abandoned)."""
        proc, self.current = self.current, None
        if proc is not None:
            proc.stop(kill=True)

    def tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-chars:]}" for p in self.logs[-2:])


def backdate(c: SimCustomer, catalog: Catalog, rng: random.Random, periods: int) -> timedelta:
    """How far back to start ``c`` so that ``periods`` whole periods after its trial are due."""
    plan = catalog.plan(c.request.plan_id)
    trial = plan.trial_days if c.request.trial_days is None else c.request.trial_days
    price = plan.price(c.request.currency, c.request.interval)
    length = 31 * price.interval.months if price.interval.months else price.interval.days or 7
    return timedelta(days=trial + periods * length, hours=rng.uniform(0, 24))


async def _retry(
    what: str, call: Callable[[], Awaitable[T]], retryable: Callable[[Exception], bool]
) -> T:
    """``call()`` until it succeeds; retries only ``retryable`` errors, for at most 3 minutes."""
    deadline = time.monotonic() + 180
    while True:
        try:
            return await call()
        except Exception as err:
            if not retryable(err) or time.monotonic() > deadline:
                raise
            log.debug("chaos.retry", what=what, error=str(err)[:200])
            await asyncio.sleep(0.5)


def _interrupted(store: Store, kills: list[datetime]) -> int:
    """Payment rows begun before a kill whose outcome was recorded well after it (by a retry).

    A charge takes well under a second; one whose worker died is resumed only when its attempt
    times out (the heartbeat timeout), so its row is updated tens of seconds after the kill.
    """
    with store.session() as s:
        rows = s.execute(select(col(Payment.created_at), col(Payment.updated_at))).all()
    return sum(
        1
        for created, updated in rows
        if any(created <= k and updated >= k + timedelta(seconds=5) for k in kills)
    )


def _count(store: Store, table: type[Payment] | type[Invoice], **where: str) -> int:
    q = select(func.count()).select_from(table)
    for name, value in where.items():
        q = q.where(getattr(table, name) == value)
    with store.session() as s:
        return int(s.execute(q).scalar_one())


async def run_chaos(cfg: ChaosConfig, db_url: str, workdir: Path) -> ChaosReport:
    """The whole experiment; every process it starts is stopped before it returns or raises."""
    started = time.monotonic()
    rng = random.Random(cfg.seed)
    catalog = default_catalog()
    customers = plan_customers(cfg.subscriptions, cfg.seed, catalog)
    events: list[str] = []

    def event(text: str) -> None:
        events.append(f"{time.monotonic() - started:6.1f}s {text}")
        log.info("chaos.event", text=text)

    engine = create_db_engine(db_url)
    create_schema(engine)
    store = Store(engine)
    fake = FakeStripeProcess(state=workdir / "localstripe.pickle")
    env = None
    worker: RestartingWorker | None = None
    try:
        await asyncio.to_thread(fake.start)
        env = await start_dev_server(search_attributes=search_attributes.ALL)
        client = env.client
        task_queue = f"chaos-{uuid.uuid4().hex[:8]}"
        worker = RestartingWorker(
            workdir=workdir,
            address=client.service_client.config.target_host,
            namespace=client.namespace,
            task_queue=task_queue,
            db_url=db_url,
            gateway_url=fake.url,
        )
        await worker.start()
        event("worker 1 up")
        service = OmsService(client, store, catalog, task_queue=task_queue)
        gateway = StripeGateway(API_KEY, api_base=fake.url, max_network_retries=0, timeout_s=10)
        created: list[str] = []
        kills: list[datetime] = []
        chaos_started = time.monotonic()
        window = cfg.window

        async def subscribe(c: SimCustomer, at: float, limit: asyncio.Semaphore) -> None:
            await asyncio.sleep(max(0.0, chaos_started + at - time.monotonic()))
            periods = rng.randint(cfg.min_periods, cfg.max_periods)
            start = datetime.now(UTC) - backdate(c, catalog, rng, periods)
            async with limit:
                pm = await _retry(
                    "payment method",
                    lambda: asyncio.to_thread(gateway.create_test_payment_method, VISA),
                    lambda err: not isinstance(err, OmsError),  # the gateway is down
                )
                req = c.request.model_copy(
                    update={"payment_method_id": pm, "request_id": f"chaos-{cfg.seed}-{c.index}"}
                )
                result = await _retry(
                    "subscribe",
                    lambda: service.subscribe(
                        req, Actor(actor="chaos", channel="cli"), now=start, wait_for_payment=False
                    ),
                    lambda err: isinstance(err, OmsError) and err.code in RETRYABLE,
                )
            created.append(result.subscription_id)

        async def subscribe_all() -> None:
            limit = asyncio.Semaphore(8)
            instants = sorted(rng.uniform(0, window * 0.6) for _ in customers)
            pairs = zip(customers, instants, strict=True)
            await asyncio.gather(*(subscribe(c, t, limit) for c, t in pairs))
            event(f"{len(created)} subscriptions created")

        async def kill_worker_repeatedly() -> None:
            assert worker is not None
            share = window * 0.6 / max(1, cfg.kills)
            for _ in range(cfg.kills):
                await asyncio.sleep(rng.uniform(min(1.5, share / 2), share))
                worker.kill()
                kills.append(datetime.now(UTC))
                event(f"worker {worker.started} SIGKILLed")
                await asyncio.sleep(rng.uniform(0.3, 2.5))
                await worker.start()
                event(f"worker {worker.started} up")

        async def gateway_outage() -> None:
            await asyncio.sleep(rng.uniform(window * 0.2, window * 0.5))
            if cfg.outage_mode == "hang":
                fake.pause()
                event(f"gateway frozen (SIGSTOP) for {cfg.outage_s:.0f}s")
                await asyncio.sleep(cfg.outage_s)
                fake.resume()
                event("gateway thawed (SIGCONT)")
                return
            await asyncio.to_thread(fake.stop)
            event(f"gateway stopped for {cfg.outage_s:.0f}s")
            await asyncio.sleep(cfg.outage_s)
            await asyncio.to_thread(fake.start)
            event("gateway back (same port, same state)")

        await asyncio.gather(subscribe_all(), kill_worker_repeatedly(), gateway_outage())
        await asyncio.sleep(max(0.0, chaos_started + window - time.monotonic()))
        chaos_s = time.monotonic() - chaos_started
        event("chaos over; waiting for every workflow to be idle")
        settle_started = time.monotonic()
        await wait_idle(client, created, cfg.settle_timeout_s)
        settle_s = time.monotonic() - settle_started
        event("all idle; reconciling")
        report = await asyncio.to_thread(reconcile, store, gateway, datetime.now(UTC))
        with store.session() as s:
            statuses = Counter(s.execute(select(col(Subscription.status))).scalars())
        invoices = _count(store, Invoice)
        return ChaosReport(
            subscriptions=cfg.subscriptions,
            seed=cfg.seed,
            created=len(created),
            statuses=dict(statuses),
            invoices=invoices,
            renewals=invoices - len(created),
            payments=_count(store, Payment),
            kills=len(kills),
            charges_interrupted=_interrupted(store, kills),
            outage_s=cfg.outage_s,
            chaos_s=round(chaos_s, 1),
            settle_s=round(settle_s, 1),
            wall_s=round(time.monotonic() - started, 1),
            events=events,
            reconciliation=report,
        )
    except BaseException:
        if worker is not None:
            log.error("chaos.failed", worker_logs=worker.tail())
        raise
    finally:
        if worker is not None:
            worker.kill()
        if env is not None:
            await env.shutdown()
        fake.stop()
        engine.dispose()
