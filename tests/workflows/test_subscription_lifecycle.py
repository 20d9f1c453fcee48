"""A subscription's life on the time-skipping server, with real DB and localstripe activities."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from temporalio.client import WorkflowExecutionStatus

from activities.tables import NotificationRow
from models.calendar import billing_date
from models.errors import ErrorCode, OmsError
from models.ids import subscription_workflow_id
from models.subscription import Actor, SubscriptionResult, SubscriptionStatus
from starter.service import SubscribeRequest
from tests.workflows.conftest import Stack
from workflows.subscription import SubscriptionWorkflow

OK_CARD = "4242424242424242"
DECLINING_CARD = "4000000000000341"  # attaches, then every charge is declined
CLI = Actor(actor="tester", channel="cli")


async def skip_to(stack: Stack, target: datetime) -> None:
    now = await stack.now()
    assert target > now, f"cannot skip back from {now} to {target}"
    await stack.env.sleep(target - now)


async def subscribe(stack: Stack, card: str = OK_CARD, **fields: object) -> str:
    pm = stack.gateway.create_test_payment_method(card)
    req = SubscribeRequest(
        email=str(fields.pop("email", "ada@example.com")),
        plan_id=str(fields.pop("plan_id", "pro")),
        payment_method_id=pm,
        **fields,  # type: ignore[arg-type]
    )
    result = await stack.service.subscribe(req, CLI, now=await stack.now())
    return result.subscription_id


async def test_trial_converts_then_24_monthly_renewals_follow_the_jan_31_anchor(
    stack: Stack,
) -> None:
    # Start on 2027-01-17 with a 14-day trial: the anchor (trial end) is 2027-01-31.
    await skip_to(stack, datetime(2027, 1, 17, 12, tzinfo=UTC))
    pm = stack.gateway.create_test_payment_method(OK_CARD)
    started = await stack.service.subscribe(
        SubscribeRequest(email="ada@example.com", plan_id="pro", payment_method_id=pm),
        CLI,
        now=await stack.now(),
    )
    assert started.status == SubscriptionStatus.trialing
    assert started.first_invoice_date == date(2027, 1, 31)
    assert started.first_charge_minor == 3000
    sub = started.subscription_id
    assert stack.store.list_invoices(sub) == []

    # Through the trial end and 24 renewals after it.
    await skip_to(stack, datetime(2029, 1, 31, 12, tzinfo=UTC))

    invoices = stack.store.list_invoices(sub)
    expected = [billing_date(date(2027, 1, 31), 1, n) for n in range(25)]
    assert [inv.period_start for inv, _ in invoices] == expected
    assert expected[1] == date(2027, 2, 28) and expected[13] == date(2028, 2, 29)
    assert all(inv.period_end == expected[i + 1] for i, (inv, _) in enumerate(invoices[:-1]))
    assert all(inv.total_minor == 3000 and inv.status == "paid" for inv, _ in invoices)
    assert all(len(lines) == 1 and lines[0].amount_minor == 3000 for _, lines in invoices)

    payments = stack.store.payments(sub)
    assert len(payments) == 25
    assert {p.status for p in payments} == {"succeeded"}
    assert len({p.gateway_intent_id for p in payments}) == 25
    for p in payments:
        intent = stack.gateway.retrieve_payment_intent(p.gateway_intent_id or "")
        assert (intent.status, intent.amount_minor, intent.currency) == ("succeeded", 3000, "USD")

    handle = stack.env.client.get_workflow_handle(subscription_workflow_id(sub))
    view = await handle.query(SubscriptionWorkflow.state)
    assert view.status == SubscriptionStatus.active
    assert view.period_index == 25
    assert (view.current_period_start, view.current_period_end) == (expected[24], date(2029, 2, 28))
    desc = await handle.describe()
    assert desc.status == WorkflowExecutionStatus.RUNNING
    assert desc.run_id != handle.run_id or desc.run_id  # the chain was followed
    row = stack.store.get_subscription(sub)
    assert row is not None and row.status == "active"
    assert row.current_period_start == expected[24]


async def test_upcoming_charge_and_trial_ending_notices_are_queued_days_before(
    stack: Stack,
) -> None:
    await skip_to(stack, datetime(2027, 3, 1, 9, tzinfo=UTC))
    sub = await subscribe(stack, trial_days=10, timezone="America/New_York")
    await skip_to(stack, datetime(2027, 4, 20, tzinfo=UTC))
    notices = [(n.kind, n.scheduled_for) for n in _notices(stack, sub)]
    # Trial ends 2027-03-11 (local); the notice goes 3 days before local midnight (EST: -5h).
    assert notices[0] == ("trial_ending", datetime(2027, 3, 8, 5, tzinfo=UTC))
    # Renewal 2027-04-11 00:00 EDT = 04:00 UTC; notice 3 days earlier.
    assert ("upcoming_charge", datetime(2027, 4, 8, 4, tzinfo=UTC)) in notices
    assert len(notices) == 2


async def test_cancel_at_period_end_stops_renewals_and_can_be_withdrawn_first(
    stack: Stack,
) -> None:
    sub = await subscribe(stack, plan_id="starter")
    result = await stack.service.cancel(sub, at_period_end=True, by=CLI)
    assert result.cancel_at_period_end and result.status == SubscriptionStatus.active
    undone = await stack.service.uncancel(sub, by=CLI)
    assert not undone.cancel_at_period_end
    await stack.env.sleep(timedelta(days=40))
    assert len(stack.store.list_invoices(sub)) == 2  # renewed once: the cancel was withdrawn

    scheduled = await stack.service.cancel(sub, at_period_end=True, by=CLI)
    assert scheduled.effective_date is not None
    outcome = await result_of_latest_run(stack, sub)  # skips time until the period ends
    assert outcome.status == SubscriptionStatus.canceled
    assert len(stack.store.list_invoices(sub)) == 2
    actions = [a.action for a in stack.store.audit_trail(sub)]
    assert actions == [
        "created",
        "activated",
        "cancel_scheduled",
        "cancel_withdrawn",
        "renewed",
        "cancel_scheduled",
        "canceled",
    ]
    row = stack.store.get_subscription(sub)
    assert row is not None and row.status == "canceled" and row.next_billing_at is None


async def test_immediate_cancel_ends_the_workflow_without_further_charges(stack: Stack) -> None:
    sub = await subscribe(stack, plan_id="starter")
    result = await stack.service.cancel(sub, at_period_end=False, by=CLI)
    assert result.status == SubscriptionStatus.canceled
    assert (await result_of_latest_run(stack, sub)).status == SubscriptionStatus.canceled
    assert len(stack.store.payments(sub)) == 1
    with pytest.raises(OmsError) as err:
        await stack.service.cancel(sub, at_period_end=False, by=CLI)
    assert err.value.code in (ErrorCode.SUBSCRIPTION_CANCELED, ErrorCode.SUBSCRIPTION_NOT_FOUND)


async def test_declined_first_payment_refuses_the_subscription_with_a_code(stack: Stack) -> None:
    with pytest.raises(OmsError) as err:
        await subscribe(stack, card=DECLINING_CARD, plan_id="starter")
    assert err.value.code == ErrorCode.PAYMENT_DECLINED
    [payment] = [p for p in stack.store.payments() if p.status == "declined"][-1:]
    assert payment.decline_code
    row = stack.store.get_subscription(payment.subscription_id)
    assert row is not None and row.status == "incomplete_expired"


async def test_declined_renewal_marks_the_subscription_past_due(stack: Stack) -> None:
    await skip_to(stack, datetime(2027, 2, 1, 6, tzinfo=UTC))
    sub = await subscribe(stack, card=DECLINING_CARD, trial_days=3)  # charge 2027-02-04 00:00
    await skip_to(stack, datetime(2027, 2, 4, 12, tzinfo=UTC))  # before the +1 day retry
    view = await stack.service.status(sub)
    assert not isinstance(view, dict) and view.status == SubscriptionStatus.past_due
    assert view.dunning_stage == "retrying" and len(view.open_invoices) == 1
    [payment] = stack.store.payments(sub)
    assert payment.status == "declined"
    [(invoice, _)] = stack.store.list_invoices(sub)
    assert invoice.status == "open"


async def test_timeline_lists_the_next_notices_and_charges_in_order(stack: Stack) -> None:
    await skip_to(stack, datetime(2027, 5, 10, 15, tzinfo=UTC))
    sub = await subscribe(stack, plan_id="starter", interval="monthly")
    timeline = await stack.service.timeline(sub)
    kinds = [e.kind for e in timeline.events]
    assert kinds == [
        "upcoming_charge_notice",
        "renewal",
        "upcoming_charge_notice",
        "renewal",
        "upcoming_charge_notice",
        "renewal",
    ]
    instants = [e.at for e in timeline.events]
    assert instants == sorted(instants)
    assert timeline.events[1].at == datetime(2027, 6, 10, tzinfo=UTC)
    assert timeline.events[1].amount_minor == 900


async def test_retried_create_request_returns_the_same_subscription(stack: Stack) -> None:
    pm = stack.gateway.create_test_payment_method(OK_CARD)
    req = SubscribeRequest(
        email="bo@example.com", plan_id="starter", payment_method_id=pm, request_id="req-42"
    )
    first = await stack.service.subscribe(req, CLI, now=await stack.now())
    again = await stack.service.subscribe(req, CLI, now=await stack.now())
    assert again == first
    assert len(stack.store.payments(first.subscription_id)) == 1


async def result_of_latest_run(
    stack: Stack, sub: str, step: timedelta = timedelta(days=1), max_steps: int = 400
) -> SubscriptionResult:
    """Advance the virtual clock until the subscription's workflow closes; its result.

    Only handles returned by ``start_workflow`` unlock time skipping while awaiting a result, and
    the Java test server cannot follow a continue-as-new chain, so skip explicitly.
    """
    wid = subscription_workflow_id(sub)
    for _ in range(max_steps):
        latest = await stack.env.client.get_workflow_handle(wid).describe()
        if latest.status != WorkflowExecutionStatus.RUNNING:
            handle = stack.env.client.get_workflow_handle(
                wid, run_id=latest.run_id, result_type=SubscriptionResult
            )
            return await handle.result()
        await stack.env.sleep(step)
    raise AssertionError(f"{wid} still running after {max_steps} steps of {step}")


def _notices(stack: Stack, sub: str) -> list[NotificationRow]:
    """The notices sent before charges (receipts after them are left out)."""
    return [n for n in stack.store.notifications(sub) if n.kind != "payment_succeeded"]


async def test_anchor_day_bills_a_leading_prorated_piece_then_full_periods_on_that_day(
    stack: Stack,
) -> None:
    # Start 2027-04-11 aligned to the 1st: the first invoice covers Apr 11..May 1 (20/30 days).
    await skip_to(stack, datetime(2027, 4, 11, 8, tzinfo=UTC))
    pm = stack.gateway.create_test_payment_method(OK_CARD)
    started = await stack.service.subscribe(
        SubscribeRequest(
            email="al@example.com", plan_id="pro", payment_method_id=pm, trial_days=0, anchor_day=1
        ),
        CLI,
        now=await stack.now(),
    )
    assert started.first_invoice_date == date(2027, 4, 11)
    assert started.first_charge_minor == 2000  # 30.00 * 20/30, rounded once
    await skip_to(stack, datetime(2027, 6, 2, tzinfo=UTC))
    invoices = stack.store.list_invoices(started.subscription_id)
    assert [(i.period_start, i.period_end, i.total_minor) for i, _ in invoices] == [
        (date(2027, 4, 11), date(2027, 5, 1), 2000),
        (date(2027, 5, 1), date(2027, 6, 1), 3000),
        (date(2027, 6, 1), date(2027, 7, 1), 3000),
    ]
    assert invoices[0][1][0].kind == "proration_charge"


async def test_accept_only_start_answers_before_the_first_payment_settles(stack: Stack) -> None:
    pm = stack.gateway.create_test_payment_method(OK_CARD)
    started = await stack.service.subscribe(
        SubscribeRequest(email="fa@example.com", plan_id="starter", payment_method_id=pm),
        CLI,
        now=await stack.now(),
        wait_for_payment=False,
    )
    assert started.status == SubscriptionStatus.incomplete
    assert started.first_charge_minor == 900
    await stack.env.sleep(timedelta(seconds=5))
    view = await stack.service.status(started.subscription_id)
    assert not isinstance(view, dict) and view.status == SubscriptionStatus.active
