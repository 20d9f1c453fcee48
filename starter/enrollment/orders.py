"""Enrollment's first order goes through order intake, like every order (docs/enrollment.md).

:class:`IntakeOrders` is the ``OrderPort`` of ``activities.enrollment``: the worker's
``enrollment.start_subscription`` activity hands it the enrollment's order, which it submits on
the ``web`` channel as the new owner principal (so the intake rules, the order's identity and its
dead-letter queue apply), then waits for the subscription's first step: an enrollee is told
"active" or "trialing" only once the first payment is settled or the trial has begun.

Refusals raise ``OmsError`` with the intake's or the subscription's code; infrastructure codes
(``*_UNAVAILABLE``, ``TIMEOUT``) are for the activity to retry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import date, timedelta

from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.auth_store import AuthStore
from activities.enrollment import EnrollmentOrder
from models.enrollment import SubscriptionStarted
from models.errors import ErrorCode, OmsError
from models.ids import subscription_workflow_id
from models.subscription import StartRequest, SubscriptionStatus
from starter.intake.results import Outcome
from starter.intake.service import IntakeService
from starter.service import OmsService
from workflows.subscription import SubscriptionWorkflow

START_WAIT = timedelta(seconds=45)
_STARTED = frozenset({SubscriptionStatus.active, SubscriptionStatus.trialing})


class IntakeOrders:
    """Places enrollment orders through :class:`IntakeService` (the ``web`` channel)."""

    def __init__(
        self,
        intake: IntakeService,
        service: Callable[[], Awaitable[OmsService]],
        principals: AuthStore,
    ) -> None:
        self.intake = intake
        self.service = service
        self.principals = principals

    async def place(self, order: EnrollmentOrder) -> SubscriptionStarted:
        principal = await asyncio.to_thread(self.principals.principal, order.principal_id)
        if principal is None:
            raise OmsError(ErrorCode.NOT_FOUND, f"principal {order.principal_id} not found")
        customer: dict[str, str] = {"email": order.email}
        if order.name:
            customer["name"] = order.name
        if order.timezone:
            customer["timezone"] = order.timezone
        body = {
            "order_id": order.order_id,
            "currency": order.currency,
            "customer": customer,
            "line": {"plan_id": order.plan_id, "interval": order.interval, "quantity": 1},
            "payment": {"method": "card", "token": order.payment_method_id},
        }
        resp = await self.intake.handle(
            "web",
            json.dumps(body),
            {"content-type": "application/json"},
            principal=principal,
        )
        error = resp.error or (resp.items[0].error if resp.items else None)
        item = resp.items[0] if resp.items else None
        if item is None or item.outcome not in (Outcome.ACCEPTED, Outcome.DUPLICATE):
            if error is None:
                raise OmsError(ErrorCode.INTERNAL, "order intake gave no answer for the order")
            raise OmsError(_code(error.code), error.message)
        accepted = item.order or {}
        subscription_id = str(accepted["subscription_id"])
        status = str(accepted.get("status") or "")
        if status in _STARTED:
            return _started(subscription_id, status, accepted)
        return await self._outcome(subscription_id)

    async def _outcome(self, subscription_id: str) -> SubscriptionStarted:
        """Wait for the subscription's first step (payment settled, or trial begun)."""
        service = await self.service()
        handle = service.client.get_workflow_handle(subscription_workflow_id(subscription_id))
        try:
            result = await handle.execute_update(
                SubscriptionWorkflow.start,
                StartRequest(request_id=f"enrollment-{subscription_id}", wait_for_payment=True),
                id=f"start-wait:{subscription_id}",
                rpc_timeout=START_WAIT,
            )
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError):
                raise OmsError(_code(cause.type), cause.message) from err
            raise OmsError(ErrorCode.INTERNAL, str(cause or err)) from err
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:  # not a finished workflow: try again
                raise OmsError(ErrorCode.TEMPORAL_UNAVAILABLE, err.message) from err
            # It finished before we asked: only a failed start ends that quickly.
            raise OmsError(
                ErrorCode.PAYMENT_DECLINED,
                "the first payment was declined; use another payment method",
            ) from err
        return SubscriptionStarted(
            subscription_id=result.subscription_id,
            status=result.status.value,
            first_invoice_date=result.first_invoice_date,
            trial_end=result.trial_end,
        )


def _code(value: str | None) -> ErrorCode:
    try:
        return ErrorCode(value or ErrorCode.INTERNAL)
    except ValueError:
        return ErrorCode.INTERNAL


def _started(subscription_id: str, status: str, body: dict[str, object]) -> SubscriptionStarted:
    def day(key: str) -> date | None:
        value = body.get(key)
        return date.fromisoformat(str(value)) if value else None

    return SubscriptionStarted(
        subscription_id=subscription_id,
        status=status,
        first_invoice_date=day("first_invoice_date"),
        trial_end=day("trial_end"),
    )
