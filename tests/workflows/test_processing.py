"""A payment the gateway reports as ``processing`` is polled, never declined, and a cancel-now
that arrives meanwhile waits for it: the charge that then succeeds is paid and credited back by
policy, never left charged after the cancellation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from activities.fault_injection import FaultKind, InjectedFaults
from activities.gateway import StripeGateway
from models.ids import subscription_workflow_id
from models.subscription import Actor, SubscriptionStatus
from starter.service import SubscribeRequest
from tests.workflows.conftest import TEST_API_KEY, open_stack
from tests.workflows.test_subscription_lifecycle import OK_CARD, skip_to
from workflows.subscription import SubscriptionWorkflow

OPS = Actor(actor="sam", channel="cli")


async def test_a_cancel_during_a_processing_renewal_waits_and_credits_it(
    engine: Engine, localstripe_url: str
) -> None:
    real = StripeGateway(TEST_API_KEY, api_base=localstripe_url, max_network_retries=0)
    # Every confirmation answers "processing" for one to three reads before its real outcome.
    gateway = InjectedFaults(
        real, rate=1.0, seed=3, max_faulty_tries=1, weights={FaultKind.PROCESSING: 1}
    )
    async with open_stack(engine, gateway) as stack:
        await skip_to(stack, datetime(2027, 4, 1, 9, tzinfo=UTC))
        pm = stack.gateway.create_test_payment_method(OK_CARD)
        started = await stack.service.subscribe(
            SubscribeRequest(
                email="pr@example.com", plan_id="pro", payment_method_id=pm, trial_days=0
            ),
            OPS,
            now=await stack.now(),
            wait_for_payment=False,
        )
        sub = started.subscription_id
        handle = stack.env.client.get_workflow_handle(subscription_workflow_id(sub))
        await stack.env.sleep(timedelta(hours=6))  # the first charge was polled until paid
        view = await handle.query(SubscriptionWorkflow.state)
        assert view.status == SubscriptionStatus.active

        await skip_to(stack, datetime(2027, 5, 1, 0, 0, 20, tzinfo=UTC))  # renewal processing
        view = await handle.query(SubscriptionWorkflow.state)
        assert [i.processing_key is not None for i in view.open_invoices] == [True]

        cancel = asyncio.create_task(stack.service.cancel(sub, False, OPS))
        await asyncio.sleep(0.5)
        await stack.env.sleep(timedelta(hours=2))  # time for the polls
        result = await cancel
        assert result.status == SubscriptionStatus.canceled
        payments = {p.invoice_id.rsplit("_", 1)[-1]: p.status for p in stack.store.payments(sub)}
        assert payments == {"p0": "succeeded", "p1": "succeeded"}
        invoices = {i.id.rsplit("_", 1)[-1]: i.status for i, _ in stack.store.list_invoices(sub)}
        assert invoices["p1"] == "paid"  # not voided while the money was moving
        assert result.credited_minor == 3000  # the whole renewed period, credited by policy
        assert gateway.injected[FaultKind.PROCESSING] >= 2
