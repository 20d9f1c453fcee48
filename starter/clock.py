"""Test clocks, as Stripe has them: a virtual "now" that subscriptions are attached to and that
moves forward on demand, so a year of trials, renewals, declines and dunning runs in seconds
beside subscriptions that live in real time on the same stack.

This is the only module that uses Temporal's experimental per-workflow time skipping
(``temporalio.testing.TimeSkipper``); the rest of the code sees ``ClockManager``.

How a clock relates to its workflows
------------------------------------
The dev server (``--dynamic-config-value frontend.WorkflowTimeSkippingEnabled=true``) gives every
workflow that carries a time-skipping config its own virtual clock. That clock starts at the
real time when the workflow starts, runs at wall-clock speed, and can only jump forward (a
fast-forward by a duration); it follows the workflow across continue-as-new. It cannot be frozen
and it cannot go back.

So a test clock is not frozen like Stripe's either: it is an offset from the wall clock. The
database row (``test_clocks``) holds ``now`` as read at the wall-clock instant ``synced_at``;
the clock's current time is ``now + (wall clock - synced_at)``. That is exactly how an attached
workflow's ``workflow.now()`` behaves, so the clock and its workflows agree between advances.

- **Create** stores ``now`` (default: the wall clock; ``--at`` may be later, never earlier,
  since no workflow can start in the past).
- **Attach** (``oms subscribe --clock``): the subscription is built with the clock's current
  time as its start (``OmsService.subscribe(now=...)``); its workflow is started with a
  time-skipping config (skipping off: it runs at wall speed) and the ``TestClockId`` search
  attribute. It starts at the real time, which is behind the clock whenever the clock was created
  in the future or has been advanced (and a first charge is due at the clock's time), so the
  service takes the start update's answer once it is accepted, fast-forwards the workflow to
  the clock's time, then reads the answer. From then on the workflow's virtual time is the
  clock's time.
- **Advance** moves the row's ``now`` forward by the duration (``Nh``, ``Nd`` or ``Nmo``:
  calendar months from the clock's current time, clamped to the month's end), then lists the
  workflows with ``TestClockId = clock`` and brings each from its own virtual time to the new
  ``now`` (so small differences between workflows do not add up), step by step: each
  fast-forward ends just past the workflow's next pending timer (read from its history), then
  waits until the workflow has settled (no workflow task, activity or child pending, no timer
  due, and the current run has completed a workflow task), and so on up to the target. One
  fast-forward over several timers is not safe on Server 1.32: a run started by continue-as-new
  during a fast-forward can jump to the target before its first workflow task has even been
  scheduled, so before it has set its timers (a 6-month advance billed one renewal instead of
  six); a step never goes further than one timer, and a new run is waited for. ``advance``
  returns once every workflow has settled at the target; a second listing catches workflows
  attached while it ran.

Cost: the server fires a timer about a second after virtual time reaches it, so an advance takes
about a second per timer in the window (a monthly subscription has two a month: the notice and
the renewal), the workflows of a clock in parallel.

Limits: the server API is experimental (the time-skipping fields and RPCs may change with the
server and SDK versions, and ``temporalio.testing.TimeSkipper`` with them); activities run in
real time and stamp their rows with the wall clock (e.g. ``payments.created_at``), only the
workflows' instants are virtual; a clock only moves forward; activity retries wait in real time
between steps.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

import structlog
from sqlalchemy import Engine, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import TimeSkipper, TimeSkippingConfig

from activities.tables import ClockRecord
from models import search_attributes as sa
from models.calendar import days_in_month
from models.errors import ErrorCode, OmsError

log = structlog.get_logger(__name__)

CLOCK_ID_RE = re.compile(r"^clk_[0-9a-f]{16}$")
DURATION_RE = re.compile(r"^(\d{1,6})(h|d|mo)$")
# The longest single advance, per unit (about ten years): keeps dates in range and an advance's
# duration bounded.
MAX_ADVANCE = {"h": 24 * 3660, "d": 3660, "mo": 120}
# How far ahead of the real time a clock may start (workflows fast-forward there at once).
MAX_START_AHEAD = timedelta(days=3660)
# ``--at`` a little in the past (a slow client, clock drift) means "now".
PAST_TOLERANCE = timedelta(minutes=1)
# A workflow this close to the clock's time counts as caught up.
CAUGHT_UP = timedelta(seconds=1)
ADVANCE_TIMEOUT = timedelta(minutes=10)
POLL_S = 0.2
CONCURRENCY = 16
MAX_PASSES = 3
MAX_STEPS = 10_000
# Each fast-forward step ends this far past the workflow's next timer, so the timer fires inside
# the step (the server fires a timer about a second after virtual time reaches it).
PAST_TIMER = timedelta(seconds=2)
# Workflows on a clock start with skipping off: they run at wall speed until fast-forwarded.
START_CONFIG = TimeSkippingConfig(enabled=False)
SERVER_HINT = (
    "start the dev server with --dynamic-config-value frontend.WorkflowTimeSkippingEnabled=true "
    "(make dev does)"
)


# --- pure parts ----------------------------------------------------------------------------


def add_months(instant: datetime, months: int) -> datetime:
    """``instant`` moved by calendar months, the day clamped to the month's end (Jan 31 + 1mo is
    Feb 28, or 29 in a leap year); the time of day is kept."""
    index = instant.year * 12 + instant.month - 1 + months
    year, month0 = divmod(index, 12)
    day = min(instant.day, days_in_month(year, month0 + 1))
    return instant.replace(year=year, month=month0 + 1, day=day)


def advance_target(now: datetime, duration: str) -> datetime:
    """Where a clock reading ``now`` lands when advanced by ``duration``.

    Args:
        now: the clock's current time (UTC).
        duration: ``Nh`` (hours), ``Nd`` (days) or ``Nmo`` (calendar months from ``now``),
            N a positive integer.

    Raises:
        OmsError: INVALID_REQUEST for anything else, zero, or more than about ten years.
    """
    match = DURATION_RE.fullmatch(duration.strip().lower())
    if match is None:
        raise OmsError(
            ErrorCode.INVALID_REQUEST,
            f"duration {duration!r} is not Nh, Nd or Nmo (hours, days, calendar months), "
            "e.g. 12h, 3d, 1mo",
        )
    count, unit = int(match[1]), match[2]
    if count < 1:
        raise OmsError(ErrorCode.INVALID_REQUEST, f"duration {duration!r} must be positive")
    if count > MAX_ADVANCE[unit]:
        raise OmsError(
            ErrorCode.INVALID_REQUEST,
            f"duration {duration!r} is too long; advance at most {MAX_ADVANCE[unit]}{unit} at once",
        )
    try:
        if unit == "h":
            return now + timedelta(hours=count)
        if unit == "d":
            return now + timedelta(days=count)
        return add_months(now, count)
    except (ValueError, OverflowError):
        raise OmsError(
            ErrorCode.INVALID_REQUEST, f"advancing {_iso(now)} by {duration!r} leaves the calendar"
        ) from None


def parse_at(text: str) -> datetime:
    """An ISO date (midnight UTC) or date-time (UTC when it names no offset) as a UTC instant."""
    value = text.strip()
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(), tzinfo=UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise OmsError(
            ErrorCode.INVALID_REQUEST,
            f"{text!r} is not an ISO date or date-time (2027-01-31 or 2027-01-31T09:00:00Z)",
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def new_clock_id() -> str:
    return f"clk_{uuid.uuid4().hex[:16]}"


def check_clock_id(clock_id: str) -> str:
    """``clock_id`` if well formed (it goes into a visibility query), else CLOCK_NOT_FOUND."""
    if not CLOCK_ID_RE.match(clock_id):
        raise OmsError(
            ErrorCode.CLOCK_NOT_FOUND, f"no test clock {clock_id!r} (ids look like clk_...)"
        )
    return clock_id


def _iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class ClockView:
    """A clock as the API and CLI show it."""

    clock_id: str
    now: datetime
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "clock_id": self.clock_id,
            "now": _iso(self.now),
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True)
class AdvanceResult:
    """What ``advance`` did: the clock's new time and how many workflows follow it."""

    clock_id: str
    now: datetime
    workflows: int

    def to_json(self) -> dict[str, Any]:
        return {"clock_id": self.clock_id, "now": _iso(self.now), "workflows": self.workflows}


# --- the rows --------------------------------------------------------------------------------


class ClockStore:
    """The ``test_clocks`` rows: each clock's time, read at a wall-clock instant."""

    def __init__(self, engine: Engine, wall: Callable[[], datetime] | None = None) -> None:
        """The clocks in ``engine``'s database.

        Args:
            engine: the database (migrated: ``oms migrate``).
            wall: the wall clock (tests); default ``datetime.now(UTC)``.
        """
        self._engine = engine
        self.wall = wall or (lambda: datetime.now(UTC))

    def create(self, at: datetime | None = None) -> ClockView:
        """A new clock reading ``at`` (default: the wall clock); never earlier than now."""
        wall = self.wall()
        start = wall if at is None else at.astimezone(UTC)
        if start < wall - PAST_TOLERANCE:
            raise OmsError(
                ErrorCode.INVALID_REQUEST,
                f"a test clock cannot start in the past ({_iso(start)} < {_iso(wall)}): workflows "
                "start at the real time and their clocks only move forward",
            )
        if start - wall > MAX_START_AHEAD:
            raise OmsError(
                ErrorCode.INVALID_REQUEST,
                f"a test clock starts at most {MAX_START_AHEAD.days} days ahead of now, "
                f"not at {_iso(start)}",
            )
        start = max(start, wall)
        row = ClockRecord(
            clock_id=new_clock_id(), now=start, synced_at=wall, created_at=wall, updated_at=wall
        )
        with self._session() as s:
            s.add(row)
            s.commit()
        log.info("clock.created", clock_id=row.clock_id, now=_iso(start))
        return ClockView(row.clock_id, start, wall)

    def get(self, clock_id: str) -> ClockView:
        """The clock with its current time; CLOCK_NOT_FOUND if there is none."""
        check_clock_id(clock_id)
        with self._session() as s:
            row = s.get(ClockRecord, clock_id)
        if row is None:
            raise OmsError(ErrorCode.CLOCK_NOT_FOUND, f"no test clock {clock_id}")
        return ClockView(row.clock_id, self._current(row), row.created_at)

    def move(self, clock_id: str, duration: str) -> tuple[datetime, datetime, datetime]:
        """Advance the row by ``duration`` from its current time.

        Returns:
            (the time before, the new time, the wall-clock instant the new time was read at).
        """
        check_clock_id(clock_id)
        with self._session() as s:
            row = s.exec(
                select(ClockRecord).where(ClockRecord.clock_id == clock_id).with_for_update()
            ).one_or_none()
            if row is None:
                raise OmsError(ErrorCode.CLOCK_NOT_FOUND, f"no test clock {clock_id}")
            wall = self.wall()
            before = self._current(row)
            target = advance_target(before, duration)
            row.now, row.synced_at, row.updated_at = target, wall, wall
            s.add(row)
            s.commit()
        return before, target, wall

    def reanchor(self, clock_id: str, now: datetime, synced_at: datetime) -> None:
        """After an advance: the clock reads ``now`` from this instant on (unless another
        advance moved it meanwhile), so consecutive advances add up exactly."""
        wall = self.wall()
        with self._session() as s:
            s.execute(
                update(ClockRecord)
                .where(
                    ClockRecord.clock_id == clock_id,  # type: ignore[arg-type]
                    ClockRecord.now == now,  # type: ignore[arg-type]
                    ClockRecord.synced_at == synced_at,  # type: ignore[arg-type]
                )
                .values(synced_at=wall, updated_at=wall)
            )
            s.commit()

    def _current(self, row: ClockRecord) -> datetime:
        return row.now + max(timedelta(0), self.wall() - row.synced_at)

    def _session(self) -> _DbSession:
        return _DbSession(self._engine)


# --- the clocks ------------------------------------------------------------------------------


class ClockManager:
    """Test clocks: their rows and the workflows attached to them."""

    def __init__(
        self,
        client: Client,
        engine: Engine,
        *,
        advance_timeout: timedelta = ADVANCE_TIMEOUT,
        wall: Callable[[], datetime] | None = None,
    ) -> None:
        """Clocks stored in ``engine``'s database, moving workflows through ``client``.

        Args:
            client: the Temporal client (our data converter); workflows on a clock are started
                through ``self.client``, a copy of it that stamps the time-skipping config.
            engine: the database holding ``test_clocks``.
            advance_timeout: how long ``advance`` waits for the workflows to catch up.
            wall: the wall clock (tests).
        """
        self._client = client
        self.store = ClockStore(engine, wall)
        self._skipper = TimeSkipper(client, config=START_CONFIG)
        self._advance_timeout = advance_timeout

    @property
    def client(self) -> Client:
        """A client whose workflow starts carry a time-skipping config (skipping off)."""
        return self._skipper.client

    def create(self, at: datetime | None = None) -> ClockView:
        """A new clock reading ``at`` (default: the wall clock); never earlier than now."""
        return self.store.create(at)

    def get(self, clock_id: str) -> ClockView:
        """The clock with its current time; CLOCK_NOT_FOUND if there is none."""
        return self.store.get(clock_id)

    def now(self, clock_id: str) -> datetime:
        """The clock's current time; CLOCK_NOT_FOUND if there is none."""
        return self.store.get(clock_id).now

    # --- the workflows -----------------------------------------------------------------------

    async def attach(self, clock_id: str, workflow_id: str) -> None:
        """Bring a workflow just started on the clock to the clock's current time."""
        target = self.now(clock_id)
        async with _temporal_errors():
            await self._catch_up(workflow_id, target, set())
        log.info("clock.attached", clock_id=clock_id, workflow_id=workflow_id, now=_iso(target))

    async def workflow_ids(self, clock_id: str) -> list[str]:
        """Workflows attached to the clock (every run of each chain, deduplicated)."""
        query = f"{sa.TEST_CLOCK_ID.name} = '{check_clock_id(clock_id)}'"
        seen: dict[str, None] = {}
        async with _temporal_errors():
            async for wf in self._client.list_workflows(query):
                seen.setdefault(wf.id, None)
        return list(seen)

    async def advance(self, clock_id: str, duration: str) -> AdvanceResult:
        """Move the clock and every workflow attached to it; returns once they caught up.

        Raises:
            OmsError: CLOCK_NOT_FOUND, INVALID_REQUEST (duration), TIMEOUT (the clock has moved;
                the message names the workflows still behind, which the next advance resumes).
        """
        before, target, synced_at = self.store.move(clock_id, duration)
        behind: set[str] = set()
        log.info("clock.advancing", clock_id=clock_id, before=_iso(before), now=_iso(target))
        try:
            async with _temporal_errors():
                count = await asyncio.wait_for(
                    self._catch_up_all(clock_id, target, behind),
                    self._advance_timeout.total_seconds(),
                )
        except TimeoutError:
            names = ", ".join(sorted(behind)[:5]) + (" ..." if len(behind) > 5 else "")
            raise OmsError(
                ErrorCode.TIMEOUT,
                f"test clock {clock_id} reads {_iso(target)} but {len(behind)} workflow(s) had not "
                f"caught up after {self._advance_timeout.total_seconds():.0f} s ({names}); is a "
                "worker running? The next advance brings them along",
            ) from None
        self.store.reanchor(clock_id, target, synced_at)
        log.info("clock.advanced", clock_id=clock_id, now=_iso(target), workflows=count)
        return AdvanceResult(clock_id, target, count)

    async def _catch_up_all(self, clock_id: str, target: datetime, behind: set[str]) -> int:
        """Every workflow on the clock to ``target``; listed again until a pass finds none behind
        (one attached meanwhile). Returns how many were running (moved, or still running)."""
        gate = asyncio.Semaphore(CONCURRENCY)
        running: set[str] = set()

        async def one(workflow_id: str) -> tuple[bool, bool]:
            async with gate:
                return await self._catch_up(workflow_id, target, behind)

        for _ in range(MAX_PASSES):
            ids = await self.workflow_ids(clock_id)
            results = await asyncio.gather(*(one(w) for w in ids))
            running.update(
                w for w, (alive, moved) in zip(ids, results, strict=True) if alive or moved
            )
            if not any(moved for _, moved in results):
                break
        return len(running)

    async def _catch_up(
        self, workflow_id: str, target: datetime, behind: set[str]
    ) -> tuple[bool, bool]:
        """Fast-forward one workflow to ``target``, timer by timer, and wait until it has acted
        on everything due by then.

        One fast-forward over several timers is not safe on Server 1.32: when the workflow
        continues-as-new during a fast-forward, the new run can jump straight to the target
        before its first workflow task has set its timers (seen: a 6-month advance billed one
        renewal, late). So each step ends just past the workflow's next timer, then waits until
        the workflow has settled (a new run: until its first workflow task has completed).

        Returns:
            (running at the end, moved at all).
        """
        handle = self._client.get_workflow_handle(workflow_id)
        behind.add(workflow_id)
        moved = False
        try:
            for _ in range(MAX_STEPS):
                idle = await self._settled(handle)
                if idle is None:
                    return False, moved
                now, timers = idle
                if target - now < CAUGHT_UP:
                    return True, moved
                step_to = min([target, *(at + PAST_TIMER for at in timers if at > now)])
                try:
                    reached = await self._skipper.fast_forward(handle, step_to - now)
                except RuntimeError:
                    continue  # superseded by another advance's fast-forward: look again
                except RPCError as err:
                    if await _run_state(handle) != "gone":
                        raise
                    log.debug("clock.workflow_ended", workflow_id=workflow_id, error=str(err))
                    return False, moved
                moved = True
                if not reached:
                    return False, moved  # the workflow ended before the step's end
            raise OmsError(
                ErrorCode.TIMEOUT,
                f"{workflow_id} needed more than {MAX_STEPS} steps to reach {_iso(target)}",
            )
        finally:
            behind.discard(workflow_id)

    async def _settled(
        self, handle: WorkflowHandle[Any, Any]
    ) -> tuple[datetime, list[datetime]] | None:
        """Wait until the workflow has no pending task or activity and no overdue timer.

        Returns:
            (its virtual time, the fire instants of its pending timers), or None once it is
            not running.
        """
        while True:
            state = await _run_state(handle)
            if state == "gone":
                return None
            if state == "busy":
                await asyncio.sleep(POLL_S)
                continue
            now = await self._skipper.get_current_time(handle)
            started, timers = await _run_history(handle)
            if started and not any(at <= now for at in timers):
                return now, timers
            # A timer is due (it fires in about a second), or the run is new and its first
            # workflow task has not even been scheduled yet (after continue-as-new it can lag).
            await asyncio.sleep(POLL_S)


class _DbSession:
    """A session whose database errors become DATABASE_UNAVAILABLE."""

    def __init__(self, engine: Engine) -> None:
        self._session = Session(engine, expire_on_commit=False)

    def __enter__(self) -> Session:
        return self._session

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._session.close()
        if isinstance(exc, SQLAlchemyError):
            raise OmsError(
                ErrorCode.DATABASE_UNAVAILABLE,
                f"test clocks: database error (are the migrations applied? `oms migrate`): {exc}",
            ) from exc


async def _run_state(handle: WorkflowHandle[Any, Any]) -> Literal["gone", "busy", "idle"]:
    """The workflow's current run: not running, or running with or without pending work (a
    workflow task, an activity or a child)."""
    try:
        desc = await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return "gone"
        raise
    if desc.status != WorkflowExecutionStatus.RUNNING:
        return "gone"
    raw = desc.raw_description
    busy = (
        raw.HasField("pending_workflow_task")
        or len(raw.pending_activities) > 0
        or len(raw.pending_children) > 0
    )
    return "busy" if busy else "idle"


async def _run_history(handle: WorkflowHandle[Any, Any]) -> tuple[bool, list[datetime]]:
    """The current run's history: whether a workflow task has completed yet, and the fire
    instants of the timers that have neither fired nor been canceled (event times are the
    workflow's virtual times)."""
    started: dict[int, datetime] = {}
    ended: set[int] = set()
    ran = False
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            ran = True
        elif event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            attrs = event.timer_started_event_attributes
            at = event.event_time.ToDatetime().replace(tzinfo=UTC)
            started[event.event_id] = at + attrs.start_to_fire_timeout.ToTimedelta()
        elif event.event_type == EventType.EVENT_TYPE_TIMER_FIRED:
            ended.add(event.timer_fired_event_attributes.started_event_id)
        elif event.event_type == EventType.EVENT_TYPE_TIMER_CANCELED:
            ended.add(event.timer_canceled_event_attributes.started_event_id)
    return ran, [at for event_id, at in started.items() if event_id not in ended]


@asynccontextmanager
async def _temporal_errors() -> AsyncIterator[None]:
    """Temporal failures as OmsError: a server without time skipping, or an unreachable one."""
    try:
        yield
    except RPCError as err:
        if err.status == RPCStatusCode.UNIMPLEMENTED:
            raise server_refused(err) from err
        if err.status in (RPCStatusCode.INVALID_ARGUMENT, RPCStatusCode.FAILED_PRECONDITION):
            raise OmsError(ErrorCode.INVALID_REQUEST, err.message) from err
        raise OmsError(
            ErrorCode.TEMPORAL_UNAVAILABLE, f"Temporal is not reachable: {err.message}"
        ) from err


def server_refused(err: RPCError) -> OmsError:
    """The error for a server that does not allow time skipping (UNIMPLEMENTED)."""
    return OmsError(
        ErrorCode.TEST_CLOCKS_DISABLED,
        f"the Temporal server refused time skipping ({err.message}); {SERVER_HINT}",
    )
