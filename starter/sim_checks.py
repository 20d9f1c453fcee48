"""Is every subscription workflow healthy? Failed and stuck workflows, read from Temporal.

Used by ``oms simulate`` after its run has quiesced. For each subscription the latest run of its
workflow is described (``describe()``: status, pending activities, pending workflow task), its
history read (open timers, accepted updates not completed, the last workflow task's outcome) and
its ``state`` query asked (status, credit, what it waits for). :func:`judge` turns those facts into
a verdict; it is a pure function, tested without Temporal.

Definitions:

* **failed**: the latest run closed as ``FAILED``, ``TERMINATED``, ``TIMED_OUT`` or ``CANCELED``
  (nobody cancels subscription executions; a canceled one lost its subscription like a failed one).
* **stuck**: the run is still open and

  - its workflow task keeps failing: the pending workflow task is on attempt 2 or more, or, since
    the last ``WorkflowTaskCompleted``, its history shows a ``WorkflowTaskFailed`` or
    :data:`WEDGED_TIMEOUTS` ``WorkflowTaskTimedOut`` events (a non-``ApplicationError`` exception
    or a non-determinism error wedges a workflow this way, it never fails; the time-skipping
    server reports no pending workflow task and records such failures as timeouts); or
  - an activity keeps failing: a pending activity on attempt :data:`STUCK_ACTIVITY_ATTEMPTS` or
    more (the injected faults stop after two tries of a call, so such retries are not transient);
    or
  - its state query fails (it cannot even say what it is doing); or
  - its subscription is not ``canceled`` or ``incomplete_expired``, and it has no open timer, no
    pending activity and no accepted update still running, and its state does not await a
    person: ``unpaid`` (waits for a new card), ``paused`` without a resume date, a request waiting
    for approval, dunning ``awaiting_payment_method``, or a refused step that needs attention.
    Such a workflow waits for nothing that will ever come.

A workflow task that keeps failing also stops the time-skipping server's clock for every workflow
(the server does not skip time while a workflow task is outstanding). While the clock is blocked,
``oms simulate`` looks for such workflows (:func:`find_wedged`) and ends the run early
(``clock_blocked``); they are then reported stuck with the failure their history shows.

Every call here has an RPC timeout (:data:`RPC_TIMEOUT`): a check must end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import structlog
from pydantic import BaseModel
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from models.ids import subscription_workflow_id
from models.subscription import SubscriptionView
from workflows.subscription import SubscriptionWorkflow

log = structlog.get_logger(__name__)

STUCK_ACTIVITY_ATTEMPTS = 10
WEDGED_TIMEOUTS = 2
QUERY_TIMEOUT = timedelta(seconds=15)
RPC_TIMEOUT = timedelta(seconds=15)
CHECK_CONCURRENCY = 16
FAILED_STATUSES = frozenset({"FAILED", "TERMINATED", "TIMED_OUT", "CANCELED"})
ENDED_SUBSCRIPTION_STATUSES = frozenset({"canceled", "incomplete_expired"})

Verdict = Literal["ok", "failed", "stuck"]


class WorkflowProblem(BaseModel):
    """A subscription whose workflow failed or is stuck, and why."""

    subscription_id: str
    verdict: Verdict
    reason: str


@dataclass(frozen=True)
class WorkflowFacts:
    """What Temporal says about the latest run of one subscription's workflow."""

    execution_status: str  # RUNNING, COMPLETED, FAILED, TERMINATED, TIMED_OUT, CANCELED, ...
    pending_activities: int = 0
    max_activity_attempt: int = 0
    workflow_task_attempt: int = 0  # 0 when no workflow task is pending
    task_failing: bool = False
    task_failure: str | None = None
    open_timers: int = 0
    open_updates: int = 0
    state: SubscriptionView | None = None
    query_error: str | None = None
    close_reason: str | None = None  # the failure or termination reason of a closed run


@dataclass(frozen=True)
class HistoryFacts:
    """What the run's history says is still open."""

    open_timers: int
    open_updates: int
    task_failing: bool  # the workflow task keeps failing (see the module docstring)
    task_failure: str | None = None  # what the history says about it


def close_reason(event: HistoryEvent) -> str | None:
    """Why a run closed badly, from its last history event (None for a good close)."""
    t = event.event_type
    if t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
        f = event.workflow_execution_failed_event_attributes.failure
        why = f.message or "failed"
        while f.HasField("cause"):
            f = f.cause
            why = f"{why}: {f.message}" if f.message else why
        return why[:300]
    if t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED:
        return (event.workflow_execution_terminated_event_attributes.reason or "terminated")[:300]
    if t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT:
        return "timed out"
    if t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED:
        return "canceled"
    return None


def history_facts(events: Iterable[HistoryEvent]) -> HistoryFacts:
    """Open timers, accepted-but-unfinished updates and the last workflow task's outcome."""
    timers: set[str] = set()
    updates: set[str] = set()
    failed = timeouts = 0  # since the last completed workflow task
    failure: str | None = None
    for e in events:
        t = e.event_type
        if t == EventType.EVENT_TYPE_TIMER_STARTED:
            timers.add(e.timer_started_event_attributes.timer_id)
        elif t == EventType.EVENT_TYPE_TIMER_FIRED:
            timers.discard(e.timer_fired_event_attributes.timer_id)
        elif t == EventType.EVENT_TYPE_TIMER_CANCELED:
            timers.discard(e.timer_canceled_event_attributes.timer_id)
        elif t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            attrs = e.workflow_execution_update_accepted_event_attributes
            updates.add(attrs.accepted_request.meta.update_id or attrs.protocol_instance_id)
        elif t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED:
            updates.discard(e.workflow_execution_update_completed_event_attributes.meta.update_id)
        elif t == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            failed = timeouts = 0
            failure = None
        elif t == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            failed += 1
            f = e.workflow_task_failed_event_attributes.failure
            failure = f.message or "workflow task failed"
            if f.HasField("cause") and f.cause.message:
                failure = f"{failure}: {f.cause.message}"
        elif t == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
            timeouts += 1
            if not failed:
                failure = f"workflow task timed out {timeouts} times in a row"
    wedged = failed > 0 or timeouts >= WEDGED_TIMEOUTS
    return HistoryFacts(
        open_timers=len(timers),
        open_updates=len(updates),
        task_failing=wedged,
        task_failure=failure[:300] if wedged and failure else None,
    )


def awaits_person(view: SubscriptionView) -> bool:
    """True when the subscription waits for a customer, an approver or an operator."""
    status = str(view.status)
    return (
        status == "unpaid"
        or (status == "paused" and view.resume_on is None)
        or view.pending_approvals > 0
        or view.dunning_stage == "awaiting_payment_method"
        or bool(getattr(view, "needs_attention", False))
    )


def judge(facts: WorkflowFacts) -> tuple[Verdict, str]:
    """The verdict on one workflow and the reason for it (see the module docstring)."""
    status = facts.execution_status
    if status in FAILED_STATUSES:
        why = f": {facts.close_reason}" if facts.close_reason else ""
        return "failed", f"execution {status.lower()}{why}"
    if status != "RUNNING":
        return "ok", f"execution {status.lower()}"
    if facts.workflow_task_attempt >= 2 or facts.task_failing:
        why = f": {facts.task_failure}" if facts.task_failure else ""
        return "stuck", f"workflow task failing{why}"
    if facts.max_activity_attempt >= STUCK_ACTIVITY_ATTEMPTS:
        return "stuck", f"activity failing (attempt {facts.max_activity_attempt})"
    if facts.state is None:
        return "stuck", f"state query failed: {facts.query_error or 'no answer'}"
    sub_status = str(facts.state.status)
    if sub_status in ENDED_SUBSCRIPTION_STATUSES:
        return "ok", f"subscription {sub_status}"
    if facts.pending_activities or facts.open_timers or facts.open_updates:
        return "ok", "waiting on a timer, an activity or an update"
    if awaits_person(facts.state):
        return "ok", f"subscription {sub_status} awaits a person"
    return "stuck", f"subscription {sub_status} waits for nothing"


async def query_state(client: Client, subscription_id: str) -> SubscriptionView:
    """The workflow's ``state`` query (works on closed workflows too: the worker replays them)."""
    handle = client.get_workflow_handle(subscription_workflow_id(subscription_id))
    return await handle.query(SubscriptionWorkflow.state, rpc_timeout=QUERY_TIMEOUT)


async def run_history_facts(client: Client, workflow_id: str, run_id: str | None) -> HistoryFacts:
    """:func:`history_facts` of one run."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    history = await handle.fetch_history(rpc_timeout=RPC_TIMEOUT)
    return history_facts(history.events)


async def find_wedged(client: Client, subscription_ids: Iterable[str]) -> dict[str, str]:
    """Running workflows whose workflow task keeps failing, with the failure their history shows.

    Returns:
        Subscription id -> the reason to report it stuck.
    """
    found: dict[str, str] = {}
    for sub in subscription_ids:
        handle = client.get_workflow_handle(subscription_workflow_id(sub))
        try:
            desc = await handle.describe(rpc_timeout=RPC_TIMEOUT)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                continue
            raise
        if desc.status != WorkflowExecutionStatus.RUNNING:
            continue
        raw = desc.raw_description
        attempt = raw.pending_workflow_task.attempt if raw.HasField("pending_workflow_task") else 0
        hist = await run_history_facts(client, handle.id, desc.run_id)
        if attempt >= 2 or hist.task_failing:
            why = f": {hist.task_failure}" if hist.task_failure else ""
            found[sub] = f"workflow task failing{why}"
    return found


async def workflow_facts(client: Client, subscription_id: str) -> WorkflowFacts | None:
    """Describe the latest run, read its history if it is open, and query its state.

    Returns:
        None when no workflow exists for the subscription.
    """
    handle = client.get_workflow_handle(subscription_workflow_id(subscription_id))
    try:
        desc = await handle.describe(rpc_timeout=RPC_TIMEOUT)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    status = desc.status.name if desc.status is not None else "UNKNOWN"
    raw = desc.raw_description
    attempts = [a.attempt for a in raw.pending_activities]
    task_attempt = raw.pending_workflow_task.attempt if raw.HasField("pending_workflow_task") else 0
    hist = HistoryFacts(open_timers=0, open_updates=0, task_failing=False)
    closed_why: str | None = None
    if desc.status == WorkflowExecutionStatus.RUNNING:
        hist = await run_history_facts(client, handle.id, desc.run_id)
    elif status in FAILED_STATUSES:
        run = client.get_workflow_handle(handle.id, run_id=desc.run_id)
        history = await run.fetch_history(rpc_timeout=RPC_TIMEOUT)
        closed_why = close_reason(history.events[-1]) if history.events else None
    state: SubscriptionView | None = None
    query_error: str | None = None
    if hist.task_failing:
        query_error = "not asked: its workflow task keeps failing"  # it would time out
    else:
        try:
            state = await query_state(client, subscription_id)
        except Exception as err:  # any failure to answer is a fact about the workflow, reported
            query_error = f"{type(err).__name__}: {err}"[:300]
    return WorkflowFacts(
        execution_status=status,
        pending_activities=len(attempts),
        max_activity_attempt=max(attempts, default=0),
        workflow_task_attempt=task_attempt,
        task_failing=hist.task_failing,
        task_failure=hist.task_failure,
        open_timers=hist.open_timers,
        open_updates=hist.open_updates,
        state=state,
        query_error=query_error,
        close_reason=closed_why,
    )


@dataclass
class FleetCheck:
    """The verdicts on a fleet of subscription workflows, and the credit each state reports."""

    checked: int
    problems: list[WorkflowProblem]
    credits: dict[str, int]  # account credit per subscription, from the state query
    unqueried: int  # subscriptions whose state could not be read

    def count(self, verdict: Verdict) -> int:
        return sum(1 for p in self.problems if p.verdict == verdict)


async def check_fleet(client: Client, subscription_ids: Sequence[str]) -> FleetCheck:
    """Judge every subscription's workflow (see the module docstring)."""
    limit = asyncio.Semaphore(CHECK_CONCURRENCY)

    async def one(sub: str) -> tuple[str, WorkflowFacts | None]:
        async with limit:
            return sub, await workflow_facts(client, sub)

    results = await asyncio.gather(*(one(sub) for sub in dict.fromkeys(subscription_ids)))
    problems: list[WorkflowProblem] = []
    credits: dict[str, int] = {}
    unqueried = 0
    checked = 0
    for sub, facts in results:
        if facts is None:
            continue
        checked += 1
        verdict, reason = judge(facts)
        if verdict != "ok":
            problems.append(WorkflowProblem(subscription_id=sub, verdict=verdict, reason=reason))
            log.warning(
                "simulate.workflow_problem", subscription_id=sub, verdict=verdict, why=reason
            )
        if facts.state is not None:
            credits[sub] = facts.state.account_credit_minor
        else:
            unqueried += 1
    return FleetCheck(checked=checked, problems=problems, credits=credits, unqueried=unqueried)
