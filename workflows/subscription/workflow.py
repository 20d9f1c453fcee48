"""SubscriptionWorkflow: one long-lived workflow per subscription, from first order to its end.

The main loop reads like the business process: ask what is next (``steps.plan``), sleep until then
or until a message changes the state, then carry the step out under the state lock. Message
handlers validate first (a rejection never reaches history), then do their work under the same
lock, so every message has one outcome at every point of the loop:

* while the loop sleeps: the handler runs at once and the loop re-plans when it is done;
* while the loop acts (a notice, an invoice, a charge, dunning): the handler waits for the lock,
  then runs on the state the step left; an immediate cancel also stops any further charge of that
  step and refunds or credits what it charged, by policy;
* continue-as-new waits until every handler has finished, then carries the state (request ids
  included) to the next run.

A refused activity (a non-retryable error) never fails the workflow: a charge refusal is a decline
for dunning, a refused update is an error for its caller, and a refused loop step raises
NeedsAttention (search attribute, audit row, ops notice) and is retried on a back-off or when an
operator sends ``retry_now``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from workflows.subscription.approvals import Approvals
from workflows.subscription.billing import Billing
from workflows.subscription.calls import Refused
from workflows.subscription.cancellation import Cancellation
from workflows.subscription.changes import Changes
from workflows.subscription.context import MAX_TEXT, Status, Sub, clip_actor
from workflows.subscription.dunning import Dunning
from workflows.subscription.lifecycle import Lifecycle
from workflows.subscription.pausing import Pausing
from workflows.subscription.steps import Kind, Step, plan
from workflows.subscription.views import pending_view, state_view, timeline_view

with workflow.unsafe.imports_passed_through():
    from models.errors import ErrorCode
    from models.subscription import (
        Actor,
        ApprovalDecision,
        ApprovalResult,
        AttentionRetry,
        CancelRequest,
        CancelResult,
        ChangeRequest,
        ChangeResult,
        PauseRequest,
        PauseResult,
        PaymentMethodResult,
        PaymentMethodUpdate,
        PendingView,
        ResumeRequest,
        StartRequest,
        StartResult,
        SubscriptionResult,
        SubscriptionState,
        SubscriptionView,
        Timeline,
        UncancelRequest,
        WithdrawRequest,
    )
    from models.vocabulary import AuditAction

T = TypeVar("T")

# Messages a run accepts before it continues as new (signals are not in the server's suggestion).
MAX_MESSAGES_PER_RUN = 500

_START_ERRORS: dict[str, str] = {
    ErrorCode.PAYMENT_DECLINED: "the first payment was declined; use another payment method",
    ErrorCode.PAYMENT_METHOD_INVALID: "the payment method is not usable; tokenize the card again",
}


@workflow.defn
class SubscriptionWorkflow:
    """A subscription from its first order until it ends, possibly years later."""

    @workflow.init
    def __init__(self, state: SubscriptionState) -> None:
        # Handlers can run before ``run`` (update-with-start), so everything is set up here.
        self.sub = Sub(state.model_copy(deep=True))
        self.billing = Billing(self.sub)
        self.dunning = Dunning(self.sub, self.billing)
        self.changes = Changes(self.sub, self.billing)
        self.cancellation = Cancellation(self.sub, self.billing)
        self.approvals = Approvals(self.sub)
        self.pausing = Pausing(self.sub)
        self.life = Lifecycle(self.sub, self.billing, self.dunning, self.changes)

    @property
    def st(self) -> SubscriptionState:
        return self.sub.st

    # --- main loop -----------------------------------------------------------------------

    @workflow.run
    async def run(self, state: SubscriptionState) -> SubscriptionResult:
        sub = self.sub
        while not self.st.status.is_terminal:
            if self._history_full():
                await self._continue_as_new()
                continue
            step = plan(sub)
            if not step.due(workflow.now()):
                await self._sleep(step, sub.version)
                continue
            async with sub.lock:
                step = plan(sub)  # a handler may have changed the state while we waited
                if not step.due(workflow.now()):
                    continue
                period_paid = await self._act(step)
            if period_paid and self._may_continue_as_new():
                await self._continue_as_new()
        await workflow.wait_condition(
            lambda: workflow.all_handlers_finished() and not sub.lock.locked()
        )
        await self.approvals.close_all("the subscription ended")
        return SubscriptionResult(
            subscription_id=self.st.subscription_id,
            status=self.st.status,
            periods_billed=self.st.period_index,
            canceled_at=self.st.canceled_at,
        )

    async def _sleep(self, step: Step, seen: int) -> None:
        """Sleep until the step is due, or until a handler changed the state after ``seen``.

        The loop planned on state version ``seen``; comparing versions (not clearing a flag)
        means a message that landed while the loop was acting is never missed.
        """

        def woken() -> bool:
            # Signals and rejected messages change nothing, yet they grow the history.
            return self.sub.version != seen or self._history_full()

        if step.at is None:
            await workflow.wait_condition(woken)
            return
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(
                woken,
                timeout=step.at - workflow.now(),
                timeout_summary=f"{step.kind.value} at {step.at.isoformat()}",
            )

    async def _act(self, step: Step) -> bool:
        """Carry out one due step; True when it left a billed period paid."""
        try:
            paid = await self._dispatch(step)
        except Refused as err:
            await self._needs_attention(err, step)
            return False
        except ApplicationError as err:
            # A business rule refused the step (the state moved under it): never fail the run.
            await self._needs_attention(
                Refused(err.type or ErrorCode.INVALID_REQUEST, err.message, step.kind.value), step
            )
            return False
        attention = self.st.attention
        if attention is not None and attention.blocking and attention.step == step.kind.value:
            await self.sub.clear_attention()
        return paid

    async def _dispatch(self, step: Step) -> bool:
        match step.kind:
            case Kind.BEGIN:
                await self.life.begin()
            case Kind.NOTICE:
                await self.life.notice()
            case Kind.RENEW:
                return await self.life.renew()
            case Kind.COLLECT | Kind.DUNNING_RETRY | Kind.POLL:
                out = await self.life.collect()
                return out.all_paid and bool(out.paid)
            case Kind.DUNNING_FINAL:
                await self.dunning.final_action()
            case Kind.CANCEL_AT_PERIOD_END:
                await self.cancellation.at_period_end()
            case Kind.RESUME:
                await self.pausing.resume(Actor(reason="resume date"))
            case Kind.APPROVAL:
                await self.approvals.tick()
        return False

    async def _needs_attention(self, err: Refused, step: Step) -> None:
        attention = self.sub.flag(err, step.kind.value)
        details = {
            "code": err.code,
            "step": step.kind.value,
            "activity": err.activity,
            "message": err.message[:MAX_TEXT],
            "retry_at": attention.retry_at.isoformat(),
        }
        await self.sub.transition(AuditAction.NEEDS_ATTENTION, self.st.status, Actor(), details)
        await self.sub.notify("ops_attention", f"attention:{self.st.audit_seq}", details)

    def _may_continue_as_new(self) -> bool:
        st = self.st
        if st.status.is_terminal or st.status == Status.incomplete:
            return False
        # A cancel may be waiting for a processing charge to settle: never leave it behind.
        return not any(inv.processing_key for inv in st.open_invoices)

    def _history_full(self) -> bool:
        """Time to continue as new whatever the status: suggested, long, or many messages."""
        info = workflow.info()
        return self._may_continue_as_new() and (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() > self.st.history_limit
            or self.sub.messages > MAX_MESSAGES_PER_RUN
        )

    async def _continue_as_new(self) -> None:
        """Continue as new once every handler has finished (unless the subscription ended)."""
        await workflow.wait_condition(
            lambda: workflow.all_handlers_finished() and not self.sub.lock.locked()
        )
        if self._may_continue_as_new():
            self.st.runs += 1
            workflow.continue_as_new(self.st)

    # --- creation ------------------------------------------------------------------------

    @workflow.update
    async def start(self, req: StartRequest) -> StartResult:
        """Confirm creation: answers once the subscription is trialing, active or refused."""
        # Answer once the first step is over (not merely once the status moved): the loop
        # continues as new in the same task, so the caller's next message finds the new run.
        await workflow.wait_condition(
            lambda: (
                not req.wait_for_payment
                or (self.st.status != Status.incomplete and not self.sub.lock.locked())
            )
        )
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
            first_invoice_date=self.sub.due_date(st.first_period_index),
            first_charge_minor=self.sub.period_amount(st.first_period_index),
            currency=st.terms.currency,
            trial_end=st.trial_end,
        )

    @start.validator
    def _validate_start(self, req: StartRequest) -> None:
        if not req.request_id or len(req.request_id) > 64:
            raise ApplicationError(
                "request_id is required (at most 64 characters)", type=ErrorCode.INVALID_REQUEST
            )

    # --- cancellation ----------------------------------------------------------------------

    @workflow.update
    async def cancel(self, req: CancelRequest) -> CancelResult:
        """Cancel now or at period end, as the request and the cancellation policy say."""
        req = req.model_copy(update={"by": clip_actor(req.by)})
        immediate = False
        try:
            decision = self.cancellation.decide(req)
            immediate = self.cancellation.is_immediate(decision) and not decision.needs_approval
            if immediate:
                self.sub.cancels_waiting += 1  # no charge starts from now on
            async with self.sub.exclusive():
                if self.st.status.is_terminal:
                    return self.cancellation.result().model_copy(
                        update={"request_id": req.request_id}
                    )
                # The state may have moved meanwhile; accepted as immediate, it stays immediate.
                decision = self.cancellation.decide(req, now=immediate)
                if decision.needs_approval:
                    return await self._open_cancel_approval(req, decision)
                if not self.cancellation.is_immediate(decision):
                    return await self.cancellation.schedule(req, decision)
                return await self.cancellation.now(req, decision)
        except Refused as err:
            raise _refused(err) from None
        finally:
            if immediate:
                self.sub.cancels_waiting -= 1

    async def _open_cancel_approval(self, req: CancelRequest, decision: Any) -> CancelResult:
        approval = await self.approvals.open(
            "cancel",
            req.request_id or workflow.uuid4().hex,
            f"cancel {decision.timing.value.replace('_', ' ')}",
            decision.approval_reasons,
            decision.approver_groups,
            decision.sla,
            req.by,
            cancel=req,
        )
        return self.cancellation.result().model_copy(
            update={
                "outcome": "pending_approval",
                "request_id": approval.request_id,
                "approval_deadline": approval.deadline,
            }
        )

    @cancel.validator
    def _validate_cancel(self, req: CancelRequest) -> None:
        self._require_live()
        _check_text(req.reason, "reason")
        if req.request_id is not None:
            self.approvals.require_unused(req.request_id)
        self.cancellation.decide(req)

    @workflow.update
    async def uncancel(self, req: UncancelRequest) -> CancelResult:
        """Withdraw a period-end cancellation before it takes effect."""
        async with self.sub.exclusive():
            if not self.st.cancel_at_period_end or self.st.status.is_terminal:
                return self.cancellation.result()
            return await _guard(self.cancellation.uncancel(clip_actor(req.by)))

    @uncancel.validator
    def _validate_uncancel(self, req: UncancelRequest) -> None:
        self._require_live()
        if not self.st.cancel_at_period_end:
            raise ApplicationError(
                "the subscription has no cancellation scheduled", type=ErrorCode.NOT_CANCELING
            )

    # --- payment method --------------------------------------------------------------------

    @workflow.update
    async def update_payment_method(self, req: PaymentMethodUpdate) -> PaymentMethodResult:
        """Attach a new card; when something is unpaid, retry it now and report the outcome."""
        async with self.sub.exclusive():
            st = self.st
            self._require_live()
            try:
                await self.life.provision(req.payment_method_id)
            except Refused as err:
                raise ApplicationError(
                    "the payment method could not be attached; tokenize the card again",
                    type=err.code
                    if err.code == ErrorCode.PAYMENT_METHOD_INVALID
                    else ErrorCode.PAYMENT_METHOD_INVALID,
                    non_retryable=True,
                ) from None
            previous = st.payment_method_id
            st.payment_method_id = req.payment_method_id
            await self.sub.transition(
                AuditAction.PAYMENT_METHOD_UPDATED,
                st.status,
                clip_actor(req.by),
                details={"from": previous, "to": req.payment_method_id},
            )
            retried = (
                bool(st.open_invoices)
                and st.status in (Status.past_due, Status.unpaid)
                and not any(inv.processing_key for inv in st.open_invoices)
            )
            if retried:
                try:
                    await self.life.collect(reset_schedule=True)
                except Refused as err:
                    await self._needs_attention(err, Step(Kind.COLLECT, workflow.now()))
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
        if not req.payment_method_id.startswith("pm_") or len(req.payment_method_id) > 64:
            raise ApplicationError(
                "send the gateway's payment method token (pm_...), never a card number",
                type=ErrorCode.PAYMENT_METHOD_INVALID,
            )

    # --- changes ---------------------------------------------------------------------------

    @workflow.update
    async def request_change(self, req: ChangeRequest) -> ChangeResult:
        """Change plan, quantity or interval: applied, scheduled or sent for approval."""
        req = req.model_copy(update={"by": clip_actor(req.by)})
        async with self.sub.exclusive():
            self._require_live()
            self.approvals.require_unused(req.request_id)
            new, decision = self.changes.decide(req)
            if decision.needs_approval:
                for other in [a for a in self.st.approvals if a.kind == "change"]:
                    await _guard(
                        self.approvals.close(other, "superseded", req.by, "a newer change request")
                    )
                approval = await _guard(
                    self.approvals.open(
                        "change",
                        req.request_id,
                        self.changes.describe(new),
                        decision.approval_reasons,
                        decision.approver_groups,
                        decision.sla,
                        req.by,
                        change=req,
                    )
                )
                return ChangeResult(
                    outcome="pending_approval",
                    request_id=req.request_id,
                    subscription_id=self.st.subscription_id,
                    approval_deadline=approval.deadline,
                    approver_groups=approval.groups,
                    message="; ".join(decision.approval_reasons)[:MAX_TEXT],
                )
            return await _guard(
                self.changes.carry_out(req, new, decision.timing, decision.credit_handling)
            )

    @request_change.validator
    def _validate_request_change(self, req: ChangeRequest) -> None:
        self._require_live()
        self.approvals.require_unused(req.request_id)
        self.changes.decide(req)

    @workflow.update
    async def withdraw(self, req: WithdrawRequest) -> PendingView:
        """Withdraw a scheduled change or a request waiting for approval."""
        async with self.sub.exclusive():
            by = clip_actor(req.by)
            if await _guard(self.changes.withdraw(req.request_id, by)):
                return pending_view(self.sub)
            approval = self.approvals.find(req.request_id)
            if approval is None:
                self.approvals.unknown(req.request_id)
                raise AssertionError("unreachable")
            await _guard(
                self.approvals.close(approval, "withdrawn", by, "withdrawn by the requester")
            )
            return pending_view(self.sub)

    @withdraw.validator
    def _validate_withdraw(self, req: WithdrawRequest) -> None:
        ids = {c.request_id for c in self.st.scheduled_changes}
        ids |= {a.request_id for a in self.st.approvals}
        if req.request_id not in ids:
            self.approvals.unknown(req.request_id)

    # --- approvals -------------------------------------------------------------------------

    @workflow.update
    async def decide(self, decision: ApprovalDecision) -> ApprovalResult:
        """An approver approves or rejects a pending request; an approved one is carried out."""
        async with self.sub.exclusive():
            # Decisions recorded before approver groups came with them replay with the policy's
            # directory, as they were decided.
            groups = workflow.patched("approver-groups")
            approval = self.approvals.check_approver(decision, use_groups=groups)
            by = Actor(
                actor=decision.approver[:64],
                channel=decision.channel[:32],
                reason=decision.reason[:MAX_TEXT],
            )
            result = ApprovalResult(
                request_id=approval.request_id,
                subscription_id=self.st.subscription_id,
                status="approved" if decision.approve else "rejected",
            )
            if not decision.approve:
                await _guard(self.approvals.close(approval, "rejected", by, decision.reason))
                return result
            try:
                outcome = await self._carry_out_approved(approval)
            except ApplicationError as err:
                # Approved, but it can no longer happen (the state moved, or its payment was
                # declined): the audit says so instead of claiming it was applied.
                await _guard(
                    self.approvals.close(approval, "failed", by, f"{err.type}: {err.message}")
                )
                return result.model_copy(
                    update={"status": "failed", "message": f"{err.type}: {err.message}"[:MAX_TEXT]}
                )
            await _guard(self.approvals.close(approval, "approved", by, decision.reason))
            return result.model_copy(update=outcome)

    async def _carry_out_approved(self, approval: Any) -> dict[str, Any]:
        requester = approval.requested_by
        if approval.change is not None:
            new, d = self.changes.decide(approval.change)
            change = await _guard(
                self.changes.carry_out(approval.change, new, d.timing, d.credit_handling)
            )
            return {"change": change}
        if approval.cancel is not None:
            req = approval.cancel.model_copy(update={"by": requester})
            d = self.cancellation.decide(req)
            if self.cancellation.is_immediate(d):
                cancel = await _guard(self.cancellation.now(req, d))
            else:
                cancel = await _guard(self.cancellation.schedule(req, d))
            return {"cancel": cancel}
        if approval.pause is not None:
            pause = await _guard(self.pausing.pause(approval.pause))
            return {"pause": pause}
        return {}

    @decide.validator
    def _validate_decide(self, decision: ApprovalDecision) -> None:
        self._require_live()
        _check_text(decision.reason, "reason")
        self.approvals.check_approver(decision)

    # --- pause and resume -------------------------------------------------------------------

    @workflow.update
    async def pause(self, req: PauseRequest) -> PauseResult:
        """Pause service and charges (optionally until a resume date), as policy allows."""
        req = req.model_copy(update={"by": clip_actor(req.by)})
        async with self.sub.exclusive():
            self._require_live()
            self.approvals.require_unused(req.request_id)
            decision = self.pausing.decide(req)
            if decision.needs_approval:
                approval = await _guard(
                    self.approvals.open(
                        "pause",
                        req.request_id,
                        f"pause until {req.resume_on or 'further notice'}",
                        decision.approval_reasons,
                        decision.approver_groups,
                        decision.sla,
                        req.by,
                        pause=req,
                    )
                )
                return PauseResult(
                    outcome="pending_approval",
                    request_id=req.request_id,
                    subscription_id=self.st.subscription_id,
                    status=self.st.status,
                    approval_deadline=approval.deadline,
                )
            return await _guard(self.pausing.pause(req))

    @pause.validator
    def _validate_pause(self, req: PauseRequest) -> None:
        self._require_live()
        self.approvals.require_unused(req.request_id)
        self.pausing.decide(req)

    @workflow.update
    async def resume(self, req: ResumeRequest) -> PauseResult:
        """Resume a paused subscription today."""
        async with self.sub.exclusive():
            if self.st.status == Status.paused:
                await _guard(self.pausing.resume(clip_actor(req.by)))
            elif self.st.status.is_terminal:
                self._require_live()
            return PauseResult(
                outcome="applied",
                request_id=req.request_id,
                subscription_id=self.st.subscription_id,
                status=self.st.status,
                next_billing_date=self.sub.due_date(),
            )

    @resume.validator
    def _validate_resume(self, req: ResumeRequest) -> None:
        self._require_live()
        if self.st.status != Status.paused:
            raise ApplicationError("the subscription is not paused", type=ErrorCode.NOT_PAUSED)

    # --- operations --------------------------------------------------------------------------

    @workflow.signal
    def retry_now(self, req: AttentionRetry) -> None:
        """An operator fixed what needed attention: retry a refused step now, or clear the flag.

        A blocking attention (a refused loop step) is retried at once and clears when the step
        succeeds; a non-blocking one (a record that could not be written, repaired by hand) is
        cleared.
        """
        attention = self.st.attention
        if attention is None:
            return
        if attention.blocking:
            attention.retry_at = workflow.now()
        else:
            self.st.attention = None
            self.sub.mirror()
        self.sub.version += 1

    # --- queries -------------------------------------------------------------------------------

    @workflow.query
    def state(self) -> SubscriptionView:
        """The live state of the subscription."""
        return state_view(self.sub)

    @workflow.query
    def timeline(self) -> Timeline:
        """The next scheduled events with their instants."""
        return timeline_view(self.sub)

    @workflow.query
    def pending(self) -> PendingView:
        """Scheduled changes and requests waiting for approval."""
        return pending_view(self.sub)

    def _require_live(self) -> None:
        if self.st.status.is_terminal:
            raise ApplicationError(
                f"subscription {self.st.subscription_id} is {self.st.status.value}",
                type=ErrorCode.SUBSCRIPTION_CANCELED,
            )


async def _guard(awaitable: Awaitable[T]) -> T:
    """Await a handler's work; a refused activity becomes an error for the caller."""
    try:
        return await awaitable
    except Refused as err:
        raise _refused(err) from None


def _refused(err: Refused) -> ApplicationError:
    return ApplicationError(
        f"the request could not be completed: {err.message}"[:MAX_TEXT],
        type=err.code,
        non_retryable=True,
    )


def _check_text(value: str | None, name: str) -> None:
    if value is not None and len(value) > MAX_TEXT:
        raise ApplicationError(
            f"{name} must be at most {MAX_TEXT} characters", type=ErrorCode.INVALID_REQUEST
        )
