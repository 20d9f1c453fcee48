"""``oms simulate`` and ``oms kpis``: measure renewals on the real code paths, and report KPIs.

``oms simulate`` runs N subscriptions for M months on the time-skipping test server in a few
seconds to minutes: the real workflow, the real activities and database (a fresh SQLite file in a
temporary directory, or ``--database-url``), and the real gateway path to a private localstripe
process, with :class:`activities.fault_injection.InjectedDeclines` declining a share ``R`` of the
confirmations (``hard_share`` of them hard). Each attempt has a new idempotency key and is decided
afresh, so a soft decline recovers on a dunning retry with probability ``1 - R``. A hard decline
waits for a new card: a seeded share of those customers (``--card-update-share``) adds one a few
days later through the same update the CLI and API use.

Two options prove that subscriptions never break:

* ``--faults F`` wraps the gateway in :class:`activities.fault_injection.InjectedFaults`: each of
  the first two tries of a gateway call fails with chance ``F``, with every class of gateway error
  (connection errors before the call and after it succeeded, 5xx, rate limits with and without
  ``Retry-After``, a rejected key, a detached card on confirmation, ``processing`` answers).
* ``--messages K`` sends each subscription on average ``K`` customer and approver messages a month
  (:mod:`starter.sim_messages`: cancels, pauses, resumes, changes, card updates, approval
  decisions) concurrently with the clock moving, through the service layer the CLI uses.

Customers are a seeded mix of the catalog (plans, intervals, currencies, quantities, time zones,
anchor days, trials), starting on days spread over the first weeks. The virtual clock moves one day
at a time; afterwards every workflow is left to finish what it started, the database is reconciled
against the gateway (:mod:`activities.reconcile`) and the KPIs are read from the database
(:mod:`models.kpis` has the definitions). The output is one JSON object on one line (``--json``)
whose keys are a stable contract: ``renewals_due``, ``renewals_paid``, ``renewal_success_rate``,
``first_attempt_failure_rate``, ``double_charges``, ``uncharged_periods``, ``wall_s``, and more.
These must be 0 for any seed: ``double_charges``, ``uncharged_periods``, ``charges_after_cancel``,
``credit_mismatches`` and ``refunds_over_payment`` (:mod:`activities.reconcile`),
``workflows_failed`` and ``workflows_stuck`` (:mod:`starter.sim_checks` defines them),
``message_errors`` and ``start_errors`` (a subscription that could not start for another reason
than a declined first payment). ``messages_rejected`` counts the business refusals by code.

``oms kpis`` reads the same KPIs from the configured database for a date range.

Mount both at the top level of the ``oms`` app: ``app.add_typer(simulate.app)``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import structlog
import typer
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col
from temporalio.api.testservice.v1 import SleepRequest
from temporalio.client import Client, WorkflowExecutionDescription, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from activities.db import create_db_engine, create_schema
from activities.fault_injection import InjectedDeclines, InjectedFaults
from activities.gateway import StripeGateway
from activities.gateway_port import PaymentGateway
from activities.kpis import kpi_report
from activities.reconcile import ReconciliationReport, reconcile
from activities.store import Store
from activities.tables import AuditLog, Payment
from models.calendar import billing_date
from models.catalog import Catalog, default_catalog
from models.errors import ErrorCode, OmsError
from models.ids import subscription_id_for_request, subscription_workflow_id
from models.kpis import KpiReport, StepRecovery
from models.subscription import Actor
from starter.fakestripe import FakeStripeProcess
from starter.service import OmsService, SubscribeRequest
from starter.sim_checks import (
    RPC_TIMEOUT,
    STUCK_ACTIVITY_ATTEMPTS,
    WorkflowProblem,
    check_fleet,
    find_wedged,
)
from starter.sim_messages import (
    MESSAGE_TIMEOUT_S,
    SLOTS_PER_DAY,
    MessageKind,
    Messenger,
    SubscriptionInfo,
    pending_approvals,
)
from workers.main import Dependencies, build_worker
from workers.servers import start_time_skipping

log = structlog.get_logger(__name__)

SIM_API_KEY = "sk_test_oms_simulation"
VISA = "4242424242424242"
TIMEZONES = (
    "UTC",
    "America/New_York",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Europe/Berlin",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Australia/Sydney",
)
PLAN_WEIGHTS = {"starter": 30, "pro": 30, "business": 12, "enterprise": 5, "coffee-beans": 23}
HARD_CATEGORIES = ("hard", "authentication_required")
SUBSCRIBE_CONCURRENCY = 16
WORKER_THREADS = 32
QUIESCE_TIMEOUT_S = 120.0
# Started, first workflow task scheduled, started, completed.
FIRST_TASK_DONE_EVENTS = 4
MAX_PROBLEMS_LISTED = 20
# While the clock is asked to move, look for workflows blocking it this often (wall seconds).
WATCHDOG_S = 3.0
DRAIN_HOURS = 48
MAX_SLEEP_TRIES = 2
SLEEP_RPC = timedelta(seconds=30)

app = typer.Typer(add_completion=False)


# --- the customer mix ----------------------------------------------------------------------


@dataclass(frozen=True)
class SimCustomer:
    """One simulated customer's order."""

    index: int
    start_day: int
    request: SubscribeRequest


def plan_customers(
    n: int, seed: int, catalog: Catalog, start_spread_days: int = 28
) -> list[SimCustomer]:
    """``n`` orders drawn from the catalog, deterministic for a seed.

    Plans by :data:`PLAN_WEIGHTS`, any of the plan's prices, a time zone from
    :data:`TIMEZONES`; about a third of month-interval orders bill on an anchor day; trials follow
    the plan (some customers skip a plan's trial, some get one on a plan without); one in ten
    orders more than one seat. Start days are spread over ``[0, start_spread_days)``.
    """
    rng = random.Random(seed)
    plans = {p.plan_id: p for p in catalog.plans}
    weighted = [pid for pid in PLAN_WEIGHTS if pid in plans]
    weights = [PLAN_WEIGHTS[pid] for pid in weighted]
    customers = []
    for i in range(n):
        plan = plans[rng.choices(weighted, weights)[0]]
        price = rng.choice(plan.prices)
        trial: int | None
        if plan.trial_days:
            trial = None if rng.random() < 0.7 else 0
        else:
            trial = 7 if rng.random() < 0.2 else 0
        anchor_day = rng.randint(1, 31) if price.interval.months and rng.random() < 0.35 else None
        quantity = rng.randint(2, 5) if rng.random() < 0.1 else 1
        customers.append(
            SimCustomer(
                index=i,
                start_day=rng.randrange(max(1, start_spread_days)),
                request=SubscribeRequest(
                    email=f"sim{seed}-{i}@example.com",
                    plan_id=plan.plan_id,
                    interval=price.interval.value,
                    currency=price.currency,
                    trial_days=trial,
                    quantity=quantity,
                    timezone=rng.choice(TIMEZONES),
                    anchor_day=anchor_day,
                    request_id=f"sim-{seed}-{i}",
                ),
            )
        )
    return customers


# --- the simulation ------------------------------------------------------------------------


class SimulationConfig(BaseModel):
    """What to simulate."""

    subscriptions: int = Field(ge=1, le=20_000)
    months: int = Field(ge=1, le=120)
    decline_rate: float = Field(ge=0, le=1)
    hard_share: float = Field(default=0.1, ge=0, le=1)
    seed: int = 0
    card_update_share: float = Field(default=0.5, ge=0, le=1)
    start_spread_days: int = Field(default=28, ge=1, le=366)
    database_url: str | None = None
    faults: float = Field(default=0.0, ge=0, le=1)
    messages: float = Field(default=0.0, ge=0, le=100)


class SimulationResult(BaseModel):
    """The simulation's figures (the ``--json`` contract; keys are only ever added)."""

    subscriptions: int
    months: int
    decline_rate: float
    hard_share: float
    seed: int
    started: int
    refused_at_start: int
    card_updates: int
    renewals_due: int
    renewals_paid: int
    renewals_pending: int
    renewal_success_rate: float | None
    first_charges_due: int
    first_charges_paid: int
    first_attempt_failure_rate: float | None
    recovery_by_step: list[StepRecovery]
    dunning_recovery_rate: float | None
    involuntary_churn: float | None
    involuntary_churned: int
    double_charges: int
    uncharged_periods: int
    payment_mismatches: int
    orphan_intents: int
    unrecorded_charges: int
    invoices: int
    payments: int
    faults: float = 0.0
    messages: float = 0.0
    faults_injected: dict[str, int] = Field(default_factory=dict)
    messages_sent: int = 0
    messages_accepted: int = 0
    messages_rejected: dict[str, int] = Field(default_factory=dict)
    message_errors: int = 0
    message_errors_by_code: dict[str, int] = Field(default_factory=dict)
    messages_by_kind: dict[str, int] = Field(default_factory=dict)
    start_errors: int = 0
    days_simulated: int = 0
    clock_blocked: bool = Field(
        default=False, description="the clock stopped moving; the run ended early"
    )
    workflows_checked: int = 0
    workflows_failed: int = 0
    workflows_stuck: int = 0
    workflow_problems: list[WorkflowProblem] = Field(
        default_factory=list, description=f"the first {MAX_PROBLEMS_LISTED} failed or stuck"
    )
    charges_after_cancel: int = 0
    credit_mismatches: int = 0
    credits_unchecked: int = 0
    refunds_over_payment: int = 0
    simulated_from: datetime
    simulated_to: datetime
    wall_s: float
    kpis: KpiReport
    reconciliation: ReconciliationReport


Progress = Callable[[str], None]


def _noop(_: str) -> None:
    return None


def _db_is_empty(store: Store) -> bool:
    with store.session() as s:
        return int(s.execute(select(func.count()).select_from(Payment)).scalar_one()) == 0


def _new_hard_declines(store: Store, after_id: int) -> tuple[list[str], int]:
    """Subscriptions with a hard decline audited after ``after_id``; and the last id seen."""
    with store.session() as s:
        rows = s.execute(
            select(col(AuditLog.id), col(AuditLog.subscription_id), col(AuditLog.details))
            .where(col(AuditLog.id) > after_id, col(AuditLog.action) == "payment_failed")
            .order_by(col(AuditLog.id))
        ).all()
    hard = [
        r[1] for r in rows if json.loads(r[2] or "{}").get("decline_category") in HARD_CATEGORIES
    ]
    return hard, max([after_id, *(r[0] or 0 for r in rows)])


def workflow_busy(desc: WorkflowExecutionDescription) -> bool:
    """True while a workflow run has work outstanding: an activity, a workflow task, or its first
    workflow task not yet done.

    The last one matters: the dev server delays the first workflow task of a run that continued
    as new about a second after a short previous run (observed with Temporal CLI 1.9.1), and
    meanwhile the new run shows neither a pending workflow task nor a pending activity.

    A closed run, a workflow task that keeps failing (attempt 2 or more) and an activity that keeps
    failing (:data:`starter.sim_checks.STUCK_ACTIVITY_ATTEMPTS`) are not busy: they will not settle
    by waiting, and :func:`starter.sim_checks.check_fleet` reports them.
    """
    if desc.status is not None and desc.status != WorkflowExecutionStatus.RUNNING:
        return False
    raw = desc.raw_description
    started = raw.workflow_execution_info.history_length >= FIRST_TASK_DONE_EVENTS
    activities = [a for a in raw.pending_activities if a.attempt < STUCK_ACTIVITY_ATTEMPTS]
    task = raw.HasField("pending_workflow_task") and raw.pending_workflow_task.attempt < 2
    return bool(activities) or task or not started


async def wait_idle(client: Client, subscription_ids: list[str], timeout_s: float) -> int:
    """Wait until no subscription workflow is busy (see :func:`workflow_busy`), twice in a row.

    Returns:
        How many were still busy when ``timeout_s`` ran out (0 when all settled); the figures are
        computed anyway, and the workflow checks say what those are doing.
    """
    deadline = time.monotonic() + timeout_s
    calm = 0
    busy = 0
    while calm < 2:
        busy = 0
        for sub in subscription_ids:
            handle = client.get_workflow_handle(subscription_workflow_id(sub))
            try:
                busy += workflow_busy(await handle.describe(rpc_timeout=RPC_TIMEOUT))
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise
        calm = calm + 1 if busy == 0 else 0
        if calm < 2:
            if time.monotonic() > deadline:
                log.warning("simulate.not_idle", busy=busy, timeout_s=timeout_s)
                return busy
            await asyncio.sleep(0.5)
    return 0


async def run_simulation(cfg: SimulationConfig, progress: Progress = _noop) -> SimulationResult:
    """Run the simulation described by ``cfg``; every process it starts is stopped before return.

    Raises:
        OmsError: ``INVALID_REQUEST`` when ``database_url`` names a database that already holds
            payments (the figures would mix two runs).
    """
    started_wall = time.monotonic()
    catalog = default_catalog()
    customers = plan_customers(cfg.subscriptions, cfg.seed, catalog, cfg.start_spread_days)
    rng = random.Random(f"{cfg.seed}:card-updates")
    with tempfile.TemporaryDirectory(prefix="oms-sim-") as tmp:
        url = cfg.database_url or f"sqlite:///{Path(tmp) / 'oms.db'}"
        engine = create_db_engine(url)
        fake = FakeStripeProcess()
        env = None
        try:
            create_schema(engine)
            store = Store(engine)
            if not _db_is_empty(store):
                raise OmsError(
                    ErrorCode.INVALID_REQUEST,
                    "the simulation needs an empty database; this one already holds payments",
                )
            fake.start()
            base = StripeGateway(SIM_API_KEY, api_base=fake.url)
            gateway: PaymentGateway = InjectedDeclines(
                base, decline_rate=cfg.decline_rate, hard_share=cfg.hard_share, seed=cfg.seed
            )
            faults: InjectedFaults | None = None
            if cfg.faults > 0:
                gateway = faults = InjectedFaults(gateway, rate=cfg.faults, seed=cfg.seed)
            env = await start_time_skipping()
            task_queue = f"sim-{uuid.uuid4().hex[:8]}"
            service = OmsService(
                env.client, store, catalog, task_queue=task_queue, search_attributes=False
            )
            progress(
                f"simulating {cfg.subscriptions} subscriptions for {cfg.months} months "
                f"(decline rate {cfg.decline_rate}, faults {cfg.faults}, messages {cfg.messages}, "
                f"seed {cfg.seed}); database {engine.url!r}"
            )
            with ThreadPoolExecutor(max_workers=WORKER_THREADS) as executor:
                worker = build_worker(
                    env.client,
                    task_queue,
                    Dependencies(engine, gateway),
                    executor,
                    max_concurrent_activities=WORKER_THREADS,
                )
                async with worker:
                    sim = _Run(cfg, service, base, customers, rng, progress, catalog)
                    await sim.run(env)
                    progress("letting the workflows finish what they started")
                    await wait_idle(env.client, sim.workflow_ids, QUIESCE_TIMEOUT_S)
                    end = await env.get_current_time()
                    progress("checking every subscription workflow")
                    fleet = await check_fleet(env.client, sim.workflow_ids)
                    progress("reconciling the database against the gateway")
                    recon = await asyncio.to_thread(
                        reconcile, store, base, end, workflow_credits=fleet.credits
                    )
                    kpis = await asyncio.to_thread(kpi_report, store)
        finally:
            if env is not None:
                await env.shutdown()
            fake.stop()
            engine.dispose()
    return SimulationResult(
        subscriptions=cfg.subscriptions,
        months=cfg.months,
        decline_rate=cfg.decline_rate,
        hard_share=cfg.hard_share,
        seed=cfg.seed,
        started=len(sim.subscription_ids),
        refused_at_start=sim.refused,
        card_updates=sim.card_updates,
        renewals_due=kpis.renewals_due,
        renewals_paid=kpis.renewals_paid,
        renewals_pending=kpis.renewals_pending,
        renewal_success_rate=kpis.renewal_success_rate,
        first_charges_due=kpis.first_charges_due,
        first_charges_paid=kpis.first_charges_paid,
        first_attempt_failure_rate=kpis.first_attempt_failure_rate,
        recovery_by_step=kpis.recovery_by_step,
        dunning_recovery_rate=kpis.dunning_recovery_rate,
        involuntary_churn=kpis.involuntary_churn,
        involuntary_churned=kpis.involuntary_churned,
        double_charges=len(recon.double_charges),
        uncharged_periods=len(recon.uncharged_periods),
        payment_mismatches=len(recon.mismatches),
        orphan_intents=len(recon.orphan_intents),
        unrecorded_charges=len(recon.unrecorded_charges),
        invoices=kpis.invoices,
        payments=kpis.payments,
        faults=cfg.faults,
        messages=cfg.messages,
        faults_injected=faults.injected_counts if faults is not None else {},
        messages_sent=sim.messenger.stats.sent,
        messages_accepted=sim.messenger.stats.accepted,
        messages_rejected=dict(sorted(sim.messenger.stats.rejected.items())),
        message_errors=sim.messenger.stats.error_count,
        message_errors_by_code=dict(sorted(sim.messenger.stats.errors.items())),
        messages_by_kind=dict(sorted(sim.messenger.stats.by_kind.items())),
        start_errors=sum(sim.start_errors.values()),
        days_simulated=sim.days_done,
        clock_blocked=sim.clock_blocked,
        workflows_checked=fleet.checked,
        workflows_failed=fleet.count("failed"),
        workflows_stuck=fleet.count("stuck"),
        workflow_problems=fleet.problems[:MAX_PROBLEMS_LISTED],
        charges_after_cancel=len(recon.charges_after_cancel),
        credit_mismatches=len(recon.credit_mismatches),
        credits_unchecked=fleet.unqueried,
        refunds_over_payment=len(recon.refunds_over_payment),
        simulated_from=sim.start,
        simulated_to=end,
        wall_s=round(time.monotonic() - started_wall, 2),
        kpis=kpis,
        reconciliation=recon,
    )


class _ClockBlocked(Exception):
    """The virtual clock would not move."""


class _Clock:
    """Moves the time-skipping server's clock, with an RPC timeout, on a connection of its own.

    ``env.sleep`` has no timeout: a sleep the server never ends (it was seen to happen after
    workflow tasks kept failing, temporal-test-server 1.40) would hang the simulation. The
    connection is its own so the worker's and the messages' traffic cannot hold it up, and it is
    replaced after a failed sleep (the failures seen included HTTP/2 protocol errors).
    """

    def __init__(self, env: WorkflowEnvironment) -> None:
        self.env = env
        self._client: Client | None = None

    async def sleep(self, delta: timedelta) -> None:
        """Unlock time skipping for ``delta`` of virtual time (what ``env.sleep`` does)."""
        if self._client is None:
            config = self.env.client.service_client.config
            self._client = await Client.connect(
                config.target_host, namespace=self.env.client.namespace
            )
        req = SleepRequest()
        req.duration.FromTimedelta(delta)
        await self._client.test_service.unlock_time_skipping_with_sleep(req, timeout=SLEEP_RPC)

    def reconnect(self) -> None:
        """Use a fresh connection for the next sleep."""
        self._client = None


class _Run:
    """The day-by-day loop of one simulation."""

    def __init__(
        self,
        cfg: SimulationConfig,
        service: OmsService,
        cards: PaymentGateway,
        customers: list[SimCustomer],
        rng: random.Random,
        progress: Progress,
        catalog: Catalog,
    ) -> None:
        self.cfg = cfg
        self.service = service
        self.cards = cards  # tokenizes test cards: the customer's side, never faulted
        self.customers = customers
        self.rng = rng
        self.progress = progress
        self.subscription_ids: list[str] = []
        self.workflow_ids: list[str] = []  # every subscription whose workflow was started
        self.refused = 0
        self.start_errors: Counter[str] = Counter()
        self.card_updates = 0
        self.updates_due: dict[int, list[str]] = {}
        self.audit_seen = 0
        self.start = datetime.min
        self.by = Actor(actor="simulation", channel="cli")
        self.messenger = Messenger(service, cards, catalog, rate=cfg.messages, seed=cfg.seed)
        self.blocking: dict[str, str] = {}  # workflows whose failing task stopped the clock
        self.clock: _Clock | None = None
        self._inflight: set[asyncio.Future[None]] = set()
        self.days_done = 0
        self.clock_blocked = False

    async def run(self, env: WorkflowEnvironment) -> None:
        self.clock = _Clock(env)
        self.start = await env.get_current_time()
        first_day = self.start.date()
        days = (billing_date(first_day, 1, self.cfg.months) - first_day).days
        by_day: dict[int, list[SimCustomer]] = {}
        for c in self.customers:
            by_day.setdefault(c.start_day, []).append(c)
        limit = asyncio.Semaphore(SUBSCRIBE_CONCURRENCY)
        for day in range(days):
            now = await env.get_current_time()
            for c in by_day.get(day, []):
                self._launch(self._subscribe(c, now, limit))
            for sub in self.updates_due.pop(day, []):
                self._launch(self._update_card(sub, day, now))
            try:
                await self._head_start()
                if self.cfg.messages > 0:
                    await self._day_with_messages(env, day)
                else:
                    await self._advance(env, timedelta(days=1))
            except _ClockBlocked as err:
                self.clock_blocked = True
                self.progress(f"day {day + 1}/{days}: the clock stopped moving ({err}); ending")
                break
            self.days_done = day + 1
            await self._schedule_card_updates(day)
            if (day + 1) % 30 == 0 or day + 1 == days:
                stats = self.messenger.stats
                self.progress(
                    f"day {day + 1}/{days}: {len(self.subscription_ids)} started, "
                    f"{self.refused} refused at start, {self.card_updates} card updates, "
                    f"{stats.sent} messages ({stats.error_count} errors)"
                )
        await self._drain(env)

    def _launch(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background: the clock keeps moving while it waits."""
        task = asyncio.ensure_future(work)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _head_start(self) -> None:
        """Give the day's starts and card updates :data:`WATCHDOG_S` before the clock moves.

        Most finish in that time, as if the clock had stood still; one still waiting then (for a
        payment that is processing, polled on a timer) goes on while the clock moves.
        """
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=WATCHDOG_S)

    async def _drain(self, env: WorkflowEnvironment) -> None:
        """Let the requests still in flight finish, moving the clock an hour at a time.

        Each request has its own timeout (the service's update timeout, or
        :data:`starter.sim_messages.MESSAGE_TIMEOUT_S`), so this ends.
        """
        for _ in range(DRAIN_HOURS):
            if not self._inflight or self.clock_blocked:
                break
            await asyncio.wait(set(self._inflight), timeout=WATCHDOG_S)
            if self._inflight:
                try:
                    await self._advance(env, timedelta(hours=1))
                except _ClockBlocked as err:
                    self.clock_blocked = True
                    self.progress(f"the clock stopped moving ({err})")
        if self._inflight:
            # With the clock stopped, what is still in flight waits on a workflow that will not
            # answer: give it a moment, then abandon it (counted as an error).
            wait_s = WATCHDOG_S if self.clock_blocked else MESSAGE_TIMEOUT_S + WATCHDOG_S
            await asyncio.wait(set(self._inflight), timeout=wait_s)
        for task in list(self._inflight):
            task.cancel()
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=WATCHDOG_S)

    async def _day_with_messages(self, env: WorkflowEnvironment, day: int) -> None:
        """One day in quarters; each quarter's messages go out, then the clock moves on.

        Messages are not awaited: like a customer's request they wait for the subscription, and
        whatever it waits for (a timer, a retry) comes as the clock moves.
        """
        pending = await asyncio.to_thread(pending_approvals, self.service)
        planned = self.messenger.plan_day(day, pending)
        for slot in range(SLOTS_PER_DAY):
            now = await env.get_current_time()
            for msg in planned:
                if msg.slot == slot:
                    self._launch(self.messenger.send(msg, day, now))
            await self._advance(env, timedelta(days=1) / SLOTS_PER_DAY)

    async def _advance(self, env: WorkflowEnvironment, delta: timedelta) -> None:
        """Move the virtual clock by ``delta``.

        The time-skipping server does not skip time while a workflow task is outstanding, so one
        workflow whose task keeps failing stops the clock for every workflow. While a sleep takes
        longer than :data:`WATCHDOG_S`, such workflows are looked for; one found is recorded as
        stuck (with the failure its history shows) and the run ends there: terminating it was seen
        not to free the clock reliably (temporal-test-server 1.40), and the figures of a partial
        run are still the evidence. A sleep that fails is retried once on a fresh connection.

        Raises:
            _ClockBlocked: a workflow blocks the clock, or the clock did not move.
        """
        assert self.clock is not None, "run() sets the clock up"
        target = await env.get_current_time() + delta
        for _ in range(MAX_SLEEP_TRIES):
            remaining = target - await env.get_current_time()
            if remaining <= timedelta(0):
                return
            task = asyncio.ensure_future(self.clock.sleep(remaining))
            try:
                while not (await asyncio.wait({task}, timeout=WATCHDOG_S))[0]:
                    if await self._find_blocking(env):
                        task.cancel()
                        raise _ClockBlocked(
                            "a workflow task keeps failing: "
                            + "; ".join(f"{k}: {v}" for k, v in self.blocking.items())
                        )
                task.result()
                return
            except RPCError as err:
                log.warning("simulate.sleep_failed", error=err.message, status=err.status.name)
                self.clock.reconnect()
        raise _ClockBlocked(f"still short of {target.isoformat()} after {MAX_SLEEP_TRIES} sleeps")

    async def _find_blocking(self, env: WorkflowEnvironment) -> bool:
        """Record the workflows whose workflow task keeps failing; True if there are any."""
        found = await find_wedged(env.client, self.workflow_ids)
        for sub, reason in found.items():
            if sub not in self.blocking:
                log.warning("simulate.workflow_blocks_clock", subscription_id=sub, reason=reason)
            self.blocking[sub] = reason
        return bool(found)

    async def _subscribe(self, c: SimCustomer, now: datetime, limit: asyncio.Semaphore) -> None:
        async with limit:
            pm = await asyncio.to_thread(self.cards.create_test_payment_method, VISA)
            req = c.request.model_copy(update={"payment_method_id": pm})
            sub = subscription_id_for_request(req.request_id or "")
            self.workflow_ids.append(sub)
            try:
                result = await self.service.subscribe(req, self.by, now=now)
            except asyncio.CancelledError:
                self.start_errors["ABANDONED"] += 1  # still waiting when the clock stopped
                raise
            except Exception as err:  # every outcome is counted, none ends the simulation
                if isinstance(err, OmsError) and err.code == ErrorCode.PAYMENT_DECLINED:
                    self.refused += 1
                    return
                # Not the customer's doing: the subscription must still start. Counted, and its
                # workflow is checked like every other.
                code = err.code.value if isinstance(err, OmsError) else type(err).__name__
                self.start_errors[code] += 1
                log.warning("simulate.start_error", subscription_id=sub, code=code, error=str(err))
                return
            self.subscription_ids.append(result.subscription_id)
            self.messenger.add(
                SubscriptionInfo(
                    subscription_id=result.subscription_id,
                    currency=req.currency,
                    interval=req.interval,
                )
            )

    async def _schedule_card_updates(self, day: int) -> None:
        subs, self.audit_seen = await asyncio.to_thread(
            _new_hard_declines, self.service.store, self.audit_seen
        )
        for sub in subs:
            if self.rng.random() < self.cfg.card_update_share:
                self.updates_due.setdefault(day + 1 + self.rng.randint(1, 3), []).append(sub)

    async def _update_card(self, sub: str, day: int, now: datetime) -> None:
        """A hard-declined customer adds a working card: a customer message like the others."""
        msg = self.messenger.new_message(sub, MessageKind.CARD_UPDATE)
        if (await self.messenger.send(msg, day, now)).result == "accepted":
            self.card_updates += 1


# --- commands ------------------------------------------------------------------------------


def _configure_cli_logging() -> None:
    """stdout is the command's output: send logs to stderr unless ``oms`` already did."""
    if not structlog.is_configured():
        from workers.logs import configure_logging

        configure_logging(level=os.environ.get("OMS_LOG_LEVEL", "WARNING"), json=False)


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _fail(err: OmsError, as_json: bool) -> NoReturn:
    from starter.cli import fail

    fail(err, as_json)


@app.command()
def simulate(
    subscriptions: int = typer.Option(..., "--subscriptions", "-n", help="How many customers."),
    months: int = typer.Option(..., help="How many months of virtual time."),
    decline_rate: float = typer.Option(
        ..., help="Share of charge attempts declined (0..1), each attempt drawn afresh."
    ),
    hard_share: float = typer.Option(0.1, help="Share of those declines that are hard (0..1)."),
    seed: int = typer.Option(0, help="Seed of the customer mix and the declines."),
    card_update_share: float = typer.Option(
        0.5, help="Share of hard-declined customers who add a new card a few days later."
    ),
    database_url: str = typer.Option(
        None, help="An empty database to use instead of a temporary SQLite file."
    ),
    faults: float = typer.Option(
        0.0,
        help="Chance (0..1) that a try of a gateway call fails with an injected gateway error "
        "(first two tries of each call and key).",
    ),
    messages: float = typer.Option(
        0.0,
        help="Customer and approver messages per subscription per month, sent while renewals run.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on one line."),
) -> None:
    """Simulate N subscriptions for M months on the time-skipping server; print KPIs."""
    from starter.cli import table

    _configure_cli_logging()
    try:
        cfg = SimulationConfig(
            subscriptions=subscriptions,
            months=months,
            decline_rate=decline_rate,
            hard_share=hard_share,
            seed=seed,
            card_update_share=card_update_share,
            database_url=database_url,
            faults=faults,
            messages=messages,
        )
    except ValueError as err:
        _fail(OmsError(ErrorCode.INVALID_REQUEST, str(err).splitlines()[-1]), as_json)

    def progress(message: str) -> None:
        typer.echo(f"simulate: {message}", err=True)

    try:
        result = asyncio.run(run_simulation(cfg, progress))
    except OmsError as err:
        _fail(err, as_json)
    except SQLAlchemyError as err:
        _fail(OmsError(ErrorCode.DATABASE_UNAVAILABLE, f"database error: {err}"), as_json)
    if as_json:
        body = result.model_dump(mode="json", exclude={"kpis", "reconciliation"})
        typer.echo(json.dumps(body, separators=(",", ":")))
        return
    rows: list[list[Any]] = [
        ["subscriptions", f"{result.subscriptions} ({result.started} started)"],
        ["months", result.months],
        ["decline rate", f"{result.decline_rate} (hard share {result.hard_share})"],
        ["renewals due", result.renewals_due],
        ["renewals paid", result.renewals_paid],
        ["renewals still in dunning", result.renewals_pending],
        ["renewal success rate", _fmt_rate(result.renewal_success_rate)],
        ["first-attempt failure rate", _fmt_rate(result.first_attempt_failure_rate)],
        ["dunning recovery rate", _fmt_rate(result.dunning_recovery_rate)],
        *[
            [f"recovery at retry {s.attempt}", f"{_fmt_rate(s.rate)} of {s.attempted}"]
            for s in result.recovery_by_step
        ],
        ["involuntary churn", _fmt_rate(result.involuntary_churn)],
        ["double charges", result.double_charges],
        ["uncharged periods", result.uncharged_periods],
        ["payment rows not matching the gateway", result.payment_mismatches],
        ["charges after a cancellation", result.charges_after_cancel],
        ["credit balances not matching the ledger", result.credit_mismatches],
        ["payments refunded over their amount", result.refunds_over_payment],
        ["workflows failed / stuck", f"{result.workflows_failed} / {result.workflows_stuck}"],
        ["gateway faults injected", sum(result.faults_injected.values())],
        [
            "messages sent / rejected / errors",
            f"{result.messages_sent} / {sum(result.messages_rejected.values())} / "
            f"{result.message_errors}",
        ],
        ["subscriptions that could not start (not a decline)", result.start_errors],
        ["wall time", f"{result.wall_s:.1f} s"],
    ]
    table(rows, ["figure", "value"])


def _parse_day(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise OmsError(
            ErrorCode.INVALID_REQUEST, f"{name} must be a date like 2027-01-31, not {value!r}"
        ) from None


@app.command()
def kpis(
    since: str = typer.Option(None, help="First billing date included (YYYY-MM-DD)."),
    until: str = typer.Option(None, help="First billing date excluded (YYYY-MM-DD)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Renewal success, first-attempt failures, recovery by dunning step, churn (from the DB),
    of the caller's tenant (an operator)."""
    from activities.auth_store import AuthStore
    from models.identity import Permission
    from starter.cli import emit_json, table
    from starter.output import cli_principal
    from workers.config import load_config

    _configure_cli_logging()
    engine = None
    try:
        start, end = _parse_day(since, "--since"), _parse_day(until, "--until")
        if start is not None and end is not None and start >= end:
            raise OmsError(ErrorCode.INVALID_REQUEST, "--since must be before --until")
        config = load_config()
        engine = create_db_engine(config.database.url)
        principal = cli_principal(config, AuthStore(engine))
        principal.require(Permission.KPIS_READ)
        report = kpi_report(Store(engine), start, end, principal.tenant_id)
    except OmsError as err:
        _fail(err, as_json)
    except SQLAlchemyError as err:
        _fail(OmsError(ErrorCode.DATABASE_UNAVAILABLE, f"cannot read the database: {err}"), as_json)
    finally:
        if engine is not None:
            engine.dispose()
    if as_json:
        emit_json(report)
        return
    rows: list[list[Any]] = [
        ["range", f"{since or '-'} .. {until or '-'} (billing dates, end excluded)"],
        ["renewals due", report.renewals_due],
        ["renewals paid in the dunning window", report.renewals_paid],
        ["renewals still in dunning", report.renewals_pending],
        ["renewal success rate", _fmt_rate(report.renewal_success_rate)],
        ["first charges due / paid", f"{report.first_charges_due} / {report.first_charges_paid}"],
        ["first-attempt failure rate", _fmt_rate(report.first_attempt_failure_rate)],
        *[
            [f"recovery at retry {s.attempt}", f"{_fmt_rate(s.rate)} of {s.attempted}"]
            for s in report.recovery_by_step
        ],
        ["dunning recovery rate", _fmt_rate(report.dunning_recovery_rate)],
        ["subscriptions live in range", report.subscriptions_live],
        [
            "involuntary churn",
            f"{_fmt_rate(report.involuntary_churn)} ({report.involuntary_churned})",
        ],
    ]
    table(rows, ["kpi", "value"])
