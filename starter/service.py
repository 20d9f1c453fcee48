"""Operations shared by the CLI and the HTTP API: validate, then talk to Temporal (and read views).

Writes go through the subscription's workflow only (update-with-start, updates). Lists and
invoices are read from the database projections the activities keep current.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel, Field
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.store import Store
from models import search_attributes as sa
from models.calendar import (
    first_billing,
    local_date,
    period_index_containing,
    validate_timezone,
)
from models.catalog import Catalog
from models.dunning import DunningPolicy, default_dunning_policy
from models.errors import ErrorCode, OmsError
from models.identity import DEFAULT_TENANT
from models.ids import (
    customer_id_for_email,
    is_valid_id,
    subscription_id_for_request,
    subscription_workflow_id,
)
from models.policy import Policy, default_policy
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
    SubscriptionState,
    SubscriptionStatus,
    SubscriptionView,
    Timeline,
    UncancelRequest,
    WithdrawRequest,
    catalog_offers,
    catalog_terms,
)
from workflows.subscription import SubscriptionWorkflow

if TYPE_CHECKING:
    from starter.clock import AdvanceResult, ClockManager, ClockView

log = structlog.get_logger(__name__)

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
CARD_LIKE_RE = re.compile(r"^[\d\s-]{12,23}$")
MAX_TRIAL_DAYS = 730
UPDATE_TIMEOUT = timedelta(seconds=30)


class SubscribeRequest(BaseModel):
    """A request to create a subscription (API body, CLI options)."""

    email: str = Field(max_length=254)
    plan_id: str = Field(max_length=64)
    interval: str = Field(default="monthly", max_length=16)
    currency: str = Field(default="USD", max_length=8)
    payment_method_id: str | None = Field(default=None, max_length=64)
    trial_days: int | None = Field(default=None, description="defaults to the plan's trial")
    quantity: int = Field(default=1, le=100_000)
    timezone: str | None = Field(default=None, max_length=64)
    anchor_day: int | None = Field(
        default=None,
        description="bill on this day of the month (1-31); the first period is prorated",
    )
    request_id: str | None = Field(
        default=None, max_length=64, description="idempotency key of the request"
    )
    clock_id: str | None = Field(
        default=None,
        max_length=64,
        description="attach the subscription to this test clock: it starts at the clock's time "
        "and moves when the clock advances (only where test clocks are enabled)",
    )


class OmsService:
    """The system's operations, independent of how they are invoked."""

    def __init__(
        self,
        client: Client,
        store: Store,
        catalog: Catalog,
        *,
        task_queue: str,
        default_timezone: str = "UTC",
        notice_days: int = 3,
        notice_days_by_interval: dict[str, int] | None = None,
        search_attributes: bool = True,
        dunning: DunningPolicy | None = None,
        policy: Policy | None = None,
        test_clocks: bool = False,
    ) -> None:
        self.client = client
        self.store = store
        self.catalog = catalog
        self.task_queue = task_queue
        self.default_timezone = default_timezone
        self.notice_days = notice_days
        self.notice_days_by_interval = notice_days_by_interval
        self.search_attributes = search_attributes
        self.dunning = dunning or default_dunning_policy()
        self.policy = policy or default_policy()
        self.test_clocks = test_clocks  # config temporal.test_clocks / OMS_TEST_CLOCKS
        self._clocks: ClockManager | None = None

    # --- create ------------------------------------------------------------------------

    def build_state(
        self,
        req: SubscribeRequest,
        by: Actor,
        now: datetime | None = None,
        *,
        tenant_id: str = DEFAULT_TENANT,
        customer_id: str | None = None,
    ) -> SubscriptionState:
        """Validate a request against the catalog and policy; the workflow's initial state.

        ``tenant_id`` and ``customer_id`` come from the caller's principal (starter.access),
        never from the request; the customer id defaults to the one derived from the e-mail.
        """
        email = req.email.strip()
        if not EMAIL_RE.match(email):
            raise OmsError(ErrorCode.INVALID_REQUEST, f"{req.email!r} is not an e-mail address")
        plan = self.catalog.plan(req.plan_id)
        price = plan.price(req.currency, req.interval)
        pm = (req.payment_method_id or "").strip()
        if not pm:
            raise OmsError(
                ErrorCode.PAYMENT_METHOD_REQUIRED,
                "a payment method token (pm_...) is required; get one with `oms dev card` locally",
            )
        if CARD_LIKE_RE.match(pm):
            raise OmsError(
                ErrorCode.CARD_NUMBER_REFUSED,
                "card numbers are never accepted; send the gateway's payment method token (pm_...)",
            )
        if not pm.startswith("pm_") or not is_valid_id(pm):
            raise OmsError(
                ErrorCode.PAYMENT_METHOD_INVALID, f"{pm!r} is not a payment method token (pm_...)"
            )
        if req.quantity < 1:
            raise OmsError(ErrorCode.INVALID_REQUEST, "quantity must be at least 1")
        trial_days = plan.trial_days if req.trial_days is None else req.trial_days
        if not 0 <= trial_days <= MAX_TRIAL_DAYS:
            raise OmsError(
                ErrorCode.INVALID_REQUEST, f"trial days must be between 0 and {MAX_TRIAL_DAYS}"
            )
        tz = req.timezone or self.default_timezone
        try:
            validate_timezone(tz)
        except ValueError as err:
            raise OmsError(ErrorCode.INVALID_TIMEZONE, str(err)) from None
        request_id = req.request_id or uuid.uuid4().hex
        if not is_valid_id(request_id):
            raise OmsError(
                ErrorCode.INVALID_REQUEST,
                "request_id must be 3-64 characters of letters, digits, '-' or '_'",
            )
        today = local_date(now or datetime.now(UTC), tz)
        trial_end = today + timedelta(days=trial_days) if trial_days else None
        service_start = trial_end or today
        anchor, first_index = service_start, 0
        if req.anchor_day is not None:
            if price.interval.months is None:
                raise OmsError(
                    ErrorCode.INVALID_REQUEST,
                    f"an anchor day needs a month interval, not {price.interval.value}",
                )
            if not 1 <= req.anchor_day <= 31:
                raise OmsError(ErrorCode.INVALID_REQUEST, "anchor day must be between 1 and 31")
            first = first_billing(service_start, price.interval, req.anchor_day)
            anchor = first.anchor
            first_index = period_index_containing(anchor, price.interval, service_start)
        return SubscriptionState(
            subscription_id=subscription_id_for_request(request_id),
            customer_id=customer_id or customer_id_for_email(email),
            tenant_id=tenant_id,
            email=email,
            terms=catalog_terms(
                self.catalog, plan.plan_id, price.currency, price.interval, req.quantity
            ),
            offers=catalog_offers(self.catalog, price.currency),
            timezone=tz,
            start_date=today,
            anchor=anchor,
            trial_end=trial_end,
            billing_start=service_start,
            period_index=first_index,
            first_period_index=first_index,
            payment_method_id=pm,
            notice_days=self.notice_days,
            notice_days_by_interval=self.notice_days_by_interval,
            segment=plan.segment,
            dunning_rule=self.dunning.rule_for(plan.plan_id, plan.segment),
            policy=self.policy,
            search_attributes=self.search_attributes,
            created_by=by.model_copy(update={"request_id": request_id}),
        )

    async def subscribe(
        self,
        req: SubscribeRequest,
        by: Actor,
        now: datetime | None = None,
        wait_for_payment: bool = True,
        *,
        tenant_id: str = DEFAULT_TENANT,
        customer_id: str | None = None,
    ) -> StartResult:
        """Create a subscription; returns once its workflow has accepted (or refused) it.

        Args:
            req: the request (validated here against the catalog first). With ``clock_id`` the
                subscription starts at that test clock's time and follows the clock.
            by: who asks, through which channel (audited).
            now: the start instant (tests on a virtual clock); default: the wall clock, or the
                test clock's time when ``req.clock_id`` names one (the clock wins).
            wait_for_payment: answer after the first payment (or trial start) is settled; False
                answers as soon as the workflow has accepted the subscription.
            tenant_id: the caller's tenant (every row of the subscription carries it).
            customer_id: the caller's own customer record (a customer principal), else derived.
        """
        clocks = None
        if req.clock_id is not None:
            clocks = self.clocks()
            if not self.search_attributes:
                raise OmsError(
                    ErrorCode.TEST_CLOCKS_DISABLED,
                    "test clocks find their subscriptions by search attribute, which this "
                    "service does not set",
                )
            now = clocks.now(req.clock_id)
        state = self.build_state(req, by, now, tenant_id=tenant_id, customer_id=customer_id)
        request_id = state.created_by.request_id or ""
        attributes = [
            SearchAttributePair(sa.CUSTOMER_ID, state.customer_id),
            SearchAttributePair(sa.PLAN_ID, state.terms.plan_id),
            SearchAttributePair(sa.SUBSCRIPTION_STATUS, state.status.value),
            SearchAttributePair(sa.TENANT_ID, state.tenant_id),
        ]
        if req.clock_id is not None:
            attributes.append(SearchAttributePair(sa.TEST_CLOCK_ID, req.clock_id))
        workflow_id = subscription_workflow_id(state.subscription_id)
        op = WithStartWorkflowOperation(
            SubscriptionWorkflow.run,
            state,
            id=workflow_id,
            task_queue=self.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=TypedSearchAttributes(attributes if self.search_attributes else []),
        )
        start = StartRequest(request_id=request_id, wait_for_payment=wait_for_payment)
        if clocks is None or req.clock_id is None:
            async with _temporal_errors(state.subscription_id):
                return await self.client.execute_update_with_start_workflow(
                    SubscriptionWorkflow.start,
                    start,
                    start_workflow_operation=op,
                    id=f"start:{request_id}",
                    rpc_timeout=UPDATE_TIMEOUT,
                )
        # On a clock: the start carries a time-skipping config (the clock's client stamps it).
        # The workflow starts at the real time, behind a clock that was created ahead of it or
        # advanced; its first charge is due at the clock's time. So take the answer once the
        # start is accepted, bring the workflow to the clock's time, then read the answer.
        async with _temporal_errors(state.subscription_id):
            try:
                accepted = await clocks.client.start_update_with_start_workflow(
                    SubscriptionWorkflow.start,
                    start,
                    start_workflow_operation=op,
                    id=f"start:{request_id}",
                    wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                    rpc_timeout=UPDATE_TIMEOUT,
                )
            except RPCError as err:
                if err.status == RPCStatusCode.UNIMPLEMENTED:
                    from starter.clock import server_refused

                    raise server_refused(err) from err
                raise
            await clocks.attach(req.clock_id, workflow_id)
            return await accepted.result(rpc_timeout=UPDATE_TIMEOUT)

    # --- test clocks -------------------------------------------------------------------

    def clocks(self) -> ClockManager:
        """The test clocks; TEST_CLOCKS_DISABLED unless this deployment enables them."""
        if not self.test_clocks:
            raise clocks_disabled()
        if self._clocks is None:
            from starter.clock import ClockManager

            self._clocks = ClockManager(self.client, self.store.engine)
        return self._clocks

    async def create_clock(self, at: datetime | None = None) -> ClockView:
        """A new test clock reading ``at`` (default: now)."""
        return self.clocks().create(at)

    async def clock(self, clock_id: str) -> ClockView:
        """A test clock with its current time."""
        return self.clocks().get(clock_id)

    async def advance_clock(self, clock_id: str, duration: str) -> AdvanceResult:
        """Advance a test clock (``Nh``, ``Nd``, ``Nmo``); returns once its subscriptions have
        caught up."""
        return await self.clocks().advance(clock_id, duration)

    # --- reads -------------------------------------------------------------------------

    async def status(self, subscription_id: str) -> SubscriptionView | dict[str, Any]:
        """Live state from the workflow; the stored row when the workflow is gone."""
        handle = self.client.get_workflow_handle(subscription_workflow_id(subscription_id))
        try:
            return await handle.query(SubscriptionWorkflow.state)
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise _unavailable(err) from err
        row = self.store.get_subscription(subscription_id)
        if row is None:
            raise _not_found(subscription_id)
        return row.model_dump(mode="json")

    async def timeline(self, subscription_id: str) -> Timeline:
        handle = self.client.get_workflow_handle(subscription_workflow_id(subscription_id))
        async with _temporal_errors(subscription_id):
            return await handle.query(SubscriptionWorkflow.timeline)

    def list_subscriptions(
        self,
        *,
        status: str | None = None,
        customer_id: str | None = None,
        plan_id: str | None = None,
        limit: int = 100,
        tenant_id: str | None = None,
    ) -> list[dict[str, Any]]:
        if status is not None and status not in SubscriptionStatus.__members__:
            raise OmsError(
                ErrorCode.INVALID_REQUEST,
                f"unknown status {status!r}; use one of {', '.join(SubscriptionStatus)}",
            )
        rows = self.store.list_subscriptions(
            status=status,
            customer_id=customer_id,
            plan_id=plan_id,
            limit=limit,
            tenant_id=tenant_id,
        )
        return [
            {"subscription_id": r.id, **r.model_dump(mode="json", exclude={"id"})} for r in rows
        ]

    def invoices(self, subscription_id: str) -> list[dict[str, Any]]:
        if self.store.get_subscription(subscription_id) is None:
            raise _not_found(subscription_id)
        out = []
        for inv, lines in self.store.list_invoices(subscription_id):
            item = {"invoice_id": inv.id, **inv.model_dump(mode="json", exclude={"id"})}
            item["lines"] = [
                line.model_dump(mode="json", exclude={"id", "invoice_id"}) for line in lines
            ]
            out.append(item)
        return out

    def audit(self, subscription_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """The audit trail, oldest first: who did what, through which channel, when."""
        if self.store.get_subscription(subscription_id) is None:
            raise _not_found(subscription_id)
        out = []
        for row in self.store.audit_trail(subscription_id)[:limit]:
            item = row.model_dump(mode="json", exclude={"id", "event_key", "recorded_at"})
            item["details"] = json.loads(row.details or "{}")
            out.append(item)
        return out

    # --- changes -----------------------------------------------------------------------

    async def cancel(
        self, subscription_id: str, at_period_end: bool | None, by: Actor
    ) -> CancelResult:
        handle = self.client.get_workflow_handle(subscription_workflow_id(subscription_id))
        async with _temporal_errors(subscription_id):
            return await handle.execute_update(
                SubscriptionWorkflow.cancel,
                CancelRequest(
                    at_period_end=at_period_end,
                    request_id=by.request_id or uuid.uuid4().hex,
                    reason=by.reason,
                    by=by,
                ),
                id=by.request_id,
                rpc_timeout=UPDATE_TIMEOUT,
            )

    async def update_payment_method(
        self, subscription_id: str, payment_method_id: str, by: Actor
    ) -> PaymentMethodResult:
        """Replace the card; an unpaid invoice is retried at once with it."""
        pm = payment_method_id.strip()
        if CARD_LIKE_RE.match(pm):
            raise OmsError(
                ErrorCode.CARD_NUMBER_REFUSED,
                "card numbers are never accepted; send the gateway's payment method token (pm_...)",
            )
        handle = self.client.get_workflow_handle(subscription_workflow_id(subscription_id))
        async with _temporal_errors(subscription_id):
            return await handle.execute_update(
                SubscriptionWorkflow.update_payment_method,
                PaymentMethodUpdate(payment_method_id=pm, by=by),
                id=by.request_id,
                rpc_timeout=UPDATE_TIMEOUT,
            )

    def _handle(self, subscription_id: str) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(subscription_workflow_id(subscription_id))

    async def change(
        self,
        subscription_id: str,
        *,
        plan_id: str | None,
        quantity: int | None,
        interval: str | None,
        when: str | None,
        by: Actor,
        request_id: str | None = None,
    ) -> ChangeResult:
        """Request a change; the answer says applied, scheduled or pending approval."""
        view = await self.status(subscription_id)
        if isinstance(view, dict) or view.status.is_terminal:
            status = view.get("status") if isinstance(view, dict) else view.status.value
            raise OmsError(
                ErrorCode.SUBSCRIPTION_CANCELED, f"subscription {subscription_id} is {status}"
            )
        plan = self.catalog.plan(plan_id or view.plan_id)
        price = plan.price(view.currency, interval or view.interval)
        qty = view.quantity if quantity is None else quantity
        if qty < 1:
            raise OmsError(ErrorCode.INVALID_QUANTITY, f"quantity must be at least 1, got {qty}")
        if when not in (None, "now", "period_end", "period-end"):
            raise OmsError(ErrorCode.INVALID_REQUEST, "when must be now or period-end")
        rid = request_id or by.request_id or uuid.uuid4().hex
        req = ChangeRequest(
            request_id=rid,
            plan_id=plan.plan_id,
            quantity=qty,
            interval=price.interval,
            when=when.replace("-", "_") if when else None,
            by=by.model_copy(update={"request_id": rid}),
            priced_terms=catalog_terms(
                self.catalog, plan.plan_id, price.currency, price.interval, qty
            ),
        )
        async with _temporal_errors(subscription_id):
            return await self._handle(subscription_id).execute_update(
                SubscriptionWorkflow.request_change, req, id=rid, rpc_timeout=UPDATE_TIMEOUT
            )

    async def pending(self, subscription_id: str) -> PendingView:
        async with _temporal_errors(subscription_id):
            return await self._handle(subscription_id).query(SubscriptionWorkflow.pending)

    async def withdraw(self, subscription_id: str, request_id: str, by: Actor) -> PendingView:
        async with _temporal_errors(subscription_id):
            return await self._handle(subscription_id).execute_update(
                SubscriptionWorkflow.withdraw,
                WithdrawRequest(request_id=request_id, by=by),
                rpc_timeout=UPDATE_TIMEOUT,
            )

    async def pause(
        self, subscription_id: str, resume_on: date | None, by: Actor, request_id: str | None = None
    ) -> PauseResult:
        rid = request_id or by.request_id or uuid.uuid4().hex
        async with _temporal_errors(subscription_id):
            return await self._handle(subscription_id).execute_update(
                SubscriptionWorkflow.pause,
                PauseRequest(request_id=rid, resume_on=resume_on, by=by),
                id=rid,
                rpc_timeout=UPDATE_TIMEOUT,
            )

    async def resume(self, subscription_id: str, by: Actor) -> PauseResult:
        rid = by.request_id or uuid.uuid4().hex
        async with _temporal_errors(subscription_id):
            return await self._handle(subscription_id).execute_update(
                SubscriptionWorkflow.resume,
                ResumeRequest(request_id=rid, by=by),
                id=rid,
                rpc_timeout=UPDATE_TIMEOUT,
            )

    def approvals(
        self,
        *,
        approver: str | None = None,
        status: str | None = "pending",
        tenant_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Requests waiting for approval (for ``approver``: only those they may decide)."""
        out = []
        for row in self.store.approvals(status=status, tenant_id=tenant_id):
            groups = json.loads(row.groups)
            if approver is not None:
                members = {
                    m.strip().lower()
                    for g in groups
                    for m in self.policy.approver_groups.get(g, [])
                }
                if approver.strip().lower() not in members:
                    continue
            item = row.model_dump(mode="json")
            item["groups"] = groups
            item["reasons"] = json.loads(row.reasons)
            out.append(item)
        return out

    def approval(self, request_id: str) -> dict[str, Any]:
        row = self.store.approval(request_id)
        if row is None:
            raise OmsError(ErrorCode.REQUEST_NOT_FOUND, f"no approval request {request_id}")
        item = row.model_dump(mode="json")
        item["groups"] = json.loads(row.groups)
        item["reasons"] = json.loads(row.reasons)
        return item

    async def decide(
        self,
        request_id: str,
        *,
        approve: bool,
        approver: str,
        reason: str,
        channel: str,
        approver_groups: list[str] | None = None,
        tenant_id: str | None = None,
    ) -> ApprovalResult:
        """Approve or reject a request by its id (the subscription is looked up).

        ``approver_groups`` are the approver's memberships from the principal store; None lets
        the policy's directory decide (trusted callers only).
        """
        row = self.store.approval(request_id)
        if row is None:
            raise OmsError(ErrorCode.REQUEST_NOT_FOUND, f"no approval request {request_id}")
        async with _temporal_errors(row.subscription_id):
            return await self._handle(row.subscription_id).execute_update(
                SubscriptionWorkflow.decide,
                ApprovalDecision(
                    request_id=request_id,
                    approve=approve,
                    approver=approver,
                    reason=reason,
                    channel=channel,
                    approver_groups=approver_groups,
                    tenant_id=tenant_id,
                ),
                rpc_timeout=UPDATE_TIMEOUT,
            )

    async def uncancel(self, subscription_id: str, by: Actor) -> CancelResult:
        handle = self.client.get_workflow_handle(subscription_workflow_id(subscription_id))
        async with _temporal_errors(subscription_id):
            return await handle.execute_update(
                SubscriptionWorkflow.uncancel,
                UncancelRequest(by=by),
                id=by.request_id,
                rpc_timeout=UPDATE_TIMEOUT,
            )

    async def retry(self, subscription_id: str, by: Actor) -> SubscriptionView | dict[str, Any]:
        """Ask a subscription that needs attention to retry its refused step now.

        A refused billing step is retried at once (it clears when it succeeds); a flag for a
        record that could not be written (repaired by hand) is cleared. Returns the state after.
        """
        handle = self.client.get_workflow_handle(subscription_workflow_id(subscription_id))
        async with _temporal_errors(subscription_id):
            await handle.signal(SubscriptionWorkflow.retry_now, AttentionRetry(by=by))
        return await self.status(subscription_id)


def clocks_disabled() -> OmsError:
    """The refusal of a test-clock request where clocks are off (the default)."""
    return OmsError(
        ErrorCode.TEST_CLOCKS_DISABLED,
        "test clocks are disabled in this deployment (set temporal.test_clocks or "
        "OMS_TEST_CLOCKS=true on a dev or test stack, never in production)",
    )


class _temporal_errors:
    """Map Temporal client failures to OmsError codes (async context manager)."""

    def __init__(self, subscription_id: str) -> None:
        self.subscription_id = subscription_id

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            return
        if isinstance(exc, WorkflowUpdateFailedError):
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.type:
                try:
                    code = ErrorCode(cause.type)
                except ValueError:
                    code = ErrorCode.INVALID_REQUEST
                raise OmsError(code, cause.message) from exc
            raise OmsError(ErrorCode.INVALID_REQUEST, str(exc.cause or exc)) from exc
        if isinstance(exc, WorkflowUpdateRPCTimeoutOrCancelledError):
            raise OmsError(
                ErrorCode.TIMEOUT,
                "the subscription did not answer in time; it may still complete, retry with the "
                "same request id to get its result",
            ) from exc
        if isinstance(exc, RPCError):
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise _not_found(self.subscription_id) from exc
            if exc.status == RPCStatusCode.ALREADY_EXISTS:
                raise OmsError(
                    ErrorCode.SUBSCRIPTION_EXISTS,
                    f"subscription {self.subscription_id} already existed and has ended; "
                    "use a new request id",
                ) from exc
            if exc.status in (RPCStatusCode.INVALID_ARGUMENT, RPCStatusCode.FAILED_PRECONDITION):
                # A request Temporal refused: not an outage, so not worth retrying. Its text is
                # Temporal's, so it is logged, not returned.
                log.warning("temporal.request_refused", status=exc.status.name, error=exc.message)
                raise OmsError(
                    ErrorCode.INVALID_REQUEST,
                    f"the request for subscription {self.subscription_id} was refused as invalid",
                ) from exc
            raise _unavailable(exc) from exc


def _not_found(subscription_id: str) -> OmsError:
    return OmsError(ErrorCode.SUBSCRIPTION_NOT_FOUND, f"no subscription {subscription_id}")


def _unavailable(err: RPCError) -> OmsError:
    log.warning("temporal.unavailable", status=err.status.name, error=err.message)
    return OmsError(ErrorCode.TEMPORAL_UNAVAILABLE, "Temporal is not reachable; retry in a moment")
