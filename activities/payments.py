"""Payment activities: customers at the gateway and charges that move money exactly once.

A charge is recorded in the database before any money moves, then a PaymentIntent is created
(unconfirmed) and its id stored against the attempt's idempotency key, and only then confirmed.
A retry at any point (seconds or days later, after a worker crash) finds the attempt by key and
resumes it: it never creates a second confirmed PaymentIntent for the same key. This does not rely
on the gateway's own idempotency window (24 h at Stripe; none at all in localstripe).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.gateway import IntentInfo
from activities.gateway_errors import gateway_call
from activities.gateway_port import PaymentGateway
from activities.store import Store
from activities.tables import Payment, Refund, utcnow
from models.errors import ErrorCode, OmsError
from models.subscription import (
    ChargeRequest,
    ChargeResult,
    ProvisionCustomer,
    ProvisionedCustomer,
    RefundRequest,
    RefundResult,
)
from models.vocabulary import PaymentStatus

log = structlog.get_logger(__name__)

FINAL_STATUSES = {PaymentStatus.SUCCEEDED, PaymentStatus.DECLINED}


HEARTBEAT_INTERVAL_S = 5.0


@contextmanager
def _heartbeating() -> Iterator[None]:
    """Heartbeat from a side thread for as long as the block runs.

    A slow gateway call then never looks like a dead worker, while a worker that really died
    stops heartbeating and its charge is retried (resuming the same intent) within the heartbeat
    timeout instead of the start-to-close timeout.
    """
    if not activity.in_activity():
        yield
        return
    stop = threading.Event()
    context = contextvars.copy_context()  # the activity context lives in a context variable

    def beat() -> None:
        while not stop.wait(HEARTBEAT_INTERVAL_S):
            activity.heartbeat()

    thread = threading.Thread(target=context.run, args=(beat,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _app_error(err: OmsError) -> ApplicationError:
    return ApplicationError(err.message, type=err.code, non_retryable=True)


class PaymentActivities:
    """Activities that talk to the payment gateway (and record what they did)."""

    def __init__(self, gateway: PaymentGateway, store: Store) -> None:
        self.gateway = gateway
        self.store = store

    @activity.defn(name="payments.provision_customer")
    def provision_customer(self, req: ProvisionCustomer) -> ProvisionedCustomer:
        """Create (once) the customer's record here and at the gateway; attach the card."""
        try:
            with gateway_call():
                customer = self.store.upsert_customer(
                    req.customer_id, req.email, req.timezone, req.tenant_id
                )
                gateway_id = customer.gateway_customer_id
                if gateway_id is None:
                    gateway_id = self.gateway.create_customer(
                        email=req.email,
                        metadata={"customer_id": req.customer_id},
                        idempotency_key=f"customer:{req.customer_id}",
                    )
                    self.store.set_gateway_customer(req.customer_id, gateway_id)
                pm = self.gateway.retrieve_payment_method(req.payment_method_id)
                if pm.customer_id != gateway_id:
                    self.gateway.attach_payment_method(req.payment_method_id, gateway_id)
        except OmsError as err:
            raise _app_error(err) from err
        return ProvisionedCustomer(
            gateway_customer_id=gateway_id, card_brand=pm.brand, card_last4=pm.last4
        )

    @activity.defn(name="payments.charge")
    def charge(self, req: ChargeRequest) -> ChargeResult:
        """Charge one attempt of one invoice, exactly once whatever crashes or retries."""
        key = req.idempotency_key
        row = self.store.begin_payment(
            Payment(
                idempotency_key=key,
                invoice_id=req.invoice_id,
                subscription_id=req.subscription_id,
                attempt=req.attempt,
                amount_minor=req.amount_minor,
                currency=req.currency,
                status=PaymentStatus.PENDING,
                created_at=utcnow(),
                updated_at=utcnow(),
            )
        )
        if row.amount_minor != req.amount_minor or row.currency != req.currency:
            raise ApplicationError(
                f"attempt {key} was recorded for {row.amount_minor} {row.currency}",
                type=ErrorCode.IDEMPOTENCY_MISMATCH,
                non_retryable=True,
            )
        if row.status in FINAL_STATUSES:
            return _result_from_row(row)
        try:
            return self._charge(req, row)
        except ApplicationError as err:
            if err.type != ErrorCode.INVALID_REQUEST:
                raise
            # The gateway refused the request itself (a card detached in its dashboard, an amount
            # it does not take): the same request gets the same answer, so it is a final outcome
            # of this attempt, recorded as a hard decline for dunning to ask for a new card.
            row = self.store.update_payment(
                key,
                status=PaymentStatus.DECLINED,
                decline_code=ErrorCode.GATEWAY_REFUSED.value.lower(),
                decline_category="hard",
                failure_message=err.message[:500],
            )
            log.warning("payment.refused_by_gateway", idempotency_key=key, reason=err.message)
            return _result_from_row(row)

    @activity.defn(name="payments.refresh_charge")
    def refresh_charge(self, req: ChargeRequest) -> ChargeResult:
        """Look again at an attempt the gateway reported as processing; record how it settled."""
        row = self.store.payment_by_key(req.idempotency_key)
        if row is None or row.status in FINAL_STATUSES or row.gateway_intent_id is None:
            if row is None:
                raise ApplicationError(
                    f"no charge attempt {req.idempotency_key}",
                    type=ErrorCode.DATA_ERROR,
                    non_retryable=True,
                )
            return _result_from_row(row)
        with gateway_call():
            info = self.gateway.retrieve_payment_intent(row.gateway_intent_id)
        return self._record_outcome(req.idempotency_key, info)

    def _charge(self, req: ChargeRequest, row: Payment) -> ChargeResult:
        key = req.idempotency_key
        with _heartbeating(), gateway_call():
            intent_id = row.gateway_intent_id
            if intent_id is None:
                created = self.gateway.create_payment_intent(
                    amount_minor=req.amount_minor,
                    currency=req.currency,
                    customer_id=req.gateway_customer_id,
                    payment_method_id=req.payment_method_id,
                    idempotency_key=key,
                    metadata={
                        "subscription_id": req.subscription_id,
                        "invoice_id": req.invoice_id,
                        "attempt": str(req.attempt),
                    },
                    description=req.description,
                )
                # The intent id is durable before the confirm: a retry resumes this intent. If a
                # concurrent execution of this attempt stored one first, confirm that one; ours
                # stays unconfirmed and never moves money.
                intent_id = self.store.claim_intent(key, created.id)
                if intent_id != created.id:
                    log.warning("payment.intent_superseded", idempotency_key=key, orphan=created.id)
            info = self.gateway.confirm_payment_intent(intent_id, idempotency_key=key)
        return self._record_outcome(key, info)

    @activity.defn(name="payments.refund")
    def refund(self, req: RefundRequest) -> RefundResult:
        """Refund part of a payment once (keyed like charges; recorded before the gateway call)."""
        key = req.idempotency_key
        row = self.store.begin_refund(
            Refund(
                idempotency_key=key,
                subscription_id=req.subscription_id,
                invoice_id=req.invoice_id,
                gateway_intent_id=req.intent_id,
                amount_minor=req.amount_minor,
                currency=req.currency,
                status="pending",
                reason=req.reason[:200],
                created_at=utcnow(),
                updated_at=utcnow(),
            )
        )
        if row.status == "succeeded":
            return RefundResult(
                idempotency_key=key,
                refund_id=row.gateway_refund_id,
                amount_minor=row.amount_minor,
                status=row.status,
            )
        with gateway_call():
            info = self.gateway.refund(
                intent_id=req.intent_id,
                amount_minor=req.amount_minor,
                idempotency_key=key,
                metadata={"subscription_id": req.subscription_id, "reason": req.reason[:100]},
            )
        row = self.store.update_refund(key, gateway_refund_id=info.id, status="succeeded")
        log.info(
            "refund.issued", idempotency_key=key, refund_id=info.id, amount_minor=info.amount_minor
        )
        return RefundResult(
            idempotency_key=key,
            refund_id=info.id,
            amount_minor=info.amount_minor,
            status="succeeded",
        )

    def _record_outcome(self, key: str, info: IntentInfo) -> ChargeResult:
        if info.status == "succeeded":  # the gateway's word
            row = self.store.update_payment(key, status=PaymentStatus.SUCCEEDED)
        elif info.decline is not None:
            row = self.store.update_payment(
                key,
                status=PaymentStatus.DECLINED,
                decline_code=info.decline.decline_code or info.decline.code,
                decline_category=info.decline.category.value,
                failure_message=info.decline.message[:500],
            )
        else:
            row = self.store.update_payment(key, status=PaymentStatus.PROCESSING)
        log.info(
            "payment.attempt",
            idempotency_key=key,
            intent_id=info.id,
            status=row.status,
            amount_minor=row.amount_minor,
            currency=row.currency,
            decline_code=row.decline_code,
        )
        return _result_from_row(row)


def _result_from_row(row: Payment) -> ChargeResult:
    return ChargeResult(
        idempotency_key=row.idempotency_key,
        status=row.status,
        intent_id=row.gateway_intent_id,
        amount_minor=row.amount_minor,
        currency=row.currency,
        decline_code=row.decline_code,
        decline_category=row.decline_category,
        message=row.failure_message,
    )
