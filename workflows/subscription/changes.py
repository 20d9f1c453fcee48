"""Plan, quantity and interval changes: priced from state, prorated exactly, applied or scheduled.

Decisions read only the subscription's state (its locked terms, offers and policy), so a replayed
decision cannot change after the catalog or policy files change.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from workflows.subscription.billing import Billing
from workflows.subscription.context import Status, Sub

with workflow.unsafe.imports_passed_through():
    from models.calendar import period_containing, period_index_containing
    from models.errors import ErrorCode
    from models.policy import CreditHandling, Timing, parse_timing
    from models.proration import quote_change
    from models.subscription import (
        Actor,
        BilledPeriod,
        ChangeRequest,
        ChangeResult,
        PendingChange,
        Terms,
    )
    from models.vocabulary import AuditAction

MAX_QUANTITY = 100_000


class Changes:
    def __init__(self, sub: Sub, billing: Billing) -> None:
        self.sub = sub
        self.billing = billing

    def resolve_terms(self, req: ChangeRequest) -> Terms:
        """The requested terms: as the caller priced them, else from the offers locked in state."""
        st = self.sub.st
        quantity = st.terms.quantity if req.quantity is None else req.quantity
        if not 1 <= quantity <= MAX_QUANTITY:
            raise ApplicationError(
                f"quantity must be between 1 and {MAX_QUANTITY}, got {quantity}",
                type=ErrorCode.INVALID_QUANTITY,
            )
        if req.priced_terms is not None:
            terms = req.priced_terms
            if terms.currency != st.terms.currency:
                raise ApplicationError(
                    f"a subscription keeps its currency ({st.terms.currency})",
                    type=ErrorCode.CHANGE_NOT_ALLOWED,
                )
            if not 1 <= terms.quantity <= MAX_QUANTITY or terms.unit_amount_minor < 0:
                raise ApplicationError(
                    f"quantity must be between 1 and {MAX_QUANTITY}",
                    type=ErrorCode.INVALID_QUANTITY,
                )
            return terms
        plan_id = req.plan_id or st.terms.plan_id
        interval = req.interval or st.terms.interval
        if plan_id == st.terms.plan_id and interval == st.terms.interval:
            return st.terms.model_copy(update={"quantity": quantity})
        offer = next(
            (o for o in st.offers if o.plan_id == plan_id and o.interval == interval), None
        )
        if offer is None:
            known = any(o.plan_id == plan_id for o in st.offers)
            raise ApplicationError(
                f"plan {plan_id} is not offered {interval.value} in {st.terms.currency}"
                if known
                else f"unknown plan {plan_id!r} for this subscription",
                type=ErrorCode.INTERVAL_NOT_OFFERED if known else ErrorCode.UNKNOWN_PLAN,
            )
        return offer.model_copy(update={"quantity": quantity})

    def decide(self, req: ChangeRequest) -> tuple[Terms, Any]:
        """The new terms and the policy's decision, or an ApplicationError with its code."""
        sub, st = self.sub, self.sub.st
        if st.status in (Status.incomplete, Status.past_due, Status.unpaid, Status.paused):
            raise ApplicationError(
                f"a {st.status.value} subscription cannot change terms; "
                + ("resume it first" if st.status == Status.paused else "settle it first"),
                type=ErrorCode.SUBSCRIPTION_PAUSED
                if st.status == Status.paused
                else ErrorCode.CHANGE_NOT_ALLOWED,
            )
        new = self.resolve_terms(req)
        timing = None
        if req.when is not None:
            try:
                timing = parse_timing(req.when)
            except ValueError:
                raise ApplicationError(
                    f"when must be now or period_end, not {req.when!r}"[:200],
                    type=ErrorCode.INVALID_REQUEST,
                ) from None
        decision = sub.policy().decide_terms_change(
            segment=st.segment,  # type: ignore[arg-type]
            current=sub.terms_snapshot(st.terms),
            new=sub.terms_snapshot(new),
            timing_requested=timing,
        )
        if not decision.allowed:
            raise ApplicationError(
                decision.message, type=decision.code or ErrorCode.CHANGE_NOT_ALLOWED
            )
        return new, decision

    def describe(self, new: Terms) -> str:
        old = self.sub.st.terms
        return (
            f"{old.plan_id} x{old.quantity} {old.interval.value} -> "
            f"{new.plan_id} x{new.quantity} {new.interval.value}"
        )

    async def carry_out(
        self, req: ChangeRequest, new: Terms, timing: Timing, credit: CreditHandling
    ) -> ChangeResult:
        sub, st = self.sub, self.sub.st
        base = ChangeResult(
            outcome="applied", request_id=req.request_id, subscription_id=st.subscription_id
        )
        before = st.terms
        if st.billed is None or st.status == Status.trialing:
            # Nothing billed yet (a trial): the new terms simply apply from the first invoice
            # (another interval renumbers the periods from the same start).
            renumber = new.interval != st.terms.interval
            self.switch_terms(new, restart_at=None)
            if renumber:
                index = period_index_containing(st.anchor, new.interval, sub.billing_start())
                st.period_index = st.first_period_index = index
            self._close(req.request_id, "applied")
            await sub.transition(
                AuditAction.CHANGE_APPLIED, st.status, req.by, {"request_id": req.request_id}
            )
            await self.announce("change_applied", req.request_id, before, new, sub.today())
            return base.model_copy(update={"effective_date": sub.today()})
        if timing == Timing.PERIOD_END:
            effective = sub.due_date()
            for old in list(st.scheduled_changes):
                st.scheduled_changes.remove(old)
                self._close(old.request_id, "replaced")
            st.scheduled_changes.append(
                PendingChange(
                    request_id=req.request_id,
                    terms=new,
                    effective_date=effective,
                    requested_by=req.by,
                    requested_at=workflow.now(),
                )
            )
            await sub.transition(
                AuditAction.CHANGE_SCHEDULED,
                st.status,
                req.by,
                {"request_id": req.request_id, "effective_date": effective.isoformat()},
            )
            await self.announce("change_scheduled", req.request_id, before, new, effective)
            return base.model_copy(update={"outcome": "scheduled", "effective_date": effective})
        return await self._apply_now(req, new, credit, base)

    async def _apply_now(
        self, req: ChangeRequest, new: Terms, credit: CreditHandling, base: ChangeResult
    ) -> ChangeResult:
        sub, st = self.sub, self.sub.st
        billed = st.billed
        assert billed is not None
        today = sub.today()
        before = st.terms
        if billed.invoice_id is not None or not billed.start <= today < billed.end:
            # Today is not in a paid span (a pause that skipped periods, a renewal not yet
            # paid): there is nothing exact to prorate against, so the change waits.
            raise ApplicationError(
                "the current period is not paid yet (or was skipped by a pause); request the "
                "change for the period end (when=period_end) or after the next renewal",
                type=ErrorCode.CHANGE_NOT_ALLOWED,
            )
        quote = quote_change(
            currency=st.terms.currency,
            anchor=st.anchor,
            interval=st.terms.interval,
            change_date=today,
            billed_unit_amount_minor=billed.unit_amount_minor,
            old_quantity=billed.quantity,
            billed_amount_minor=billed.billed_minor,
            credits_already_issued_minor=billed.credits_minor,
            new_unit_amount_minor=new.unit_amount_minor,
            new_quantity=new.quantity,
            new_interval=new.interval if new.interval != st.terms.interval else None,
            served_period=billed.served_period,
        )
        money = await self.billing.settle_request_lines(
            req.request_id, quote.lines, refund=credit == CreditHandling.REFUND
        )
        if money.declined is not None:
            raise ApplicationError(
                "the payment for this change was declined; nothing was changed",
                {"decline_code": money.declined.decline_code or ""},
                type=ErrorCode.PAYMENT_DECLINED,
                non_retryable=True,
            )
        credit_line = -sum(x.amount_minor for x in quote.lines if x.amount_minor < 0)
        charge_line = sum(x.amount_minor for x in quote.lines if x.amount_minor > 0)
        if new.interval != st.terms.interval:
            self.switch_terms(new, restart_at=quote.next_billing_date, anchor=quote.new_anchor)
            st.billed = BilledPeriod(
                start=today,
                end=quote.next_billing_date,
                period_start=period_containing(quote.new_anchor, new.interval, today)[0],
                unit_amount_minor=new.unit_amount_minor,
                quantity=new.quantity,
                billed_minor=charge_line,
                payments=[p for p in billed.payments if p.intent_id == money.intent_id],
            )
        else:
            self.switch_terms(new, restart_at=None)
            billed.unit_amount_minor = new.unit_amount_minor
            billed.quantity = new.quantity
            billed.billed_minor += charge_line
            billed.credits_minor += credit_line
        self._close(req.request_id, "applied")
        await sub.transition(
            AuditAction.CHANGE_APPLIED,
            st.status,
            req.by,
            {
                "request_id": req.request_id,
                "lines": ";".join(f"{x.kind}:{x.amount_minor}" for x in quote.lines),
            },
        )
        await self.announce("change_applied", req.request_id, before, new, today)
        return base.model_copy(
            update={
                "effective_date": today,
                "lines": quote.lines,
                "invoice_id": money.invoice_id,
                "charged_minor": money.charged_minor,
                "refunded_minor": money.refunded_minor,
                "credited_minor": money.credited_minor,
            }
        )

    async def announce(
        self, kind: str, request_id: str, old: Terms, new: Terms, effective: date
    ) -> None:
        """Tell the customer a change took effect or when it will, at which price."""
        if not workflow.patched("change-notices"):  # histories from before these notices
            return
        await self.sub.notify(
            kind,
            f"{kind}:{request_id}",
            {
                "plan_id": new.plan_id,
                "previous_plan_id": old.plan_id,
                "quantity": str(new.quantity),
                "previous_quantity": str(old.quantity),
                "interval": new.interval.value,
                "amount_minor": str(new.unit_amount_minor * new.quantity),
                "currency": new.currency,
                "effective_date": effective.isoformat(),
            },
        )

    def switch_terms(self, new: Terms, restart_at: Any, anchor: Any = None) -> None:
        """Adopt ``new`` terms; ``restart_at`` starts a new billing schedule on that date."""
        st = self.sub.st
        st.terms = new
        if restart_at is not None:
            st.schedule += 1
            st.anchor = anchor or restart_at
            st.period_index = period_index_containing(st.anchor, new.interval, restart_at)
            st.billing_start = restart_at
            st.first_period_index = st.period_index
        self.sub.mirror()

    async def apply_scheduled(self) -> None:
        """Apply the scheduled changes due at the next billing date (before it is invoiced)."""
        sub, st = self.sub, self.sub.st
        due = sub.due_date()
        for change in [c for c in st.scheduled_changes if c.effective_date <= due]:
            st.scheduled_changes.remove(change)
            self._close(change.request_id, "applied")
            restart = due if change.terms.interval != st.terms.interval else None
            self.switch_terms(change.terms, restart_at=restart)
            await sub.transition(
                AuditAction.CHANGE_APPLIED,
                st.status,
                change.requested_by,
                {"request_id": change.request_id, "scheduled": "true"},
            )

    def terms_at_next_renewal(self) -> Terms:
        """The terms the next invoice will bill (scheduled changes included)."""
        st = self.sub.st
        due = self.sub.due_date()
        changes = [c for c in st.scheduled_changes if c.effective_date <= due]
        return changes[-1].terms if changes else st.terms

    def _close(self, request_id: str, status: str) -> None:
        closed = self.sub.st.closed_requests
        closed[request_id] = status
        while len(closed) > 200:
            closed.pop(next(iter(closed)))

    async def withdraw(self, request_id: str, by: Actor) -> bool:
        """Withdraw a scheduled change; False when ``request_id`` is not one."""
        st = self.sub.st
        for change in st.scheduled_changes:
            if change.request_id == request_id:
                st.scheduled_changes.remove(change)
                self._close(request_id, "withdrawn")
                await self.sub.transition(
                    AuditAction.CHANGE_WITHDRAWN, st.status, by, {"request_id": request_id}
                )
                return True
        return False
