"""Pause and resume: no service and no charges while paused, by the locked pause policy.

With ``shift_billing_dates`` every date moves by the days paused and the rest of the paid period
is served after the resume at that period's daily value (billing-math.md, "Pause"): the billed
span moves and keeps the paid period's original length for any later credit. Without it, billing
dates stay and the periods that fell inside the pause are neither billed nor credited.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from workflows.subscription.context import Status, Sub

with workflow.unsafe.imports_passed_through():
    from models.errors import ErrorCode
    from models.subscription import Actor, PauseRequest, PauseResult
    from models.vocabulary import AuditAction


class Pausing:
    def __init__(self, sub: Sub) -> None:
        self.sub = sub

    def decide(self, req: PauseRequest) -> Any:
        sub, st = self.sub, self.sub.st
        if st.status != Status.active:
            raise ApplicationError(
                f"only an active subscription can be paused; this one is {st.status.value}",
                type=ErrorCode.SUBSCRIPTION_PAUSED
                if st.status == Status.paused
                else ErrorCode.CHANGE_NOT_ALLOWED,
            )
        if any(inv.processing_key is not None for inv in st.open_invoices):
            raise ApplicationError(
                "a payment of this subscription is still in progress; pause it once it settles",
                type=ErrorCode.CHANGE_NOT_ALLOWED,
            )
        if req.resume_on is not None and req.resume_on <= sub.today():
            raise ApplicationError(
                f"resume_on must be after today ({sub.today()})", type=ErrorCode.INVALID_DATE_RANGE
            )
        decision = sub.policy().decide_pause(
            segment=st.segment,  # type: ignore[arg-type]
            plan_id=st.terms.plan_id,
            today=sub.today(),
            resume_on=req.resume_on,
            currently_paused=False,
        )
        if not decision.allowed:
            raise ApplicationError(
                decision.message, type=decision.code or ErrorCode.CHANGE_NOT_ALLOWED
            )
        return decision

    async def pause(self, req: PauseRequest) -> PauseResult:
        sub, st = self.sub, self.sub.st
        decision = self.decide(req)
        st.paused_on = sub.today()
        st.resume_on = decision.resume_on
        st.pause_shifts_billing = decision.shift_billing_dates
        st.closed_requests[req.request_id] = "applied"
        await sub.transition(
            AuditAction.PAUSED,
            Status.paused,
            req.by,
            {"request_id": req.request_id, "resume_on": str(decision.resume_on or "")},
        )
        return PauseResult(
            outcome="applied",
            request_id=req.request_id,
            subscription_id=st.subscription_id,
            status=st.status,
            paused_on=st.paused_on,
            resume_on=st.resume_on,
        )

    async def resume(self, by: Actor) -> None:
        sub, st = self.sub, self.sub.st
        today = sub.today()
        assert st.paused_on is not None
        days = max(0, (today - st.paused_on).days)
        if st.pause_shifts_billing and days:
            # Every date moves by exactly the days paused: the next billing date moves, and a
            # new schedule is anchored on it (a month is not a fixed number of days).
            shift = timedelta(days=days)
            next_due = sub.due_date() + shift
            billed = st.billed
            if billed is not None:
                if billed.length_days is None:
                    billed.length_days = (billed.end - billed.period_start).days
                billed.start += shift
                billed.end += shift
                billed.period_start += shift
            for change in st.scheduled_changes:
                change.effective_date += shift
            st.schedule += 1
            st.anchor = next_due
            st.period_index = 0
            st.first_period_index = 0
            st.billing_start = next_due
        else:
            # Billing dates stay; periods that fell inside the pause are not billed.
            while sub.due_date() < today:
                st.period_index += 1
        st.paused_on = None
        st.resume_on = None
        await sub.transition(
            AuditAction.RESUMED,
            Status.active,
            by,
            {"days_paused": str(days), "next_billing_date": sub.due_date().isoformat()},
        )
