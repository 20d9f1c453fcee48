"""SubscriptionWorkflow: one long-lived workflow per subscription.

``run`` is a loop over phases: wait until the next due instant (a notice, the trial end, a renewal)
or a message; act; continue-as-new after each billed period. All money and calendar math comes
from ``models``; every side effect is an activity; every transition is audited.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.payments import PaymentActivities
    from activities.store import StoreActivities
    from models import search_attributes as sa
    from models.billing import billed_span, period_amount, period_lines
    from models.calendar import local_midnight_utc
    from models.dunning import DunningStep, FinalAction, RenewalDuringDunning, next_step
    from models.errors import ErrorCode
    from models.ids import invoice_id, payment_idempotency_key
    from models.invoice import compose_invoice
    from models.money import format_money
    from models.subscription import (
        Actor,
        AuditEntry,
        CancelRequest,
        CancelResult,
        ChargeRequest,
        ChargeResult,
        InvoiceDraft,
        InvoiceSettlement,
        Notification,
        OpenInvoice,
        PaymentMethodResult,
        PaymentMethodUpdate,
        ProvisionCustomer,
        StartRequest,
        StartResult,
        SubscriptionResult,
        SubscriptionSnapshot,
        SubscriptionState,
        SubscriptionStatus,
        SubscriptionView,
        Timeline,
        TimelineEvent,
        TransitionRecord,
        UncancelRequest,
    )

Status = SubscriptionStatus

STORE_TIMEOUT = timedelta(seconds=30)
STORE_RETRY = RetryPolicy(maximum_interval=timedelta(minutes=1))
GATEWAY_TIMEOUT = timedelta(seconds=60)
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

    # --- main loop ---------------------------------------------------------------------

    @workflow.run
    async def run(self, state: SubscriptionState) -> SubscriptionResult:
        if self._new:
            await self._begin()
        while not self.st.status.is_terminal:
            if self._cancel_now is not None:
                await self._cancel_immediately(self._cancel_now)
                break
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
            await self._issue_invoice()
            if await self._collect() and not self.st.status.is_terminal:
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
            provisioned = await workflow.execute_activity_method(
                PaymentActivities.provision_customer,
                ProvisionCustomer(
                    customer_id=st.customer_id,
                    email=st.email,
                    timezone=st.timezone,
                    payment_method_id=st.payment_method_id,
                ),
                start_to_close_timeout=GATEWAY_TIMEOUT,
                retry_policy=GATEWAY_RETRY,
            )
        except ActivityError as err:
            await self._fail_start(_error_code(err), "provisioning failed")
            return
        st.gateway_customer_id = provisioned.gateway_customer_id
        if st.trial_end is not None:
            await self._transition("created", Status.trialing, st.created_by)
            self._start_settled = True
        else:
            await self._transition("created", Status.incomplete, st.created_by)

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
        n = st.period_index
        span, _ = billed_span(st.anchor, st.terms.interval, n, self._billing_start())
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
        composed = compose_invoice(currency=st.terms.currency, lines=lines, account_credit_minor=0)
        draft = InvoiceDraft(
            invoice_id=invoice_id(st.subscription_id, n),
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
        step = next_step(
            st.dunning_rule,
            failures=inv.failures_in_schedule,
            schedule_start=inv.schedule_start,
            first_failed_at=inv.first_failed_at,
            decline_category=inv.last_decline_category,
            now=workflow.now(),
        )
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
                idempotency_key=payment_idempotency_key(
                    st.subscription_id, inv.period_index, attempt
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
            start_to_close_timeout=GATEWAY_TIMEOUT,
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
        step = next_step(
            st.dunning_rule,
            failures=inv.failures_in_schedule,
            schedule_start=inv.schedule_start,
            first_failed_at=inv.first_failed_at,
            decline_category=inv.last_decline_category,
            now=now,
        )
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
        self.st.canceled_at = workflow.now()
        self.st.cancel_at_period_end = False
        await self._transition("canceled", Status.canceled, req.by, details={"mode": "now"})

    async def _cancel_at_period_end(self) -> None:
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
        """Cancel now, or at the end of the current period (undo with ``uncancel``)."""
        if req.at_period_end:
            if not self.st.cancel_at_period_end:
                self.st.cancel_at_period_end = True
                self._notify()
                await self._transition(
                    "cancel_scheduled",
                    self.st.status,
                    req.by,
                    details={"effective_date": self._due_date().isoformat()},
                )
        else:
            self._cancel_now = req
            self._notify()
            await workflow.wait_condition(lambda: self.st.status.is_terminal)
        return self._cancel_result()

    @cancel.validator
    def _validate_cancel(self, req: CancelRequest) -> None:
        self._require_live()
        if self.st.status == Status.incomplete:
            raise ApplicationError(
                "the subscription is still being created; retry in a moment",
                type=ErrorCode.INVALID_REQUEST,
            )

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
            await workflow.execute_activity_method(
                PaymentActivities.provision_customer,
                ProvisionCustomer(
                    customer_id=st.customer_id,
                    email=st.email,
                    timezone=st.timezone,
                    payment_method_id=req.payment_method_id,
                ),
                start_to_close_timeout=GATEWAY_TIMEOUT,
                retry_policy=GATEWAY_RETRY,
            )
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
        current = self._current_period()
        next_at = self._next_billing_at()
        return SubscriptionView(
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
            next_billing_date=self._due_date() if next_at else None,
            next_billing_at=next_at,
            cancel_at_period_end=st.cancel_at_period_end,
            canceled_at=st.canceled_at,
            period_index=st.period_index,
            dunning_stage=st.dunning_stage,
            access=st.access,
            open_invoices=st.open_invoices,
            payment_method_id=st.payment_method_id,
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
        step = next_step(
            st.dunning_rule,
            failures=inv.failures_in_schedule,
            schedule_start=inv.schedule_start,
            first_failed_at=inv.first_failed_at,
            decline_category=inv.last_decline_category,
            now=workflow.now(),
        )
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
