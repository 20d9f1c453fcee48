"""The race matrix: every update x every phase of the loop has its documented outcome.

Phases: sleeping between events; writing the upcoming-charge notice; issuing the renewal invoice;
charging it (each held open inside its activity by tests/support/gates.py while the message
arrives); sleeping in dunning (past due); paused. Updates: cancel now, cancel at period end,
uncancel, an immediate upgrade, pause, resume, a new card, an approver's decision and a
withdrawal (of a pending downgrade that needs approval). After each case the workflow is alive
or completed (never Failed), its state is readable, and no period is charged after a cancel-now
was accepted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from temporalio.client import (
    WorkflowExecutionStatus,
    WorkflowUpdateFailedError,
    WorkflowUpdateStage,
)
from temporalio.exceptions import ApplicationError

from activities.gateway import StripeGateway
from models.errors import ErrorCode
from models.ids import subscription_workflow_id
from models.subscription import (
    Actor,
    ApprovalDecision,
    CancelRequest,
    ChangeRequest,
    PauseRequest,
    PaymentMethodUpdate,
    ResumeRequest,
    SubscriptionStatus,
    UncancelRequest,
    WithdrawRequest,
)
from starter.service import SubscribeRequest
from tests.support.gates import ActivityGate
from tests.workflows.conftest import TEST_API_KEY, Stack, open_stack
from tests.workflows.test_subscription_lifecycle import DECLINING_CARD, OK_CARD, skip_to
from workflows.subscription import SubscriptionWorkflow

S = SubscriptionStatus
OPS = Actor(actor="sam", channel="cli")
PHASES = ("sleeping", "notice", "invoice", "charge", "dunning", "paused")
UPDATES = (
    "cancel_now",
    "cancel_at_period_end",
    "uncancel",
    "change_now",
    "pause",
    "resume",
    "payment_method",
    "decide",
    "withdraw",
)
RENEWAL_INVOICE = "_p1"


def gate_for(phase: str) -> ActivityGate | None:
    if phase == "notice":
        return ActivityGate("store.enqueue_notification", lambda n: n.kind == "upcoming_charge")
    if phase == "invoice":
        return ActivityGate("store.write_invoice", lambda d: d.invoice_id.endswith(RENEWAL_INVOICE))
    if phase == "charge":
        return ActivityGate("payments.charge", lambda c: c.invoice_id.endswith(RENEWAL_INVOICE))
    return None


def message(update: str, stack: Stack) -> tuple[Any, Any]:
    """The workflow update and its argument."""
    if update == "cancel_now":
        return SubscriptionWorkflow.cancel, CancelRequest(
            at_period_end=False, request_id="c1", by=OPS
        )
    if update == "cancel_at_period_end":
        return SubscriptionWorkflow.cancel, CancelRequest(
            at_period_end=True, request_id="c2", by=OPS
        )
    if update == "uncancel":
        return SubscriptionWorkflow.uncancel, UncancelRequest(by=OPS)
    if update == "change_now":
        return SubscriptionWorkflow.request_change, ChangeRequest(
            request_id="more", quantity=21, when="now", by=OPS
        )
    if update == "pause":
        return SubscriptionWorkflow.pause, PauseRequest(request_id="pz", by=OPS)
    if update == "resume":
        return SubscriptionWorkflow.resume, ResumeRequest(request_id="rs", by=OPS)
    if update == "payment_method":
        pm = stack.gateway.create_test_payment_method(OK_CARD)
        return SubscriptionWorkflow.update_payment_method, PaymentMethodUpdate(
            payment_method_id=pm, by=OPS
        )
    if update == "decide":
        return SubscriptionWorkflow.decide, ApprovalDecision(
            request_id="down", approve=True, approver="alice", reason="ok", channel="cli"
        )
    assert update == "withdraw"
    return SubscriptionWorkflow.withdraw, WithdrawRequest(request_id="down", by=OPS)


async def setup(stack: Stack, phase: str) -> str:
    """A subscription waiting in ``phase`` (or about to enter it): returns its id."""
    await skip_to(stack, datetime(2027, 4, 1, 9, tzinfo=UTC))
    card = DECLINING_CARD if phase == "dunning" else OK_CARD
    pm = stack.gateway.create_test_payment_method(card)
    started = await stack.service.subscribe(
        SubscribeRequest(
            email="race@example.com",
            plan_id="pro",
            quantity=20,
            payment_method_id=pm,
            trial_days=1 if phase == "dunning" else 0,
        ),
        OPS,
        now=await stack.now(),
    )
    sub = started.subscription_id
    if phase == "dunning":
        await stack.env.sleep(timedelta(days=1, hours=2))  # the first charge is declined
        return sub
    await skip_to(stack, datetime(2027, 4, 27, 12, tzinfo=UTC))
    await stack.service.change(  # a downgrade that waits for an approver
        sub, plan_id=None, quantity=5, interval=None, when=None, by=OPS, request_id="down"
    )
    if phase == "paused":
        await stack.service.pause(sub, None, OPS, request_id="p0")
    return sub


Outcome = dict[str, Any]


async def run_case(engine: Engine, localstripe_url: str, phase: str, update: str) -> Outcome:
    gateway = StripeGateway(TEST_API_KEY, api_base=localstripe_url, max_network_retries=0)
    gate = gate_for(phase)
    async with open_stack(engine, gateway, interceptors=[gate] if gate else []) as stack:
        sub = await setup(stack, phase)
        handle = stack.env.client.get_workflow_handle(subscription_workflow_id(sub))
        clock: asyncio.Task[None] | None = None
        if gate is not None:
            clock = asyncio.create_task(stack.env.sleep(timedelta(days=5)))  # into the renewal
            await asyncio.wait_for(gate.entered.wait(), 60)
        fn, arg = message(update, stack)
        out: Outcome = {"sub": sub}
        try:
            pending = await handle.start_update(
                fn, arg, wait_for_stage=WorkflowUpdateStage.ACCEPTED
            )
            if gate is not None:
                gate.release()
            result = await pending.result()
            out["result"] = result
        except WorkflowUpdateFailedError as err:
            if gate is not None:
                gate.release()
            cause = err.cause
            assert isinstance(cause, ApplicationError), repr(cause)
            out["error"] = cause.type
        if clock is not None:
            await clock
        await stack.env.sleep(timedelta(hours=1))
        desc = await handle.describe()
        assert desc.status in (WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.COMPLETED)
        view = await handle.query(SubscriptionWorkflow.state)
        out["status"] = view.status
        out["cancel_at_period_end"] = view.cancel_at_period_end
        out["payments"] = {
            p.invoice_id.rsplit("_", 1)[-1]: p.status for p in stack.store.payments(sub)
        }
        out["invoices"] = {
            inv.id.rsplit("_", 1)[-1]: inv.status for inv, _ in stack.store.list_invoices(sub)
        }
        out["credit"] = view.account_credit_minor
        out["pending"] = len((await handle.query(SubscriptionWorkflow.pending)).approvals)
        return out


def ok(status: S, **facts: Any) -> Callable[[Outcome], None]:
    def check(out: Outcome) -> None:
        assert "error" not in out, out.get("error")
        assert out["status"] == status, out
        for key, value in facts.items():
            assert out[key] == value, (key, out)

    return check


def refused(code: ErrorCode, status: S) -> Callable[[Outcome], None]:
    def check(out: Outcome) -> None:
        assert out.get("error") == code, out
        assert out["status"] == status, out

    return check


def canceled_before_charging(out: Outcome) -> None:
    # Accepted while the renewal invoice was being written: that period is never charged.
    assert out["status"] == S.canceled and "error" not in out
    assert out["invoices"].get("p1") in ("void", None) and "p1" not in out["payments"]


def canceled_after_the_charge(out: Outcome) -> None:
    # Accepted mid-charge: it waited for the charge, then credited the unused period by policy.
    assert out["status"] == S.canceled and out["payments"]["p1"] == "succeeded"
    assert out["credit"] == 20 * 3000


def recovered(out: Outcome) -> None:
    assert out["result"].retried and out["status"] == S.active


EXPECTED: dict[tuple[str, str], Callable[[Outcome], None]] = {}
for _phase in ("sleeping", "notice", "invoice", "charge"):
    EXPECTED[(_phase, "cancel_now")] = ok(S.canceled)
    EXPECTED[(_phase, "cancel_at_period_end")] = ok(S.active, cancel_at_period_end=True)
    EXPECTED[(_phase, "uncancel")] = refused(ErrorCode.NOT_CANCELING, S.active)
    EXPECTED[(_phase, "change_now")] = ok(S.active)
    EXPECTED[(_phase, "pause")] = ok(S.paused)
    EXPECTED[(_phase, "resume")] = refused(ErrorCode.NOT_PAUSED, S.active)
    EXPECTED[(_phase, "payment_method")] = ok(S.active)
    EXPECTED[(_phase, "decide")] = ok(S.active, pending=0)
    EXPECTED[(_phase, "withdraw")] = ok(S.active, pending=0)
EXPECTED[("invoice", "cancel_now")] = canceled_before_charging
# The clock then runs through the renewal date: a cancellation scheduled from the notice takes
# effect there, and that period is never billed.
EXPECTED[("notice", "cancel_at_period_end")] = canceled_before_charging
EXPECTED[("charge", "cancel_now")] = canceled_after_the_charge
EXPECTED.update(
    {
        ("dunning", "cancel_now"): ok(S.canceled),
        ("dunning", "cancel_at_period_end"): ok(S.canceled),  # nothing is served: now
        ("dunning", "uncancel"): refused(ErrorCode.NOT_CANCELING, S.past_due),
        ("dunning", "change_now"): refused(ErrorCode.CHANGE_NOT_ALLOWED, S.past_due),
        ("dunning", "pause"): refused(ErrorCode.CHANGE_NOT_ALLOWED, S.past_due),
        ("dunning", "resume"): refused(ErrorCode.NOT_PAUSED, S.past_due),
        ("dunning", "payment_method"): recovered,
        ("dunning", "decide"): refused(ErrorCode.REQUEST_NOT_FOUND, S.past_due),
        ("dunning", "withdraw"): refused(ErrorCode.REQUEST_NOT_FOUND, S.past_due),
        ("paused", "cancel_now"): ok(S.canceled),
        ("paused", "cancel_at_period_end"): ok(S.canceled),
        ("paused", "uncancel"): refused(ErrorCode.NOT_CANCELING, S.paused),
        ("paused", "change_now"): refused(ErrorCode.SUBSCRIPTION_PAUSED, S.paused),
        ("paused", "pause"): refused(ErrorCode.SUBSCRIPTION_PAUSED, S.paused),
        ("paused", "resume"): ok(S.active),
        ("paused", "payment_method"): ok(S.paused),
        # Approved, but a paused subscription cannot change: recorded as failed, not applied.
        ("paused", "decide"): ok(S.paused, pending=0),
        ("paused", "withdraw"): ok(S.paused, pending=0),
    }
)


def test_the_matrix_is_complete() -> None:
    assert set(EXPECTED) == {(p, u) for p in PHASES for u in UPDATES}


@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("phase", PHASES)
async def test_message_has_its_outcome_in_every_phase(
    engine: Engine, localstripe_url: str, phase: str, update: str
) -> None:
    out = await run_case(engine, localstripe_url, phase, update)
    EXPECTED[(phase, update)](out)
    if phase == "paused" and update == "decide":
        assert out["result"].status == "failed"
