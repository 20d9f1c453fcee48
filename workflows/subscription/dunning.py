"""Dunning: what a failed payment does next, by the subscription's locked dunning rule.

Retries are workflow timers (see ``steps``), each with a new idempotency key; a new card retries
at once (``Billing.collect`` from the payment-method handler). The final action cancels the
subscription or marks it unpaid, where it waits for a new payment method.
"""

from __future__ import annotations

from temporalio import workflow

from workflows.subscription.billing import Billing
from workflows.subscription.context import Status, Sub
from workflows.subscription.steps import dunning_step

with workflow.unsafe.imports_passed_through():
    from models.calendar import local_date
    from models.dunning import DunningStep, FinalAction
    from models.money import format_money
    from models.subscription import Actor, ChargeResult, OpenInvoice
    from models.vocabulary import AuditAction, InvoiceStatus


class Dunning:
    def __init__(self, sub: Sub, billing: Billing) -> None:
        self.sub = sub
        self.billing = billing

    def set_stage(self, step: DunningStep) -> None:
        st = self.sub.st
        access = step.access.value
        if st.dunning_stage == step.stage and st.access == access:
            return
        st.dunning_stage = step.stage
        st.access = access
        self.sub.mirror()

    async def payment_failed(
        self, inv: OpenInvoice, result: ChargeResult, *, reset_schedule: bool = False
    ) -> None:
        """Record a declined renewal payment: past due, the next retry per the rule, a notice."""
        sub, st = self.sub, self.sub.st
        now = workflow.now()
        details = {
            "invoice_id": inv.invoice_id,
            "attempt": str(inv.attempts - 1),
            "decline_code": result.decline_code or "",
            "decline_category": result.decline_category or "",
            "message": (result.message or "")[:200],
        }
        inv.first_failed_at = inv.first_failed_at or now
        if inv.schedule_start is None or (
            reset_schedule and st.dunning_rule.reset_on_payment_method_update
        ):
            inv.schedule_start = now
            inv.failures_in_schedule = 0
        inv.failures_in_schedule += 1
        inv.last_decline_category = result.decline_category
        inv.last_decline_code = result.decline_code
        step = dunning_step(sub, inv, now)
        st.dunning_stage = step.stage
        st.access = step.access.value
        if step.retry_at is not None:
            details["next_retry_at"] = step.retry_at.isoformat()
        await sub.transition(AuditAction.PAYMENT_FAILED, Status.past_due, Actor(), details=details)
        data = {
            "invoice_id": inv.invoice_id,
            "amount": format_money(inv.amount_minor, st.terms.currency),
            "amount_minor": str(inv.amount_minor),
            "currency": st.terms.currency,
            "plan_id": st.terms.plan_id,
            "next_retry_at": step.retry_at.isoformat() if step.retry_at else "",
            "action": "update_payment_method"
            if step.stage == "awaiting_payment_method"
            else "none",
        }
        attempt = inv.attempts - 1
        if step.stage != "final" and step.retry_at is None and step.final_at is not None:
            # No retry left before the final action: the last notice says what happens when.
            data["final_action"] = st.dunning_rule.final_action.value
            data["action_date"] = local_date(step.final_at, st.timezone).isoformat()
            await sub.notify("dunning_final", f"dunning_final:{inv.invoice_id}:{attempt}", data)
        else:
            await sub.notify("payment_failed", f"payment_failed:{inv.invoice_id}:{attempt}", data)

    async def final_action(self) -> None:
        """The dunning window ended unpaid: cancel, or mark unpaid and wait for a new card."""
        sub, st = self.sub, self.sub.st
        inv = st.open_invoices[0]
        step = dunning_step(sub, inv)
        self.set_stage(step)
        if step.final_action is None:
            return  # not final yet (a new card restarted the schedule meanwhile)
        if step.final_action == FinalAction.cancel:
            for unpaid in list(st.open_invoices):
                await self.billing.void(unpaid, InvoiceStatus.UNCOLLECTIBLE)
            st.canceled_at = workflow.now()
            st.cancel_reason = "nonpayment"
            st.cancel_at_period_end = False
            await sub.transition(
                AuditAction.CANCELED,
                Status.canceled,
                Actor(reason="nonpayment"),
                {"mode": "nonpayment"},
            )
            await sub.notify(
                "canceled",
                "canceled",
                {
                    "reason": "nonpayment",
                    "mode": "nonpayment",
                    "plan_id": st.terms.plan_id,
                    "effective_date": sub.today().isoformat(),
                },
            )
            return
        if st.status != Status.unpaid:
            await sub.transition(
                AuditAction.MARKED_UNPAID, Status.unpaid, Actor(reason="nonpayment")
            )
