"""Replay recorded histories against today's workflow code: a non-determinism fails CI.

The histories in ``tests/replay/histories`` were recorded from real runs (every run of each
continue-as-new chain): trial conversion and renewals; dunning to cancellation; a change with
approval, pause and resume, then cancellation; a new card recovering a past-due subscription, and an
enterprise one marked unpaid then recovered; approval timers (reminded, escalated, expired), a
scheduled downgrade applied at renewal, an immediate monthly-to-yearly change and a cancellation
refunded to the card. They are the baseline of the restructured workflow package (issue 9).
Any change to the workflow that would break a running subscription on deploy fails here; ship
such changes behind ``workflow.patched`` (and add a recording that takes the new path).

Re-record (only when a change is deliberately incompatible and no such workflow runs anywhere):
``OMS_RECORD_HISTORIES=1 pytest tests/replay -k record``.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from activities.gateway import StripeGateway
from models.ids import subscription_workflow_id
from models.policy import Policy, load_policy
from models.subscription import Actor
from starter.service import SubscribeRequest
from tests.workflows.conftest import TEST_API_KEY, Stack, open_stack
from tests.workflows.test_subscription_lifecycle import DECLINING_CARD, OK_CARD, skip_to
from workflows.subscription import SubscriptionWorkflow

HISTORIES = Path(__file__).parent / "histories"
OPS = Actor(actor="sam", channel="cli")


def recorded() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


@pytest.mark.parametrize("path", recorded(), ids=lambda p: p.stem)
async def test_recorded_history_replays_on_current_code(path: Path) -> None:
    replayer = Replayer(workflows=[SubscriptionWorkflow], data_converter=pydantic_data_converter)
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    await replayer.replay_workflow(history)


def test_histories_cover_every_phase() -> None:
    names = {p.stem.rsplit("-run", 1)[0] for p in recorded()}
    assert names == {"renewals", "dunning", "changes", "recovery", "unpaid", "approvals"}
    assert len(recorded()) >= 9


async def _chain(client: Client, sub: str) -> list[str]:
    """JSON histories of every run of a subscription's chain, oldest first."""
    wid = subscription_workflow_id(sub)
    run_id: str | None = (await client.get_workflow_handle(wid).describe()).run_id
    out: list[str] = []
    while run_id:
        history = await client.get_workflow_handle(wid, run_id=run_id).fetch_history()
        out.append(history.to_json())
        first = history.events[0].workflow_execution_started_event_attributes
        run_id = first.continued_execution_run_id or None
    return list(reversed(out))


def _save(name: str, runs: list[str]) -> None:
    for i, text in enumerate(runs, 1):
        (HISTORIES / f"{name}-run{i}.json").write_text(
            json.dumps(json.loads(text), indent=1, sort_keys=True) + "\n"
        )


@pytest.mark.skipif(not os.environ.get("OMS_RECORD_HISTORIES"), reason="re-records histories")
async def test_record_histories(engine: Engine, localstripe_url: str) -> None:
    gateway = StripeGateway(TEST_API_KEY, api_base=localstripe_url, max_network_retries=0)
    async with open_stack(engine, gateway) as stack:
        _save("renewals", await _renewals(stack))
    async with open_stack(engine, gateway) as stack:
        _save("dunning", await _dunning(stack))
    async with open_stack(engine, gateway) as stack:
        _save("changes", await _changes(stack))
    async with open_stack(engine, gateway) as stack:
        _save("recovery", await _recovery(stack))
    async with open_stack(engine, gateway) as stack:
        _save("unpaid", await _unpaid(stack))
    async with open_stack(engine, gateway) as stack:
        stack.service.policy = _refund_policy()
        _save("approvals", await _approvals(stack))


async def _subscribe(stack: Stack, card: str, **kw: object) -> str:
    pm = stack.gateway.create_test_payment_method(card)
    started = await stack.service.subscribe(
        SubscribeRequest(email=f"{kw.pop('who')}@example.com", payment_method_id=pm, **kw),  # type: ignore[arg-type]
        OPS,
        now=await stack.now(),
    )
    return started.subscription_id


async def _renewals(stack: Stack) -> list[str]:
    await skip_to(stack, datetime(2027, 1, 17, 12, tzinfo=UTC))
    sub = await _subscribe(stack, OK_CARD, who="rn", plan_id="pro")
    await stack.env.sleep(timedelta(days=50))
    await stack.service.cancel(sub, True, OPS)
    await stack.service.uncancel(sub, OPS)
    await stack.service.cancel(sub, True, OPS)
    await stack.env.sleep(timedelta(days=35))
    return await _chain(stack.env.client, sub)


async def _dunning(stack: Stack) -> list[str]:
    sub = await _subscribe(stack, DECLINING_CARD, who="dn", plan_id="pro", trial_days=1)
    for _ in range(40):
        await stack.env.sleep(timedelta(hours=12))
    return await _chain(stack.env.client, sub)


async def _changes(stack: Stack) -> list[str]:
    await skip_to(stack, datetime(2027, 4, 1, 9, tzinfo=UTC))
    sub = await _subscribe(stack, OK_CARD, who="cg", plan_id="pro", quantity=20, trial_days=0)
    await stack.env.sleep(timedelta(days=5))
    svc = stack.service
    await svc.change(
        sub, plan_id=None, quantity=21, interval=None, when=None, by=OPS, request_id="up"
    )
    await svc.change(
        sub, plan_id=None, quantity=5, interval=None, when=None, by=OPS, request_id="down"
    )
    await svc.decide("down", approve=True, approver="alice", reason="ok", channel="cli")
    await svc.pause(sub, None, OPS, request_id="pz")
    await stack.env.sleep(timedelta(days=3))
    await svc.resume(sub, OPS)
    await stack.env.sleep(timedelta(days=30))
    await svc.cancel(sub, False, OPS)
    return await _chain(stack.env.client, sub)


async def _recovery(stack: Stack) -> list[str]:
    sub = await _subscribe(stack, DECLINING_CARD, who="rc", plan_id="pro", trial_days=1)
    await stack.env.sleep(timedelta(days=2))
    good = stack.gateway.create_test_payment_method(OK_CARD)
    await stack.service.update_payment_method(sub, good, OPS)
    await stack.env.sleep(timedelta(days=32))
    return await _chain(stack.env.client, sub)


async def _unpaid(stack: Stack) -> list[str]:
    sub = await _subscribe(
        stack, DECLINING_CARD, who="up", plan_id="enterprise", interval="yearly", trial_days=1
    )
    for _ in range(16):
        await stack.env.sleep(timedelta(days=2))
    good = stack.gateway.create_test_payment_method(OK_CARD)
    await stack.service.update_payment_method(sub, good, OPS)
    await stack.env.sleep(timedelta(days=3))
    return await _chain(stack.env.client, sub)


def _refund_policy() -> Policy:
    return load_policy(
        Path("models/data/policy.yaml")
        .read_text()
        .replace(
            "  cancellation:\n    timing: period_end\n    refund: account_credit\n",
            "  cancellation:\n    timing: period_end\n    refund: refund\n",
            1,
        )
    )


async def _approvals(stack: Stack) -> list[str]:
    await skip_to(stack, datetime(2027, 4, 1, 9, tzinfo=UTC))
    sub = await _subscribe(stack, OK_CARD, who="ap", plan_id="pro", quantity=20, trial_days=0)
    svc = stack.service
    await stack.env.sleep(timedelta(days=2))
    await svc.change(
        sub, plan_id=None, quantity=5, interval=None, when=None, by=OPS, request_id="slow"
    )
    for _ in range(6):  # reminded, escalated, then expired
        await stack.env.sleep(timedelta(days=1, hours=1))
    await svc.change(
        sub,
        plan_id="starter",
        quantity=None,
        interval=None,
        when="period_end",
        by=OPS,
        request_id="later",
    )
    await svc.decide("later", approve=True, approver="alice", reason="ok", channel="cli")
    await stack.env.sleep(timedelta(days=25))  # the scheduled downgrade applies at renewal
    await svc.change(
        sub, plan_id=None, quantity=None, interval="yearly", when="now", by=OPS, request_id="yr"
    )
    await stack.env.sleep(timedelta(days=10))
    await svc.cancel(sub, False, OPS)
    return await _chain(stack.env.client, sub)


async def test_a_catalog_edit_does_not_change_a_replayed_decision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Decisions read the terms, tiers and offers locked into the subscription's state, never the
    # worker's live catalog: after prices and tiers are edited, the recorded changes replay as is.
    import importlib
    import pkgutil

    import models.catalog
    import workflows.subscription

    for info in pkgutil.iter_modules(workflows.subscription.__path__):
        module = importlib.import_module(f"workflows.subscription.{info.name}")
        assert not hasattr(module, "default_catalog"), f"{info.name} reads the live catalog"
    text = (
        (Path(models.catalog.__file__).parent / "data" / "catalog.yaml")
        .read_text()
        .replace("tier: 2", "tier: 9")
        .replace("amount_minor: 3000", "amount_minor: 4500")
    )
    edited = models.catalog.parse_catalog(text)
    monkeypatch.setattr(models.catalog, "default_catalog", lambda: edited)
    replayer = Replayer(workflows=[SubscriptionWorkflow], data_converter=pydantic_data_converter)
    for path in recorded():
        if path.stem.startswith(("changes", "approvals")):
            history = WorkflowHistory.from_json(path.stem, path.read_text())
            await replayer.replay_workflow(history)
