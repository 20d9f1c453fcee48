"""Approvals: requests that wait for an approver, with reminders, escalation and a deadline.

Their timers are instants in state that the main loop's plan includes (no background tasks), so
they survive continue-as-new as plain data and never race the loop.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from workflows.subscription.calls import Refused
from workflows.subscription.context import Sub

with workflow.unsafe.imports_passed_through():
    from models.errors import ErrorCode, OmsError
    from models.policy import ApprovalSla
    from models.subscription import Actor, ApprovalDecision, ApprovalRecord, PendingApproval
    from models.vocabulary import AuditAction


class Approvals:
    def __init__(self, sub: Sub) -> None:
        self.sub = sub

    def find(self, request_id: str) -> PendingApproval | None:
        return next((a for a in self.sub.st.approvals if a.request_id == request_id), None)

    def unknown(self, request_id: str) -> None:
        closed = self.sub.st.closed_requests.get(request_id)
        if closed is not None:
            raise ApplicationError(
                f"request {request_id} is no longer pending: it was {closed}",
                type=ErrorCode.STALE_REQUEST,
            )
        raise ApplicationError(
            f"no pending request {request_id} on this subscription",
            type=ErrorCode.REQUEST_NOT_FOUND,
        )

    def require_unused(self, request_id: str) -> None:
        """Request ids are unique per subscription, across continue-as-new (kept in state)."""
        st = self.sub.st
        if not request_id or len(request_id) > 64:
            raise ApplicationError(
                "request_id is required (at most 64 characters)", type=ErrorCode.INVALID_REQUEST
            )
        used = request_id in st.closed_requests or self.find(request_id) is not None
        if used or any(c.request_id == request_id for c in st.scheduled_changes):
            raise ApplicationError(
                f"request id {request_id} was already used on this subscription",
                type=ErrorCode.STALE_REQUEST,
            )

    def check_approver(
        self, decision: ApprovalDecision, *, use_groups: bool = True
    ) -> PendingApproval:
        approval = self.find(decision.request_id)
        if approval is None:
            self.unknown(decision.request_id)
            raise AssertionError("unreachable")
        if not decision.reason.strip():
            raise ApplicationError("a decision needs a reason", type=ErrorCode.INVALID_REQUEST)
        memberships = (
            None
            if decision.approver_groups is None or not use_groups
            else {g: [decision.approver] for g in decision.approver_groups}
        )
        try:
            self.sub.policy().approver_may_decide(
                approver=decision.approver,
                requester=approval.requested_by.actor,
                segment=self.sub.st.segment,  # type: ignore[arg-type]
                plan_id=self.sub.st.terms.plan_id,
                memberships=memberships,
            )
        except OmsError as err:
            raise ApplicationError(err.message, type=err.code) from None
        return approval

    async def open(
        self,
        kind: str,
        request_id: str,
        summary: str,
        reasons: list[str],
        groups: list[str],
        sla: ApprovalSla | None,
        by: Actor,
        **payload: Any,
    ) -> PendingApproval:
        sub, st = self.sub, self.sub.st
        now = workflow.now()
        assert sla is not None, "a decision that needs approval carries its SLA"
        approval = PendingApproval(
            request_id=request_id,
            subscription_id=st.subscription_id,
            kind=kind,
            summary=summary[:200],
            reasons=[r[:300] for r in reasons],
            requested_by=by,
            requested_at=now,
            groups=groups,
            reminder_at=sla.reminder_at(now),
            escalate_at=sla.escalate_at(now),
            deadline=sla.expires_at(now),
            **payload,
        )
        await self.record(approval, "pending")  # a refused write leaves nothing pending
        st.approvals.append(approval)
        sub.mirror()
        await sub.transition(
            AuditAction.APPROVAL_REQUESTED,
            st.status,
            by,
            {"request_id": request_id, "kind": kind, "groups": ",".join(groups)},
        )
        await self.notify_approvers(approval, "approval_requested", groups[:1])
        return approval

    async def close(self, approval: PendingApproval, status: str, by: Actor, reason: str) -> None:
        sub, st = self.sub, self.sub.st
        # Recorded first: a refused write leaves the request pending, as its row says.
        await self.record(approval, status, decided_by=by.actor, reason=reason)
        if approval in st.approvals:
            st.approvals.remove(approval)
        st.closed_requests[approval.request_id] = status
        while len(st.closed_requests) > 200:
            st.closed_requests.pop(next(iter(st.closed_requests)))
        sub.mirror()
        await sub.transition(
            AuditAction(f"approval_{status}"),
            st.status,
            by.model_copy(update={"reason": reason[:500], "request_id": approval.request_id}),
            {"request_id": approval.request_id, "kind": approval.kind},
        )

    async def tick(self) -> None:
        """Remind, escalate and expire the approvals that are due (a step of the main loop)."""
        sub, st = self.sub, self.sub.st
        now = workflow.now()
        for approval in list(st.approvals):
            if now >= approval.deadline:
                await self.close(approval, "expired", Actor(), "no decision before the deadline")
                continue
            if (
                approval.reminder_at is not None
                and not approval.reminded
                and now >= approval.reminder_at
            ):
                approval.reminded = True
                await self.notify_approvers(approval, "approval_reminder", approval.groups[:1])
                await sub.transition(
                    AuditAction.APPROVAL_REMINDED,
                    st.status,
                    Actor(),
                    {"request_id": approval.request_id},
                )
            if (
                approval.escalate_at is not None
                and not approval.escalated
                and now >= approval.escalate_at
            ):
                # Recorded first: a refused write leaves it due, to be escalated on the retry.
                await self.record(approval.model_copy(update={"escalated": True}), "pending")
                approval.escalated = True
                await self.notify_approvers(approval, "approval_escalated", approval.groups[1:])
                await sub.transition(
                    AuditAction.APPROVAL_ESCALATED,
                    st.status,
                    Actor(),
                    {
                        "request_id": approval.request_id,
                        "groups": ",".join(approval.groups[1:]),
                    },
                )

    async def close_all(self, reason: str) -> None:
        """Close every request still pending when the subscription ends (best effort)."""
        for approval in list(self.sub.st.approvals):
            try:
                await self.close(approval, "canceled", Actor(), reason)
            except Refused as err:
                self.sub.flag(err, f"approval:{approval.request_id}", blocking=False)

    async def record(
        self,
        approval: PendingApproval,
        status: str,
        decided_by: str | None = None,
        reason: str | None = None,
    ) -> None:
        await self.sub.calls.record_approval(
            ApprovalRecord(
                request_id=approval.request_id,
                subscription_id=approval.subscription_id,
                kind=approval.kind,
                summary=approval.summary,
                reasons=approval.reasons,
                groups=approval.groups,
                status=status,
                escalated=approval.escalated,
                requested_by=approval.requested_by.actor,
                requested_at=approval.requested_at,
                deadline=approval.deadline,
                decided_by=decided_by,
                decision_reason=reason[:500] if reason else None,
            )
        )

    async def notify_approvers(
        self, approval: PendingApproval, kind: str, groups: list[str]
    ) -> None:
        await self.sub.notify(
            kind,
            f"{approval.request_id}:{kind}",
            {
                "request_id": approval.request_id,
                "groups": ",".join(groups),
                "summary": approval.summary,
                "deadline": approval.deadline.isoformat(),
            },
        )
