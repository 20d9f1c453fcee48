"""Customer and approver messages sent while ``oms simulate`` runs renewals and dunning.

``oms simulate --messages RATE`` sends each started subscription on average ``RATE`` messages a
month (a Poisson draw per subscription and day, each message at a random quarter of the day; a
subscription whose workflow has closed gets none once a message was refused for it) through
:class:`starter.service.OmsService`, the layer the CLI and the API use, concurrently with the
virtual clock moving and with each other. The mix (:data:`MESSAGE_WEIGHTS`, in parts of 100):

* ``cancel_now`` (5), ``cancel_at_period_end`` (8), ``uncancel`` (5);
* ``pause`` (12; with a resume date 3 times in 5, else open-ended), ``resume`` (12);
* ``change_now`` (20), ``change_at_period_end`` (15): another plan sold in the subscription's
  currency and interval, or another quantity (1-6), half each;
* ``card_update`` (13): a new working card; ``card_declining`` (10): a card whose every charge is
  declined, followed 2-6 days later by a ``card_update`` back to a working one;
* ``decide`` (weight :data:`DECIDE_WEIGHT` added for a subscription with a request waiting for
  approval): an authorized approver (a member of the request's approver groups in the policy,
  never the requester) approves it 3 times in 5 and rejects it otherwise.

The new cards of hard-declined customers (``oms simulate --card-update-share``) go out and are
counted the same way, as ``card_update`` messages, also when ``RATE`` is 0.

Each message's details are drawn from a generator seeded by the run's seed and the message's
request id, so they do not depend on the order concurrent messages finish in. Outcomes are
counted: accepted; rejected with a business error code (e.g. ``NOT_PAUSED`` for resuming an
active subscription), expected and counted by code; or an error: an infrastructure code
(:data:`INFRASTRUCTURE_CODES`), an update that failed without a typed business error, any other
exception, or ``ABANDONED``: still waiting when a workflow stopped the simulation's clock. Errors
must be 0 once the workflow is right.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

import structlog
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.gateway_port import PaymentGateway
from models.catalog import Catalog
from models.errors import ErrorCode, OmsError
from models.subscription import Actor
from starter.service import OmsService

log = structlog.get_logger(__name__)

VISA: Final = "4242424242424242"
DECLINING_CARD: Final = "4000000000000341"  # attaches, then every charge is declined
SLOTS_PER_DAY: Final = 4
DAYS_PER_MONTH: Final = 30.4375
MESSAGE_TIMEOUT_S: Final = 45.0  # above the service's own 30 s update timeout
MESSAGE_CONCURRENCY: Final = 32
APPROVE_SHARE: Final = 0.6
RESUME_DATE_SHARE: Final = 0.6

# Codes that say something is down or broken, never a business rule.
INFRASTRUCTURE_CODES: Final = frozenset(
    {
        "TIMEOUT",
        "TEMPORAL_UNAVAILABLE",
        "GATEWAY_UNAVAILABLE",
        "DATABASE_UNAVAILABLE",
        "DATA_ERROR",
        "IDEMPOTENCY_MISMATCH",
    }
)


class MessageKind(StrEnum):
    """What a simulated message asks for."""

    CANCEL_NOW = "cancel_now"
    CANCEL_AT_PERIOD_END = "cancel_at_period_end"
    UNCANCEL = "uncancel"
    PAUSE = "pause"
    RESUME = "resume"
    CHANGE_NOW = "change_now"
    CHANGE_AT_PERIOD_END = "change_at_period_end"
    CARD_UPDATE = "card_update"
    CARD_DECLINING = "card_declining"
    DECIDE = "decide"


MESSAGE_WEIGHTS: Final[Mapping[MessageKind, int]] = {
    MessageKind.CANCEL_NOW: 5,
    MessageKind.CANCEL_AT_PERIOD_END: 8,
    MessageKind.UNCANCEL: 5,
    MessageKind.PAUSE: 12,
    MessageKind.RESUME: 12,
    MessageKind.CHANGE_NOW: 20,
    MessageKind.CHANGE_AT_PERIOD_END: 15,
    MessageKind.CARD_UPDATE: 13,
    MessageKind.CARD_DECLINING: 10,
}
DECIDE_WEIGHT: Final = 50


@dataclass(frozen=True)
class Message:
    """One message to send: to which subscription, what, when in the day, under which id."""

    subscription_id: str
    kind: MessageKind
    request_id: str
    slot: int
    approval_request_id: str | None = None  # for ``decide``


@dataclass(frozen=True)
class Outcome:
    """How a message ended: ``accepted``, ``rejected`` (business code) or ``error``."""

    result: str
    code: str | None = None


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth's method; ``mean`` is small here)."""
    if mean <= 0:
        return 0
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def classify_failure(err: BaseException) -> Outcome:
    """A business rejection (expected, counted by code) or an error (must never happen).

    A rejection is an ``OmsError`` whose code is not an infrastructure code and which, when it
    wraps a failed update, wraps a typed ``ApplicationError`` with a known code, or, when it wraps
    a Temporal RPC error, wraps ``NOT_FOUND`` (the subscription's workflow has ended).
    """
    if not isinstance(err, OmsError):
        return Outcome("error", type(err).__name__)
    code = err.code.value
    if code in INFRASTRUCTURE_CODES:
        return Outcome("error", code)
    cause = err.__cause__
    if isinstance(cause, WorkflowUpdateFailedError):
        failure = cause.cause
        known = {c.value for c in ErrorCode}
        if not (isinstance(failure, ApplicationError) and failure.type in known):
            what = failure.type if isinstance(failure, ApplicationError) else None
            return Outcome("error", f"{code}:{what or type(failure).__name__}")
    if isinstance(cause, RPCError) and cause.status != RPCStatusCode.NOT_FOUND:
        return Outcome("error", f"{code}:rpc_{cause.status.name.lower()}")
    return Outcome("rejected", code)


@dataclass
class MessageStats:
    """Counts of the messages sent and how they ended."""

    sent: int = 0
    accepted: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def record(self, kind: MessageKind, outcome: Outcome) -> None:
        """Count one message's outcome."""
        self.sent += 1
        self.by_kind[kind.value] += 1
        if outcome.result == "accepted":
            self.accepted += 1
        elif outcome.result == "rejected":
            self.rejected[outcome.code or "UNKNOWN"] += 1
        else:
            self.errors[outcome.code or "UNKNOWN"] += 1

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass(frozen=True)
class SubscriptionInfo:
    """What the messenger knows of a subscription it writes to."""

    subscription_id: str
    currency: str
    interval: str


class Messenger:
    """Plans and sends the simulation's messages (see the module docstring).

    Args:
        service: The operations layer the CLI and API use.
        cards: The gateway that tokenizes test cards (the customer's side; never faulted).
        catalog: Plans to change to.
        rate: Expected messages per subscription per month.
        seed: The simulation's seed.
    """

    def __init__(
        self,
        service: OmsService,
        cards: PaymentGateway,
        catalog: Catalog,
        *,
        rate: float,
        seed: int,
    ) -> None:
        self.service = service
        self.cards = cards
        self.catalog = catalog
        self.rate = rate
        self.seed = seed
        self.rng = random.Random(f"{seed}:messages")
        self.stats = MessageStats()
        self.subscriptions: dict[str, SubscriptionInfo] = {}
        self._seq = 0
        self._restore_due: dict[int, list[str]] = {}
        self._limit = asyncio.Semaphore(MESSAGE_CONCURRENCY)

    def add(self, info: SubscriptionInfo) -> None:
        """A subscription started: it gets messages from now on."""
        self.subscriptions[info.subscription_id] = info

    def _request_id(self) -> str:
        self._seq += 1
        return f"sim{self.seed}-m{self._seq}"

    def plan_day(self, day: int, pending: Mapping[str, Sequence[str]]) -> list[Message]:
        """The messages of day ``day``; ``pending`` maps subscriptions to their approval ids."""
        mean = self.rate / DAYS_PER_MONTH
        messages: list[Message] = []
        # Sorted: subscriptions start and messages finish in an order that timing decides.
        for sub in sorted(self.subscriptions):
            waiting = sorted(pending.get(sub, ()))
            for _ in range(poisson(self.rng, mean)):
                weights = dict(MESSAGE_WEIGHTS)
                if waiting:
                    weights[MessageKind.DECIDE] = DECIDE_WEIGHT
                kinds = list(weights)
                kind = self.rng.choices(kinds, [weights[k] for k in kinds])[0]
                approval = self.rng.choice(waiting) if kind == MessageKind.DECIDE else None
                messages.append(
                    Message(
                        subscription_id=sub,
                        kind=kind,
                        request_id=self._request_id(),
                        slot=self.rng.randrange(SLOTS_PER_DAY),
                        approval_request_id=approval,
                    )
                )
        for sub in sorted(self._restore_due.pop(day, [])):
            messages.append(
                Message(
                    subscription_id=sub,
                    kind=MessageKind.CARD_UPDATE,
                    request_id=self._request_id(),
                    slot=self.rng.randrange(SLOTS_PER_DAY),
                )
            )
        return messages

    def new_message(self, subscription_id: str, kind: MessageKind) -> Message:
        """A message outside the daily plan (a hard-declined customer's new card)."""
        return Message(
            subscription_id=subscription_id, kind=kind, request_id=self._request_id(), slot=0
        )

    async def send(self, msg: Message, day: int, now: datetime) -> Outcome:
        """Send one message (of day ``day``, at ``now``) and count its outcome; never raises."""
        async with self._limit:
            detail = None
            try:
                await asyncio.wait_for(self._send(msg, day, now), MESSAGE_TIMEOUT_S)
                outcome = Outcome("accepted")
            except TimeoutError:
                outcome = Outcome("error", "TIMEOUT")
            except asyncio.CancelledError:
                # Abandoned: still waiting on a workflow when the simulation's clock stopped.
                self.stats.record(msg.kind, Outcome("error", "ABANDONED"))
                raise
            except Exception as err:  # every failure is counted; classify_failure says how
                outcome = classify_failure(err)
                detail = str(err)[:300]
        self.stats.record(msg.kind, outcome)
        if outcome.code == ErrorCode.SUBSCRIPTION_NOT_FOUND.value:
            self.subscriptions.pop(msg.subscription_id, None)  # its workflow has closed
        return outcome
        (log.warning if outcome.result == "error" else log.info)(
            "simulate.message",
            subscription_id=msg.subscription_id,
            kind=msg.kind.value,
            request_id=msg.request_id,
            result=outcome.result,
            code=outcome.code,
            detail=detail,
        )

    async def _send(self, msg: Message, day: int, now: datetime) -> None:
        rng = random.Random(f"{self.seed}:{msg.request_id}")
        by = Actor(actor="simulation", channel="api", request_id=msg.request_id)
        sub = msg.subscription_id
        svc = self.service
        kind = msg.kind
        if kind in (MessageKind.CANCEL_NOW, MessageKind.CANCEL_AT_PERIOD_END):
            await svc.cancel(sub, kind == MessageKind.CANCEL_AT_PERIOD_END, by)
        elif kind == MessageKind.UNCANCEL:
            await svc.uncancel(sub, by)
        elif kind == MessageKind.PAUSE:
            resume_on = None
            if rng.random() < RESUME_DATE_SHARE:
                resume_on = now.date() + timedelta(days=rng.randint(3, 45))
            await svc.pause(sub, resume_on, by, request_id=msg.request_id)
        elif kind == MessageKind.RESUME:
            await svc.resume(sub, by)
        elif kind in (MessageKind.CHANGE_NOW, MessageKind.CHANGE_AT_PERIOD_END):
            plan_id, quantity = await self._change_target(sub, rng)
            await svc.change(
                sub,
                plan_id=plan_id,
                quantity=quantity,
                interval=None,
                when="now" if kind == MessageKind.CHANGE_NOW else "period_end",
                by=by,
                request_id=msg.request_id,
            )
        elif kind in (MessageKind.CARD_UPDATE, MessageKind.CARD_DECLINING):
            declining = kind == MessageKind.CARD_DECLINING
            pm = await asyncio.to_thread(
                self.cards.create_test_payment_method, DECLINING_CARD if declining else VISA
            )
            await svc.update_payment_method(sub, pm, by)
            if declining:
                self._restore_due.setdefault(day + rng.randint(2, 6), []).append(sub)
        elif kind == MessageKind.DECIDE:
            await self._decide(msg, rng)

    async def _change_target(self, sub: str, rng: random.Random) -> tuple[str | None, int | None]:
        """Another plan sold in the subscription's currency and interval, or another quantity."""
        info = self.subscriptions[sub]
        view = await self.service.status(sub)
        plan_now = view.get("plan_id") if isinstance(view, dict) else view.plan_id
        qty_now = view.get("quantity") if isinstance(view, dict) else view.quantity
        plans = [
            p.plan_id
            for p in self.catalog.plans
            if p.plan_id != plan_now
            and any(
                pr.currency == info.currency and pr.interval.value == info.interval
                for pr in p.prices
            )
        ]
        if plans and rng.random() < 0.5:
            return rng.choice(plans), None
        return None, rng.choice([q for q in range(1, 7) if q != qty_now])

    async def _decide(self, msg: Message, rng: random.Random) -> None:
        assert msg.approval_request_id is not None
        row = await asyncio.to_thread(self.service.approval, msg.approval_request_id)
        groups: list[str] = list(row.get("groups") or [])
        directory = self.service.policy.approver_groups
        members = sorted({m for g in groups for m in directory.get(g, [])})
        requester = str(row.get("requested_by") or "")
        members = [m for m in members if m.casefold() != requester.casefold()] or ["nobody"]
        await self.service.decide(
            msg.approval_request_id,
            approve=rng.random() < APPROVE_SHARE,
            approver=rng.choice(members),
            reason="simulated decision",
            channel="api",
        )


def pending_approvals(service: OmsService) -> dict[str, list[str]]:
    """Requests waiting for approval, by subscription (from the database projection)."""
    found: dict[str, list[str]] = {}
    for row in service.approvals(status="pending"):
        found.setdefault(str(row["subscription_id"]), []).append(str(row["request_id"]))
    return found
