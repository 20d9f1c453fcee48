"""Order intake: every channel's orders through one governed entry flow.

``IntakeService.handle(channel, body, headers)`` runs, per order:

1. the channel adapter (``models/channels``): payload -> canonical orders, or item errors;
2. one DB transaction (``IntakeStore.claim``): a repeat of an accepted order returns its first
   result (200) and creates nothing; otherwise the pure rules (``models/intake_rules``) judge it
   on fresh facts (credit account, stock) and it is recorded as rejected (with the rule that
   fired) or as pending with its stock and credit reserved;
3. the subscription's update-with-start (``OmsService.subscribe(wait_for_payment=False)``): the
   answer as soon as its workflow accepted it;
4. one DB transaction marking it accepted with the answer repeats get (201).

Transient failures (Temporal, the database or the gateway unavailable, time-outs) are retried with
exponential backoff while the request budget lasts; an order that still fails, and every payload
or item that cannot be parsed, is written to the dead-letter table with its raw payload, reason,
attempts and priority (one-year value x customer tier weight). If even that write fails the dead
letter goes to a local spool file and is moved into the table once the database answers again:
nothing is dropped silently. Counters and a latency histogram live in a Prometheus registry the
service owns (``metrics.exposition()``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from temporalio.service import RPCError, RPCStatusCode

from activities.intake_store import (
    ClaimOutcome,
    CreditAccountSeed,
    DeadLetterDraft,
    DeadLetterStatus,
    IntakeStore,
    OrderStatus,
)
from activities.intake_tables import DeadLetter
from models.catalog import Catalog
from models.channels import content_type as channel_content_type
from models.channels import parse_payload
from models.errors import ErrorCode, OmsError, http_status
from models.ids import customer_id_for_email
from models.intake_rules import (
    CustomerTier,
    Decision,
    IntakeFacts,
    estimate_term_value,
    evaluate,
    priority_score,
)
from models.orders import (
    BATCH_CHANNELS,
    AdapterContext,
    BillingMode,
    CanonicalOrder,
    Channel,
    ParsedItem,
    ParsedPayload,
    parse_channel,
)
from models.subscription import Actor, StartResult
from starter.service import OmsService, SubscribeRequest
from workers.config import Config

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Error code of an unexpected failure (a bug): dead-lettered, answered with HTTP 500.
INTERNAL = "INTERNAL"
TRANSIENT = frozenset(
    {
        ErrorCode.TEMPORAL_UNAVAILABLE,
        ErrorCode.DATABASE_UNAVAILABLE,
        ErrorCode.GATEWAY_UNAVAILABLE,
        ErrorCode.TIMEOUT,
    }
)
TRANSIENT_RPC = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.ABORTED,
        RPCStatusCode.CANCELLED,
    }
)
# Request headers kept with a dead letter (what a replay needs; never credentials).
KEPT_HEADERS = ("stripe-signature", "content-type", "user-agent", "x-request-id")
LOCAL_WEBHOOK_SECRET = "whsec_local"
BASE64_SUFFIX = ";base64"


# --- settings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IntakeSettings:
    """Intake knobs (environment variables in :func:`load_intake_settings`).

    Attributes:
        webhook_secret: Stripe's endpoint signing secret for ``stripe-checkout``.
        budget_s: No retry starts after this long (the request's latency budget).
        attempt_timeout_s: One attempt (a DB step, the workflow start) is cut off after this.
        backoff_initial_s: First retry delay; doubles each time up to ``backoff_max_s``.
        max_attempts: Attempts per step at most.
        batch_concurrency: Orders of one batch processed at the same time.
        spool_path: Where dead letters go when the database cannot take them.
    """

    webhook_secret: str | None = LOCAL_WEBHOOK_SECRET
    budget_s: float = 0.15
    attempt_timeout_s: float = 2.0
    backoff_initial_s: float = 0.01
    backoff_max_s: float = 0.05
    max_attempts: int = 4
    batch_concurrency: int = 8
    signature_tolerance_s: int = 300
    max_batch_items: int = 10_000
    spool_path: str = ".oms/intake-spool.jsonl"


def load_intake_settings(
    config: Config | None = None, env: Mapping[str, str] | None = None
) -> IntakeSettings:
    """Settings from the environment.

    ``OMS_STRIPE_WEBHOOK_SECRET`` (default ``whsec_local`` only when the gateway is the local
    localstripe, i.e. ``gateway.api_base`` is set; none for real Stripe), ``OMS_INTAKE_BUDGET_MS``,
    ``OMS_INTAKE_ATTEMPT_TIMEOUT_MS``, ``OMS_INTAKE_SPOOL``.
    """
    env = os.environ if env is None else env
    local = config is None or bool(config.gateway.api_base)
    secret = env.get("OMS_STRIPE_WEBHOOK_SECRET") or (LOCAL_WEBHOOK_SECRET if local else None)
    s = IntakeSettings(webhook_secret=secret)
    if "OMS_INTAKE_BUDGET_MS" in env:
        s = replace(s, budget_s=float(env["OMS_INTAKE_BUDGET_MS"]) / 1000)
    if "OMS_INTAKE_ATTEMPT_TIMEOUT_MS" in env:
        s = replace(s, attempt_timeout_s=float(env["OMS_INTAKE_ATTEMPT_TIMEOUT_MS"]) / 1000)
    if env.get("OMS_INTAKE_SPOOL"):
        s = replace(s, spool_path=env["OMS_INTAKE_SPOOL"])
    return s


# --- results ----------------------------------------------------------------------------


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    DEAD_LETTERED = "dead_lettered"
    IGNORED = "ignored"


class IntakeError(BaseModel):
    """The ``error`` object of a refused order: a stable code, a sentence, the rule that fired."""

    code: str
    message: str
    rule: str | None = None
    field: str | None = None
    dead_letter_id: int | None = None


class ItemResult(BaseModel):
    """The outcome of one order of a payload."""

    outcome: Outcome
    status_code: int
    index: int | None = None
    channel_order_id: str | None = None
    order: dict[str, Any] | None = None
    error: IntakeError | None = None

    def body(self) -> dict[str, Any]:
        if self.order is not None:
            return self.order
        assert self.error is not None
        return {"error": self.error.model_dump(exclude_none=True)}

    def entry(self) -> dict[str, Any]:
        """This result as one entry of a batch answer."""
        entry: dict[str, Any] = {
            "index": self.index,
            "channel_order_id": self.channel_order_id,
            "outcome": self.outcome.value,
            "http_status": self.status_code,
        }
        if self.order is not None:
            entry["order"] = self.order
        if self.error is not None:
            entry["error"] = self.error.model_dump(exclude_none=True)
        return entry


class IntakeResponse(BaseModel):
    """What ``handle`` made of one payload; ``status_code`` and ``body()`` are the HTTP answer."""

    channel: str
    batch: bool = False
    items: list[ItemResult] = []
    error: IntakeError | None = None  # the payload as a whole was refused
    ignored: str | None = None

    @property
    def status_code(self) -> int:
        if self.error is not None:
            return http_status(self.error.code) if self.error.code != INTERNAL else 500
        if self.ignored is not None or self.batch:
            return 200
        return self.items[0].status_code

    def summary(self) -> dict[str, int]:
        counts = {"received": len(self.items)}
        for outcome in (
            Outcome.ACCEPTED,
            Outcome.DUPLICATE,
            Outcome.REJECTED,
            Outcome.DEAD_LETTERED,
        ):
            counts[outcome.value] = sum(1 for i in self.items if i.outcome == outcome)
        return counts

    def body(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error.model_dump(exclude_none=True)}
        if self.ignored is not None:
            return {"ignored": self.ignored}
        if not self.batch:
            return self.items[0].body()
        return {
            "channel": self.channel,
            "summary": self.summary(),
            "results": [i.entry() for i in self.items],
        }


class _Unavailable(Exception):
    """A transient failure that outlasted the retries."""

    def __init__(self, code: ErrorCode, message: str, attempts: int) -> None:
        super().__init__(message)
        self.code, self.message, self.attempts = code, message, attempts


def classify(exc: BaseException) -> tuple[ErrorCode, str] | None:
    """(code, message) when ``exc`` is a transient failure worth retrying, else None."""
    if isinstance(exc, OmsError):
        return (exc.code, exc.message) if exc.code in TRANSIENT else None
    if isinstance(exc, RPCError):
        if exc.status in TRANSIENT_RPC:
            return ErrorCode.TEMPORAL_UNAVAILABLE, f"Temporal is not reachable: {exc.message}"
        return None
    if isinstance(exc, TimeoutError):
        return ErrorCode.TIMEOUT, "the step did not finish within the attempt time-out"
    if isinstance(exc, OperationalError | PoolTimeoutError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        first = str(exc).splitlines()[0][:200]
        return ErrorCode.DATABASE_UNAVAILABLE, f"the database is not available: {first}"
    return None


# --- metrics ----------------------------------------------------------------------------


class IntakeMetrics:
    """Intake counters in a registry of their own (``GET /metrics`` renders it)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "oms_intake_orders_received",
            "Orders received (batch items count one each)",
            ["channel"],
            registry=r,
        )
        self.accepted = Counter(
            "oms_intake_orders_accepted",
            "Orders accepted (subscription started)",
            ["channel"],
            registry=r,
        )
        self.duplicates = Counter(
            "oms_intake_orders_duplicate",
            "Repeats of accepted orders (first result returned)",
            ["channel"],
            registry=r,
        )
        self.rejected = Counter(
            "oms_intake_orders_rejected",
            "Orders rejected, by the rule that fired",
            ["channel", "rule", "code"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "oms_intake_dead_lettered",
            "Payloads or orders written to the dead-letter table",
            ["channel", "code"],
            registry=r,
        )
        self.retries = Counter(
            "oms_intake_retries", "Retries of transient failures", ["channel", "code"], registry=r
        )
        self.ignored = Counter(
            "oms_intake_events_ignored",
            "Valid payloads without an order (other Stripe events)",
            ["channel"],
            registry=r,
        )
        self.spooled = Counter(
            "oms_intake_spooled",
            "Dead letters written to the spool file (database down)",
            ["channel"],
            registry=r,
        )
        self.latency = Histogram(
            "oms_intake_request_seconds",
            "Time to answer one intake payload",
            ["channel", "outcome"],
            buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )

    def exposition(self) -> bytes:
        """The Prometheus text format of every intake metric."""
        return generate_latest(self.registry)


# --- the service ------------------------------------------------------------------------


def _wall_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Replay:
    """A dead letter being replayed: failures of its payload fold into it."""

    dead_letter_id: int
    used: bool = False


class IntakeService:
    """The intake flow over an :class:`OmsService` (obtained lazily) and the intake store."""

    def __init__(
        self,
        service: Callable[[], Awaitable[OmsService]],
        store: IntakeStore,
        catalog: Catalog,
        settings: IntakeSettings | None = None,
        *,
        metrics: IntakeMetrics | None = None,
        clock: Callable[[], datetime] = _wall_clock,
    ) -> None:
        """Args:
        service: Returns the connected service (raises ``OmsError(TEMPORAL_UNAVAILABLE)``
            when Temporal cannot be reached); called per order, so it may connect lazily.
        store: The intake repository.
        catalog: Plans (adapters and rules read it).
        settings: Budgets, secret, spool; defaults for local development.
        metrics: Where the counters go (a fresh registry by default).
        clock: The wall clock (signature tolerance, dead-letter receipt times).
        """
        self.service = service
        self.store = store
        self.catalog = catalog
        self.settings = settings or IntakeSettings()
        self.metrics = metrics or IntakeMetrics()
        self.clock = clock
        self._spool_lock = threading.Lock()

    # --- entry point --------------------------------------------------------------------

    async def handle(
        self,
        channel: str,
        body: bytes | str,
        headers: Mapping[str, str] | None = None,
        *,
        received_at: datetime | None = None,
        replay_of: int | None = None,
        on_item: Callable[[ItemResult], None] | None = None,
    ) -> IntakeResponse:
        """Process one payload of ``channel``; never raises for bad input or outages.

        Args:
            channel: The channel name (URL segment).
            body: The payload exactly as received.
            headers: Request headers (any case).
            received_at: When it was received (a replay passes the original receipt time, so
                signature tolerance is measured from then); default now.
            replay_of: The dead letter this payload replays (its failures fold into it).
            on_item: Called as each order of the payload is finished (CLI progress).
        """
        started = time.monotonic()
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        received = received_at or self.clock()
        replay = _Replay(replay_of) if replay_of is not None else None
        try:
            ch = parse_channel(channel)
        except OmsError as err:
            log.info("intake.unknown_channel", channel=channel[:40])
            self.metrics.received.labels("unknown").inc()
            return IntakeResponse(
                channel=channel[:40],
                error=IntakeError(code=err.code, message=err.message, rule="channel.known"),
            )
        response = await self._handle(ch, body, hdrs, received, replay, on_item)
        if replay is not None and not replay.used:
            await self._resolve_replay(replay.dead_letter_id, response)
        if response.error is not None:
            outcome = "refused"
        elif len(response.items) == 1:
            outcome = response.items[0].outcome.value
        else:
            outcome = "batch" if response.items else "ignored"
        self.metrics.latency.labels(ch.value, outcome).observe(time.monotonic() - started)
        return response

    async def _handle(
        self,
        ch: Channel,
        body: bytes | str,
        hdrs: dict[str, str],
        received: datetime,
        replay: _Replay | None,
        on_item: Callable[[ItemResult], None] | None,
    ) -> IntakeResponse:
        batch = ch in BATCH_CHANNELS
        ctx = AdapterContext(
            catalog=self.catalog,
            now=received,
            headers=hdrs,
            webhook_secret=self.settings.webhook_secret,
            signature_tolerance_s=self.settings.signature_tolerance_s,
            max_items=self.settings.max_batch_items,
        )
        try:
            if batch:  # a big file takes a while to parse: keep the event loop serving
                parsed: ParsedPayload = await asyncio.to_thread(parse_payload, ch, body, ctx)
            else:
                parsed = parse_payload(ch, body, ctx)
        except OmsError as err:
            self.metrics.received.labels(ch.value).inc()
            rule = (
                "payload.signature" if err.code == ErrorCode.SIGNATURE_INVALID else "payload.schema"
            )
            text, media = _payload_text(body, ch)
            dl_id = await self._dead_letter(
                DeadLetterDraft(
                    channel=ch.value,
                    payload=text,
                    content_type=media,
                    headers=_kept(hdrs),
                    reason=err.message,
                    error_code=err.code.value,
                    rule=rule,
                    received_at=received,
                ),
                replay,
            )
            log.warning(
                "intake.payload_refused",
                channel=ch.value,
                code=err.code.value,
                reason=err.message,
                dead_letter_id=dl_id,
            )
            return IntakeResponse(
                channel=ch.value,
                batch=batch,
                error=IntakeError(
                    code=err.code, message=err.message, rule=rule, dead_letter_id=dl_id
                ),
            )
        if parsed.ignored is not None:
            self.metrics.ignored.labels(ch.value).inc()
            log.info("intake.ignored", channel=ch.value, reason=parsed.ignored)
            return IntakeResponse(channel=ch.value, ignored=parsed.ignored)
        # A replay folds failures into its dead letter only when the payload is one order.
        item_replay = replay if replay is not None and len(parsed.items) == 1 else None
        if len(parsed.items) == 1:
            results = [await self._item(ch, parsed.items[0], hdrs, received, item_replay)]
            if on_item is not None:
                on_item(results[0])
        else:
            gate = asyncio.Semaphore(self.settings.batch_concurrency)

            async def one(item: ParsedItem) -> ItemResult:
                async with gate:
                    result = await self._item(ch, item, hdrs, received, None)
                if on_item is not None:
                    on_item(result)
                return result

            results = list(await asyncio.gather(*(one(i) for i in parsed.items)))
        return IntakeResponse(channel=ch.value, batch=batch, items=results)

    # --- one order ----------------------------------------------------------------------

    async def _item(
        self,
        ch: Channel,
        item: ParsedItem,
        hdrs: dict[str, str],
        received: datetime,
        replay: _Replay | None,
    ) -> ItemResult:
        self.metrics.received.labels(ch.value).inc()
        try:
            if item.error is not None:
                return await self._malformed(ch, item, hdrs, received, replay)
            assert item.order is not None
            return await self._order(ch, item, item.order, hdrs, received, replay)
        except Exception as exc:  # a bug: still never lose the order
            log.exception("intake.internal_error", channel=ch.value, index=item.index)
            dl_id = await self._dead_letter(
                self._draft(
                    ch,
                    item,
                    hdrs,
                    received,
                    INTERNAL,
                    f"internal error: {exc!r}"[:900],
                    "intake.internal",
                    1,
                    None,
                ),
                replay,
            )
            return ItemResult(
                outcome=Outcome.DEAD_LETTERED,
                status_code=500,
                index=item.index,
                channel_order_id=item.channel_order_id,
                error=IntakeError(
                    code=INTERNAL,
                    message="the order could not be processed because of an internal error; it "
                    "was recorded as a dead letter and will be replayed",
                    rule="intake.internal",
                    dead_letter_id=dl_id,
                ),
            )

    async def _malformed(
        self,
        ch: Channel,
        item: ParsedItem,
        hdrs: dict[str, str],
        received: datetime,
        replay: _Replay | None,
    ) -> ItemResult:
        err = item.error
        assert err is not None
        if item.hint.channel_order_id:
            # A broken copy of an order that was accepted (e.g. after a corrected replay): the
            # order exists, so answer with its result instead of dead-lettering it again.
            try:
                known = await self._db(self.store.get_order, ch.value, item.hint.channel_order_id)
            except Exception:
                known = None
            if known is not None and known.status == OrderStatus.ACCEPTED:
                self.metrics.duplicates.labels(ch.value).inc()
                return self._ok(item, Outcome.DUPLICATE, json.loads(known.result))
        dl_id = await self._dead_letter(
            self._draft(ch, item, hdrs, received, err.code.value, err.message, err.rule, 1, None),
            replay,
        )
        log.warning(
            "intake.item_malformed",
            channel=ch.value,
            index=item.index,
            code=err.code.value,
            field=err.field,
            dead_letter_id=dl_id,
        )
        return ItemResult(
            outcome=Outcome.DEAD_LETTERED,
            status_code=http_status(err.code),
            index=item.index,
            channel_order_id=item.channel_order_id,
            error=IntakeError(
                code=err.code,
                message=err.message,
                rule=err.rule,
                field=err.field,
                dead_letter_id=dl_id,
            ),
        )

    async def _order(
        self,
        ch: Channel,
        item: ParsedItem,
        order: CanonicalOrder,
        hdrs: dict[str, str],
        received: datetime,
        replay: _Replay | None,
    ) -> ItemResult:
        t0 = time.monotonic()
        deadline = t0 + self.settings.budget_s
        attempts = [0]
        sku = self._sku(order)

        def decide(facts: IntakeFacts) -> Decision:
            return evaluate(order, self.catalog, facts)

        try:
            claim = await self._retry(
                ch, lambda: self._db(self.store.claim, order, sku, decide), deadline, attempts
            )
        except _Unavailable as u:
            return await self._give_up(ch, item, order, None, u, hdrs, received, replay)
        if claim.outcome == ClaimOutcome.DUPLICATE:
            self.metrics.duplicates.labels(ch.value).inc()
            log.info("intake.duplicate", channel=ch.value, order_id=order.order_id)
            return self._ok(item, Outcome.DUPLICATE, json.loads(claim.row.result))
        decision = claim.decision
        assert decision is not None
        if claim.outcome == ClaimOutcome.REJECTED:
            return self._rejected(ch, item, order, decision)
        t_claimed = time.monotonic()
        try:
            started = await self._retry(
                ch, lambda: self._start(order, decision), deadline, attempts
            )
        except _Unavailable as u:
            return await self._give_up(ch, item, order, decision, u, hdrs, received, replay)
        except OmsError as err:  # the workflow (or the service's own checks) refused it
            await self._db(
                self.store.release,
                ch.value,
                order.channel_order_id,
                OrderStatus.REJECTED,
                rule="workflow.start",
                error_code=err.code.value,
                message=err.message,
            )
            self.metrics.rejected.labels(ch.value, "workflow.start", err.code.value).inc()
            log.info(
                "intake.rejected",
                channel=ch.value,
                order_id=order.order_id,
                rule="workflow.start",
                code=err.code.value,
            )
            return ItemResult(
                outcome=Outcome.REJECTED,
                status_code=http_status(err.code),
                index=item.index,
                channel_order_id=order.channel_order_id,
                error=IntakeError(code=err.code, message=err.message, rule="workflow.start"),
            )
        body = self._accepted_body(order, decision, started)
        t_started = time.monotonic()
        first = True
        try:
            # Recording gets a budget of its own: the subscription exists whatever happens here.
            first = await self._retry(
                ch,
                lambda: self._db(
                    self.store.complete,
                    ch.value,
                    order.channel_order_id,
                    started.subscription_id,
                    body,
                ),
                time.monotonic() + self.settings.budget_s,
                [0],
            )
        except _Unavailable as u:
            log.error(
                "intake.record_failed",
                channel=ch.value,
                order_id=order.order_id,
                subscription_id=started.subscription_id,
                code=u.code.value,
            )
        if not first:
            self.metrics.duplicates.labels(ch.value).inc()
            return self._ok(item, Outcome.DUPLICATE, body)
        self.metrics.accepted.labels(ch.value).inc()
        log.info(
            "intake.accepted",
            channel=ch.value,
            order_id=order.order_id,
            subscription_id=started.subscription_id,
            rule_set=decision.rule_set.value,
            attempts=attempts[0],
            claim_ms=round((t_claimed - t0) * 1000, 1),
            start_ms=round((t_started - t_claimed) * 1000, 1),
            record_ms=round((time.monotonic() - t_started) * 1000, 1),
        )
        return self._ok(item, Outcome.ACCEPTED, body)

    def _ok(self, item: ParsedItem, outcome: Outcome, body: dict[str, Any]) -> ItemResult:
        return ItemResult(
            outcome=outcome,
            status_code=201 if outcome == Outcome.ACCEPTED else 200,
            index=item.index,
            channel_order_id=item.channel_order_id,
            order=body,
        )

    def _rejected(
        self, ch: Channel, item: ParsedItem, order: CanonicalOrder, decision: Decision
    ) -> ItemResult:
        v = decision.primary
        assert v is not None
        self.metrics.rejected.labels(ch.value, v.rule, v.code.value).inc()
        log.info(
            "intake.rejected",
            channel=ch.value,
            order_id=order.order_id,
            rule=v.rule,
            code=v.code.value,
            rule_set=decision.rule_set.value,
            also=[x.rule for x in decision.violations[1:]],
        )
        return ItemResult(
            outcome=Outcome.REJECTED,
            status_code=http_status(v.code),
            index=item.index,
            channel_order_id=order.channel_order_id,
            error=IntakeError(code=v.code, message=v.message, rule=v.rule),
        )

    async def _give_up(
        self,
        ch: Channel,
        item: ParsedItem,
        order: CanonicalOrder,
        decision: Decision | None,
        u: _Unavailable,
        hdrs: dict[str, str],
        received: datetime,
        replay: _Replay | None,
    ) -> ItemResult:
        rule = {
            ErrorCode.DATABASE_UNAVAILABLE: "dependency.database",
            ErrorCode.GATEWAY_UNAVAILABLE: "dependency.gateway",
            ErrorCode.TIMEOUT: "dependency.timeout",
        }.get(u.code, "dependency.temporal")
        dl_id = await self._dead_letter(
            self._draft(
                ch, item, hdrs, received, u.code.value, u.message, rule, u.attempts, decision
            ),
            replay,
        )
        log.warning(
            "intake.dead_lettered",
            channel=ch.value,
            order_id=order.order_id,
            code=u.code.value,
            attempts=u.attempts,
            dead_letter_id=dl_id,
        )
        where = f"dead letter {dl_id}" if dl_id is not None else "the intake spool"
        return ItemResult(
            outcome=Outcome.DEAD_LETTERED,
            status_code=http_status(u.code),
            index=item.index,
            channel_order_id=order.channel_order_id,
            error=IntakeError(
                code=u.code,
                message=f"{u.message}; the order was recorded as {where} after {u.attempts} "
                "attempt(s): send it again later (same order id) or replay the dead letter",
                rule=rule,
                dead_letter_id=dl_id,
            ),
        )

    # --- steps --------------------------------------------------------------------------

    def _sku(self, order: CanonicalOrder) -> str | None:
        try:
            plan = self.catalog.plan(order.plan_id)
        except OmsError:
            return None
        return (plan.sku or plan.plan_id) if plan.kind == "physical" else None

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking store call in a thread, bounded by the attempt time-out."""
        return await asyncio.wait_for(
            asyncio.to_thread(fn, *args, **kwargs), self.settings.attempt_timeout_s
        )

    async def _start(self, order: CanonicalOrder, decision: Decision) -> StartResult:
        async def go() -> StartResult:
            service = await self.service()
            req = SubscribeRequest(
                # Invoice orders bill the account (the payer), card orders the customer.
                email=decision.bill_to_email or order.email,
                plan_id=order.plan_id,
                interval=order.interval.value,
                currency=order.currency,
                payment_method_id=decision.payment_method_id,
                trial_days=order.trial_days,
                quantity=order.quantity,
                timezone=order.timezone,
                anchor_day=order.anchor_day,
                request_id=order.request_id,
            )
            actor = Actor(
                actor=f"intake:{order.partner_id or order.channel.value}"[:200],
                channel=f"intake:{order.channel.value}",
                reason=f"order {order.channel_order_id}"[:500],
                request_id=order.request_id,
            )
            return await service.subscribe(req, actor, wait_for_payment=False)

        return await asyncio.wait_for(go(), self.settings.attempt_timeout_s)

    async def _retry(
        self,
        ch: Channel,
        step: Callable[[], Awaitable[T]],
        deadline: float,
        attempts: list[int],
    ) -> T:
        """Run ``step``; retry transient failures with backoff while the budget lasts.

        Raises:
            _Unavailable: the last transient failure, once retries are exhausted.
            Exception: anything not transient, unchanged.
        """
        delay = self.settings.backoff_initial_s
        tries = 0
        while True:
            tries += 1
            attempts[0] += 1
            try:
                return await step()
            except Exception as exc:
                transient = classify(exc)
                if transient is None:
                    raise
                code, message = transient
                remaining = deadline - time.monotonic()
                if tries >= self.settings.max_attempts or remaining <= delay:
                    raise _Unavailable(code, message, tries) from exc
                self.metrics.retries.labels(ch.value, code.value).inc()
                log.info("intake.retry", channel=ch.value, code=code.value, attempt=tries)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.settings.backoff_max_s)

    def _accepted_body(
        self, order: CanonicalOrder, decision: Decision, started: StartResult
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "order_id": order.order_id,
            "channel": order.channel.value,
            "channel_order_id": order.channel_order_id,
            "subscription_id": started.subscription_id,
            "customer_id": started.customer_id,
            "status": started.status.value,
            "plan_id": started.plan_id,
            "interval": started.interval.value,
            "quantity": order.quantity,
            "currency": started.currency,
            "first_invoice_date": started.first_invoice_date.isoformat(),
            "first_charge_minor": started.first_charge_minor,
            "trial_end": started.trial_end.isoformat() if started.trial_end else None,
            "billing": order.billing.value,
            **({"account_id": order.account_key} if order.billing == BillingMode.INVOICE else {}),
            "rule_set": decision.rule_set.value,
        }
        if decision.stock_to_reserve:
            body["reserved"] = {"sku": decision.sku, "quantity": decision.stock_to_reserve}
        if order.referral is not None:
            body["referral"] = order.referral.model_dump(exclude_none=True)
        return body

    # --- dead letters -------------------------------------------------------------------

    def _draft(
        self,
        ch: Channel,
        item: ParsedItem,
        hdrs: dict[str, str],
        received: datetime,
        code: str,
        reason: str,
        rule: str | None,
        attempts: int,
        decision: Decision | None,
    ) -> DeadLetterDraft:
        if decision is not None:
            priority = decision.priority
        else:
            value, currency = estimate_term_value(self.catalog, item.hint)
            priority = priority_score(value, currency, CustomerTier.NEW)
        key = item.order.key if item.order is not None else None
        if key is None and item.hint.channel_order_id:
            key = f"{ch.value}:{item.hint.channel_order_id}"
        return DeadLetterDraft(
            channel=ch.value,
            payload=item.raw,
            content_type=item.content_type,
            headers=_kept(hdrs),
            reason=reason,
            error_code=code,
            rule=rule,
            attempts=attempts,
            priority=priority,
            order_key=key,
            received_at=received,
        )

    async def _dead_letter(self, draft: DeadLetterDraft, replay: _Replay | None) -> int | None:
        """Record a dead letter (or fold it into the replayed one); spool it if the DB fails."""
        self.metrics.dead_lettered.labels(draft.channel, draft.error_code).inc()
        for attempt in range(2):
            try:
                if replay is not None and not replay.used:
                    row = await self._db(
                        self.store.refail_dead_letter, replay.dead_letter_id, draft
                    )
                    replay.used = True
                else:
                    row, _ = await self._db(self.store.add_dead_letter, draft)
                return row.id
            except Exception as exc:
                if attempt == 0 and classify(exc) is not None:
                    await asyncio.sleep(self.settings.backoff_max_s)
                    continue
                log.error(
                    "intake.dead_letter_write_failed", channel=draft.channel, error=str(exc)[:300]
                )
                break
        self._spool(draft)
        return None

    def _spool(self, draft: DeadLetterDraft) -> None:
        path = Path(self.settings.spool_path)
        entry = {
            "channel": draft.channel,
            "payload": draft.payload,
            "content_type": draft.content_type,
            "headers": draft.headers,
            "reason": draft.reason,
            "error_code": draft.error_code,
            "rule": draft.rule,
            "attempts": draft.attempts,
            "priority": draft.priority,
            "order_key": draft.order_key,
            "received_at": draft.received_at.isoformat(),
        }
        with self._spool_lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        self.metrics.spooled.labels(draft.channel).inc()
        log.error(
            "intake.spooled",
            channel=draft.channel,
            path=str(path),
            order_key=draft.order_key,
            code=draft.error_code,
        )

    def drain_spool(self) -> int:
        """Move spooled dead letters into the table; returns how many (blocking; call in a thread).

        Entries that fail to load stay in the spool.
        """
        path = Path(self.settings.spool_path)
        with self._spool_lock:
            if not path.exists():
                return 0
            lines = path.read_text(encoding="utf-8").splitlines()
            kept: list[str] = []
            moved = 0
            for line in lines:
                if not line.strip():
                    continue
                try:
                    e = json.loads(line)
                    self.store.add_dead_letter(
                        DeadLetterDraft(
                            channel=e["channel"],
                            payload=e["payload"],
                            content_type=e["content_type"],
                            headers=e["headers"],
                            reason=e["reason"],
                            error_code=e["error_code"],
                            rule=e["rule"],
                            attempts=e["attempts"],
                            priority=e["priority"],
                            order_key=e["order_key"],
                            received_at=datetime.fromisoformat(e["received_at"]),
                        )
                    )
                    moved += 1
                except Exception as exc:
                    log.error("intake.spool_entry_failed", error=str(exc)[:300])
                    kept.append(line)
            if kept:
                path.write_text("\n".join(kept) + "\n", encoding="utf-8")
            else:
                path.unlink()
        if moved:
            log.info("intake.spool_drained", moved=moved, kept=len(kept))
        return moved

    # --- dead-letter operations ---------------------------------------------------------

    async def dead_letters(
        self, *, status: str | None = "open", channel: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Dead letters, highest priority first (spooled ones are moved in first)."""
        try:
            await asyncio.to_thread(self.drain_spool)
        except Exception as exc:  # the listing still works; the spool waits
            log.warning("intake.spool_drain_failed", error=str(exc)[:300])
        rows = await self._query(
            self.store.list_dead_letters, status=status, channel=channel, limit=limit
        )
        return [dead_letter_view(r) for r in rows]

    async def dead_letter(self, dead_letter_id: int) -> dict[str, Any]:
        row = await self._query(self.store.get_dead_letter, dead_letter_id)
        if row is None:
            raise _dl_not_found(dead_letter_id)
        return dead_letter_view(row, full=True)

    async def replay(
        self,
        dead_letter_id: int,
        payload: bytes | str | None = None,
        on_item: Callable[[ItemResult], None] | None = None,
    ) -> tuple[dict[str, Any], IntakeResponse]:
        """Process a dead letter's payload again (or a corrected one); returns (letter, outcome).

        The letter is closed as ``replayed`` when the payload got through (accepted, a duplicate,
        or a business rejection); when it fails again it stays open with one more attempt.

        Raises:
            OmsError: ``DEAD_LETTER_NOT_FOUND``; ``INVALID_REQUEST`` when it is not open.
        """
        row = await self._query(self.store.get_dead_letter, dead_letter_id)
        if row is None:
            raise _dl_not_found(dead_letter_id)
        if row.status != DeadLetterStatus.OPEN:
            raise OmsError(
                ErrorCode.INVALID_REQUEST,
                f"dead letter {dead_letter_id} is {row.status}, not open; nothing to replay",
            )
        if payload is None:
            body: bytes | str = row.payload
            if row.content_type.endswith(BASE64_SUFFIX):
                body = base64.b64decode(row.payload)
        else:
            body = payload
        log.info(
            "intake.replay",
            dead_letter_id=dead_letter_id,
            channel=row.channel,
            corrected=payload is not None,
        )
        response = await self.handle(
            row.channel,
            body,
            json.loads(row.headers or "{}"),
            received_at=row.received_at,
            replay_of=dead_letter_id,
            on_item=on_item,
        )
        after = await self._query(self.store.get_dead_letter, dead_letter_id)
        assert after is not None
        return dead_letter_view(after, full=True), response

    async def discard(self, dead_letter_id: int, reason: str | None = None) -> dict[str, Any]:
        """Give up on a dead letter (its order's reservations are released).

        Raises:
            OmsError: ``DEAD_LETTER_NOT_FOUND``; ``INVALID_REQUEST`` when it is not open.
        """
        row = await self._query(self.store.get_dead_letter, dead_letter_id)
        if row is None:
            raise _dl_not_found(dead_letter_id)
        closed = await self._query(
            self.store.resolve_dead_letter,
            dead_letter_id,
            DeadLetterStatus.DISCARDED,
            {"outcome": "discarded", "reason": reason or "discarded by an operator"},
        )
        if closed is None:
            raise OmsError(
                ErrorCode.INVALID_REQUEST,
                f"dead letter {dead_letter_id} is {row.status}, not open; nothing to discard",
            )
        log.info("intake.discarded", dead_letter_id=dead_letter_id, reason=reason)
        return dead_letter_view(closed, full=True)

    async def _resolve_replay(self, dead_letter_id: int, response: IntakeResponse) -> None:
        resolution: dict[str, Any] = {"outcome": "replayed"}
        if response.ignored is not None:
            resolution["ignored"] = response.ignored
        else:
            resolution["summary"] = response.summary()
            subs = [i.order["subscription_id"] for i in response.items if i.order is not None]
            if subs:
                resolution["subscription_ids"] = subs[:50]
        await self._query(
            self.store.resolve_dead_letter, dead_letter_id, DeadLetterStatus.REPLAYED, resolution
        )

    async def _query(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A store call for operations (not the order path): DB failures become OmsError."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except Exception as exc:
            transient = classify(exc)
            if transient is None:
                raise
            raise OmsError(*transient) from exc

    # --- reports ------------------------------------------------------------------------

    async def orders(self, **filters: Any) -> list[dict[str, Any]]:
        rows = await self._query(self.store.list_orders, **filters)
        return [
            {
                **r.model_dump(mode="json", exclude={"id", "result"}),
                "result": json.loads(r.result) if r.result else {},
            }
            for r in rows
        ]

    async def rejections(self) -> list[dict[str, Any]]:
        return await self._query(self.store.rejection_counts)


def dead_letter_view(row: DeadLetter, full: bool = False) -> dict[str, Any]:
    """A dead letter for the API and CLI (``full`` adds the payload, headers, resolution)."""
    view: dict[str, Any] = {
        "id": row.id,
        "channel": row.channel,
        "status": row.status,
        "reason": row.reason,
        "error_code": row.error_code,
        "rule": row.rule,
        "priority": row.priority,
        "attempts": row.attempts,
        "order_key": row.order_key,
        "received_at": row.received_at.isoformat(),
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "resolved_at": row.resolved_at.isoformat() if row.resolved_at else None,
    }
    if full:
        view["content_type"] = row.content_type
        view["payload"] = row.payload
        view["headers"] = json.loads(row.headers or "{}")
        view["resolution"] = json.loads(row.resolution) if row.resolution else None
    return view


def _dl_not_found(dead_letter_id: int) -> OmsError:
    return OmsError(
        ErrorCode.DEAD_LETTER_NOT_FOUND,
        f"no dead letter {dead_letter_id}; list them with `oms intake dlq list`",
    )


def _kept(hdrs: Mapping[str, str]) -> dict[str, str]:
    return {k: v[:500] for k, v in hdrs.items() if k in KEPT_HEADERS}


def _payload_text(body: bytes | str, ch: Channel) -> tuple[str, str]:
    """The payload as storable text and its media type (base64 when it is not UTF-8)."""
    media = channel_content_type(ch)
    if isinstance(body, str):
        return body, media
    try:
        return body.decode("utf-8"), media
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), media + BASE64_SUFFIX


# --- demo data (oms intake seed) --------------------------------------------------------

# Payment methods on file are tokenized at the local gateway when the seed runs (card numbers
# are test cards; they never leave this machine).
DEMO_SEED: dict[str, Any] = {
    "accounts": [
        {
            "account_id": "acme",
            "billing_email": "billing@acme.example",
            "name": "Acme Resellers (trusted partner)",
            "credit_limit_minor": 50_000_000,
            "outstanding_minor": 1_200_000,
            "trusted_partner": True,
            "paid_invoices": 48,
            "payment_method": "card:4242424242424242",
        },
        {
            "account_id": "globex",
            "billing_email": "billing@globex.example",
            "name": "Globex Reseller (new partner, 1 late payment)",
            "credit_limit_minor": 2_000_000,
            "outstanding_minor": 1_850_000,
            "paid_invoices": 5,
            "late_payments": 1,
            "payment_method": "card:4242424242424242",
        },
        {
            "account_id": "initech",
            "billing_email": "billing@initech.example",
            "name": "Initech (enterprise customer in good standing)",
            "credit_limit_minor": 5_000_000,
            "enterprise": True,
            "paid_invoices": 12,
            "payment_method": "card:4242424242424242",
        },
        {
            "account_id": "hooli",
            "billing_email": "billing@hooli.example",
            "name": "Hooli (on hold)",
            "credit_limit_minor": 10_000_000,
            "outstanding_minor": 9_000_000,
            "good_standing": False,
            "paid_invoices": 20,
            "late_payments": 4,
            "payment_method": "card:4242424242424242",
        },
        {
            "email": "loyal@example.com",
            "name": "A customer in good standing (card orders get the relaxed rules)",
            "credit_limit_minor": 0,
            "paid_invoices": 24,
        },
    ],
    "stock": {"BEANS-1KG": 500},
}


async def seed(
    store: IntakeStore,
    data: Mapping[str, Any] | None = None,
    tokenize: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """Load credit accounts and stock (idempotent: accounts and stock are overwritten).

    Args:
        store: Where to write.
        data: ``{"accounts": [...], "stock": {sku: on_hand}}``; :data:`DEMO_SEED` by default.
            An account is named by ``account_id`` or by ``email`` (its customer id is used).
            ``payment_method`` is a ``pm_...`` token or ``card:NUMBER`` (a test card).
        tokenize: Turns a test card number into a ``pm_...`` token (the local gateway); without
            it ``card:`` methods are left unset.
    """
    data = DEMO_SEED if data is None else data
    accounts: list[dict[str, Any]] = []
    for raw in data.get("accounts", []):
        entry = dict(raw)
        email = entry.pop("email", None)
        account_id = entry.pop("account_id", None) or (
            customer_id_for_email(email) if email else None
        )
        if not account_id:
            raise OmsError(
                ErrorCode.INVALID_REQUEST, f"seed account needs account_id or email: {raw}"
            )
        method = entry.pop("payment_method", None)
        pm: str | None = None
        if isinstance(method, str) and method.startswith("card:"):
            pm = await asyncio.to_thread(tokenize, method[5:]) if tokenize else None
        elif isinstance(method, str):
            pm = method
        known = set(CreditAccountSeed.__dataclass_fields__) - {"account_id", "payment_method_id"}
        unknown = set(entry) - known
        if unknown:
            raise OmsError(
                ErrorCode.INVALID_REQUEST,
                f"seed account {account_id}: unknown field(s) {', '.join(sorted(unknown))}",
            )
        row = await asyncio.to_thread(
            store.upsert_credit_account,
            CreditAccountSeed(account_id=account_id, payment_method_id=pm, **entry),
        )
        accounts.append({"account_id": row.account_id, "name": row.name, "payment_method_id": pm})
    stock: dict[str, int] = {}
    for sku, on_hand in dict(data.get("stock", {})).items():
        await asyncio.to_thread(store.set_stock, str(sku), int(on_hand))
        stock[str(sku)] = int(on_hand)
    log.info("intake.seeded", accounts=len(accounts), skus=len(stock))
    return {"accounts": accounts, "stock": stock}


def summarize(results: Iterable[ItemResult]) -> dict[str, int]:
    """Counts per outcome."""
    counts = {o.value: 0 for o in Outcome if o != Outcome.IGNORED}
    for r in results:
        if r.outcome.value in counts:
            counts[r.outcome.value] += 1
    return counts
