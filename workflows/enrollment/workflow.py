"""``EnrollmentWorkflow``: one sign-up, from the first code to the first invoice.

See docs/enrollment.md.

One workflow per enrollment (``enrollment:{id}``), at most a day long. Updates drive it
(``verify``, ``resend``, ``choose``, ``pay``), each with a validator that refuses what the state
already rules out, so spam never reaches history; timers remind an idle enrollee after an hour and
expire the enrollment after a day. Handlers and timer steps take one lock, so an expiry never
interleaves with a payment and a second ``pay`` waits for the first.

No personal data and no code enters history: activities read the e-mail from the enrollment row,
the code is issued by an activity that returns only its keyed hash, and a guess arrives as the
same keyed hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from models import search_attributes as sa
    from models.enrollment import (
        CODE_TTL,
        EXPIRES_AFTER,
        MAX_CODE_ATTEMPTS,
        MAX_PAY_ATTEMPTS,
        REMINDER_AFTER,
        RESEND_COOLDOWN,
        ChooseRequest,
        CodeFailure,
        EnrollmentInput,
        EnrollmentNotice,
        EnrollmentResult,
        EnrollmentStatus,
        EnrollmentStep,
        EnrollmentView,
        Expire,
        Origin,
        PayRequest,
        Provision,
        RecordStep,
        ResendRequest,
        SendCode,
        SetupPayment,
        StartSubscription,
        Verified,
        VerifyRequest,
    )
    from models.errors import ErrorCode
    from workflows.enrollment import calls
    from workflows.enrollment.calls import Refused

Status = EnrollmentStatus
SYSTEM = Origin()
# An intake refusal of the first charge is the card's fault: the enrollee can try another one.
_CARD_CODES = frozenset({ErrorCode.PAYMENT_DECLINED, ErrorCode.GATEWAY_REFUSED})


def _error(code: str, message: str, retry_at: datetime | None = None) -> ApplicationError:
    details = {"retry_at": retry_at.isoformat()} if retry_at is not None else {}
    return ApplicationError(message, details, type=code, non_retryable=True)


def _at(value: datetime) -> str:
    return value.strftime("%H:%M:%S UTC")


@workflow.defn
class EnrollmentWorkflow:
    @workflow.init
    def __init__(self, inp: EnrollmentInput) -> None:
        self.inp = inp
        self.view = EnrollmentView(
            enrollment_id=inp.enrollment_id,
            tenant_id=inp.tenant_id,
            status=Status.AWAITING_VERIFICATION,
            choice=inp.choice,
            started_at=inp.started_at,
            expires_at=inp.started_at + EXPIRES_AFTER,
        )
        self.lock = asyncio.Lock()
        self.version = 0  # bumped by every accepted message: wakes the loop
        self.digest: str | None = None  # the keyed hash of the only valid code
        self.codes_sent = 0
        self.events = 0
        self.order_attempt = 1  # numbers the intake order: a new card after a declined charge
        self.setups = 0  # numbers the SetupIntents (their idempotency keys)
        self.last_activity = inp.started_at
        self.gateway_customer_id: str | None = None

    # --- main loop -----------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: EnrollmentInput) -> EnrollmentResult:
        async with self.lock:
            await self._record(
                "started",
                inp.origin,
                status=Status.AWAITING_VERIFICATION,
                details={
                    "plan_id": inp.choice.plan_id,
                    "interval": inp.choice.interval.value,
                    "currency": inp.choice.currency,
                    "terms_version": inp.consents.terms_version,
                    "privacy_version": inp.consents.privacy_version,
                    "marketing": str(inp.consents.marketing).lower(),
                },
            )
            # A refusal is recorded; the enrollee may ask again once the address is unlocked.
            with contextlib.suppress(Refused):
                await self._send_code(inp.origin)
        while not self.view.status.is_final:
            now = workflow.now()
            due = self._next_timer()
            if now < due:
                await self._sleep(due - now)
                continue
            async with self.lock:
                await self._timer_step()
        if self.view.status == Status.ENROLLED:
            await self._after_signup()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return EnrollmentResult(
            enrollment_id=self.inp.enrollment_id,
            status=self.view.status,
            subscription_id=self.view.subscription_id,
        )

    async def _sleep(self, timeout: timedelta) -> None:
        """Until ``timeout`` passes or a message is accepted (a version, so none is missed)."""
        seen = self.version
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(lambda: self.version != seen, timeout=timeout)

    def _next_timer(self) -> datetime:
        due = self.view.expires_at
        if self.view.reminded_at is None:
            due = min(due, self.last_activity + REMINDER_AFTER)
        return due

    async def _timer_step(self) -> None:
        """Expire or remind, whichever is due (re-checked under the lock: a handler may have
        finished the enrollment while the loop waited for it)."""
        if self.view.status.is_final:
            return
        now = workflow.now()
        if now >= self.view.expires_at:
            await calls.expire(Expire(enrollment_id=self.inp.enrollment_id, now=now))
            await self._record("expired", SYSTEM, status=Status.EXPIRED)
            return
        if self.view.reminded_at is None and now >= self.last_activity + REMINDER_AFTER:
            await calls.notify(
                EnrollmentNotice(
                    enrollment_id=self.inp.enrollment_id,
                    key=f"enrollment:{self.inp.enrollment_id}:reminder",
                    kind="enrollment_reminder",
                    now=now,
                    data={
                        "plan_id": self.view.choice.plan_id,
                        "expires_at": self.view.expires_at.isoformat(),
                    },
                )
            )
            self.view.reminded_at = now
            await self._record("reminder_sent", SYSTEM)

    async def _after_signup(self) -> None:
        """The post-signup tasks, each retried by its activity and shown in the timeline: the
        welcome e-mail, which carries the owner's first sign-in link (dashboard access)."""
        v = self.view
        tasks = ("welcome_email", "dashboard_access")
        for task in tasks:
            v.tasks[task] = "pending"
        data = {"plan_id": v.choice.plan_id}
        if v.trial_end is not None:
            data["trial_end"] = v.trial_end.isoformat()
        if v.first_invoice_date is not None:
            data["first_charge_date"] = v.first_invoice_date.isoformat()
        outcome = "done"
        try:
            await calls.notify(
                EnrollmentNotice(
                    enrollment_id=self.inp.enrollment_id,
                    key=f"enrollment:{self.inp.enrollment_id}:welcome",
                    kind="welcome",
                    now=workflow.now(),
                    data=data,
                )
            )
        except Refused as r:
            outcome = "failed"
            await self._record("task_failed", SYSTEM, outcome="failed", code=r.code)
        for task in tasks:
            v.tasks[task] = outcome
        if outcome == "done":
            await self._record("welcome_sent", SYSTEM, details={"tasks": ",".join(tasks)})

    # --- shared steps --------------------------------------------------------------------

    def _touch(self) -> None:
        self.version += 1
        self.last_activity = workflow.now()

    def _set_status(self, status: EnrollmentStatus) -> None:
        self.view.status = status
        self.version += 1
        if self.inp.search_attributes:
            workflow.upsert_search_attributes([sa.ENROLLMENT_STATUS.value_set(status.value)])

    async def _record(
        self,
        action: str,
        origin: Origin,
        *,
        status: EnrollmentStatus | None = None,
        outcome: str = "ok",
        code: str | None = None,
        details: dict[str, str] | None = None,
    ) -> None:
        """An audit event (and the timeline line); with ``status``, the status moves first."""
        if status is not None and status != self.view.status:
            self._set_status(status)
        now = workflow.now()
        self.events += 1
        extra = dict(details or {})
        if code is not None:
            extra["code"] = code
        self.view.timeline.append(
            EnrollmentStep(
                at=now,
                action=action,
                actor=origin.actor,
                outcome=outcome,
                code=code,
                detail=", ".join(f"{k}={v}" for k, v in sorted((details or {}).items())) or None,
            )
        )
        await calls.record(
            RecordStep(
                enrollment_id=self.inp.enrollment_id,
                event_key=f"enrollment:{self.inp.enrollment_id}:{self.events}",
                action=action,
                at=now,
                origin=origin,
                status=status,
                details=extra,
            )
        )

    async def _send_code(self, origin: Origin) -> None:
        """Issue the next code (the only valid one from now on); ``Refused`` when the address
        is locked or has had its sends for the hour (recorded, with when to try again)."""
        number = self.codes_sent + 1
        v = self.view
        try:
            sent = await calls.send_code(
                SendCode(enrollment_id=self.inp.enrollment_id, number=number, now=workflow.now())
            )
        except Refused as r:
            if r.code == ErrorCode.TOO_MANY_ATTEMPTS:
                v.locked_until = r.retry_at
            elif r.retry_at is not None:
                v.resend_available_at = r.retry_at
            await self._record("code_refused", origin, outcome="refused", code=r.code)
            raise
        self.codes_sent = number
        self.digest = sent.digest
        v.code_sent_at = sent.sent_at
        v.code_expires_at = sent.sent_at + CODE_TTL
        v.code_attempts_left = MAX_CODE_ATTEMPTS
        v.resend_available_at = sent.sent_at + RESEND_COOLDOWN
        await self._record("code_sent", origin, details={"number": str(number)})

    # --- verify --------------------------------------------------------------------------

    def _refuse_if_final(self) -> None:
        if self.view.status == Status.EXPIRED:
            raise _error(
                ErrorCode.ENROLLMENT_EXPIRED,
                "this enrollment expired after 24 hours; start a new one",
            )
        if self.view.status.is_final:
            raise _error(
                ErrorCode.ENROLLMENT_CLOSED,
                f"this enrollment is finished ({self.view.status.value})",
            )

    def _code_problem(self) -> ApplicationError | None:
        """Why no guess can be checked now, or None."""
        v, now = self.view, workflow.now()
        if v.locked_until is not None and now < v.locked_until:
            return _error(
                ErrorCode.TOO_MANY_ATTEMPTS,
                f"too many wrong codes: this address is locked until {_at(v.locked_until)}; "
                "then ask for a new code",
                v.locked_until,
            )
        if self.digest is None or v.code_attempts_left <= 0:
            return _error(
                ErrorCode.CODE_EXPIRED, "there is no valid code any more; ask for a new one"
            )
        if v.code_expires_at is not None and now >= v.code_expires_at:
            return _error(
                ErrorCode.CODE_EXPIRED,
                f"the code expired {int(CODE_TTL.total_seconds() // 60)} minutes after it was "
                "sent; ask for a new one",
            )
        return None

    @workflow.update
    async def verify(self, req: VerifyRequest) -> EnrollmentView:
        """Check a code (as its keyed hash). Answers the view; refused with ``CODE_INVALID``,
        ``CODE_EXPIRED``, ``TOO_MANY_ATTEMPTS`` or ``ALREADY_ENROLLED``."""
        async with self.lock:
            if self.view.status == Status.AWAITING_PAYMENT:
                return self.view  # verified already (a repeated request)
            self._refuse_if_final()
            problem = self._code_problem()
            if problem is not None:
                raise problem
            self._touch()
            v = self.view
            assert self.digest is not None
            if not hmac.compare_digest(self.digest, req.digest):
                v.code_attempts_left -= 1
                killed = v.code_attempts_left <= 0
                lock = await calls.code_failed(
                    CodeFailure(
                        enrollment_id=self.inp.enrollment_id, now=workflow.now(), killed=killed
                    )
                )
                await self._record(
                    "code_rejected",
                    req.origin,
                    outcome="refused",
                    code=ErrorCode.CODE_INVALID,
                    details={"attempts_left": str(v.code_attempts_left)},
                )
                if killed:
                    self.digest = None
                    v.locked_until = lock.locked_until
                    raise _error(
                        ErrorCode.TOO_MANY_ATTEMPTS,
                        f"{MAX_CODE_ATTEMPTS} wrong codes: this code no longer works"
                        + (
                            f" and the address is locked until {_at(lock.locked_until)}"
                            if lock.locked_until
                            else ""
                        )
                        + "; then ask for a new code",
                        lock.locked_until,
                    )
                raise _error(
                    ErrorCode.CODE_INVALID,
                    f"that is not the code we sent; {v.code_attempts_left} "
                    f"{'try' if v.code_attempts_left == 1 else 'tries'} left",
                )
            self.digest = None  # single use
            v.code_attempts_left = 0
            facts = await calls.verified(
                Verified(enrollment_id=self.inp.enrollment_id, now=workflow.now())
            )
            v.verified_at = workflow.now()
            if facts.already_enrolled:
                await self._record(
                    "verified", req.origin, status=Status.ALREADY_ENROLLED, code="ALREADY_ENROLLED"
                )
                raise _error(
                    ErrorCode.ALREADY_ENROLLED,
                    "this address already has an account: sign in instead, or reset the "
                    "password from the sign-in page",
                )
            await self._record("verified", req.origin, status=Status.AWAITING_PAYMENT)
            return self.view

    @verify.validator
    def _validate_verify(self, req: VerifyRequest) -> None:
        if self.view.status == Status.AWAITING_PAYMENT:
            return
        self._refuse_if_final()
        if self.lock.locked():
            return  # the first code may be on its way: the handler decides once it is
        problem = self._code_problem()
        if problem is not None:
            raise problem

    # --- resend --------------------------------------------------------------------------

    @workflow.update
    async def resend(self, req: ResendRequest) -> EnrollmentView:
        """Send a new code; the previous one stops working. Refused with ``RESEND_TOO_SOON``
        (30 s between sends, 5 per address per hour) or ``TOO_MANY_ATTEMPTS`` (locked)."""
        async with self.lock:
            self._validate_resend(req)
            self._touch()
            try:
                await self._send_code(req.origin)
            except Refused as r:
                if r.code == ErrorCode.TOO_MANY_ATTEMPTS:
                    raise _error(
                        r.code,
                        "too many wrong codes for this address; try again at "
                        + (_at(r.retry_at) if r.retry_at else "a later time"),
                        r.retry_at,
                    ) from None
                raise _error(
                    r.code,
                    "this address has had its codes for the hour; try again at "
                    + (_at(r.retry_at) if r.retry_at else "a later time"),
                    r.retry_at,
                ) from None
            return self.view

    @resend.validator
    def _validate_resend(self, req: ResendRequest) -> None:
        self._refuse_if_final()
        v, now = self.view, workflow.now()
        if v.status != Status.AWAITING_VERIFICATION:
            raise _error(ErrorCode.ENROLLMENT_CLOSED, "the address is verified already")
        if v.locked_until is not None and now < v.locked_until:
            raise _error(
                ErrorCode.TOO_MANY_ATTEMPTS,
                f"too many wrong codes: this address is locked until {_at(v.locked_until)}",
                v.locked_until,
            )
        if v.resend_available_at is not None and now < v.resend_available_at:
            wait = int((v.resend_available_at - now).total_seconds()) + 1
            raise _error(
                ErrorCode.RESEND_TOO_SOON,
                f"a code was sent moments ago; ask again in {wait} s",
                v.resend_available_at,
            )

    # --- choose --------------------------------------------------------------------------

    @workflow.update
    async def choose(self, req: ChooseRequest) -> EnrollmentView:
        """Change the plan, interval or currency (checked against the catalog by the caller)."""
        async with self.lock:
            self._validate_choose(req)
            self._touch()
            self.view.choice = req.choice
            await self._record(
                "plan_chosen",
                req.origin,
                details={
                    "plan_id": req.choice.plan_id,
                    "interval": req.choice.interval.value,
                    "currency": req.choice.currency,
                },
            )
            return self.view

    @choose.validator
    def _validate_choose(self, req: ChooseRequest) -> None:
        self._refuse_if_final()

    # --- pay -----------------------------------------------------------------------------

    @workflow.update
    async def pay(self, req: PayRequest) -> EnrollmentView:
        """Validate the card without charging it, create the account and start the
        subscription through order intake. Answers with the subscription (``enrolled``);
        refused with ``NOT_VERIFIED``, ``PAYMENT_METHOD_DECLINED``, ``ALREADY_ENROLLED``, an
        intake rule's code, or ``*_UNAVAILABLE`` (nothing lost: ask again)."""
        async with self.lock:
            if self.view.status == Status.ENROLLED:
                return self.view  # a repeated request after the answer was lost
            self._validate_pay(req)
            self._touch()
            v = self.view
            self.setups += 1
            origin = req.origin
            try:
                setup = await calls.setup_payment(
                    SetupPayment(
                        enrollment_id=self.inp.enrollment_id,
                        payment_method_id=req.payment_method_id.strip(),
                        attempt=self.setups,
                    )
                )
            except Refused as r:
                unavailable = r.code.endswith("_UNAVAILABLE")
                if not unavailable:
                    v.pay_attempts += 1  # only a card's refusal counts against the enrollee
                await self._record(
                    "payment_refused",
                    origin,
                    outcome="failed" if unavailable else "refused",
                    code=r.code,
                )
                raise _error(r.code, r.message) from None
            await self._record(
                "payment_method_saved",
                origin,
                details={"brand": setup.brand or "", "last4": setup.last4 or ""},
            )
            try:
                account = await calls.provision(
                    Provision(
                        enrollment_id=self.inp.enrollment_id,
                        now=workflow.now(),
                        gateway_customer_id=setup.gateway_customer_id,
                    )
                )
            except Refused as r:
                if r.code == ErrorCode.ALREADY_ENROLLED:
                    await self._record(
                        "provision_refused", origin, status=Status.ALREADY_ENROLLED, code=r.code
                    )
                    raise _error(
                        r.code, "this address already has an account: sign in instead"
                    ) from None
                await self._record("provision_failed", origin, outcome="failed", code=r.code)
                raise _error(r.code, r.message) from None
            v.customer_id = account.customer_id
            v.account_tenant_id = account.account_tenant_id
            await self._record(
                "account_created",
                origin,
                details={
                    "customer_id": account.customer_id,
                    "account_tenant_id": account.account_tenant_id,
                    "principal_id": account.principal_id,
                },
            )
            try:
                started = await calls.start_subscription(
                    StartSubscription(
                        enrollment_id=self.inp.enrollment_id, attempt=self.order_attempt
                    )
                )
            except Refused as r:
                unavailable = r.code.endswith("_UNAVAILABLE")
                if not unavailable:
                    self.order_attempt += 1  # a refused order is final: the next one is new
                if r.code in _CARD_CODES:
                    v.pay_attempts += 1
                await self._record(
                    "subscription_refused",
                    origin,
                    outcome="failed" if unavailable else "refused",
                    code=r.code,
                )
                if r.code in _CARD_CODES:
                    raise _error(
                        ErrorCode.PAYMENT_METHOD_DECLINED,
                        f"the first charge was declined ({r.message}); try another card",
                    ) from None
                raise _error(r.code, r.message) from None
            v.subscription_id = started.subscription_id
            v.subscription_status = started.status
            v.first_invoice_date = started.first_invoice_date
            v.trial_end = started.trial_end
            v.enrolled_at = workflow.now()
            await self._record(
                "enrolled",
                origin,
                status=Status.ENROLLED,
                details={
                    "subscription_id": started.subscription_id,
                    "subscription_status": started.status,
                },
            )
            return self.view

    @pay.validator
    def _validate_pay(self, req: PayRequest) -> None:
        if self.view.status == Status.ENROLLED:
            return
        self._refuse_if_final()
        if self.view.status == Status.AWAITING_VERIFICATION:
            raise _error(
                ErrorCode.NOT_VERIFIED, "verify the e-mail address with its code before paying"
            )
        if self.view.pay_attempts >= MAX_PAY_ATTEMPTS:
            raise _error(
                ErrorCode.TOO_MANY_ATTEMPTS,
                f"{MAX_PAY_ATTEMPTS} cards were declined; start a new enrollment or contact us",
            )
        pm = req.payment_method_id.strip()
        if not pm.startswith("pm_") or len(pm) < 4:
            raise _error(
                ErrorCode.PAYMENT_METHOD_INVALID,
                f"{pm[:12]!r} is not a payment method token (pm_...)",
            )

    # --- queries -------------------------------------------------------------------------

    @workflow.query
    def status(self) -> EnrollmentView:
        return self.view


__all__ = ["EnrollmentWorkflow"]
