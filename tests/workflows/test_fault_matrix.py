"""The fault matrix: every activity the subscription calls x {refused, transient, killed}.

One scenario touches every call site: a subscription is created (customer provisioned, first
invoice charged), upgraded mid-period (a charged change), asked for a downgrade that needs
approval (approved, scheduled), renewed (notice, invoice, charge, the scheduled change applied),
reduced at once (credit to the balance) and canceled at once under a refund policy (refund). For
each activity type its first execution gets one fault (see tests/support/faults.py). Whatever the
fault, the subscription never ends Failed and never hangs, money moves at most once per invoice,
the credit ledger agrees with the workflow, and no refund exceeds its payment. Transient errors
and a worker killed after the side effect change nothing at all; a refusal has the outcome
written for its call site.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from temporalio.client import WorkflowExecutionStatus

from activities.gateway import StripeGateway
from models.errors import ErrorCode, OmsError
from models.ids import subscription_workflow_id
from models.policy import load_policy
from models.subscription import Actor, SubscriptionStatus
from starter.service import SubscribeRequest
from tests.support.faults import MODES, Fault, FaultInterceptor
from tests.workflows.conftest import TEST_API_KEY, Stack, open_stack
from tests.workflows.test_subscription_lifecycle import OK_CARD, skip_to
from workflows.subscription import SubscriptionWorkflow

OPS = Actor(actor="sam", channel="cli")
ACTIVITIES = (
    "payments.provision_customer",
    "payments.charge",
    "payments.refund",
    "store.record_transition",
    "store.write_invoice",
    "store.settle_invoice",
    "store.record_credit",
    "store.record_approval",
    "store.enqueue_notification",
)


def refund_policy() -> Any:
    return load_policy(
        Path("models/data/policy.yaml")
        .read_text()
        .replace(
            "  cancellation:\n    timing: period_end\n    refund: account_credit\n",
            "  cancellation:\n    timing: period_end\n    refund: refund\n",
            1,
        )
    )


async def scenario(stack: Stack) -> tuple[str | None, list[str]]:
    """Run the year; returns the subscription id (None if it never started) and error codes."""
    errors: list[str] = []
    await skip_to(stack, datetime(2027, 4, 1, 9, tzinfo=UTC))
    pm = stack.gateway.create_test_payment_method(OK_CARD)
    svc = stack.service
    # Answer at acceptance, then let time run: a refused first step waits minutes for its retry.
    started = await svc.subscribe(
        SubscribeRequest(
            email="fm@example.com",
            plan_id="pro",
            quantity=20,
            payment_method_id=pm,
            trial_days=0,
            request_id="fault-matrix",
        ),
        OPS,
        now=await stack.now(),
        wait_for_payment=False,
    )
    sub = started.subscription_id
    await stack.env.sleep(timedelta(days=1))
    failed = [a for a in stack.store.audit_trail(sub) if a.action == "creation_failed"]
    if failed:
        return None, [json.loads(failed[0].details)["error_code"]]

    async def attempt(call: Any) -> None:
        try:
            await call
        except OmsError as err:
            errors.append(err.code)

    await stack.env.sleep(timedelta(days=9))
    await attempt(
        svc.change(
            sub, plan_id=None, quantity=21, interval=None, when="now", by=OPS, request_id="up"
        )
    )
    await attempt(
        svc.change(
            sub, plan_id=None, quantity=5, interval=None, when=None, by=OPS, request_id="down"
        )
    )
    await attempt(svc.decide("down", approve=True, approver="alice", reason="ok", channel="cli"))
    await stack.env.sleep(timedelta(days=25))  # notice, renewal (after any attention retry)
    await attempt(  # a decrease now: its credit goes to the account balance
        svc.change(
            sub, plan_id=None, quantity=4, interval=None, when="now", by=OPS, request_id="less"
        )
    )
    await attempt(svc.cancel(sub, False, OPS))
    await stack.env.sleep(timedelta(days=2))
    return sub, errors


def invariants(stack: Stack, sub: str) -> dict[str, Any]:
    """The money facts of a finished scenario (and the checks every outcome must pass)."""
    payments = [p for p in stack.store.payments(sub) if p.status == "succeeded"]
    per_invoice = Counter(p.invoice_id for p in payments)
    assert all(n == 1 for n in per_invoice.values()), f"double charge: {per_invoice}"
    ledger = stack.store.credit_ledger(sub)
    refunds = stack.store.refunds(sub)
    paid = {p.gateway_intent_id: p.amount_minor for p in payments}
    for intent in {r.gateway_intent_id for r in refunds}:
        refunded = sum(r.amount_minor for r in refunds if r.gateway_intent_id == intent)
        assert refunded <= paid.get(intent, 0), f"refund over payment {intent}: {refunded}"
    invoices = {inv.id: (inv.status, inv.total_minor) for inv, _ in stack.store.list_invoices(sub)}
    return {
        "charged": sorted((p.invoice_id, p.amount_minor) for p in payments),
        "ledger_sum": sum(e.amount_minor for e in ledger),
        "refunded": sum(r.amount_minor for r in refunds if r.status == "succeeded"),
        "invoices": invoices,
    }


async def run_case(engine: Engine, localstripe_url: str, fault: Fault | None) -> dict[str, Any]:
    gateway = StripeGateway(TEST_API_KEY, api_base=localstripe_url, max_network_retries=0)
    interceptors = [FaultInterceptor(fault)] if fault else []
    async with open_stack(engine, gateway, interceptors=interceptors) as stack:
        stack.service.policy = refund_policy()
        sub, errors = await scenario(stack)
        if sub is None:
            return {"sub": None, "errors": errors}
        handle = stack.env.client.get_workflow_handle(subscription_workflow_id(sub))
        desc = await handle.describe()
        view = await handle.query(SubscriptionWorkflow.state)
        facts = invariants(stack, sub)
        assert desc.status in (
            WorkflowExecutionStatus.COMPLETED,
            WorkflowExecutionStatus.RUNNING,
        ), desc.status
        assert facts["ledger_sum"] == view.account_credit_minor, "credit ledger disagrees"
        return {
            "sub": sub,
            "errors": errors,
            "status": view.status,
            "attention": view.needs_attention,
            "workflow": desc.status,
            **facts,
        }


@pytest.fixture(scope="module")
def baseline_cache() -> dict[str, Any]:
    return {}


async def baseline(engine: Engine, localstripe_url: str, cache: dict[str, Any]) -> dict[str, Any]:
    if "base" not in cache:
        cache["base"] = await run_case(engine, localstripe_url, None)
    return dict(cache["base"])


async def test_the_fault_free_scenario_touches_every_call_site(
    engine: Engine, localstripe_url: str, baseline_cache: dict[str, Any]
) -> None:
    base = await baseline(engine, localstripe_url, baseline_cache)
    assert base["errors"] == [] and base["status"] == SubscriptionStatus.canceled
    assert base["workflow"] == WorkflowExecutionStatus.COMPLETED
    assert base["refunded"] > 0 and len(base["charged"]) == 3  # first, change, renewal


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("activity_type", ACTIVITIES)
async def test_fault_has_its_written_outcome(
    engine: Engine,
    localstripe_url: str,
    baseline_cache: dict[str, Any],
    activity_type: str,
    mode: str,
) -> None:
    base = await baseline(engine, localstripe_url, baseline_cache)
    fault = Fault(activity_type, mode)
    got = await run_case(engine, localstripe_url, fault)
    assert fault.injected >= 1, "the scenario never reached the call site"
    if mode != "refused":
        # An outage or a lost result changes nothing: the same invoices, charges and refunds.
        for key in ("errors", "status", "charged", "refunded", "ledger_sum"):
            assert got[key] == base[key], key
        return
    expected = REFUSED[activity_type]
    expected(base, got)


def _never_started(base: dict[str, Any], got: dict[str, Any]) -> None:
    # The customer could not be provisioned: the subscription never starts, with its code.
    assert got["sub"] is None and got["errors"] == [ErrorCode.DATA_ERROR]


def _same_money(base: dict[str, Any], got: dict[str, Any]) -> None:
    # A record that could not be written (audit row, notice, credit entry): billing went on
    # unchanged and the subscription is flagged (NeedsAttention) until an operator clears it.
    assert got["status"] == SubscriptionStatus.canceled and got["attention"]
    assert (got["charged"], got["refunded"]) == (base["charged"], base["refunded"])


def _retried_after_attention(base: dict[str, Any], got: dict[str, Any]) -> None:
    # A refused loop step (the first invoice, its charge or its settlement) raised NeedsAttention
    # and was retried on the back-off: the same money in the end, nothing charged twice.
    assert got["status"] == SubscriptionStatus.canceled
    assert got["charged"] == base["charged"] and got["refunded"] == base["refunded"]


def _refund_credited(base: dict[str, Any], got: dict[str, Any]) -> None:
    # The gateway refused the refund: the cancellation completed and the amount became credit.
    assert got["status"] == SubscriptionStatus.canceled
    assert got["refunded"] < base["refunded"]
    assert got["ledger_sum"] >= base["ledger_sum"] + (base["refunded"] - got["refunded"]) - 1


def _request_refused(base: dict[str, Any], got: dict[str, Any]) -> None:
    # The first write of a request was refused: the caller got the code, the subscription went on
    # (and was canceled at the end), nothing was charged twice.
    assert ErrorCode.DATA_ERROR in got["errors"]
    assert got["status"] == SubscriptionStatus.canceled


REFUSED = {
    "payments.provision_customer": _never_started,
    "payments.charge": _retried_after_attention,
    "payments.refund": _refund_credited,
    "store.record_transition": _same_money,
    "store.write_invoice": _retried_after_attention,
    "store.settle_invoice": _retried_after_attention,
    "store.record_credit": _same_money,
    "store.record_approval": _request_refused,
    "store.enqueue_notification": _same_money,
}


async def test_an_operator_retries_a_refused_step_at_once(
    engine: Engine, localstripe_url: str
) -> None:
    # The renewal invoice's write is refused: NeedsAttention with its code, billing waits for
    # the back-off; `oms retry` (the retry_now signal) retries it at once and clears the flag.
    gateway = StripeGateway(TEST_API_KEY, api_base=localstripe_url, max_network_retries=0)
    fault = Fault("store.write_invoice", "refused", occurrence=2)
    async with open_stack(engine, gateway, interceptors=[FaultInterceptor(fault)]) as stack:
        await skip_to(stack, datetime(2027, 4, 1, 9, tzinfo=UTC))
        pm = stack.gateway.create_test_payment_method(OK_CARD)
        started = await stack.service.subscribe(
            SubscribeRequest(
                email="op@example.com", plan_id="pro", payment_method_id=pm, trial_days=0
            ),
            OPS,
            now=await stack.now(),
        )
        sub = started.subscription_id
        await skip_to(stack, datetime(2027, 5, 1, 0, 1, tzinfo=UTC))
        view = await stack.service.status(sub)
        assert not isinstance(view, dict)
        assert view.needs_attention and view.attention_code == ErrorCode.DATA_ERROR
        assert [inv.period_index for inv, _ in stack.store.list_invoices(sub)] == [0]
        assert "needs_attention" in [a.action for a in stack.store.audit_trail(sub)]

        await stack.service.retry(sub, OPS)
        await stack.env.sleep(timedelta(seconds=30))  # well before the 5-minute back-off
        view = await stack.service.status(sub)
        assert not isinstance(view, dict) and not view.needs_attention
        assert [inv.status for inv, _ in stack.store.list_invoices(sub)] == ["paid", "paid"]
        assert "attention_cleared" in [a.action for a in stack.store.audit_trail(sub)]
