"""Cancellation: always possible, in every status (click-to-cancel), by the locked policy.

An immediate cancellation closes what is unpaid (debts stay on record as uncollectible; an
invoice never attempted is voided and its credit restored), gives back unused paid time as the
policy says (refunds split over the period's card payments, the rest as credit) and invoices an
early-termination fee separately: a declined fee goes to collections and never blocks the
cancellation.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from workflows.subscription.billing import Billing, RequestMoney, unused_from
from workflows.subscription.context import Status, Sub

with workflow.unsafe.imports_passed_through():
    from models.errors import ErrorCode
    from models.invoice import InvoiceLine, LineKind
    from models.money import format_money
    from models.policy import CancellationDecision, CreditHandling, Timing
    from models.proration import quote_cancellation
    from models.subscription import Actor, CancelRequest, CancelResult
    from models.vocabulary import AuditAction, InvoiceStatus


class Cancellation:
    def __init__(self, sub: Sub, billing: Billing) -> None:
        self.sub = sub
        self.billing = billing

    def decide(self, req: CancelRequest, *, now: bool = False) -> CancellationDecision:
        """The policy's decision; ``now`` keeps a cancellation accepted as immediate immediate.

        A cancel-now accepted while the state was, say, past due waits for the lock; if a charge
        meanwhile made the subscription active, it is still carried out now (never refused after
        it was accepted): only its money follows the policy for an immediate cancellation.
        """
        st = self.sub.st
        if now:
            immediate = CancellationDecision(
                allowed=True, message="canceled now", timing=Timing.IMMEDIATELY
            )
            if st.status in (Status.active, Status.paused):
                by_policy = self._policy_decision(Timing.IMMEDIATELY)
                if by_policy.allowed and not by_policy.needs_approval:
                    return by_policy
            return immediate
        requested = None
        if req.at_period_end is not None:
            requested = Timing.PERIOD_END if req.at_period_end else Timing.IMMEDIATELY
        if st.status in (Status.incomplete, Status.past_due, Status.unpaid, Status.paused):
            # Nothing runs to a period end here (nothing is being served, or it is not paid for):
            # a cancellation takes effect now, whatever was asked, and is never refused. Unused
            # paid time (a pause mid-period) is handled as the policy says for an immediate one.
            return self.decide(req, now=True)
        decision = self._policy_decision(requested)
        if not decision.allowed:
            raise ApplicationError(
                decision.message, type=decision.code or ErrorCode.CHANGE_NOT_ALLOWED
            )
        return decision

    def _policy_decision(self, requested: Timing | None) -> CancellationDecision:
        sub, st = self.sub, self.sub.st
        return sub.policy().decide_cancellation(
            segment=st.segment,  # type: ignore[arg-type]
            terms=sub.terms_snapshot(st.terms),
            subscribed_on=min(st.start_date, sub.today()),
            today=sub.today(),
            period_end=max(sub.due_date(), sub.today() + timedelta(days=1)),
            timing_requested=requested,
        )

    def is_immediate(self, decision: CancellationDecision) -> bool:
        return decision.timing != Timing.PERIOD_END and self.sub.st.status != Status.trialing

    async def schedule(self, req: CancelRequest, decision: CancellationDecision) -> CancelResult:
        """Cancel at the end of the current period (or trial)."""
        sub, st = self.sub, self.sub.st
        if not st.cancel_at_period_end:
            st.cancel_at_period_end = True
            st.cancel_fee_minor = decision.early_termination_fee_minor
            await sub.transition(
                AuditAction.CANCEL_SCHEDULED,
                st.status,
                req.by,
                {"effective_date": sub.due_date().isoformat()},
            )
        return self.result().model_copy(
            update={"outcome": "scheduled", "request_id": req.request_id}
        )

    async def now(self, req: CancelRequest, decision: CancellationDecision) -> CancelResult:
        """Cancel today: debts closed, unused time back by policy, a fee to collect.

        A charge still processing is awaited first (it may yet succeed: then its period is paid
        and credited back by policy, never left charged after the cancellation). Once the unpaid
        invoices are closed nothing can stop the cancellation: a refused record is flagged for an
        operator, a declined or refused fee goes to collections.
        """
        sub, st = self.sub, self.sub.st
        await self.billing.settle_processing()
        for inv in list(st.open_invoices):
            await self.billing.void(
                inv, InvoiceStatus.UNCOLLECTIBLE if inv.attempts else InvoiceStatus.VOID
            )
        rid = req.request_id or f"cancel-{st.audit_seq}"
        lines = self._unused_time(decision)
        money = await self.billing.settle_request_lines_or_flag(
            rid, lines, refund=decision.refund == CreditHandling.REFUND
        )
        if st.billed is not None and lines:
            st.billed.credits_minor -= sum(x.amount_minor for x in lines if x.amount_minor < 0)
        fee = await self._fee(rid, decision.early_termination_fee_minor)
        if req.request_id:
            st.closed_requests[req.request_id] = "applied"
        st.canceled_at = workflow.now()
        st.cancel_at_period_end = False
        st.cancel_reason = (req.reason or "")[:200] or None
        st.scheduled_changes.clear()
        await sub.transition(
            AuditAction.CANCELED,
            Status.canceled,
            req.by,
            details={
                "mode": "now",
                "lines": ";".join(f"{x.kind}:{x.amount_minor}" for x in lines),
                "fee_collected": str(fee.charged_minor),
            },
        )
        await sub.notify(
            "canceled",
            "canceled",
            {"mode": "now", "plan_id": st.terms.plan_id, "effective_date": sub.today().isoformat()},
        )
        return self.result().model_copy(
            update={
                "request_id": req.request_id,
                "lines": lines,
                "refunded_minor": money.refunded_minor,
                "credited_minor": money.credited_minor,
                "charged_minor": fee.charged_minor,
            }
        )

    def _unused_time(self, decision: CancellationDecision) -> list[InvoiceLine]:
        """The credit line for paid time not served (none when policy forfeits it)."""
        sub, st = self.sub, self.sub.st
        billed = st.billed
        if decision.refund == CreditHandling.NONE or billed is None:
            return []
        if billed.invoice_id is not None:
            return []  # the period was never paid: nothing to give back
        c = sub.today()
        if st.status == Status.paused and st.paused_on is not None:
            c = min(c, st.paused_on)  # service stopped when the pause began
        if not unused_from(billed, c):
            return []
        return quote_cancellation(
            currency=st.terms.currency,
            anchor=st.anchor,
            interval=st.terms.interval,
            cancel_date=c,
            billed_unit_amount_minor=billed.unit_amount_minor,
            quantity=billed.quantity,
            billed_amount_minor=billed.billed_minor,
            credits_already_issued_minor=billed.credits_minor,
            served_period=billed.served_period,
        )

    async def _fee(self, request_id: str, amount_minor: int) -> RequestMoney:
        """Invoice an early-termination fee; a decline sends it to collections (ops notified)."""
        sub, st = self.sub, self.sub.st
        if amount_minor <= 0:
            return RequestMoney()
        line = InvoiceLine(
            kind=LineKind.EARLY_TERMINATION_FEE,
            description="early termination fee",
            amount_minor=amount_minor,
            currency=st.terms.currency,
        )
        money = await self.billing.settle_request_lines_or_flag(
            f"{request_id}:fee", [line], refund=False, on_decline=InvoiceStatus.UNCOLLECTIBLE
        )
        if money.declined is not None or money.refused:
            details = {
                "invoice_id": money.invoice_id or "",
                "amount": format_money(amount_minor, st.terms.currency),
                "decline_code": (money.declined.decline_code or "") if money.declined else "",
                "refused": "true" if money.refused else "",
            }
            await sub.transition(AuditAction.FEE_TO_COLLECTIONS, st.status, Actor(), details)
            await sub.notify("ops_collections", f"collections:{request_id}", details)
        return money

    async def at_period_end(self) -> None:
        """The period ended with a cancellation scheduled: the fee (if any), then canceled."""
        sub, st = self.sub, self.sub.st
        await self.billing.settle_processing()
        for inv in list(st.open_invoices):
            await self.billing.void(
                inv, InvoiceStatus.UNCOLLECTIBLE if inv.attempts else InvoiceStatus.VOID
            )
        fee = await self._fee("cancel-at-period-end", st.cancel_fee_minor)
        st.cancel_fee_minor = 0
        st.canceled_at = workflow.now()
        await sub.transition(
            AuditAction.CANCELED,
            Status.canceled,
            Actor(),
            details={"mode": "at_period_end", "fee_collected": str(fee.charged_minor)},
        )
        await sub.notify(
            "canceled",
            "canceled",
            {
                "mode": "at_period_end",
                "plan_id": st.terms.plan_id,
                "effective_date": sub.today().isoformat(),
            },
        )

    async def uncancel(self, by: Actor) -> CancelResult:
        st = self.sub.st
        st.cancel_at_period_end = False
        st.cancel_fee_minor = 0
        await self.sub.transition(AuditAction.CANCEL_WITHDRAWN, st.status, by)
        return self.result()

    def result(self) -> CancelResult:
        sub, st = self.sub, self.sub.st
        effective = None
        if st.status == Status.canceled and st.canceled_at is not None:
            effective = st.canceled_at.date()
        elif st.cancel_at_period_end:
            effective = sub.due_date()
        return CancelResult(
            subscription_id=st.subscription_id,
            status=st.status,
            cancel_at_period_end=st.cancel_at_period_end,
            effective_date=effective,
            canceled_at=st.canceled_at,
        )
