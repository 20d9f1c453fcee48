"""Every operation as an authenticated principal may do it: the one place access is decided.

The HTTP API and the CLI authenticate (starter.auth), then call :class:`Access`, never
:class:`~starter.service.OmsService` directly. ``Access`` asks for the permission the operation
needs, hides what the principal may not see (another tenant's object, another customer's for a
customer, answers ``NOT_FOUND`` exactly like an id nobody has), takes identity only from the
principal (actor, tenant, customer, approver and its groups), and scopes and binds idempotency
keys. ``OmsService`` stays the trusted core the workers, tests and the simulator use.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date
from typing import Any

from activities.auth_store import AuthStore
from activities.tables import Subscription
from models.errors import ErrorCode, OmsError
from models.identity import DEFAULT_TENANT, Permission, Principal, Role, not_found, scoped_key
from models.subscription import (
    Actor,
    ApprovalResult,
    CancelResult,
    ChangeResult,
    PauseResult,
    PaymentMethodResult,
    PendingView,
    StartResult,
    SubscriptionView,
    Timeline,
)
from starter.service import OmsService, SubscribeRequest

P = Permission


def fingerprint(operation: str, payload: Any) -> str:
    """A digest of a request's content: the same key must come back with the same request."""
    text = json.dumps([operation, payload], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class Access:
    """The operations of :class:`OmsService` for one authenticated principal."""

    def __init__(
        self, service: OmsService, auth_store: AuthStore, principal: Principal, channel: str
    ) -> None:
        self.service = service
        self.auth_store = auth_store
        self.principal = principal
        self.channel = channel

    # --- helpers -------------------------------------------------------------------------

    def actor(self, reason: str | None = None, request_id: str | None = None) -> Actor:
        p = self.principal
        return Actor(
            actor=p.id,
            channel=self.channel,
            reason=reason,
            request_id=request_id,
            tenant_id=p.tenant_id,
            role=p.role.value,
        )

    def key(
        self,
        client_key: str | None,
        operation: str,
        payload: Any,
        subscription_id: str | None = None,
    ) -> str | None:
        """Bind the client's idempotency key to this principal and this request; the id the
        request gets from it.

        A creation (no ``subscription_id``) gets the key scoped to the principal: the same key
        from two principals names two subscriptions. A request on a subscription gets
        ``req_`` + a digest of (tenant, subscription, key): ids of requests (and of the approvals
        they open) never collide across subscriptions or tenants, and a retry finds its result.
        The same key with another body, or from another principal, is ``IDEMPOTENCY_KEY_REUSED``:
        nobody ever gets someone else's result.
        """
        if not client_key:
            return None
        if len(client_key) > 255:
            raise OmsError(
                ErrorCode.INVALID_REQUEST,
                "an idempotency key or request id has at most 255 characters",
            )
        p = self.principal
        if subscription_id is None:
            binding = result = scoped_key(p, client_key)
        else:
            text = f"{p.tenant_id}\x1f{subscription_id}\x1f{client_key}"
            digest = hashlib.sha256(text.encode()).hexdigest()
            binding, result = "s" + digest[:40], "req_" + digest[:24]
        self.auth_store.bind_idempotency_key(binding, p, operation, fingerprint(operation, payload))
        return result

    def subscription_row(self, subscription_id: str) -> Subscription:
        """The subscription if this principal may see it; ``NOT_FOUND`` otherwise."""
        row = (
            self.service.store.get_subscription(subscription_id)
            if len(subscription_id) <= 64
            else None
        )
        if row is None or not self.principal.sees(row.tenant_id, row.customer_id):
            raise not_found("subscription", subscription_id)
        return row

    def _visible(self, permission: Permission, subscription_id: str) -> Subscription:
        self.principal.require(permission)
        return self.subscription_row(subscription_id)

    @staticmethod
    @asynccontextmanager
    async def _live(subscription_id: str) -> AsyncIterator[None]:
        """A visible subscription whose workflow is gone has ended: say so (409), not 404."""
        try:
            yield
        except OmsError as err:
            if err.code != ErrorCode.SUBSCRIPTION_NOT_FOUND:
                raise
            raise OmsError(
                ErrorCode.SUBSCRIPTION_CANCELED,
                f"subscription {subscription_id} has ended; nothing can change it any more",
            ) from None

    # --- subscriptions -------------------------------------------------------------------

    async def subscribe(
        self, req: SubscribeRequest, idempotency_key: str | None = None
    ) -> StartResult:
        p = self.principal
        p.require(P.SUBSCRIPTIONS_CREATE)
        if req.clock_id is not None:
            p.require(P.CLOCKS_MANAGE)
        if p.role == Role.CUSTOMER and req.trial_days is not None:
            plan = self.service.catalog.plan(req.plan_id)
            if req.trial_days != plan.trial_days:
                raise OmsError(
                    ErrorCode.FORBIDDEN,
                    f"the trial length comes from the plan ({plan.trial_days} days); leave "
                    "trial_days out",
                )
        client_key = idempotency_key or req.request_id
        body = req.model_dump(mode="json", exclude={"request_id"})
        scoped = self.key(client_key, "subscribe", body)
        req = req.model_copy(update={"request_id": scoped})
        return await self.service.subscribe(
            req,
            self.actor(request_id=scoped),
            tenant_id=p.tenant_id,
            customer_id=p.customer_id if p.role == Role.CUSTOMER else None,
        )

    async def status(self, subscription_id: str) -> SubscriptionView | dict[str, Any]:
        self._visible(P.SUBSCRIPTIONS_READ, subscription_id)
        view = await self.service.status(subscription_id)
        if self.principal.role == Role.CUSTOMER and not isinstance(view, dict):
            # The attention message is an internal error's text: for operators only.
            view = view.model_copy(update={"attention_message": None})
        return view

    async def timeline(self, subscription_id: str) -> Timeline:
        self._visible(P.SUBSCRIPTIONS_READ, subscription_id)
        async with self._live(subscription_id):
            return await self.service.timeline(subscription_id)

    def list_subscriptions(
        self,
        *,
        status: str | None = None,
        customer_id: str | None = None,
        plan_id: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        p = self.principal
        p.require(P.SUBSCRIPTIONS_READ)
        if p.role == Role.CUSTOMER:
            if customer_id is not None and customer_id != p.customer_id:
                return []
            customer_id = p.customer_id
        return self.service.list_subscriptions(
            status=status,
            customer_id=customer_id,
            plan_id=plan_id,
            limit=limit,
            tenant_id=p.tenant_id,
        )

    def invoices(self, subscription_id: str) -> list[dict[str, Any]]:
        self._visible(P.SUBSCRIPTIONS_READ, subscription_id)
        return self.service.invoices(subscription_id)

    def audit(self, subscription_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """The subscription's audit trail, oldest first."""
        self._visible(P.AUDIT_READ, subscription_id)
        rows = self.service.audit(subscription_id, limit=limit)
        if self.principal.role == Role.CUSTOMER:
            # Details hold internal facts (error text, decline codes): operators only.
            rows = [{**r, "details": {}} for r in rows]
        return rows

    async def cancel(
        self,
        subscription_id: str,
        at_period_end: bool | None,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> CancelResult:
        self._visible(P.SUBSCRIPTIONS_MANAGE, subscription_id)
        payload = {"subscription": subscription_id, "at_period_end": at_period_end}
        rid = self.key(idempotency_key, "cancel", {**payload, "reason": reason}, subscription_id)
        async with self._live(subscription_id):
            return await self.service.cancel(
                subscription_id, at_period_end, self.actor(reason, rid)
            )

    async def uncancel(
        self, subscription_id: str, reason: str | None = None, idempotency_key: str | None = None
    ) -> CancelResult:
        self._visible(P.SUBSCRIPTIONS_MANAGE, subscription_id)
        rid = self.key(
            idempotency_key, "uncancel", {"subscription": subscription_id}, subscription_id
        )
        async with self._live(subscription_id):
            return await self.service.uncancel(subscription_id, self.actor(reason, rid))

    async def retry(
        self, subscription_id: str, reason: str | None = None
    ) -> SubscriptionView | dict[str, Any]:
        self._visible(P.SUBSCRIPTIONS_RETRY, subscription_id)
        async with self._live(subscription_id):
            return await self.service.retry(subscription_id, self.actor(reason))

    async def change(
        self,
        subscription_id: str,
        *,
        plan_id: str | None,
        quantity: int | None,
        interval: str | None,
        when: str | None,
        request_id: str | None = None,
    ) -> ChangeResult:
        self._visible(P.SUBSCRIPTIONS_MANAGE, subscription_id)
        payload = {
            "subscription": subscription_id,
            "plan_id": plan_id,
            "quantity": quantity,
            "interval": interval,
            "when": when,
        }
        rid = self.key(request_id, "change", payload, subscription_id)
        async with self._live(subscription_id):
            return await self.service.change(
                subscription_id,
                plan_id=plan_id,
                quantity=quantity,
                interval=interval,
                when=when,
                by=self.actor(request_id=rid),
                request_id=rid,
            )

    async def pending(self, subscription_id: str) -> PendingView:
        self._visible(P.SUBSCRIPTIONS_READ, subscription_id)
        async with self._live(subscription_id):
            return await self.service.pending(subscription_id)

    async def withdraw(self, subscription_id: str, request_id: str) -> PendingView:
        self._visible(P.SUBSCRIPTIONS_MANAGE, subscription_id)
        if self.principal.role == Role.CUSTOMER:
            # A customer withdraws what it asked for, not what an operator or approver did.
            async with self._live(subscription_id):
                pending = await self.service.pending(subscription_id)
            mine = [c.requested_by.actor for c in pending.scheduled if c.request_id == request_id]
            mine += [a.requested_by.actor for a in pending.approvals if a.request_id == request_id]
            if mine and mine[0] != self.principal.id:
                raise OmsError(
                    ErrorCode.FORBIDDEN,
                    f"request {request_id} was made by someone else; ask an operator to "
                    "withdraw it",
                )
        async with self._live(subscription_id):
            return await self.service.withdraw(subscription_id, request_id, self.actor())

    async def pause(
        self, subscription_id: str, resume_on: date | None, request_id: str | None = None
    ) -> PauseResult:
        self._visible(P.SUBSCRIPTIONS_MANAGE, subscription_id)
        payload = {"subscription": subscription_id, "resume_on": resume_on}
        rid = self.key(request_id, "pause", payload, subscription_id)
        async with self._live(subscription_id):
            return await self.service.pause(
                subscription_id, resume_on, self.actor(request_id=rid), rid
            )

    async def resume(
        self, subscription_id: str, reason: str | None = None, idempotency_key: str | None = None
    ) -> PauseResult:
        self._visible(P.SUBSCRIPTIONS_MANAGE, subscription_id)
        rid = self.key(
            idempotency_key, "resume", {"subscription": subscription_id}, subscription_id
        )
        async with self._live(subscription_id):
            return await self.service.resume(subscription_id, self.actor(reason, rid))

    async def update_payment_method(
        self, subscription_id: str, payment_method_id: str
    ) -> PaymentMethodResult:
        self._visible(P.PAYMENT_METHODS_UPDATE, subscription_id)
        async with self._live(subscription_id):
            return await self.service.update_payment_method(
                subscription_id, payment_method_id, self.actor()
            )

    # --- approvals -----------------------------------------------------------------------

    def _approval_visible(self, row: dict[str, Any]) -> bool:
        p = self.principal
        if (row.get("tenant_id") or "default") != p.tenant_id:
            return False
        if p.role == Role.APPROVER:
            return bool(set(row["groups"]) & set(p.groups))
        return True

    def approvals(self, *, status: str | None = "pending") -> list[dict[str, Any]]:
        """For an approver: the requests of its groups; for an operator: all of its tenant."""
        self.principal.require(P.APPROVALS_READ)
        rows = self.service.approvals(status=status, tenant_id=self.principal.tenant_id)
        return [r for r in rows if self._approval_visible(r)]

    def approval(self, request_id: str) -> dict[str, Any]:
        self.principal.require(P.APPROVALS_READ)
        row = self._tenant_approval(request_id)
        if not self._approval_visible(row):
            raise not_found("approval request", request_id)
        return row

    def _tenant_approval(self, request_id: str) -> dict[str, Any]:
        """The request if it is of this principal's tenant (its subscription's tenant too);
        ``NOT_FOUND`` otherwise."""
        try:
            row = self.service.approval(request_id)
        except OmsError as err:
            if err.code == ErrorCode.REQUEST_NOT_FOUND:
                raise not_found("approval request", request_id) from None
            raise
        sub = self.service.store.get_subscription(row["subscription_id"])
        tenants = {row.get("tenant_id"), sub.tenant_id if sub is not None else None}
        if {t or DEFAULT_TENANT for t in tenants} != {self.principal.tenant_id}:
            raise not_found("approval request", request_id)
        return row

    async def decide(self, request_id: str, *, approve: bool, reason: str) -> ApprovalResult:
        """Decide as this principal: its id is the approver, its groups come from the store.

        Any request of the principal's tenant may be named (another tenant's is ``NOT_FOUND``);
        whether its groups may decide it is the workflow's check, which answers
        ``APPROVER_NOT_AUTHORIZED`` (and ``SELF_APPROVAL`` for the requester).
        """
        p = self.principal
        p.require(P.APPROVALS_DECIDE)
        row = self._tenant_approval(request_id)
        return await self.service.decide(
            row["request_id"],
            approve=approve,
            approver=p.id,
            reason=reason,
            channel=self.channel,
            approver_groups=list(p.groups),
            tenant_id=p.tenant_id,
        )

    # --- operations ----------------------------------------------------------------------

    def require(self, permission: Permission) -> None:
        self.principal.require(permission)
