"""Changes, approvals, pauses and policy cancellations sent to a running subscription."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from models.errors import ErrorCode, OmsError
from models.policy import load_policy
from models.subscription import Actor, SubscriptionStatus
from starter.service import SubscribeRequest
from tests.workflows.conftest import Stack, open_stack
from tests.workflows.test_subscription_lifecycle import OK_CARD, skip_to

REQUESTER = Actor(actor="sam", channel="cli")


async def start_april(stack: Stack, plan: str = "pro", quantity: int = 1, **kw: object) -> str:
    """A subscription billed on the 1st from 2027-04-01 (period Apr 1..May 1: 30 days)."""
    await skip_to(stack, datetime(2027, 4, 1, 9, tzinfo=UTC))
    pm = stack.gateway.create_test_payment_method(OK_CARD)
    started = await stack.service.subscribe(
        SubscribeRequest(
            email=str(kw.pop("email", "ch@example.com")),
            plan_id=plan,
            quantity=quantity,
            payment_method_id=pm,
            trial_days=0,
            **kw,  # type: ignore[arg-type]
        ),
        REQUESTER,
        now=await stack.now(),
    )
    return started.subscription_id


async def change(stack: Stack, sub: str, rid: str, **kw: object):  # type: ignore[no-untyped-def]
    return await stack.service.change(
        sub,
        plan_id=kw.get("plan_id"),  # type: ignore[arg-type]
        quantity=kw.get("quantity"),  # type: ignore[arg-type]
        interval=kw.get("interval"),  # type: ignore[arg-type]
        when=kw.get("when"),  # type: ignore[arg-type]
        by=Actor(actor=str(kw.get("by", "sam")), channel="cli"),
        request_id=rid,
    )


async def test_immediate_quantity_upgrade_mid_period_prorates_exactly_as_the_spec(
    stack: Stack,
) -> None:
    sub = await start_april(stack)  # 30.00 USD monthly
    await skip_to(stack, datetime(2027, 4, 11, 9, tzinfo=UTC))  # 20 of 30 days left
    result = await change(stack, sub, "up-1", quantity=2)
    assert result.outcome == "applied" and result.effective_date == date(2027, 4, 11)
    assert [(x.kind, x.amount_minor) for x in result.lines] == [
        ("proration_credit", -2000),
        ("proration_charge", 4000),
    ]
    assert result.charged_minor == 2000  # lines are not netted before rounding; the net is paid
    intent = next(p for p in stack.store.payments(sub) if p.amount_minor == 2000)
    gateway = stack.gateway.retrieve_payment_intent(intent.gateway_intent_id or "")
    assert (gateway.status, gateway.amount_minor) == ("succeeded", 2000)
    await skip_to(stack, datetime(2027, 5, 1, 12, tzinfo=UTC))
    renewal = [i for i, _ in stack.store.list_invoices(sub) if i.period_start == date(2027, 5, 1)]
    assert [i.total_minor for i in renewal] == [6000]


async def test_downgrade_waits_for_period_end_and_renews_at_the_new_price(stack: Stack) -> None:
    sub = await start_april(stack)
    await skip_to(stack, datetime(2027, 4, 11, tzinfo=UTC))
    result = await change(stack, sub, "down-1", plan_id="starter")
    assert result.outcome == "scheduled" and result.effective_date == date(2027, 5, 1)
    pending = await stack.service.pending(sub)
    assert [c.request_id for c in pending.scheduled] == ["down-1"]
    await skip_to(stack, datetime(2027, 5, 2, tzinfo=UTC))
    invoices = stack.store.list_invoices(sub)
    assert [(i.period_start, i.total_minor) for i, _ in invoices] == [
        (date(2027, 4, 1), 3000),
        (date(2027, 5, 1), 900),
    ]
    view = await stack.service.status(sub)
    assert not isinstance(view, dict) and view.plan_id == "starter"


async def test_monthly_to_yearly_now_charges_a_leading_piece_to_the_yearly_date(
    stack: Stack,
) -> None:
    sub = await start_april(stack)
    await skip_to(stack, datetime(2027, 4, 11, tzinfo=UTC))
    result = await change(stack, sub, "yr-1", interval="yearly", when="now")
    kinds = [(x.kind, x.amount_minor) for x in result.lines]
    assert kinds[0] == ("proration_credit", -2000)
    # 300.00 yearly over [2027-04-11, 2028-04-01) of the yearly period [2027-04-01, 2028-04-01)
    assert kinds[1] == ("proration_charge", round(30000 * 356 / 366))
    view = await stack.service.status(sub)
    assert not isinstance(view, dict)
    assert view.interval == "yearly" and view.next_billing_date == date(2028, 4, 1)


async def test_approval_granted_applies_the_change_and_is_audited(stack: Stack) -> None:
    sub = await start_april(stack, quantity=20)
    result = await change(stack, sub, "dec-1", quantity=5)  # -75% needs approval
    assert result.outcome == "pending_approval" and result.approval_deadline is not None
    assert result.approver_groups == ["billing-approvers", "finance-directors"]
    listed = stack.service.approvals(approver="alice")
    assert [a["request_id"] for a in listed] == ["dec-1"]
    assert stack.service.approvals(approver="dave") == []

    decided = await stack.service.decide(
        "dec-1", approve=True, approver="alice", reason="customer downsized", channel="cli"
    )
    assert decided.status == "approved"
    assert decided.change is not None and decided.change.outcome == "scheduled"
    actions = [a.action for a in stack.store.audit_trail(sub)]
    assert "approval_requested" in actions and "approval_approved" in actions
    assert stack.service.approval("dec-1")["status"] == "approved"


async def test_approval_rejected_changes_nothing(stack: Stack) -> None:
    sub = await start_april(stack, quantity=20)
    await change(stack, sub, "dec-2", quantity=5)
    decided = await stack.service.decide(
        "dec-2", approve=False, approver="bob", reason="contract says 20", channel="api"
    )
    assert decided.status == "rejected" and decided.change is None
    pending = await stack.service.pending(sub)
    assert pending.scheduled == [] and pending.approvals == []


@pytest.mark.parametrize(
    ("approver", "code"),
    [("dave", ErrorCode.APPROVER_NOT_AUTHORIZED), ("Sam", ErrorCode.SELF_APPROVAL)],
)
async def test_wrong_approver_and_self_approval_are_rejected_before_history(
    stack: Stack, approver: str, code: ErrorCode
) -> None:
    sub = await start_april(stack, quantity=20)
    await change(stack, sub, "dec-3", quantity=5, by="sam")
    with pytest.raises(OmsError) as err:
        await stack.service.decide(
            "dec-3", approve=True, approver=approver, reason="ok", channel="cli"
        )
    assert err.value.code == code
    assert len((await stack.service.pending(sub)).approvals) == 1


async def test_a_superseded_request_cannot_be_decided(stack: Stack) -> None:
    sub = await start_april(stack, quantity=20)
    await change(stack, sub, "old-1", quantity=5)
    await change(stack, sub, "new-1", quantity=4)
    with pytest.raises(OmsError) as err:
        await stack.service.decide(
            "old-1", approve=True, approver="alice", reason="x", channel="cli"
        )
    assert err.value.code == ErrorCode.STALE_REQUEST
    assert [a.request_id for a in (await stack.service.pending(sub)).approvals] == ["new-1"]


async def test_unanswered_approval_is_reminded_escalated_then_expires(stack: Stack) -> None:
    sub = await start_april(stack, quantity=20)
    await change(stack, sub, "slow-1", quantity=5)
    await stack.env.sleep(timedelta(days=1, hours=1))
    await stack.env.sleep(timedelta(days=1, hours=1))
    row = stack.service.approval("slow-1")
    assert row["status"] == "pending" and row["escalated"] is True
    await stack.env.sleep(timedelta(days=3, hours=1))
    assert stack.service.approval("slow-1")["status"] == "expired"
    actions = [a.action for a in stack.store.audit_trail(sub)]
    for action in ("approval_reminded", "approval_escalated", "approval_expired"):
        assert action in actions
    kinds = [n.kind for n in stack.store.notifications(sub)]
    assert {"approval_requested", "approval_reminder", "approval_escalated"} <= set(kinds)
    with pytest.raises(OmsError) as err:
        await stack.service.decide(
            "slow-1", approve=True, approver="carol", reason="late", channel="cli"
        )
    assert err.value.code == ErrorCode.STALE_REQUEST


async def test_two_requests_wait_at_once_without_blocking_renewals(stack: Stack) -> None:
    sub = await start_april(stack, plan="enterprise", interval="yearly", email="ent@example.com")
    changed = await change(stack, sub, "ent-chg", quantity=2)
    canceled = await stack.service.cancel(
        sub, None, Actor(actor="sam", channel="api", request_id="ent-cancel")
    )
    assert changed.outcome == "pending_approval" and canceled.outcome == "pending_approval"
    assert len((await stack.service.pending(sub)).approvals) == 2
    decided = await stack.service.decide(
        "ent-chg", approve=True, approver="dave", reason="signed amendment", channel="cli"
    )
    assert decided.status == "approved" and decided.change is not None
    assert [a.request_id for a in (await stack.service.pending(sub)).approvals] == ["ent-cancel"]


async def test_pause_skips_charges_and_resume_shifts_billing_by_the_days_paused(
    stack: Stack,
) -> None:
    sub = await start_april(stack)
    await skip_to(stack, datetime(2027, 4, 11, 9, tzinfo=UTC))
    paused = await stack.service.pause(sub, date(2027, 5, 11), REQUESTER, request_id="p-1")
    assert paused.status == SubscriptionStatus.paused and paused.resume_on == date(2027, 5, 11)
    await skip_to(stack, datetime(2027, 5, 5, tzinfo=UTC))
    assert len(stack.store.list_invoices(sub)) == 1  # no charge on May 1 while paused
    await skip_to(stack, datetime(2027, 5, 12, tzinfo=UTC))
    view = await stack.service.status(sub)
    assert not isinstance(view, dict) and view.status == SubscriptionStatus.active
    assert view.next_billing_date == date(2027, 5, 31)  # May 1 + 30 days paused
    await skip_to(stack, datetime(2027, 6, 1, tzinfo=UTC))
    starts = [i.period_start for i, _ in stack.store.list_invoices(sub)]
    assert starts == [date(2027, 4, 1), date(2027, 5, 31)]


async def test_a_change_after_a_shifting_pause_is_prorated_on_what_was_billed(
    stack: Stack,
) -> None:
    # Paid Apr 1..May 1 (L = 30 days); paused Apr 11, resumed Apr 21: the 20 days left are served
    # until May 11. On Apr 26, 15 of them are left: credit R(30.00 * 15/30), charge for 2 seats.
    sub = await start_april(stack)
    await skip_to(stack, datetime(2027, 4, 11, 9, tzinfo=UTC))
    await stack.service.pause(sub, None, REQUESTER, request_id="p-s")
    await skip_to(stack, datetime(2027, 4, 21, 9, tzinfo=UTC))
    resumed = await stack.service.resume(sub, REQUESTER)
    assert resumed.next_billing_date == date(2027, 5, 11)
    await skip_to(stack, datetime(2027, 4, 26, 9, tzinfo=UTC))
    result = await change(stack, sub, "after-pause", quantity=2, when="now")
    assert [(x.kind, x.amount_minor) for x in result.lines] == [
        ("proration_credit", -1500),
        ("proration_charge", 3000),
    ]
    assert result.charged_minor == 1500


async def test_resume_now_and_validation_of_pause_requests(stack: Stack) -> None:
    sub = await start_april(stack)
    with pytest.raises(OmsError) as err:
        await stack.service.resume(sub, REQUESTER)
    assert err.value.code == ErrorCode.NOT_PAUSED
    await stack.service.pause(sub, None, REQUESTER, request_id="p-2")
    with pytest.raises(OmsError) as err:
        await stack.service.pause(sub, None, REQUESTER, request_id="p-3")
    assert err.value.code == ErrorCode.SUBSCRIPTION_PAUSED
    resumed = await stack.service.resume(sub, REQUESTER)
    assert resumed.status == SubscriptionStatus.active


async def test_invalid_changes_are_rejected_with_codes(stack: Stack) -> None:
    sub = await start_april(stack)
    cases = [
        ({"plan_id": "gold"}, ErrorCode.UNKNOWN_PLAN),
        ({"interval": "weekly"}, ErrorCode.INTERVAL_NOT_OFFERED),
        ({"quantity": 0}, ErrorCode.INVALID_QUANTITY),
    ]
    for i, (fields, code) in enumerate(cases):
        with pytest.raises(OmsError) as err:
            await change(stack, sub, f"bad-{i}", **fields)
        assert err.value.code == code
    await stack.service.cancel(sub, False, REQUESTER)
    with pytest.raises(OmsError) as err:
        await change(stack, sub, "after-cancel", quantity=2)
    assert err.value.code == ErrorCode.SUBSCRIPTION_CANCELED


async def test_immediate_cancel_with_refund_policy_creates_a_real_gateway_refund(
    engine: Engine, localstripe_url: str
) -> None:
    from activities.gateway import StripeGateway
    from tests.workflows.conftest import TEST_API_KEY

    gateway = StripeGateway(TEST_API_KEY, api_base=localstripe_url, max_network_retries=0)
    policy = load_policy(
        Path("models/data/policy.yaml")
        .read_text()
        .replace(
            "  cancellation:\n    timing: period_end\n    refund: account_credit\n",
            "  cancellation:\n    timing: period_end\n    refund: refund\n",
            1,
        )
    )
    async with open_stack(engine, gateway) as stack:
        stack.service.policy = policy
        sub = await start_april(stack)
        await skip_to(stack, datetime(2027, 4, 11, 9, tzinfo=UTC))
        result = await stack.service.cancel(sub, False, REQUESTER)
        assert result.status == SubscriptionStatus.canceled
        assert result.refunded_minor == 2000  # 20 of 30 days of 30.00
        [refund] = stack.store.refunds(sub)
        assert (refund.status, refund.amount_minor) == ("succeeded", 2000)
        charge = stack.gateway.retrieve_payment_intent(refund.gateway_intent_id)
        assert charge.latest_charge_id is not None
        import httpx

        seen = httpx.get(
            f"{localstripe_url}/v1/refunds/{refund.gateway_refund_id}",
            auth=(TEST_API_KEY, ""),
        ).json()
        assert seen["amount"] == 2000 and seen["object"] == "refund"
