"""Dunning: failed renewals are retried by policy, recover with a new card, or end by policy."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from activities.fault_injection import InjectedDeclines
from models.dunning import parse_dunning_policy
from models.subscription import Actor, SubscriptionStatus
from starter.service import SubscribeRequest
from tests.workflows.conftest import TEST_API_KEY, Stack, open_stack
from tests.workflows.test_subscription_lifecycle import (
    DECLINING_CARD,
    OK_CARD,
    result_of_latest_run,
    skip_to,
    subscribe,
)

CLI = Actor(actor="ops", channel="cli")


async def view_of(stack: Stack, sub: str):  # type: ignore[no-untyped-def]
    view = await stack.service.status(sub)
    assert not isinstance(view, dict)
    return view


async def test_soft_declines_are_retried_on_the_policy_schedule_then_canceled(
    stack: Stack,
) -> None:
    await skip_to(stack, datetime(2027, 1, 10, 12, tzinfo=UTC))
    sub = await subscribe(stack, card=DECLINING_CARD, trial_days=2)  # renewal due 2027-01-12
    await skip_to(stack, datetime(2027, 1, 12, 1, tzinfo=UTC))
    view = await view_of(stack, sub)
    assert view.status == SubscriptionStatus.past_due and view.access == "full"
    timeline = await stack.service.timeline(sub)
    assert [e.kind for e in timeline.events] == ["payment_retry", "dunning_final_action"]
    # +1 day after the failure (the charge ran at local midnight plus activity latency)
    assert abs(timeline.events[0].at - datetime(2027, 1, 13, tzinfo=UTC)) < timedelta(seconds=5)

    outcome = await result_of_latest_run(stack, sub, step=timedelta(hours=12))
    assert outcome.status == SubscriptionStatus.canceled
    attempts = [(p.attempt, p.status) for p in stack.store.payments(sub)]
    assert attempts == [(i, "declined") for i in range(5)]  # the first try + 4 retries
    failures = [a.occurred_at for a in stack.store.audit_trail(sub) if a.action == "payment_failed"]
    offsets = [round((t - failures[0]).total_seconds() / 86400) for t in failures]
    assert offsets == [0, 1, 3, 5, 7]
    [(invoice, _)] = stack.store.list_invoices(sub)
    assert invoice.status == "uncollectible"
    trail = [(a.action, a.to_status) for a in stack.store.audit_trail(sub)]
    assert trail[-1] == ("canceled", "canceled")
    assert trail.count(("payment_failed", "past_due")) == 5
    kinds = [n.kind for n in stack.store.notifications(sub)]
    # The failure after which no retry is left announces the final action and its date.
    assert kinds.count("payment_failed") == 4 and kinds.count("dunning_final") == 1
    final = next(n for n in stack.store.notifications(sub) if n.kind == "dunning_final")
    assert json.loads(final.data)["final_action"] == "cancel"


async def test_new_payment_method_retries_at_once_and_recovers(stack: Stack) -> None:
    sub = await subscribe(stack, card=DECLINING_CARD, trial_days=1)
    await stack.env.sleep(timedelta(days=1, hours=2))
    assert (await view_of(stack, sub)).status == SubscriptionStatus.past_due

    good = stack.gateway.create_test_payment_method(OK_CARD)
    result = await stack.service.update_payment_method(sub, good, CLI)
    assert result.retried and result.open_invoices == 0
    assert result.status == SubscriptionStatus.active
    view = await view_of(stack, sub)
    assert view.dunning_stage is None and view.payment_method_id == good
    payments = stack.store.payments(sub)
    assert [(p.attempt, p.status) for p in payments] == [(0, "declined"), (1, "succeeded")]
    actions = [a.action for a in stack.store.audit_trail(sub)]
    assert actions[-3:] == ["payment_failed", "payment_method_updated", "recovered"]
    # Billing goes on from the recovered period.
    await stack.env.sleep(timedelta(days=32))
    assert [i.status for i, _ in stack.store.list_invoices(sub)] == ["paid", "paid"]


async def test_hard_decline_waits_for_a_new_card_without_retrying_the_same_one(
    engine: Engine, localstripe_url: str
) -> None:
    gateway = InjectedDeclines(
        TEST_API_KEY,
        api_base=localstripe_url,
        decline_rate=1.0,
        hard_share=1.0,
        max_network_retries=0,
    )
    async with open_stack(engine, gateway) as stack:
        sub = await subscribe(stack, trial_days=1)
        await stack.env.sleep(timedelta(days=6))
        view = await view_of(stack, sub)
        assert view.status == SubscriptionStatus.past_due
        assert view.dunning_stage == "awaiting_payment_method"
        assert len(stack.store.payments(sub)) == 1  # no retry on a hard decline
        timeline = await stack.service.timeline(sub)
        assert [e.kind for e in timeline.events] == ["dunning_final_action"]


def soft_declines(localstripe_url: str) -> InjectedDeclines:
    return InjectedDeclines(
        TEST_API_KEY,
        api_base=localstripe_url,
        decline_rate=1.0,
        hard_share=0.0,
        max_network_retries=0,
    )


async def subscribe_weekly_beans(stack: Stack, email: str) -> str:
    pm = stack.gateway.create_test_payment_method(OK_CARD)
    started = await stack.service.subscribe(
        SubscribeRequest(
            email=email,
            plan_id="coffee-beans",
            interval="weekly",
            payment_method_id=pm,
            trial_days=1,
        ),
        CLI,
        now=await stack.now(),
    )
    return started.subscription_id


async def test_renewal_due_while_dunning_is_invoiced_and_collected_after_the_unpaid_one(
    engine: Engine, localstripe_url: str
) -> None:
    async with open_stack(engine, soft_declines(localstripe_url)) as stack:
        stack.service.dunning = parse_dunning_policy(
            "plans:\n  coffee-beans:\n    retry_days: [1, 3, 5, 9]\n    window_days: 12\n"
            "    renewal_during_dunning: invoice_and_wait\n"
        )
        sub = await subscribe_weekly_beans(stack, "wa@example.com")
        await stack.env.sleep(timedelta(days=8, hours=6))  # first charge day 1, renewal day 8
        view = await view_of(stack, sub)
        assert view.status == SubscriptionStatus.past_due
        assert [i.period_index for i in view.open_invoices] == [0, 1]

        assert isinstance(stack.gateway, InjectedDeclines)
        stack.gateway.decline_rate = 0.0  # the customer's bank now approves
        good = stack.gateway.create_test_payment_method(OK_CARD)
        result = await stack.service.update_payment_method(sub, good, CLI)
        assert result.status == SubscriptionStatus.active and result.open_invoices == 0
        paid = [(i.period_index, i.status) for i, _ in stack.store.list_invoices(sub)]
        assert paid == [(0, "paid"), (1, "paid")]
        succeeded = [p.invoice_id for p in stack.store.payments(sub) if p.status == "succeeded"]
        assert succeeded == sorted(succeeded)  # the older invoice was collected first


async def test_renewal_during_dunning_is_skipped_when_the_policy_says_so(
    engine: Engine, localstripe_url: str
) -> None:
    async with open_stack(engine, soft_declines(localstripe_url)) as stack:
        sub = await subscribe_weekly_beans(stack, "sk@example.com")  # shipped rule: skip, 7 days
        await stack.env.sleep(timedelta(days=5))
        view = await view_of(stack, sub)
        assert view.status == SubscriptionStatus.past_due and view.access == "restricted"
        outcome = await result_of_latest_run(stack, sub, step=timedelta(hours=12))
        assert outcome.status == SubscriptionStatus.canceled
        assert len(stack.store.list_invoices(sub)) == 1  # the renewal was never invoiced
        assert [p.attempt for p in stack.store.payments(sub)] == [0, 1, 2, 3]  # +1, +2, +4
