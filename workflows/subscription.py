"""SubscriptionWorkflow: one long-lived workflow per subscription.

``run`` is a loop over phases: wait until the next due instant (a notice, the trial end, a renewal)
or a message; act; continue-as-new after each billed period. All money and calendar math comes
from ``models``; every side effect is an activity; every transition is audited.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import date, datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.payments import PaymentActivities
    from activities.store import StoreActivities
    from models import search_attributes as sa
    from models.billing import billed_span, period_amount, period_lines
    from models.calendar import local_date, local_midnight_utc, period_index_containing
    from models.catalog import default_catalog
    from models.dunning import DunningStep, FinalAction, RenewalDuringDunning, next_step
    from models.errors import ErrorCode, OmsError
    from models.ids import (
        change_invoice_id,
        invoice_id,
        payment_idempotency_key,
        request_idempotency_key,
        request_kind,
    )
    from models.invoice import InvoiceLine, LineKind, compose_invoice
    from models.money import format_money
    from models.policy import (
        ApprovalSla,
        CancellationDecision,
        CreditHandling,
        Policy,
        TermsSnapshot,
        Timing,
        default_policy,
        parse_timing,
    )
    from models.proration import quote_cancellation, quote_change
    from models.subscription import (
        Actor,
        ApprovalDecision,
        ApprovalRecord,
        ApprovalResult,
        AuditEntry,
        BilledPeriod,
        CancelRequest,
        CancelResult,
        ChangeRequest,
        ChangeResult,
        ChargeRequest,
        ChargeResult,
        CreditEntry,
        InvoiceDraft,
        InvoiceSettlement,
        Notification,
        OpenInvoice,
        PauseRequest,
        PauseResult,
        PaymentMethodResult,
        PaymentMethodUpdate,
        PendingApproval,
        PendingChange,
        PendingView,
        ProvisionCustomer,
        ProvisionedCustomer,
        RefundRequest,
        ResumeRequest,
        StartRequest,
        StartResult,
        SubscriptionResult,
        SubscriptionSnapshot,
        SubscriptionState,
        SubscriptionStatus,
        SubscriptionView,
        Terms,
        Timeline,
        TimelineEvent,
        TransitionRecord,
        UncancelRequest,
        WithdrawRequest,
    )

Status = SubscriptionStatus

STORE_TIMEOUT = timedelta(seconds=30)
STORE_RETRY = RetryPolicy(maximum_interval=timedelta(minutes=1))
GATEWAY_TIMEOUT = timedelta(seconds=60)
# The charge heartbeats every few seconds while it runs; a worker that dies mid-charge is noticed
# after this, and the retry resumes the same PaymentIntent (no second charge). Its start-to-close
# covers the gateway's worst case (three calls of 20 s with two network retries each).
CHARGE_HEARTBEAT = timedelta(seconds=30)
CHARGE_TIMEOUT = timedelta(minutes=4)
GATEWAY_RETRY = RetryPolicy(
    maximum_interval=timedelta(minutes=5),
    non_retryable_error_types=[
        ErrorCode.PAYMENT_DECLINED,
        ErrorCode.PAYMENT_METHOD_INVALID,
        ErrorCode.INVALID_REQUEST,
    ],
)
TIMELINE_RENEWALS = 3


@workflow.defn
class SubscriptionWorkflow:
    """A subscription from its first order until it ends, possibly years later."""

    @workflow.init
    def __init__(self, state: SubscriptionState) -> None:
        # Handlers can run before ``run`` (update-with-start), so all state is set up here.
        self.st = state.model_copy(deep=True)
        self._new = state.status == Status.incomplete and state.gateway_customer_id is None
        self._start_settled = not self._new
        self._cancel_now: CancelRequest | None = None
        self._wake = False
        self._transition_lock = asyncio.Lock()
        self._pm_updated = False  # a new card arrived: retry what is unpaid now
        self._schedule_reset = False  # the next failure restarts the retry schedule
        self._collections = 0  # collect passes finished (update handlers wait on it)
        self._cancel_decision: CancellationDecision | None = None
        self._resume_requested: ResumeRequest | None = None
        self._billing_lock = asyncio.Lock()  # invoices and charges, one at a time
        self._last_cancel_money: dict[str, int] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}

    # --- main loop ---------------------------------------------------------------------

    @workflow.run
    async def run(self, state: SubscriptionState) -> SubscriptionResult:
        if self._new:
            await self._begin()
        for approval in self.st.approvals:
            self._watch(approval.request_id)
        while not self.st.status.is_terminal:
            if self._cancel_now is not None:
                await self._cancel_immediately(self._cancel_now)
                break
            if self.st.status == Status.paused:
                await self._paused_phase()
                continue
            if self.st.open_invoices:
                if await self._dunning_phase():
                    await self._continue_as_new()
                continue
            due_at = self._due_at()
            if await self._notice_phase(due_at):
                continue
            if not await self._sleep_until(due_at):
                continue
            if self.st.cancel_at_period_end:
                await self._cancel_at_period_end()
                break
            async with self._billing_lock:
                await self._issue_invoice()
                paid = await self._collect()
            if paid and not self.st.status.is_terminal:
                await self._continue_as_new()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return SubscriptionResult(
            subscription_id=self.st.subscription_id,
            status=self.st.status,
            periods_billed=self.st.period_index,
            canceled_at=self.st.canceled_at,
        )

    async def _begin(self) -> None:
        """Provision the customer at the gateway, then record the creation."""
        st = self.st
        try:
            provisioned = await self._provision(st.payment_method_id)
        except ActivityError as err:
            await self._fail_start(_error_code(err), "provisioning failed")
            return
        st.gateway_customer_id = provisioned.gateway_customer_id
        if st.trial_end is not None:
            await self._transition("created", Status.trialing, st.created_by)
            self._start_settled = True
        else:
            await self._transition("created", Status.incomplete, st.created_by)

    async def _provision(self, payment_method_id: str) -> ProvisionedCustomer:
        """Create (once) the customer at the gateway and attach ``payment_method_id``."""
        st = self.st
        return await workflow.execute_activity_method(
            PaymentActivities.provision_customer,
            ProvisionCustomer(
                customer_id=st.customer_id,
                email=st.email,
                timezone=st.timezone,
                payment_method_id=payment_method_id,
            ),
            start_to_close_timeout=GATEWAY_TIMEOUT,
            retry_policy=GATEWAY_RETRY,
        )

    async def _notice_phase(self, due_at: datetime) -> bool:
        """Send the notice due before ``due_at``; True if the loop must re-evaluate first."""
        st = self.st
        key = self._notice_key()
        if st.cancel_at_period_end or key in st.notices_sent:
            return False
        notice_at = due_at - timedelta(days=st.notice_days)
        if workflow.now() >= due_at:
            return False  # charging now: a notice would arrive after the fact
        if not await self._sleep_until(notice_at):
            return True
        if st.cancel_at_period_end:
            return True
        trial = st.status == Status.trialing
        amount = self._period_amount()
        await workflow.execute_activity_method(
            StoreActivities.enqueue_notification,
            Notification(
                key=f"{st.subscription_id}:{key}",
                subscription_id=st.subscription_id,
                customer_id=st.customer_id,
                kind="trial_ending" if trial else "upcoming_charge",
                scheduled_for=notice_at,
                data={
                    "charge_date": self._due_date().isoformat(),
                    "amount": format_money(amount, st.terms.currency),
                    "amount_minor": str(amount),
                    "currency": st.terms.currency,
                    "plan_id": st.terms.plan_id,
                },
            ),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )
        st.notices_sent.append(key)
        return False

    async def _issue_invoice(self) -> None:
        """Invoice period ``period_index`` (paid at once when its total is zero) and move on."""
        st = self.st
        await self._apply_scheduled_changes()
        n = st.period_index
        span, period = billed_span(st.anchor, st.terms.interval, n, self._billing_start())
        lines = period_lines(
            anchor=st.anchor,
            interval=st.terms.interval,
            n=n,
            billing_start=self._billing_start(),
            currency=st.terms.currency,
            unit_amount_minor=st.terms.unit_amount_minor,
            quantity=st.terms.quantity,
            description=f"{st.terms.plan_name} ({st.terms.interval.value})",
        )
        composed = compose_invoice(
            currency=st.terms.currency, lines=lines, account_credit_minor=st.account_credit_minor
        )
        draft = InvoiceDraft(
            invoice_id=invoice_id(st.subscription_id, n, st.schedule),
            kind="period" if st.schedule == 0 else f"period-s{st.schedule}",
            subscription_id=st.subscription_id,
            customer_id=st.customer_id,
            period_index=n,
            period_start=span[0],
            period_end=span[1],
            currency=st.terms.currency,
            lines=composed.lines,
            subtotal_minor=composed.subtotal_minor,
            credit_applied_minor=composed.credit_applied_minor,
            total_minor=composed.total_minor,
            issued_at=workflow.now(),
        )
        await workflow.execute_activity_method(
            StoreActivities.write_invoice,
            draft,
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )
        st.period_index = n + 1
        await self._consume_credit(composed.credit_applied_minor, draft.invoice_id)
        st.billed = BilledPeriod(
            start=span[0],
            end=span[1],
            period_start=period[0],
            unit_amount_minor=st.terms.unit_amount_minor,
            quantity=st.terms.quantity,
            billed_minor=composed.subtotal_minor,
        )
        st.open_invoices.append(
            OpenInvoice(
                invoice_id=draft.invoice_id,
                period_index=n,
                amount_minor=draft.total_minor,
                period_start=span[0],
                period_end=span[1],
            )
        )

    async def _collect(self) -> bool:
        """Charge the open invoices oldest first; True when none is left unpaid."""
        st = self.st
        try:
            while st.open_invoices:
                inv = st.open_invoices[0]
                result = await self._charge(inv) if inv.amount_minor > 0 else None
                if result is not None and not result.succeeded:
                    await self._payment_failed(inv, result)
                    return False
                await self._settle(inv, "paid", result.intent_id if result else None)
                st.open_invoices.pop(0)
                if result is not None and result.intent_id and st.billed is not None:
                    st.billed.intent_ids.append(result.intent_id)
                st.paid_through = inv.period_end
                recovering = st.status in (Status.past_due, Status.unpaid)
                if recovering and st.open_invoices:
                    continue  # still behind: stays past_due until every invoice is paid
                st.dunning_stage = None
                st.access = "full"
                if recovering:
                    action = "recovered"
                elif st.status == Status.active:
                    action = "renewed"
                else:
                    action = "activated"
                await self._transition(
                    action,
                    Status.active,
                    Actor(),
                    details={
                        "invoice_id": inv.invoice_id,
                        "amount_minor": str(inv.amount_minor),
                        "period": f"{inv.period_start.isoformat()}/{inv.period_end.isoformat()}",
                        "attempt": str(inv.attempts - 1),
                    },
                )
                self._start_settled = True
            return True
        finally:
            self._collections += 1

    async def _settle(self, inv: OpenInvoice, status: str, intent_id: str | None) -> None:
        await workflow.execute_activity_method(
            StoreActivities.settle_invoice,
            InvoiceSettlement(
                invoice_id=inv.invoice_id, status=status, payment_intent_id=intent_id
            ),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )

    async def _dunning_phase(self) -> bool:
        """One step of dunning for the oldest unpaid invoice; True once everything is paid."""
        st = self.st
        inv = st.open_invoices[0]
        if self._pm_updated:
            self._pm_updated = False
            return await self._collect()
        if inv.first_failed_at is None or inv.schedule_start is None:
            # Invoiced but never attempted (a renewal issued while behind): collect in order.
            return await self._collect()
        step = self._dunning_step(inv)
        self._set_dunning_stage(step)
        if step.final_action == FinalAction.cancel:
            for unpaid in st.open_invoices:
                await self._settle(unpaid, "uncollectible", None)
            st.canceled_at = workflow.now()
            st.cancel_reason = "nonpayment"
            await self._transition(
                "canceled", Status.canceled, Actor(reason="nonpayment"), {"mode": "nonpayment"}
            )
            return False
        if step.final_action == FinalAction.mark_unpaid:
            if st.status != Status.unpaid:
                await self._transition("marked_unpaid", Status.unpaid, Actor(reason="nonpayment"))
            await workflow.wait_condition(lambda: self._pm_updated or self._cancel_now is not None)
            return False
        wake = [t for t in (step.retry_at, step.final_at) if t is not None]
        renewal_at = self._renewal_during_dunning_at()
        if renewal_at is not None:
            wake.append(renewal_at)
        wake_at = min(wake)
        if not await self._sleep_until(wake_at):
            return False  # a message: re-evaluate (new card, cancel)
        if renewal_at is not None and wake_at == renewal_at:
            if st.cancel_at_period_end:
                await self._cancel_at_period_end()
            else:
                await self._issue_invoice()  # waits behind the unpaid one
            return False
        if step.retry_at is not None and wake_at == step.retry_at:
            return await self._collect()
        return False  # the window ended: the next step is the final action

    def _dunning_step(self, inv: OpenInvoice, now: datetime | None = None) -> DunningStep:
        """The dunning policy's next step for an unpaid invoice that has failed at least once."""
        assert inv.schedule_start is not None and inv.first_failed_at is not None
        return next_step(
            self.st.dunning_rule,
            failures=inv.failures_in_schedule,
            schedule_start=inv.schedule_start,
            first_failed_at=inv.first_failed_at,
            decline_category=inv.last_decline_category,
            now=now or workflow.now(),
        )

    def _renewal_during_dunning_at(self) -> datetime | None:
        rule = self.st.dunning_rule
        if rule.renewal_during_dunning == RenewalDuringDunning.skip and not (
            self.st.cancel_at_period_end
        ):
            return None
        return self._due_at()

    def _set_dunning_stage(self, step: DunningStep) -> None:
        st = self.st
        access = step.access.value
        if st.dunning_stage == step.stage and st.access == access:
            return
        st.dunning_stage = step.stage
        st.access = access
        self._mirror_search_attributes()

    async def _charge(self, inv: OpenInvoice) -> ChargeResult:
        st = self.st
        assert st.gateway_customer_id is not None
        attempt = inv.attempts
        inv.attempts += 1
        return await workflow.execute_activity_method(
            PaymentActivities.charge,
            ChargeRequest(
                idempotency_key=inv.charge_key
                or payment_idempotency_key(
                    st.subscription_id, inv.period_index, attempt, st.schedule
                ),
                invoice_id=inv.invoice_id,
                subscription_id=st.subscription_id,
                customer_id=st.customer_id,
                gateway_customer_id=st.gateway_customer_id,
                payment_method_id=st.payment_method_id,
                amount_minor=inv.amount_minor,
                currency=st.terms.currency,
                attempt=attempt,
                description=f"{st.terms.plan_name} {inv.period_start.isoformat()}",
            ),
            start_to_close_timeout=CHARGE_TIMEOUT,
            heartbeat_timeout=CHARGE_HEARTBEAT,
            retry_policy=GATEWAY_RETRY,
        )

    async def _payment_failed(self, inv: OpenInvoice, result: ChargeResult) -> None:
        st = self.st
        details = {
            "invoice_id": inv.invoice_id,
            "attempt": str(inv.attempts - 1),
            "decline_code": result.decline_code or "",
            "decline_category": result.decline_category or "",
        }
        if st.status == Status.incomplete:
            # The very first payment failed: the subscription never starts.
            await self._settle(inv, "void", None)
            st.open_invoices.clear()
            await self._fail_start(ErrorCode.PAYMENT_DECLINED, "first payment declined", details)
            return
        now = workflow.now()
        inv.first_failed_at = inv.first_failed_at or now
        if inv.schedule_start is None or (
            self._schedule_reset and st.dunning_rule.reset_on_payment_method_update
        ):
            inv.schedule_start = now
            inv.failures_in_schedule = 0
        self._schedule_reset = False
        inv.failures_in_schedule += 1
        inv.last_decline_category = result.decline_category
        inv.last_decline_code = result.decline_code
        step = self._dunning_step(inv, now)
        st.dunning_stage = step.stage
        st.access = step.access.value
        if step.retry_at is not None:
            details["next_retry_at"] = step.retry_at.isoformat()
        await self._transition("payment_failed", Status.past_due, Actor(), details=details)
        await workflow.execute_activity_method(
            StoreActivities.enqueue_notification,
            Notification(
                key=f"{st.subscription_id}:payment_failed:{inv.period_index}:{inv.attempts - 1}",
                subscription_id=st.subscription_id,
                customer_id=st.customer_id,
                kind="payment_failed",
                scheduled_for=now,
                data={
                    "invoice_id": inv.invoice_id,
                    "amount": format_money(inv.amount_minor, st.terms.currency),
                    "next_retry_at": step.retry_at.isoformat() if step.retry_at else "",
                    "action": "update_payment_method"
                    if step.stage == "awaiting_payment_method"
                    else "none",
                },
            ),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )

    async def _fail_start(
        self, code: str, reason: str, details: dict[str, str] | None = None
    ) -> None:
        self.st.first_charge_error = code
        await self._transition(
            "creation_failed",
            Status.incomplete_expired,
            Actor(reason=reason),
            details={"error_code": code, **(details or {})},
        )
        self._start_settled = True

    async def _cancel_immediately(self, req: CancelRequest) -> None:
        for unpaid in self.st.open_invoices:  # a past-due subscription's debts stay on record
            await self._settle(unpaid, "uncollectible", None)
        self.st.open_invoices.clear()
        decision = self._cancel_decision
        lines: list[InvoiceLine] = []
        if decision is not None and self.st.billed is not None:
            async with self._billing_lock:
                lines = await self._cancellation_money(req, decision)
        self.st.canceled_at = workflow.now()
        self.st.cancel_at_period_end = False
        await self._transition(
            "canceled",
            Status.canceled,
            req.by,
            details={"mode": "now", "lines": ";".join(f"{x.kind}:{x.amount_minor}" for x in lines)},
        )

    async def _cancel_at_period_end(self) -> None:
        if self.st.cancel_fee_minor > 0:
            await self._charge_fee(self.st.cancel_fee_minor, "cancel-at-period-end")
        self.st.canceled_at = workflow.now()
        await self._transition(
            "canceled", Status.canceled, Actor(), details={"mode": "at_period_end"}
        )

    async def _continue_as_new(self) -> None:
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._cancel_now is not None:
            return  # an immediate cancel arrived meanwhile: handle it in this run
        self.st.runs += 1
        workflow.continue_as_new(self.st)

    # --- helpers ---------------------------------------------------------------------

    async def _sleep_until(self, at: datetime) -> bool:
        """Wait until ``at``; False if a message woke us first (the loop re-evaluates)."""
        while (delta := at - workflow.now()) > timedelta(0):
            self._wake = False
            try:
                await workflow.wait_condition(
                    lambda: self._wake, timeout=delta, timeout_summary="until " + at.isoformat()
                )
                return False
            except TimeoutError:
                pass
        return True

    def _notify(self) -> None:
        self._wake = True

    def _billing_start(self) -> date:
        return self.st.billing_start or self.st.anchor

    def _due_date(self, n: int | None = None) -> date:
        """The local date period ``n`` (default: the next) is billed on."""
        index = self.st.period_index if n is None else n
        span, _ = billed_span(self.st.anchor, self.st.terms.interval, index, self._billing_start())
        return span[0]

    def _due_at(self) -> datetime:
        return local_midnight_utc(self._due_date(), self.st.timezone)

    def _notice_key(self) -> str:
        if self.st.status == Status.trialing:
            return "trial_ending"
        return f"upcoming:{self.st.period_index}"

    def _period_amount(self, n: int | None = None) -> int:
        st = self.st
        return period_amount(
            anchor=st.anchor,
            interval=st.terms.interval,
            n=st.period_index if n is None else n,
            billing_start=self._billing_start(),
            currency=st.terms.currency,
            unit_amount_minor=st.terms.unit_amount_minor,
            quantity=st.terms.quantity,
        )

    def _current_period(self) -> tuple[date, date] | None:
        st = self.st
        if st.status == Status.trialing and st.trial_end is not None:
            return (st.start_date, st.trial_end)
        if st.period_index == st.first_period_index:
            return None
        span, _ = billed_span(
            st.anchor, st.terms.interval, st.period_index - 1, self._billing_start()
        )
        return span

    def _next_billing_at(self) -> datetime | None:
        if self.st.status.is_terminal or self.st.cancel_at_period_end:
            return None
        return self._due_at()

    def _mirror_search_attributes(self) -> None:
        if not self.st.search_attributes:
            return
        next_at = self._next_billing_at()
        workflow.upsert_search_attributes(
            [
                sa.SUBSCRIPTION_STATUS.value_set(self.st.status.value),
                sa.NEXT_BILLING_AT.value_set(next_at)
                if next_at
                else sa.NEXT_BILLING_AT.value_unset(),
                sa.DUNNING_STAGE.value_set(self.st.dunning_stage)
                if self.st.dunning_stage
                else sa.DUNNING_STAGE.value_unset(),
                sa.PENDING_APPROVAL.value_set(bool(self.st.approvals)),
                sa.PLAN_ID.value_set(self.st.terms.plan_id),
            ]
        )

    def _snapshot(self) -> SubscriptionSnapshot:
        st = self.st
        current = self._current_period()
        return SubscriptionSnapshot(
            subscription_id=st.subscription_id,
            customer_id=st.customer_id,
            plan_id=st.terms.plan_id,
            interval=st.terms.interval,
            currency=st.terms.currency,
            unit_amount_minor=st.terms.unit_amount_minor,
            quantity=st.terms.quantity,
            status=st.status,
            timezone=st.timezone,
            anchor=st.anchor,
            trial_end=st.trial_end,
            current_period_start=current[0] if current else None,
            current_period_end=current[1] if current else None,
            next_billing_at=self._next_billing_at(),
            cancel_at_period_end=st.cancel_at_period_end,
            canceled_at=st.canceled_at,
            payment_method_id=st.payment_method_id,
        )

    async def _transition(
        self,
        action: str,
        to_status: SubscriptionStatus,
        by: Actor,
        details: dict[str, str] | None = None,
    ) -> None:
        """Move to ``to_status``, mirror it in search attributes and write the audit row."""
        async with self._transition_lock:
            st = self.st
            from_status = st.status
            st.status = to_status
            st.audit_seq += 1
            self._mirror_search_attributes()
            await workflow.execute_activity_method(
                StoreActivities.record_transition,
                TransitionRecord(
                    snapshot=self._snapshot(),
                    audit=AuditEntry(
                        event_key=f"{st.subscription_id}:{st.audit_seq}:{action}",
                        subscription_id=st.subscription_id,
                        action=action,
                        from_status=from_status.value,
                        to_status=to_status.value,
                        actor=by.actor,
                        channel=by.channel,
                        request_id=by.request_id,
                        reason=by.reason,
                        details=details or {},
                        occurred_at=workflow.now(),
                    ),
                ),
                start_to_close_timeout=STORE_TIMEOUT,
                retry_policy=STORE_RETRY,
            )

    # --- messages ----------------------------------------------------------------------

    @workflow.update
    async def start(self, req: StartRequest) -> StartResult:
        """Confirm creation: answers once the subscription is trialing, active or refused."""
        await workflow.wait_condition(lambda: self._start_settled or not req.wait_for_payment)
        st = self.st
        if st.first_charge_error is not None:
            raise ApplicationError(
                _START_ERRORS.get(st.first_charge_error, "the subscription could not start"),
                {"subscription_id": st.subscription_id},
                type=st.first_charge_error,
                non_retryable=True,
            )
        return StartResult(
            subscription_id=st.subscription_id,
            customer_id=st.customer_id,
            status=st.status,
            plan_id=st.terms.plan_id,
            interval=st.terms.interval,
            first_invoice_date=self._due_date(st.first_period_index),
            first_charge_minor=self._period_amount(st.first_period_index),
            currency=st.terms.currency,
            trial_end=st.trial_end,
        )

    @start.validator
    def _validate_start(self, req: StartRequest) -> None:
        if not req.request_id:
            raise ApplicationError("request_id is required", type=ErrorCode.INVALID_REQUEST)

    @workflow.update
    async def cancel(self, req: CancelRequest) -> CancelResult:
        """Cancel now or at period end, as the request and the cancellation policy say."""
        decision = self._decide_cancellation(req)
        if decision.needs_approval:
            approval = await self._open_approval(
                "cancel",
                req.request_id or workflow.uuid4().hex,
                f"cancel {decision.timing.value.replace('_', ' ')}",
                decision.approval_reasons,
                decision.approver_groups,
                decision.sla,
                req.by,
                cancel=req,
            )
            result = self._cancel_result()
            return result.model_copy(
                update={
                    "outcome": "pending_approval",
                    "request_id": approval.request_id,
                    "approval_deadline": approval.deadline,
                }
            )
        return await self._carry_out_cancel(req, decision)

    async def _carry_out_cancel(
        self, req: CancelRequest, decision: CancellationDecision
    ) -> CancelResult:
        if decision.timing == Timing.PERIOD_END or self.st.status == Status.trialing:
            if not self.st.cancel_at_period_end:
                self.st.cancel_at_period_end = True
                self.st.cancel_fee_minor = decision.early_termination_fee_minor
                self._notify()
                await self._transition(
                    "cancel_scheduled",
                    self.st.status,
                    req.by,
                    details={"effective_date": self._due_date().isoformat()},
                )
            return self._cancel_result().model_copy(
                update={"outcome": "scheduled", "request_id": req.request_id}
            )
        self._cancel_decision = decision
        self._cancel_now = req
        self._notify()
        await workflow.wait_condition(lambda: self.st.status.is_terminal)
        return self._cancel_result().model_copy(
            update={"request_id": req.request_id, **self._last_cancel_money}
        )

    def _decide_cancellation(self, req: CancelRequest) -> CancellationDecision:
        st = self.st
        requested = None
        if req.at_period_end is not None:
            requested = Timing.PERIOD_END if req.at_period_end else Timing.IMMEDIATELY
        decision = self._policy().decide_cancellation(
            segment=st.segment,  # type: ignore[arg-type]
            terms=self._terms_snapshot(st.terms),
            subscribed_on=st.start_date,
            today=self._today(),
            period_end=self._due_date(),
            timing_requested=requested,
        )
        if not decision.allowed:
            raise ApplicationError(
                decision.message, type=decision.code or ErrorCode.CHANGE_NOT_ALLOWED
            )
        return decision

    async def _cancellation_money(
        self, req: CancelRequest, decision: CancellationDecision
    ) -> list[InvoiceLine]:
        """Lines of an immediate cancellation: unused time back (as policy says), fee charged."""
        st = self.st
        billed = st.billed
        assert billed is not None
        today = self._today()
        lines: list[InvoiceLine] = []
        if decision.refund.value != "none" and billed.start <= today < billed.end:
            lines = quote_cancellation(
                currency=st.terms.currency,
                anchor=st.anchor,
                interval=st.terms.interval,
                cancel_date=today,
                billed_unit_amount_minor=billed.unit_amount_minor,
                quantity=billed.quantity,
                billed_amount_minor=billed.billed_minor,
                credits_already_issued_minor=billed.credits_minor,
            )
        if decision.early_termination_fee_minor > 0:
            lines.append(
                InvoiceLine(
                    kind=LineKind.EARLY_TERMINATION_FEE,
                    description="early termination fee",
                    amount_minor=decision.early_termination_fee_minor,
                    currency=st.terms.currency,
                )
            )
        rid = req.request_id or f"cancel-{st.audit_seq}"
        money = await self._settle_request_lines(
            rid, lines, refund=decision.refund.value == "refund"
        )
        self._last_cancel_money = money
        return lines

    @cancel.validator
    def _validate_cancel(self, req: CancelRequest) -> None:
        self._require_live()
        if self.st.status == Status.incomplete:
            raise ApplicationError(
                "the subscription is still being created; retry in a moment",
                type=ErrorCode.INVALID_REQUEST,
            )
        self._decide_cancellation(req)

    @workflow.update
    async def uncancel(self, req: UncancelRequest) -> CancelResult:
        """Withdraw a period-end cancellation before it takes effect."""
        self.st.cancel_at_period_end = False
        self._notify()
        await self._transition("cancel_withdrawn", self.st.status, req.by)
        return self._cancel_result()

    @uncancel.validator
    def _validate_uncancel(self, req: UncancelRequest) -> None:
        self._require_live()
        if not self.st.cancel_at_period_end:
            raise ApplicationError(
                "the subscription has no cancellation scheduled", type=ErrorCode.NOT_CANCELING
            )

    @workflow.update
    async def update_payment_method(self, req: PaymentMethodUpdate) -> PaymentMethodResult:
        """Attach a new card; when something is unpaid, retry it now and report the outcome."""
        st = self.st
        try:
            await self._provision(req.payment_method_id)
        except ActivityError as err:
            raise ApplicationError(
                "the payment method could not be attached; tokenize the card again",
                type=_error_code(err),
                non_retryable=True,
            ) from err
        previous = st.payment_method_id
        st.payment_method_id = req.payment_method_id
        await self._transition(
            "payment_method_updated",
            st.status,
            req.by,
            details={"from": previous, "to": req.payment_method_id},
        )
        retried = bool(st.open_invoices) and not st.status.is_terminal
        if retried:
            target = self._collections + 1
            self._schedule_reset = True
            self._pm_updated = True
            self._notify()
            await workflow.wait_condition(
                lambda: self._collections >= target or self.st.status.is_terminal
            )
        return PaymentMethodResult(
            subscription_id=st.subscription_id,
            status=st.status,
            payment_method_id=st.payment_method_id,
            retried=retried,
            open_invoices=len(st.open_invoices),
        )

    @update_payment_method.validator
    def _validate_update_payment_method(self, req: PaymentMethodUpdate) -> None:
        self._require_live()
        if self.st.status == Status.incomplete:
            raise ApplicationError(
                "the subscription is still being created; retry in a moment",
                type=ErrorCode.INVALID_REQUEST,
            )
        if not req.payment_method_id.startswith("pm_"):
            raise ApplicationError(
                "send the gateway's payment method token (pm_...), never a card number",
                type=ErrorCode.PAYMENT_METHOD_INVALID,
            )

    # --- changes -----------------------------------------------------------------------

    def _policy(self) -> Policy:
        return self.st.policy or default_policy()

    def _today(self) -> date:
        return local_date(workflow.now(), self.st.timezone)

    def _terms_snapshot(self, terms: Terms) -> TermsSnapshot:
        catalog = default_catalog()
        tier = next((p.tier for p in catalog.plans if p.plan_id == terms.plan_id), 0)
        return TermsSnapshot(
            plan_id=terms.plan_id,
            tier=tier,
            currency=terms.currency,
            interval=terms.interval,
            unit_amount_minor=terms.unit_amount_minor,
            quantity=terms.quantity,
        )

    def _resolve_terms(self, req: ChangeRequest) -> Terms:
        """The requested terms priced from the catalog, or an ApplicationError with its code."""
        st = self.st
        if req.priced_terms is not None:
            if req.priced_terms.currency != st.terms.currency:
                raise ApplicationError(
                    f"a subscription keeps its currency ({st.terms.currency})",
                    type=ErrorCode.CHANGE_NOT_ALLOWED,
                )
            if req.priced_terms.quantity < 1:
                raise ApplicationError(
                    "quantity must be at least 1", type=ErrorCode.INVALID_QUANTITY
                )
            return req.priced_terms
        try:
            plan = default_catalog().plan(req.plan_id or st.terms.plan_id)
            price = plan.price(st.terms.currency, req.interval or st.terms.interval)
        except OmsError as err:
            raise ApplicationError(err.message, type=err.code, non_retryable=True) from None
        quantity = st.terms.quantity if req.quantity is None else req.quantity
        if quantity < 1:
            raise ApplicationError(
                f"quantity must be at least 1, got {quantity}", type=ErrorCode.INVALID_QUANTITY
            )
        return Terms(
            plan_id=plan.plan_id,
            plan_name=plan.name,
            interval=price.interval,
            currency=price.currency,
            unit_amount_minor=price.amount_minor,
            quantity=quantity,
        )

    def _decide_change(self, req: ChangeRequest) -> tuple[Terms, Any]:
        new = self._resolve_terms(req)
        timing = None
        if req.when is not None:
            try:
                timing = parse_timing(req.when)
            except ValueError:
                raise ApplicationError(
                    f"when must be now or period_end, not {req.when!r}",
                    type=ErrorCode.INVALID_REQUEST,
                ) from None
        decision = self._policy().decide_terms_change(
            segment=self.st.segment,  # type: ignore[arg-type]
            current=self._terms_snapshot(self.st.terms),
            new=self._terms_snapshot(new),
            timing_requested=timing,
        )
        if not decision.allowed:
            raise ApplicationError(
                decision.message, type=decision.code or ErrorCode.CHANGE_NOT_ALLOWED
            )
        return new, decision

    @workflow.update
    async def request_change(self, req: ChangeRequest) -> ChangeResult:
        """Change plan, quantity or interval: applied, scheduled or sent for approval."""
        new, decision = self._decide_change(req)
        if decision.needs_approval:
            for other in [a for a in self.st.approvals if a.kind == "change"]:
                await self._close_approval(other, "superseded", req.by, "a newer change request")
            approval = await self._open_approval(
                "change",
                req.request_id,
                self._describe_change(new),
                decision.approval_reasons,
                decision.approver_groups,
                decision.sla,
                req.by,
                change=req,
            )
            return ChangeResult(
                outcome="pending_approval",
                request_id=req.request_id,
                subscription_id=self.st.subscription_id,
                approval_deadline=approval.deadline,
                approver_groups=approval.groups,
                message="; ".join(decision.approval_reasons),
            )
        return await self._carry_out_change(req, new, decision.timing, decision.credit_handling)

    @request_change.validator
    def _validate_request_change(self, req: ChangeRequest) -> None:
        self._require_live()
        self._require_request_id_unused(req.request_id)
        if self.st.status in (Status.incomplete, Status.past_due, Status.unpaid, Status.paused):
            raise ApplicationError(
                f"a {self.st.status.value} subscription cannot change terms; "
                + ("resume it first" if self.st.status == Status.paused else "settle it first"),
                type=ErrorCode.SUBSCRIPTION_PAUSED
                if self.st.status == Status.paused
                else ErrorCode.CHANGE_NOT_ALLOWED,
            )
        self._decide_change(req)

    def _describe_change(self, new: Terms) -> str:
        old = self.st.terms
        return (
            f"{old.plan_id} x{old.quantity} {old.interval.value} -> "
            f"{new.plan_id} x{new.quantity} {new.interval.value}"
        )

    async def _carry_out_change(
        self, req: ChangeRequest, new: Terms, timing: Timing, credit: CreditHandling
    ) -> ChangeResult:
        st = self.st
        base = ChangeResult(
            outcome="applied", request_id=req.request_id, subscription_id=st.subscription_id
        )
        if st.billed is None or st.status == Status.trialing:
            # Nothing billed yet (a trial): the new terms simply apply from the first invoice.
            await self._switch_terms(new, restart_at=None)
            await self._transition(
                "change_applied", st.status, req.by, {"request_id": req.request_id}
            )
            return base.model_copy(update={"effective_date": self._today()})
        if timing == Timing.PERIOD_END:
            effective = self._due_date()
            for old in list(st.scheduled_changes):
                st.scheduled_changes.remove(old)
                st.closed_requests[old.request_id] = "replaced"
            st.scheduled_changes.append(
                PendingChange(
                    request_id=req.request_id,
                    terms=new,
                    effective_date=effective,
                    requested_by=req.by,
                    requested_at=workflow.now(),
                )
            )
            await self._transition(
                "change_scheduled",
                st.status,
                req.by,
                {"request_id": req.request_id, "effective_date": effective.isoformat()},
            )
            return base.model_copy(update={"outcome": "scheduled", "effective_date": effective})
        async with self._billing_lock:
            return await self._apply_change_now(req, new, credit, base)

    async def _apply_change_now(
        self, req: ChangeRequest, new: Terms, credit: CreditHandling, base: ChangeResult
    ) -> ChangeResult:
        st = self.st
        billed = st.billed
        assert billed is not None
        today = self._today()
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
        )
        money = await self._settle_request_lines(
            req.request_id, quote.lines, refund=credit == CreditHandling.REFUND
        )
        credit_line = -sum(x.amount_minor for x in quote.lines if x.amount_minor < 0)
        charge_line = sum(x.amount_minor for x in quote.lines if x.amount_minor > 0)
        if new.interval != st.terms.interval:
            await self._switch_terms(
                new, restart_at=quote.next_billing_date, anchor=quote.new_anchor
            )
            st.billed = BilledPeriod(
                start=today,
                end=quote.next_billing_date,
                period_start=today,
                unit_amount_minor=new.unit_amount_minor,
                quantity=new.quantity,
                billed_minor=charge_line,
                intent_ids=billed.intent_ids,
            )
        else:
            await self._switch_terms(new, restart_at=None)
            billed.unit_amount_minor = new.unit_amount_minor
            billed.quantity = new.quantity
            billed.billed_minor += charge_line
            billed.credits_minor += credit_line
        await self._transition(
            "change_applied",
            st.status,
            req.by,
            {
                "request_id": req.request_id,
                "lines": ";".join(f"{x.kind}:{x.amount_minor}" for x in quote.lines),
            },
        )
        return base.model_copy(update={"effective_date": today, "lines": quote.lines, **money})

    async def _switch_terms(
        self, new: Terms, restart_at: date | None, anchor: date | None = None
    ) -> None:
        """Adopt ``new`` terms; ``restart_at`` starts a new billing schedule on that date."""
        st = self.st
        st.terms = new
        if restart_at is not None:
            st.schedule += 1
            st.anchor = anchor or restart_at
            st.period_index = period_index_containing(st.anchor, new.interval, restart_at)
            st.billing_start = restart_at
            st.first_period_index = st.period_index
        self._mirror_search_attributes()
        self._notify()

    async def _apply_scheduled_changes(self) -> None:
        st = self.st
        due = self._due_date()
        for change in [c for c in st.scheduled_changes if c.effective_date <= due]:
            st.scheduled_changes.remove(change)
            st.closed_requests[change.request_id] = "applied"
            restart = due if change.terms.interval != st.terms.interval else None
            await self._switch_terms(change.terms, restart_at=restart)
            await self._transition(
                "change_applied",
                st.status,
                change.requested_by,
                {"request_id": change.request_id, "scheduled": "true"},
            )

    async def _settle_request_lines(
        self, request_id: str, lines: list[InvoiceLine], *, refund: bool
    ) -> dict[str, int]:
        """Invoice a request's lines; charge what is owed, refund or credit what is given back."""
        st = self.st
        if not lines:
            return {}
        subtotal = sum(x.amount_minor for x in lines)
        composed = compose_invoice(
            currency=st.terms.currency,
            lines=lines,
            account_credit_minor=st.account_credit_minor if subtotal > 0 else 0,
        )
        inv_id = change_invoice_id(st.subscription_id, request_id)
        today = self._today()
        await workflow.execute_activity_method(
            StoreActivities.write_invoice,
            InvoiceDraft(
                invoice_id=inv_id,
                kind=request_kind(request_id),
                subscription_id=st.subscription_id,
                customer_id=st.customer_id,
                period_index=st.period_index,
                period_start=today,
                period_end=st.billed.end if st.billed else today,
                currency=st.terms.currency,
                lines=composed.lines,
                subtotal_minor=composed.subtotal_minor,
                credit_applied_minor=composed.credit_applied_minor,
                total_minor=composed.total_minor,
                issued_at=workflow.now(),
            ),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )
        await self._consume_credit(composed.credit_applied_minor, inv_id)
        money = {"charged_minor": 0, "refunded_minor": 0, "credited_minor": 0}
        if composed.total_minor > 0:
            inv = OpenInvoice(
                invoice_id=inv_id,
                period_index=st.period_index,
                amount_minor=composed.total_minor,
                period_start=today,
                period_end=today,
                charge_key=request_idempotency_key(st.subscription_id, request_id, "charge"),
            )
            result = await self._charge(inv)
            if not result.succeeded:
                await self._settle(inv, "void", None)
                raise ApplicationError(
                    "the payment for this change was declined; nothing was changed",
                    {"decline_code": result.decline_code or ""},
                    type=ErrorCode.PAYMENT_DECLINED,
                    non_retryable=True,
                )
            await self._settle(inv, "paid", result.intent_id)
            if st.billed is not None and result.intent_id:
                st.billed.intent_ids.append(result.intent_id)
            money["charged_minor"] = composed.total_minor
        else:
            await self._settle(
                OpenInvoice(
                    invoice_id=inv_id,
                    period_index=0,
                    amount_minor=0,
                    period_start=today,
                    period_end=today,
                ),
                "paid",
                None,
            )
        owed_back = max(0, -subtotal)
        if owed_back and refund and st.billed is not None and st.billed.intent_ids:
            refunded = await workflow.execute_activity_method(
                PaymentActivities.refund,
                RefundRequest(
                    idempotency_key=request_idempotency_key(
                        st.subscription_id, request_id, "refund"
                    ),
                    subscription_id=st.subscription_id,
                    invoice_id=inv_id,
                    intent_id=st.billed.intent_ids[-1],
                    amount_minor=owed_back,
                    currency=st.terms.currency,
                    reason=f"request {request_id}",
                ),
                start_to_close_timeout=GATEWAY_TIMEOUT,
                retry_policy=GATEWAY_RETRY,
            )
            money["refunded_minor"] = refunded.amount_minor
            owed_back -= refunded.amount_minor
        if owed_back:
            await self._grant_credit(owed_back, inv_id, f"request {request_id}")
            money["credited_minor"] = owed_back
        return money

    async def _charge_fee(self, amount_minor: int, request_id: str) -> None:
        line = InvoiceLine(
            kind=LineKind.EARLY_TERMINATION_FEE,
            description="early termination fee",
            amount_minor=amount_minor,
            currency=self.st.terms.currency,
        )
        try:
            await self._settle_request_lines(request_id, [line], refund=False)
        except ApplicationError:
            workflow.logger.warning("early termination fee declined", extra={"fee": amount_minor})

    async def _consume_credit(self, amount_minor: int, invoice: str) -> None:
        if amount_minor <= 0:
            return
        self.st.account_credit_minor -= amount_minor
        await self._record_credit(-amount_minor, invoice, "applied to invoice")

    async def _grant_credit(self, amount_minor: int, invoice: str, reason: str) -> None:
        self.st.account_credit_minor += amount_minor
        await self._record_credit(amount_minor, invoice, reason)

    async def _record_credit(self, amount_minor: int, invoice: str, reason: str) -> None:
        st = self.st
        await workflow.execute_activity_method(
            StoreActivities.record_credit,
            CreditEntry(
                entry_key=f"{st.subscription_id}:{invoice}:{'+' if amount_minor > 0 else '-'}",
                customer_id=st.customer_id,
                subscription_id=st.subscription_id,
                amount_minor=amount_minor,
                currency=st.terms.currency,
                balance_after_minor=st.account_credit_minor,
                reason=reason,
                invoice_id=invoice,
            ),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )

    @workflow.update
    async def withdraw(self, req: WithdrawRequest) -> PendingView:
        """Withdraw a scheduled change or a request waiting for approval."""
        st = self.st
        for change in st.scheduled_changes:
            if change.request_id == req.request_id:
                st.scheduled_changes.remove(change)
                st.closed_requests[req.request_id] = "withdrawn"
                await self._transition(
                    "change_withdrawn", st.status, req.by, {"request_id": req.request_id}
                )
                return self.pending()
        approval = self._find_approval(req.request_id)
        assert approval is not None  # the validator checked
        await self._close_approval(approval, "withdrawn", req.by, "withdrawn by the requester")
        return self.pending()

    @withdraw.validator
    def _validate_withdraw(self, req: WithdrawRequest) -> None:
        ids = {c.request_id for c in self.st.scheduled_changes}
        ids |= {a.request_id for a in self.st.approvals}
        if req.request_id not in ids:
            self._unknown_request(req.request_id)

    @workflow.query
    def pending(self) -> PendingView:
        """Scheduled changes and requests waiting for approval."""
        return PendingView(
            subscription_id=self.st.subscription_id,
            scheduled=list(self.st.scheduled_changes),
            approvals=list(self.st.approvals),
        )

    # --- approvals ---------------------------------------------------------------------

    def _find_approval(self, request_id: str) -> PendingApproval | None:
        return next((a for a in self.st.approvals if a.request_id == request_id), None)

    def _unknown_request(self, request_id: str) -> None:
        closed = self.st.closed_requests.get(request_id)
        if closed is not None:
            raise ApplicationError(
                f"request {request_id} is no longer pending: it was {closed}",
                type=ErrorCode.STALE_REQUEST,
            )
        raise ApplicationError(
            f"no pending request {request_id} on this subscription",
            type=ErrorCode.REQUEST_NOT_FOUND,
        )

    def _require_request_id_unused(self, request_id: str) -> None:
        if not request_id:
            raise ApplicationError("request_id is required", type=ErrorCode.INVALID_REQUEST)
        used = request_id in self.st.closed_requests or self._find_approval(request_id)
        if used or any(c.request_id == request_id for c in self.st.scheduled_changes):
            raise ApplicationError(
                f"request id {request_id} was already used on this subscription",
                type=ErrorCode.STALE_REQUEST,
            )

    async def _open_approval(
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
        st = self.st
        now = workflow.now()
        assert sla is not None, "a decision that needs approval carries its SLA"
        approval = PendingApproval(
            request_id=request_id,
            subscription_id=st.subscription_id,
            kind=kind,
            summary=summary,
            reasons=reasons,
            requested_by=by,
            requested_at=now,
            groups=groups,
            reminder_at=sla.reminder_at(now),
            escalate_at=sla.escalate_at(now),
            deadline=sla.expires_at(now),
            **payload,
        )
        st.approvals.append(approval)
        self._mirror_search_attributes()
        await self._record_approval(approval, "pending")
        await self._transition(
            "approval_requested",
            st.status,
            by,
            {"request_id": request_id, "kind": kind, "groups": ",".join(groups)},
        )
        await self._notify_approvers(approval, "approval_requested", groups[:1])
        self._watch(request_id)
        return approval

    async def _close_approval(
        self, approval: PendingApproval, status: str, by: Actor, reason: str
    ) -> None:
        st = self.st
        if approval in st.approvals:
            st.approvals.remove(approval)
        st.closed_requests[approval.request_id] = status
        self._trim_closed()
        self._mirror_search_attributes()
        await self._record_approval(approval, status, decided_by=by.actor, reason=reason)
        await self._transition(
            f"approval_{status}",
            st.status,
            by.model_copy(update={"reason": reason, "request_id": approval.request_id}),
            {"request_id": approval.request_id, "kind": approval.kind},
        )

    def _trim_closed(self, keep: int = 200) -> None:
        closed = self.st.closed_requests
        while len(closed) > keep:
            closed.pop(next(iter(closed)))

    async def _record_approval(
        self,
        approval: PendingApproval,
        status: str,
        decided_by: str | None = None,
        reason: str | None = None,
    ) -> None:
        await workflow.execute_activity_method(
            StoreActivities.record_approval,
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
                decision_reason=reason,
            ),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )

    async def _notify_approvers(
        self, approval: PendingApproval, kind: str, groups: list[str]
    ) -> None:
        st = self.st
        await workflow.execute_activity_method(
            StoreActivities.enqueue_notification,
            Notification(
                key=f"{st.subscription_id}:{approval.request_id}:{kind}",
                subscription_id=st.subscription_id,
                customer_id=st.customer_id,
                kind=kind,
                scheduled_for=workflow.now(),
                data={
                    "request_id": approval.request_id,
                    "groups": ",".join(groups),
                    "summary": approval.summary,
                    "deadline": approval.deadline.isoformat(),
                },
            ),
            start_to_close_timeout=STORE_TIMEOUT,
            retry_policy=STORE_RETRY,
        )

    def _watch(self, request_id: str) -> None:
        if request_id not in self._watchers:
            self._watchers[request_id] = asyncio.create_task(self._watch_approval(request_id))

    async def _watch_approval(self, request_id: str) -> None:
        """Remind, escalate and expire one approval on time; stops once it is decided."""

        def decided() -> bool:
            return self._find_approval(request_id) is None

        approval = self._find_approval(request_id)
        if approval is None:
            return
        if approval.reminder_at is not None and not approval.reminded:
            if await self._wait_or(approval.reminder_at, decided):
                return
            approval.reminded = True
            await self._notify_approvers(approval, "approval_reminder", approval.groups[:1])
            await self._transition(
                "approval_reminded", self.st.status, Actor(), {"request_id": request_id}
            )
        if approval.escalate_at is not None and not approval.escalated:
            if await self._wait_or(approval.escalate_at, decided):
                return
            approval.escalated = True
            await self._record_approval(approval, "pending")
            await self._notify_approvers(approval, "approval_escalated", approval.groups[1:])
            await self._transition(
                "approval_escalated",
                self.st.status,
                Actor(),
                {"request_id": request_id, "groups": ",".join(approval.groups[1:])},
            )
        if await self._wait_or(approval.deadline, decided):
            return
        await self._close_approval(approval, "expired", Actor(), "no decision before the deadline")

    async def _wait_or(self, at: datetime, done: Any) -> bool:
        """Wait until ``at`` unless ``done()`` becomes true first; returns ``done()``."""
        while not done() and (delta := at - workflow.now()) > timedelta(0):
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(done, timeout=delta)
        return bool(done())

    @workflow.update
    async def decide(self, decision: ApprovalDecision) -> ApprovalResult:
        """An approver approves or rejects a pending request (validated before it is accepted)."""
        approval = self._find_approval(decision.request_id)
        assert approval is not None  # the validator checked
        by = Actor(actor=decision.approver, channel=decision.channel, reason=decision.reason)
        status = "approved" if decision.approve else "rejected"
        await self._close_approval(approval, status, by, decision.reason)
        result = ApprovalResult(
            request_id=approval.request_id,
            subscription_id=self.st.subscription_id,
            status=status,
        )
        if not decision.approve:
            return result
        requester = approval.requested_by
        if approval.change is not None:
            new, change_decision = self._decide_change(approval.change)
            change = await self._carry_out_change(
                approval.change, new, change_decision.timing, change_decision.credit_handling
            )
            return result.model_copy(update={"change": change})
        if approval.cancel is not None:
            cancel_decision = self._decide_cancellation(approval.cancel)
            cancel = await self._carry_out_cancel(
                approval.cancel.model_copy(update={"by": requester}), cancel_decision
            )
            return result.model_copy(update={"cancel": cancel})
        if approval.pause is not None:
            pause = await self._pause_now(approval.pause)
            return result.model_copy(update={"pause": pause})
        return result

    @decide.validator
    def _validate_decide(self, decision: ApprovalDecision) -> None:
        self._require_live()
        approval = self._find_approval(decision.request_id)
        if approval is None:
            self._unknown_request(decision.request_id)
            return
        if not decision.reason.strip():
            raise ApplicationError("a decision needs a reason", type=ErrorCode.INVALID_REQUEST)
        try:
            self._policy().approver_may_decide(
                approver=decision.approver,
                requester=approval.requested_by.actor,
                segment=self.st.segment,  # type: ignore[arg-type]
                plan_id=self.st.terms.plan_id,
            )
        except OmsError as err:
            raise ApplicationError(err.message, type=err.code) from None

    # --- pause and resume --------------------------------------------------------------

    @workflow.update
    async def pause(self, req: PauseRequest) -> PauseResult:
        """Pause service and charges (optionally until a resume date), as policy allows."""
        decision = self._decide_pause(req)
        if decision.needs_approval:
            approval = await self._open_approval(
                "pause",
                req.request_id,
                f"pause until {req.resume_on or 'further notice'}",
                decision.approval_reasons,
                decision.approver_groups,
                decision.sla,
                req.by,
                pause=req,
            )
            return PauseResult(
                outcome="pending_approval",
                request_id=req.request_id,
                subscription_id=self.st.subscription_id,
                status=self.st.status,
                approval_deadline=approval.deadline,
            )
        return await self._pause_now(req)

    @pause.validator
    def _validate_pause(self, req: PauseRequest) -> None:
        self._require_live()
        self._require_request_id_unused(req.request_id)
        if self.st.status != Status.active:
            raise ApplicationError(
                f"only an active subscription can be paused; this one is {self.st.status.value}",
                type=ErrorCode.SUBSCRIPTION_PAUSED
                if self.st.status == Status.paused
                else ErrorCode.CHANGE_NOT_ALLOWED,
            )
        self._decide_pause(req)

    def _decide_pause(self, req: PauseRequest) -> Any:
        decision = self._policy().decide_pause(
            segment=self.st.segment,  # type: ignore[arg-type]
            plan_id=self.st.terms.plan_id,
            today=self._today(),
            resume_on=req.resume_on,
            currently_paused=self.st.status == Status.paused,
        )
        if not decision.allowed:
            raise ApplicationError(
                decision.message, type=decision.code or ErrorCode.CHANGE_NOT_ALLOWED
            )
        return decision

    async def _pause_now(self, req: PauseRequest) -> PauseResult:
        st = self.st
        decision = self._decide_pause(req)
        st.paused_on = self._today()
        st.resume_on = decision.resume_on
        st.pause_shifts_billing = decision.shift_billing_dates
        self._notify()
        await self._transition(
            "paused",
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

    async def _paused_phase(self) -> None:
        st = self.st
        if st.resume_on is not None:
            at = local_midnight_utc(st.resume_on, st.timezone)
            if not await self._sleep_until(at) and self._resume_requested is None:
                return
        else:
            await workflow.wait_condition(
                lambda: self._resume_requested is not None or self._cancel_now is not None
            )
            if self._resume_requested is None:
                return
        by = self._resume_requested.by if self._resume_requested else Actor(reason="resume date")
        self._resume_requested = None
        await self._resume_now(by)

    async def _resume_now(self, by: Actor) -> None:
        st = self.st
        today = self._today()
        assert st.paused_on is not None
        days = max(0, (today - st.paused_on).days)
        if st.pause_shifts_billing and days:
            # Every date moves by exactly the days paused: the next billing date moves, and a
            # new schedule is anchored on it (a month is not a fixed number of days).
            shift = timedelta(days=days)
            next_due = self._due_date() + shift
            if st.billed is not None:
                st.billed.start += shift
                st.billed.end += shift
                st.billed.period_start += shift
            for change in st.scheduled_changes:
                change.effective_date += shift
            st.schedule += 1
            st.anchor = next_due
            st.period_index = 0
            st.first_period_index = 0
            st.billing_start = next_due
        else:
            # Billing dates stay; periods that fell inside the pause are not billed.
            while self._due_date() < today:
                st.period_index += 1
        st.paused_on = None
        st.resume_on = None
        await self._transition(
            "resumed",
            Status.active,
            by,
            {"days_paused": str(days), "next_billing_date": self._due_date().isoformat()},
        )

    @workflow.update
    async def resume(self, req: ResumeRequest) -> PauseResult:
        """Resume a paused subscription today."""
        self._resume_requested = req
        self._notify()
        await workflow.wait_condition(lambda: self.st.status != Status.paused)
        return PauseResult(
            outcome="applied",
            request_id=req.request_id,
            subscription_id=self.st.subscription_id,
            status=self.st.status,
            next_billing_date=self._due_date(),
        )

    @resume.validator
    def _validate_resume(self, req: ResumeRequest) -> None:
        self._require_live()
        if self.st.status != Status.paused:
            raise ApplicationError("the subscription is not paused", type=ErrorCode.NOT_PAUSED)

    def _require_live(self) -> None:
        if self.st.status.is_terminal:
            raise ApplicationError(
                f"subscription {self.st.subscription_id} is {self.st.status.value}",
                type=ErrorCode.SUBSCRIPTION_CANCELED,
            )

    def _cancel_result(self) -> CancelResult:
        st = self.st
        effective: date | None = None
        if st.status == Status.canceled and st.canceled_at is not None:
            effective = st.canceled_at.date()
        elif st.cancel_at_period_end:
            effective = self._due_date()
        return CancelResult(
            subscription_id=st.subscription_id,
            status=st.status,
            cancel_at_period_end=st.cancel_at_period_end,
            effective_date=effective,
            canceled_at=st.canceled_at,
        )

    @workflow.query
    def state(self) -> SubscriptionView:
        """The live state of the subscription."""
        st = self.st
        snapshot = self._snapshot()
        return SubscriptionView(
            **snapshot.model_dump(),
            next_billing_date=self._due_date() if snapshot.next_billing_at else None,
            period_index=st.period_index,
            dunning_stage=st.dunning_stage,
            access=st.access,
            open_invoices=st.open_invoices,
            account_credit_minor=st.account_credit_minor,
            paused_on=st.paused_on,
            resume_on=st.resume_on,
            pending_approvals=len(st.approvals),
            scheduled_changes=len(st.scheduled_changes),
        )

    @workflow.query
    def timeline(self) -> Timeline:
        """The next scheduled events with their instants."""
        st = self.st
        events: list[TimelineEvent] = []
        if st.open_invoices and not st.status.is_terminal:
            events.extend(self._dunning_timeline())
        if not st.status.is_terminal and not st.open_invoices:
            currency = st.terms.currency
            trialing = st.status == Status.trialing
            for i in range(TIMELINE_RENEWALS):
                n = st.period_index + i
                amount = self._period_amount(n)
                at = local_midnight_utc(self._due_date(n), st.timezone)
                if st.cancel_at_period_end:
                    events.append(
                        TimelineEvent(
                            at=at, kind="cancellation", description="cancellation takes effect"
                        )
                    )
                    break
                first = i == 0
                key = "trial_ending" if trialing and first else f"upcoming:{n}"
                notice_at = at - timedelta(days=st.notice_days)
                if key not in st.notices_sent and notice_at > workflow.now():
                    events.append(
                        TimelineEvent(
                            at=notice_at,
                            kind="trial_ending_notice"
                            if key == "trial_ending"
                            else "upcoming_charge_notice",
                            description=f"notice of the {format_money(amount, currency)} charge",
                        )
                    )
                if trialing and first:
                    events.append(TimelineEvent(at=at, kind="trial_end", description="trial ends"))
                events.append(
                    TimelineEvent(
                        at=at,
                        kind="renewal" if n > st.first_period_index else "first_charge",
                        description=f"invoice period {n} and charge",
                        amount_minor=amount,
                        currency=currency,
                    )
                )
        return Timeline(subscription_id=st.subscription_id, status=st.status, events=events)

    def _dunning_timeline(self) -> list[TimelineEvent]:
        st = self.st
        inv = st.open_invoices[0]
        if inv.first_failed_at is None or inv.schedule_start is None:
            return []
        step = self._dunning_step(inv)
        events: list[TimelineEvent] = []
        if step.retry_at is not None:
            events.append(
                TimelineEvent(
                    at=step.retry_at,
                    kind="payment_retry",
                    description=f"retry {inv.invoice_id} (attempt {inv.attempts})",
                    amount_minor=inv.amount_minor,
                    currency=st.terms.currency,
                )
            )
        if step.final_at is not None and st.status != Status.unpaid:
            events.append(
                TimelineEvent(
                    at=step.final_at,
                    kind="dunning_final_action",
                    description=f"{st.dunning_rule.final_action.value} if still unpaid",
                )
            )
        return events


_START_ERRORS: dict[str, str] = {
    ErrorCode.PAYMENT_DECLINED: "the first payment was declined; use another payment method",
    ErrorCode.PAYMENT_METHOD_INVALID: "the payment method is not usable; tokenize the card again",
}


def _error_code(err: ActivityError) -> str:
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.type:
        return cause.type
    return ErrorCode.INVALID_REQUEST
