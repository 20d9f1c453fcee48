"""The simulation's verdicts: failed and stuck workflows, rejected and failed messages (pure)."""

from __future__ import annotations

import random
from datetime import date

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ActivityError, ApplicationError, RetryState
from temporalio.service import RPCError, RPCStatusCode

from activities.fault_injection import FAULT_WEIGHTS
from models.calendar import Interval
from models.errors import ErrorCode, OmsError
from models.subscription import SubscriptionStatus, SubscriptionView
from starter.sim_checks import WorkflowFacts, history_facts, judge
from starter.sim_messages import (
    MESSAGE_WEIGHTS,
    MessageKind,
    Messenger,
    Outcome,
    SubscriptionInfo,
    classify_failure,
    poisson,
)


def view(status: str = "active", **fields: object) -> SubscriptionView:
    values: dict[str, object] = {
        "subscription_id": "sub_1",
        "customer_id": "cus_1",
        "plan_id": "pro",
        "interval": Interval.MONTHLY,
        "currency": "USD",
        "unit_amount_minor": 3000,
        "quantity": 1,
        "status": SubscriptionStatus(status),
        "timezone": "UTC",
        "anchor": date(2027, 1, 1),
        "trial_end": None,
        "current_period_start": None,
        "current_period_end": None,
        "next_billing_date": None,
        "next_billing_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "period_index": 1,
        "payment_method_id": "pm_1",
        **fields,
    }
    return SubscriptionView.model_validate(values)


def facts(state: SubscriptionView | None = None, **fields: object) -> WorkflowFacts:
    values: dict[str, object] = {"execution_status": "RUNNING", "state": state or view()}
    values.update(fields)
    return WorkflowFacts(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", ["FAILED", "TERMINATED", "TIMED_OUT", "CANCELED"])
def test_closed_executions_that_did_not_complete_are_failed(status: str) -> None:
    assert judge(facts(execution_status=status))[0] == "failed"


def test_a_completed_execution_is_fine() -> None:
    assert judge(facts(execution_status="COMPLETED", state=None))[0] == "ok"


def test_a_workflow_waiting_on_a_timer_an_activity_or_an_update_is_fine() -> None:
    assert judge(facts(open_timers=1))[0] == "ok"
    assert judge(facts(pending_activities=1, max_activity_attempt=1))[0] == "ok"
    assert judge(facts(open_updates=1))[0] == "ok"


def test_a_workflow_waiting_for_nothing_is_stuck() -> None:
    verdict, reason = judge(facts())

    assert verdict == "stuck"
    assert "waits for nothing" in reason


@pytest.mark.parametrize(
    "fields",
    [
        {"workflow_task_attempt": 3, "open_timers": 1},
        {"task_failing": True, "open_timers": 1},
        {"pending_activities": 1, "max_activity_attempt": 12},
        {"state": None, "query_error": "WorkflowQueryFailedError: boom", "open_timers": 1},
    ],
    ids=["task-retrying", "task-failed", "activity-retrying", "query-fails"],
)
def test_a_workflow_that_keeps_failing_is_stuck_even_with_work_pending(
    fields: dict[str, object],
) -> None:
    values: dict[str, object] = {"state": view(), **fields}
    assert judge(WorkflowFacts(execution_status="RUNNING", **values))[0] == "stuck"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "state",
    [
        view("unpaid"),
        view("paused"),  # no resume date: waits for the customer
        view("active", pending_approvals=1),
        view("past_due", dunning_stage="awaiting_payment_method"),
    ],
    ids=["unpaid", "paused-open-ended", "approval", "awaiting-card"],
)
def test_a_subscription_that_awaits_a_person_is_not_stuck(state: SubscriptionView) -> None:
    assert judge(facts(state))[0] == "ok"


def test_a_paused_subscription_with_a_resume_date_needs_its_timer() -> None:
    paused = view("paused", resume_on=date(2027, 3, 1))

    assert judge(facts(paused))[0] == "stuck"
    assert judge(facts(paused, open_timers=1))[0] == "ok"


@pytest.mark.parametrize("status", ["canceled", "incomplete_expired"])
def test_an_ended_subscription_still_running_is_not_judged_stuck(status: str) -> None:
    assert judge(facts(view(status)))[0] == "ok"


def _event(event_type: EventType.ValueType, **attrs: object) -> HistoryEvent:
    return HistoryEvent(event_type=event_type, **attrs)  # type: ignore[arg-type]


def test_history_facts_count_open_timers_updates_and_the_last_task_outcome() -> None:
    from temporalio.api.history.v1 import (
        TimerCanceledEventAttributes,
        TimerFiredEventAttributes,
        TimerStartedEventAttributes,
        WorkflowExecutionUpdateAcceptedEventAttributes,
        WorkflowExecutionUpdateCompletedEventAttributes,
    )
    from temporalio.api.update.v1 import Meta, Request

    e = EventType
    events = [
        _event(e.EVENT_TYPE_WORKFLOW_TASK_COMPLETED),
        _event(
            e.EVENT_TYPE_TIMER_STARTED,
            timer_started_event_attributes=TimerStartedEventAttributes(timer_id="1"),
        ),
        _event(
            e.EVENT_TYPE_TIMER_STARTED,
            timer_started_event_attributes=TimerStartedEventAttributes(timer_id="2"),
        ),
        _event(
            e.EVENT_TYPE_TIMER_STARTED,
            timer_started_event_attributes=TimerStartedEventAttributes(timer_id="3"),
        ),
        _event(
            e.EVENT_TYPE_TIMER_FIRED,
            timer_fired_event_attributes=TimerFiredEventAttributes(timer_id="1"),
        ),
        _event(
            e.EVENT_TYPE_TIMER_CANCELED,
            timer_canceled_event_attributes=TimerCanceledEventAttributes(timer_id="2"),
        ),
        _event(
            e.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
            workflow_execution_update_accepted_event_attributes=(
                WorkflowExecutionUpdateAcceptedEventAttributes(
                    accepted_request=Request(meta=Meta(update_id="u1"))
                )
            ),
        ),
        _event(
            e.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
            workflow_execution_update_accepted_event_attributes=(
                WorkflowExecutionUpdateAcceptedEventAttributes(
                    accepted_request=Request(meta=Meta(update_id="u2"))
                )
            ),
        ),
        _event(
            e.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED,
            workflow_execution_update_completed_event_attributes=(
                WorkflowExecutionUpdateCompletedEventAttributes(meta=Meta(update_id="u1"))
            ),
        ),
        _event(e.EVENT_TYPE_WORKFLOW_TASK_FAILED),
    ]

    found = history_facts(events)

    assert (found.open_timers, found.open_updates, found.task_failing) == (1, 1, True)
    healed = [*events, _event(e.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)]
    assert not history_facts(healed).task_failing


def test_workflow_tasks_timing_out_again_and_again_count_as_failing() -> None:
    e = EventType
    once = [
        _event(e.EVENT_TYPE_WORKFLOW_TASK_COMPLETED),
        _event(e.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT),
    ]
    again = [*once, _event(e.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT)]

    assert not history_facts(once).task_failing  # a slow worker, once
    assert history_facts(again).task_failing
    assert "timed out 2 times" in (history_facts(again).task_failure or "")


# --- messages ---------------------------------------------------------------------------------


def _rejected_update(code: str) -> OmsError:
    err = OmsError(ErrorCode(code), "refused")
    err.__cause__ = WorkflowUpdateFailedError(ApplicationError("refused", type=code))
    return err


def test_a_typed_business_refusal_is_a_rejection_counted_by_code() -> None:
    assert classify_failure(_rejected_update("NOT_PAUSED")) == Outcome("rejected", "NOT_PAUSED")
    assert classify_failure(OmsError(ErrorCode.UNKNOWN_PLAN, "no such plan")) == Outcome(
        "rejected", "UNKNOWN_PLAN"
    )


def test_an_ended_workflow_is_a_rejection() -> None:
    err = OmsError(ErrorCode.SUBSCRIPTION_NOT_FOUND, "no subscription")
    err.__cause__ = RPCError("workflow execution already completed", RPCStatusCode.NOT_FOUND, b"")

    assert classify_failure(err).result == "rejected"


@pytest.mark.parametrize(
    "err",
    [
        OmsError(ErrorCode.TIMEOUT, "did not answer in time"),
        OmsError(ErrorCode.TEMPORAL_UNAVAILABLE, "down"),
        _rejected_update("GATEWAY_UNAVAILABLE"),
        RuntimeError("boom"),
    ],
    ids=["timeout", "temporal-down", "gateway-outage", "other-exception"],
)
def test_infrastructure_failures_and_unknown_exceptions_are_errors(err: BaseException) -> None:
    assert classify_failure(err).result == "error"


def test_an_update_failed_by_an_activity_error_is_an_error_not_a_rejection() -> None:
    err = OmsError(ErrorCode.INVALID_REQUEST, "activity failed")
    cause = ActivityError(
        "activity error",
        scheduled_event_id=1,
        started_event_id=2,
        identity="w",
        activity_type="payments.charge",
        activity_id="1",
        retry_state=RetryState.NON_RETRYABLE_FAILURE,
    )
    err.__cause__ = WorkflowUpdateFailedError(cause)

    assert classify_failure(err) == Outcome("error", "INVALID_REQUEST:ActivityError")


def test_an_rpc_refusal_other_than_not_found_is_an_error() -> None:
    err = OmsError(ErrorCode.INVALID_REQUEST, "refused")
    err.__cause__ = RPCError("bad", RPCStatusCode.INVALID_ARGUMENT, b"")

    assert classify_failure(err).result == "error"


def test_poisson_draws_average_their_mean() -> None:
    rng = random.Random(3)
    draws = [poisson(rng, 0.2) for _ in range(20_000)]

    assert sum(draws) / len(draws) == pytest.approx(0.2, abs=0.02)
    assert poisson(rng, 0) == 0


def _messenger(rate: float, subs: list[str], seed: int = 9) -> Messenger:
    # Planning reads no service, gateway or catalog: only sending does.
    m = Messenger(None, None, None, rate=rate, seed=seed)  # type: ignore[arg-type]
    for sub in subs:
        m.add(SubscriptionInfo(subscription_id=sub, currency="USD", interval="monthly"))
    return m


def test_the_message_and_fault_mixes_are_parts_of_100() -> None:
    assert sum(MESSAGE_WEIGHTS.values()) == 100
    assert sum(FAULT_WEIGHTS.values()) == 100


def test_messages_are_planned_at_the_rate_asked_whatever_order_subscriptions_started_in() -> None:
    subs = [f"sub_{i:03d}" for i in range(200)]
    a = _messenger(3.0, subs)
    b = _messenger(3.0, list(reversed(subs)))
    days = [a.plan_day(d, {}) for d in range(61)]

    assert days == [b.plan_day(d, {}) for d in range(61)]
    per_sub_month = sum(len(d) for d in days) / len(subs) / (61 / 30.4375)
    assert per_sub_month == pytest.approx(3.0, rel=0.1)
    planned = {m.kind for d in days for m in d}
    assert MessageKind.DECIDE not in planned  # nothing waits for approval
    assert planned == set(MESSAGE_WEIGHTS)


def test_decisions_are_planned_only_for_requests_waiting_for_approval() -> None:
    m = _messenger(30.0, ["sub_a", "sub_b"])
    decisions = [
        msg
        for day in range(20)
        for msg in m.plan_day(day, {"sub_a": ["req-1"]})
        if msg.kind == MessageKind.DECIDE
    ]

    assert decisions
    assert {(d.subscription_id, d.approval_request_id) for d in decisions} == {("sub_a", "req-1")}
