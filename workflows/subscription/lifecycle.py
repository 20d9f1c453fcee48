"""The subscription's life: creation, notices, renewals and collecting what is owed.

Each method is one step of the main loop (or of a handler that collects at once, such as a new
card), called under the state lock.
"""

from __future__ import annotations

from temporalio import workflow

from workflows.subscription.billing import Billing, Collection, status_after_payment
from workflows.subscription.calls import Refused
from workflows.subscription.changes import Changes
from workflows.subscription.context import Status, Sub
from workflows.subscription.dunning import Dunning
from workflows.subscription.steps import notice_key

with workflow.unsafe.imports_passed_through():
    from models.errors import ErrorCode
    from models.money import format_money
    from models.subscription import Actor, ProvisionCustomer, ProvisionedCustomer
    from models.vocabulary import AuditAction


class Lifecycle:
    def __init__(self, sub: Sub, billing: Billing, dunning: Dunning, changes: Changes) -> None:
        self.sub = sub
        self.billing = billing
        self.dunning = dunning
        self.changes = changes

    async def provision(self, payment_method_id: str) -> ProvisionedCustomer:
        st = self.sub.st
        return await self.sub.calls.provision(
            ProvisionCustomer(
                customer_id=st.customer_id,
                email=st.email,
                timezone=st.timezone,
                payment_method_id=payment_method_id,
                tenant_id=st.tenant_id,
            )
        )

    async def begin(self) -> None:
        """Provision the customer at the gateway, then record the creation."""
        sub, st = self.sub, self.sub.st
        try:
            provisioned = await self.provision(st.payment_method_id)
        except Refused as err:
            await self.fail_start(err.code, "provisioning failed", {"message": err.message[:200]})
            return
        st.gateway_customer_id = provisioned.gateway_customer_id
        if st.trial_end is not None:
            await sub.transition(AuditAction.CREATED, Status.trialing, st.created_by)
        else:
            await sub.transition(AuditAction.CREATED, Status.incomplete, st.created_by)

    async def fail_start(
        self, code: str, reason: str, details: dict[str, str] | None = None
    ) -> None:
        st = self.sub.st
        st.first_charge_error = code
        # The outcome first: a refused clean-up must never leave it startable (and chargeable).
        await self.sub.transition(
            AuditAction.CREATION_FAILED,
            Status.incomplete_expired,
            Actor(reason=reason),
            details={"error_code": code, **(details or {})},
        )
        for inv in list(st.open_invoices):
            try:
                await self.billing.void(inv)
            except Refused as err:
                self.sub.flag(err, f"void {inv.invoice_id}", blocking=False)

    async def notice(self) -> None:
        """Tell the customer what the next charge will be (scheduled changes and credit in)."""
        sub, st = self.sub, self.sub.st
        key = notice_key(sub)
        terms = self.changes.terms_at_next_renewal()
        if terms.interval != st.terms.interval:
            gross = terms.unit_amount_minor * terms.quantity
        else:
            gross = sub.period_amount(terms=terms)
        amount = max(0, gross + st.carried_minor - st.account_credit_minor)
        trial = st.status == Status.trialing
        notice_at = sub.notice_at()
        await sub.notify(
            "trial_ending" if trial else "upcoming_charge",
            key,
            {
                "charge_date": sub.due_date().isoformat(),
                "amount": format_money(amount, terms.currency),
                "amount_minor": str(amount),
                "currency": terms.currency,
                "plan_id": terms.plan_id,
            },
            at=notice_at,
        )
        st.notices_sent.append(key)
        del st.notices_sent[:-12]  # the recent keys are enough to never repeat a notice

    async def renew(self) -> bool:
        """Invoice the period now due and collect it; True when the period ends up paid."""
        sub, st = self.sub, self.sub.st
        if sub.cancels_waiting:
            return False  # an accepted cancel-now takes the lock next: bill nothing more
        behind = bool(st.open_invoices)
        await self.changes.apply_scheduled()
        await self.billing.issue_period_invoice()
        if behind:
            return False  # it waits behind the unpaid invoice (dunning collects in order)
        out = await self.collect()
        return out.all_paid

    async def collect(self, *, reset_schedule: bool = False) -> Collection:
        """Collect the open invoices and write down what happened to each."""
        sub, st = self.sub, self.sub.st
        recovering = st.status in (Status.past_due, Status.unpaid)
        out = await self.billing.collect()
        for i, inv in enumerate(out.paid):
            if recovering and (st.open_invoices or i < len(out.paid) - 1):
                continue  # still behind: stays past due until every invoice is paid
            st.dunning_stage = None
            st.access = "full"
            await sub.transition(
                status_after_payment(recovering, st.status),
                Status.active,
                Actor(),
                details={
                    "invoice_id": inv.invoice_id,
                    "amount_minor": str(inv.amount_minor),
                    "period": f"{inv.period_start.isoformat()}/{inv.period_end.isoformat()}",
                    "attempt": str(inv.attempts),
                },
            )
            if st.status == Status.active and inv.amount_minor > 0:
                await sub.notify(
                    "payment_succeeded",
                    f"receipt:{inv.invoice_id}",
                    {
                        "invoice_id": inv.invoice_id,
                        "amount": format_money(inv.amount_minor, st.terms.currency),
                        "amount_minor": str(inv.amount_minor),
                        "currency": st.terms.currency,
                        "plan_id": st.terms.plan_id,
                        "period_start": inv.period_start.isoformat(),
                        "period_end": inv.period_end.isoformat(),
                    },
                )
        if out.declined is not None:
            inv, result = out.declined
            if st.status == Status.incomplete:
                # The very first payment failed: the subscription never starts.
                await self.fail_start(
                    ErrorCode.PAYMENT_DECLINED,
                    "first payment declined",
                    {
                        "invoice_id": inv.invoice_id,
                        "decline_code": result.decline_code or "",
                        "decline_category": result.decline_category or "",
                    },
                )
            else:
                await self.dunning.payment_failed(inv, result, reset_schedule=reset_schedule)
        return out
