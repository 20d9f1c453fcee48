"""History stays bounded in every status: a paused subscription that keeps receiving messages
continues as new (with every handler finished) instead of growing towards the server's limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from models.ids import subscription_workflow_id
from models.subscription import Actor, AttentionRetry, SubscriptionStatus
from starter.service import SubscribeRequest
from tests.workflows.conftest import Stack
from tests.workflows.test_subscription_lifecycle import OK_CARD, skip_to
from workflows.subscription import SubscriptionWorkflow

OPS = Actor(actor="sam", channel="cli")


async def test_a_paused_subscription_continues_as_new_past_its_history_limit(
    stack: Stack,
) -> None:
    build = stack.service.build_state
    stack.service.build_state = (  # type: ignore[method-assign]
        lambda *a, **kw: build(*a, **kw).model_copy(update={"history_limit": 40})
    )
    await skip_to(stack, datetime(2027, 4, 1, 9, tzinfo=UTC))
    pm = stack.gateway.create_test_payment_method(OK_CARD)
    started = await stack.service.subscribe(
        SubscribeRequest(email="h@example.com", plan_id="pro", payment_method_id=pm, trial_days=0),
        OPS,
        now=await stack.now(),
    )
    sub = started.subscription_id
    handle = stack.env.client.get_workflow_handle(subscription_workflow_id(sub))
    await stack.env.sleep(timedelta(days=2))
    await stack.service.pause(sub, None, OPS, request_id="p1")
    first = (await handle.describe()).run_id
    for _ in range(8):  # signals while paused: each adds history, none changes anything
        await handle.signal(SubscriptionWorkflow.retry_now, AttentionRetry(by=OPS))
        await stack.env.sleep(timedelta(hours=1))
    desc = await handle.describe()
    view = await handle.query(SubscriptionWorkflow.state)
    assert view.status == SubscriptionStatus.paused
    assert desc.run_id != first, "the paused subscription never continued as new"
    history = await handle.fetch_history()
    assert len(history.events) < 60
