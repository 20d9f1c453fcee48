"""A typed façade over the activities the subscription calls: timeouts and retries set once.

Every activity is retried for as long as its error is transient (a database or gateway outage
waits; it never fails the workflow). A *refusal* (a non-retryable error: a write the database
rejects as data, a request the gateway rejects as such) comes back as :class:`Refused`, which the
workflow turns into a written outcome: a decline for dunning, a rejected update, or NeedsAttention.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.payments import PaymentActivities
    from activities.store import StoreActivities
    from models.errors import ErrorCode
    from models.subscription import (
        ApprovalRecord,
        ChargeRequest,
        ChargeResult,
        CreditEntry,
        InvoiceDraft,
        InvoiceSettlement,
        Notification,
        ProvisionCustomer,
        ProvisionedCustomer,
        RefundRequest,
        RefundResult,
        TransitionRecord,
    )

R = TypeVar("R")

STORE_TIMEOUT = timedelta(seconds=30)
STORE_RETRY = RetryPolicy(
    maximum_interval=timedelta(minutes=1), non_retryable_error_types=[ErrorCode.DATA_ERROR]
)
GATEWAY_TIMEOUT = timedelta(seconds=60)
# The charge heartbeats every few seconds while it runs; a worker that dies mid-charge is noticed
# after this, and the retry resumes the same PaymentIntent (no second charge). Its start-to-close
# covers the gateway's worst case (three calls of 20 s with two network retries each).
CHARGE_HEARTBEAT = timedelta(seconds=30)
CHARGE_TIMEOUT = timedelta(minutes=4)
# Declines are results, not errors. What stays non-retryable is a request the gateway refuses as
# such (the same request gets the same answer); outages, rate limits and a rotated key are retried
# with back-off for as long as they last.
GATEWAY_RETRY = RetryPolicy(
    maximum_interval=timedelta(minutes=5),
    non_retryable_error_types=[
        ErrorCode.PAYMENT_DECLINED,
        ErrorCode.PAYMENT_METHOD_INVALID,
        ErrorCode.INVALID_REQUEST,
        ErrorCode.IDEMPOTENCY_MISMATCH,
        ErrorCode.DATA_ERROR,
    ],
)


class Refused(Exception):
    """An activity refused its request for good (a non-retryable error): a business outcome."""

    def __init__(self, code: str, message: str, activity: str) -> None:
        super().__init__(f"{activity}: {code}: {message}")
        self.code = code
        self.message = message
        self.activity = activity


class Calls:
    """The subscription's activities, each with its options."""

    async def _run(
        self,
        fn: Callable[[Any, Any], R],
        arg: Any,
        *,
        timeout: timedelta,
        retry: RetryPolicy,
        heartbeat: timedelta | None = None,
    ) -> R:
        try:
            return await workflow.execute_activity_method(
                fn,
                arg,
                start_to_close_timeout=timeout,
                heartbeat_timeout=heartbeat,
                retry_policy=retry,
            )
        except ActivityError as err:
            cause = err.cause
            name = getattr(fn, "__name__", "activity")
            if isinstance(cause, ApplicationError):
                raise Refused(cause.type or ErrorCode.INVALID_REQUEST, cause.message, name) from err
            raise Refused(ErrorCode.INVALID_REQUEST, str(cause or err), name) from err

    # --- store ---------------------------------------------------------------------------

    async def record_transition(self, rec: TransitionRecord) -> None:
        await self._store(StoreActivities.record_transition, rec)

    async def write_invoice(self, draft: InvoiceDraft) -> None:
        await self._store(StoreActivities.write_invoice, draft)

    async def settle_invoice(self, settlement: InvoiceSettlement) -> None:
        await self._store(StoreActivities.settle_invoice, settlement)

    async def record_credit(self, entry: CreditEntry) -> None:
        await self._store(StoreActivities.record_credit, entry)

    async def record_approval(self, rec: ApprovalRecord) -> None:
        await self._store(StoreActivities.record_approval, rec)

    async def notify(self, notification: Notification) -> None:
        await self._store(StoreActivities.enqueue_notification, notification)

    async def _store(self, fn: Callable[[Any, Any], None], arg: Any) -> None:
        await self._run(fn, arg, timeout=STORE_TIMEOUT, retry=STORE_RETRY)

    # --- gateway -------------------------------------------------------------------------

    async def provision(self, req: ProvisionCustomer) -> ProvisionedCustomer:
        return await self._run(
            PaymentActivities.provision_customer,
            req,
            timeout=GATEWAY_TIMEOUT,
            retry=GATEWAY_RETRY,
        )

    async def charge(self, req: ChargeRequest) -> ChargeResult:
        return await self._run(
            PaymentActivities.charge,
            req,
            timeout=CHARGE_TIMEOUT,
            heartbeat=CHARGE_HEARTBEAT,
            retry=GATEWAY_RETRY,
        )

    async def refresh_charge(self, req: ChargeRequest) -> ChargeResult:
        return await self._run(
            PaymentActivities.refresh_charge, req, timeout=GATEWAY_TIMEOUT, retry=GATEWAY_RETRY
        )

    async def refund(self, req: RefundRequest) -> RefundResult:
        return await self._run(
            PaymentActivities.refund, req, timeout=GATEWAY_TIMEOUT, retry=GATEWAY_RETRY
        )
