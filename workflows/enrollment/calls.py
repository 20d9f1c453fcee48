"""The enrollment's activities, each with its timeouts and retries, called by name.

Store activities retry transient errors for as long as they last (a database outage waits). The
gateway and order steps of ``pay`` have a deadline instead: the person is waiting, so after it
the update answers ``*_UNAVAILABLE`` and the same step can be asked again (its idempotency keys
make the retry safe). A refusal (non-retryable) comes back as :class:`Refused`, with the
activity's details (``retry_at``), and always has a written outcome in the workflow.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from models.enrollment import (
        AddressLock,
        CodeFailure,
        CodeSent,
        EnrollmentNotice,
        Expire,
        PaymentSetUp,
        Provision,
        Provisioned,
        RecordStep,
        SendCode,
        SetupPayment,
        StartSubscription,
        SubscriptionStarted,
        Verified,
        VerifiedFacts,
    )
    from models.errors import ErrorCode

R = TypeVar("R")

STORE_TIMEOUT = timedelta(seconds=30)
STORE_RETRY = RetryPolicy(
    maximum_interval=timedelta(minutes=1), non_retryable_error_types=[ErrorCode.DATA_ERROR]
)
# The person waits on these: a deadline, then an answer they can act on (try again).
PAY_STEP_DEADLINE = timedelta(minutes=2)
PAY_STEP_TIMEOUT = timedelta(seconds=60)
PAY_RETRY = RetryPolicy(
    maximum_interval=timedelta(seconds=10),
    non_retryable_error_types=[
        ErrorCode.PAYMENT_METHOD_DECLINED,
        ErrorCode.PAYMENT_METHOD_INVALID,
        ErrorCode.ALREADY_ENROLLED,
        ErrorCode.INVALID_REQUEST,
        ErrorCode.DATA_ERROR,
    ],
)


class Refused(Exception):
    """An activity refused its request for good, or (``code`` *_UNAVAILABLE) ran out of time."""

    def __init__(self, code: str, message: str, retry_at: datetime | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_at = retry_at


def _retry_at(details: Any) -> datetime | None:
    for item in details or ():
        if isinstance(item, dict) and item.get("retry_at"):
            try:
                return datetime.fromisoformat(str(item["retry_at"]))
            except ValueError:
                return None
    return None


async def _run(
    name: str,
    arg: Any,
    result_type: type[R] | None,
    *,
    timeout: timedelta = STORE_TIMEOUT,
    retry: RetryPolicy = STORE_RETRY,
    deadline: timedelta | None = None,
    unavailable: ErrorCode = ErrorCode.DATABASE_UNAVAILABLE,
) -> R:
    try:
        result: R = await workflow.execute_activity(
            name,
            arg,
            result_type=result_type,
            start_to_close_timeout=timeout,
            schedule_to_close_timeout=deadline,
            retry_policy=retry,
        )
        return result
    except ActivityError as err:
        cause = err.cause
        if isinstance(cause, ApplicationError) and cause.non_retryable:
            raise Refused(
                cause.type or ErrorCode.INVALID_REQUEST, cause.message, _retry_at(cause.details)
            ) from err
        if isinstance(cause, TimeoutError) or deadline is not None:
            raise Refused(
                unavailable, "a service this step needs did not answer in time; try again"
            ) from err
        raise Refused(ErrorCode.INVALID_REQUEST, str(cause or err)) from err


async def send_code(req: SendCode) -> CodeSent:
    return await _run("enrollment.send_code", req, CodeSent)


async def code_failed(req: CodeFailure) -> AddressLock:
    return await _run("enrollment.code_failed", req, AddressLock)


async def verified(req: Verified) -> VerifiedFacts:
    return await _run("enrollment.verified", req, VerifiedFacts)


async def setup_payment(req: SetupPayment) -> PaymentSetUp:
    return await _run(
        "enrollment.setup_payment",
        req,
        PaymentSetUp,
        timeout=PAY_STEP_TIMEOUT,
        retry=PAY_RETRY,
        deadline=PAY_STEP_DEADLINE,
        unavailable=ErrorCode.GATEWAY_UNAVAILABLE,
    )


async def provision(req: Provision) -> Provisioned:
    return await _run(
        "enrollment.provision",
        req,
        Provisioned,
        retry=PAY_RETRY,
        deadline=PAY_STEP_DEADLINE,
    )


async def start_subscription(req: StartSubscription) -> SubscriptionStarted:
    return await _run(
        "enrollment.start_subscription",
        req,
        SubscriptionStarted,
        timeout=PAY_STEP_TIMEOUT,
        retry=PAY_RETRY,
        deadline=PAY_STEP_DEADLINE,
        unavailable=ErrorCode.TEMPORAL_UNAVAILABLE,
    )


async def record(req: RecordStep) -> None:
    await _run("enrollment.record", req, None)


async def notify(req: EnrollmentNotice) -> None:
    await _run("enrollment.notify", req, None)


async def expire(req: Expire) -> None:
    await _run("enrollment.expire", req, None)
