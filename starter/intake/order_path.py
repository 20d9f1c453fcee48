"""One order through the intake: access, claim (rules, reservations), start, record; retries."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

from activities.intake_store import ClaimOutcome, OrderStatus
from models.errors import ErrorCode, OmsError, http_status
from models.identity import Role
from models.intake_rules import Decision, IntakeFacts, Violation, check_order_access, evaluate
from models.orders import BillingMode, CanonicalOrder, Channel, ParsedItem
from models.redact import redact_cards
from models.subscription import Actor, StartResult
from starter.intake.dead_letters import DeadLetterWriter
from starter.intake.results import INTERNAL, IntakeError, ItemResult, Outcome
from starter.intake.submission import Submission
from starter.intake.transient import _Unavailable, classify, public_message
from starter.service import SubscribeRequest

log = structlog.get_logger("starter.intake")  # the package's one logger name

T = TypeVar("T")


class OrderPath(DeadLetterWriter):
    """The intake of one order of a payload (``IntakeService._handle`` calls ``_item``)."""

    async def _item(self, sub: Submission, item: ParsedItem, replay_item: bool) -> ItemResult:
        """One order of the payload (``replay_item``: its failures fold into the replayed one)."""
        ch = sub.channel
        replay = sub.replay if replay_item else None
        self.metrics.received.labels(ch.value).inc()
        try:
            if item.error is not None:
                return await self._malformed(sub, item, replay_item)
            assert item.order is not None
            order = item.order.scoped(sub.tenant_id, sub.scope_id)
            return await self._order(sub, item, order, replay_item)
        except Exception as exc:  # a bug: still never lose the order
            log.exception("intake.internal_error", channel=ch.value, index=item.index)
            dl_id = await self._dead_letter(
                self._draft(
                    sub,
                    item,
                    INTERNAL,
                    f"internal error: {exc!r}"[:900],
                    "intake.internal",
                    1,
                    None,
                ),
                replay,
            )
            return ItemResult(
                outcome=Outcome.DEAD_LETTERED,
                status_code=500,
                index=item.index,
                channel_order_id=item.channel_order_id,
                error=IntakeError(
                    code=INTERNAL,
                    message="the order could not be processed because of an internal error; it "
                    "was recorded as a dead letter and will be replayed",
                    rule="intake.internal",
                    dead_letter_id=dl_id,
                ),
            )

    async def _malformed(self, sub: Submission, item: ParsedItem, replay_item: bool) -> ItemResult:
        ch = sub.channel
        err = item.error
        assert err is not None
        if item.hint.channel_order_id:
            # A broken copy of an order of this sender that was accepted (e.g. after a corrected
            # replay): the order exists with other terms, so this copy is refused like any other
            # body sent under the same order id (409), and not dead-lettered again.
            try:
                known = await self._db(
                    self.store.order_by_id, sub.order_id(item.hint.channel_order_id)
                )
            except Exception:
                known = None
            if known is not None and known.status == OrderStatus.ACCEPTED:
                return self._conflict(sub, item, item.hint.channel_order_id)
        dl_id = await self._dead_letter(
            self._draft(sub, item, err.code.value, err.message, err.rule, 1, None),
            sub.replay if replay_item else None,
        )
        log.warning(
            "intake.item_malformed",
            channel=ch.value,
            index=item.index,
            code=err.code.value,
            field=err.field,
            dead_letter_id=dl_id,
        )
        return ItemResult(
            outcome=Outcome.DEAD_LETTERED,
            status_code=http_status(err.code),
            index=item.index,
            channel_order_id=item.channel_order_id,
            error=IntakeError(
                code=err.code,
                message=err.message,
                rule=err.rule,
                field=err.field,
                dead_letter_id=dl_id,
            ),
        )

    async def _order(
        self, sub: Submission, item: ParsedItem, order: CanonicalOrder, replay_item: bool
    ) -> ItemResult:
        ch = sub.channel
        t0 = time.monotonic()
        deadline = t0 + self.settings.budget_s
        attempts = [0]
        sku = self._sku(order)
        access = check_order_access(order, sub.principal)
        if access.refused is not None:  # nothing is recorded, reserved or started
            return self._refused(sub, item, order, access.refused)

        def decide(facts: IntakeFacts) -> Decision:
            return evaluate(order, self.catalog, facts)

        try:
            claim = await self._retry(
                ch,
                lambda: self._db(
                    self.store.claim, order, sku, decide, use_account=access.use_account
                ),
                deadline,
                attempts,
            )
        except _Unavailable as u:
            return await self._give_up(sub, item, order, None, u, replay_item)
        if claim.outcome == ClaimOutcome.CONFLICT:
            return self._conflict(sub, item, order.channel_order_id)
        if claim.outcome == ClaimOutcome.DUPLICATE:
            self.metrics.duplicates.labels(ch.value).inc()
            log.info("intake.duplicate", channel=ch.value, order_id=order.order_id)
            return self._ok(item, Outcome.DUPLICATE, json.loads(claim.row.result))
        decision = claim.decision
        assert decision is not None
        if claim.outcome == ClaimOutcome.REJECTED:
            return self._rejected(ch, item, order, decision)
        t_claimed = time.monotonic()
        try:
            started = await self._retry(
                ch, lambda: self._start(sub, order, decision), deadline, attempts
            )
        except _Unavailable as u:
            return await self._give_up(sub, item, order, decision, u, replay_item)
        except OmsError as err:  # the workflow (or the service's own checks) refused it
            await self._db(
                self.store.release,
                order.order_id,
                OrderStatus.REJECTED,
                rule="workflow.start",
                error_code=err.code.value,
                message=err.message,
            )
            self.metrics.rejected.labels(ch.value, "workflow.start", err.code.value).inc()
            log.info(
                "intake.rejected",
                channel=ch.value,
                order_id=order.order_id,
                rule="workflow.start",
                code=err.code.value,
            )
            return ItemResult(
                outcome=Outcome.REJECTED,
                status_code=http_status(err.code),
                index=item.index,
                channel_order_id=order.channel_order_id,
                error=IntakeError(code=err.code, message=err.message, rule="workflow.start"),
            )
        body = self._accepted_body(order, decision, started)
        t_started = time.monotonic()
        first = True
        try:
            # Recording gets a budget of its own: the subscription exists whatever happens here.
            first = await self._retry(
                ch,
                lambda: self._db(
                    self.store.complete, order.order_id, started.subscription_id, body
                ),
                time.monotonic() + self.settings.budget_s,
                [0],
            )
        except _Unavailable as u:
            log.error(
                "intake.record_failed",
                channel=ch.value,
                order_id=order.order_id,
                subscription_id=started.subscription_id,
                code=u.code.value,
            )
        if not first:
            self.metrics.duplicates.labels(ch.value).inc()
            return self._ok(item, Outcome.DUPLICATE, body)
        self.metrics.accepted.labels(ch.value).inc()
        log.info(
            "intake.accepted",
            channel=ch.value,
            order_id=order.order_id,
            principal=sub.principal.id,
            tenant=sub.tenant_id,
            subscription_id=started.subscription_id,
            rule_set=decision.rule_set.value,
            attempts=attempts[0],
            claim_ms=round((t_claimed - t0) * 1000, 1),
            start_ms=round((t_started - t_claimed) * 1000, 1),
            record_ms=round((time.monotonic() - t_started) * 1000, 1),
        )
        return self._ok(item, Outcome.ACCEPTED, body)

    def _ok(self, item: ParsedItem, outcome: Outcome, body: dict[str, Any]) -> ItemResult:
        return ItemResult(
            outcome=outcome,
            status_code=201 if outcome == Outcome.ACCEPTED else 200,
            index=item.index,
            channel_order_id=item.channel_order_id,
            order=body,
        )

    def _refused(
        self, sub: Submission, item: ParsedItem, order: CanonicalOrder, v: Violation
    ) -> ItemResult:
        """An order the principal may not place (access rules): refused, nothing written."""
        ch = sub.channel
        self.metrics.rejected.labels(ch.value, v.rule, v.code.value).inc()
        log.warning(
            "intake.refused",
            channel=ch.value,
            order_id=order.order_id,
            principal=sub.principal.id,
            role=sub.principal.role.value,
            tenant=sub.tenant_id,
            rule=v.rule,
            code=v.code.value,
        )
        return ItemResult(
            outcome=Outcome.REJECTED,
            status_code=http_status(v.code),
            index=item.index,
            channel_order_id=item.channel_order_id,
            error=IntakeError(code=v.code, message=v.message, rule=v.rule),
        )

    def _conflict(self, sub: Submission, item: ParsedItem, channel_order_id: str) -> ItemResult:
        """The same order id came before from this sender with other terms: 409, nothing done."""
        ch = sub.channel
        code = ErrorCode.IDEMPOTENCY_KEY_REUSED
        self.metrics.rejected.labels(ch.value, "order.idempotency", code.value).inc()
        log.info(
            "intake.conflict",
            channel=ch.value,
            order_id=sub.order_id(channel_order_id),
            principal=sub.principal.id,
        )
        return ItemResult(
            outcome=Outcome.REJECTED,
            status_code=http_status(code),
            index=item.index,
            channel_order_id=item.channel_order_id,
            error=IntakeError(
                code=code,
                message=f"order id {redact_cards(channel_order_id)[:200]!r} was already sent "
                "with other terms; the first order stands. Send a new order id for a new order, "
                "or the same terms to get the first order's answer",
                rule="order.idempotency",
            ),
        )

    def _rejected(
        self, ch: Channel, item: ParsedItem, order: CanonicalOrder, decision: Decision
    ) -> ItemResult:
        v = decision.primary
        assert v is not None
        self.metrics.rejected.labels(ch.value, v.rule, v.code.value).inc()
        log.info(
            "intake.rejected",
            channel=ch.value,
            order_id=order.order_id,
            rule=v.rule,
            code=v.code.value,
            rule_set=decision.rule_set.value,
            also=[x.rule for x in decision.violations[1:]],
        )
        return ItemResult(
            outcome=Outcome.REJECTED,
            status_code=http_status(v.code),
            index=item.index,
            channel_order_id=order.channel_order_id,
            error=IntakeError(code=v.code, message=v.message, rule=v.rule),
        )

    async def _give_up(
        self,
        sub: Submission,
        item: ParsedItem,
        order: CanonicalOrder,
        decision: Decision | None,
        u: _Unavailable,
        replay_item: bool,
    ) -> ItemResult:
        ch = sub.channel
        rule = {
            ErrorCode.DATABASE_UNAVAILABLE: "dependency.database",
            ErrorCode.GATEWAY_UNAVAILABLE: "dependency.gateway",
            ErrorCode.TIMEOUT: "dependency.timeout",
        }.get(u.code, "dependency.temporal")
        dl_id = await self._dead_letter(
            self._draft(sub, item, u.code.value, u.message, rule, u.attempts, decision),
            sub.replay if replay_item else None,
        )
        log.warning(
            "intake.dead_lettered",
            channel=ch.value,
            order_id=order.order_id,
            code=u.code.value,
            attempts=u.attempts,
            dead_letter_id=dl_id,
        )
        where = f"dead letter {dl_id}" if dl_id is not None else "the intake spool"
        return ItemResult(
            outcome=Outcome.DEAD_LETTERED,
            status_code=http_status(u.code),
            index=item.index,
            channel_order_id=order.channel_order_id,
            error=IntakeError(
                code=u.code,
                message=f"{public_message(u.code)}; the order was recorded as {where} after "
                f"{u.attempts} attempt(s): send it again later (same order id) or replay the "
                "dead letter",
                rule=rule,
                dead_letter_id=dl_id,
            ),
        )

    # --- steps --------------------------------------------------------------------------

    def _sku(self, order: CanonicalOrder) -> str | None:
        try:
            plan = self.catalog.plan(order.plan_id)
        except OmsError:
            return None
        return (plan.sku or plan.plan_id) if plan.kind == "physical" else None

    async def _start(
        self, sub: Submission, order: CanonicalOrder, decision: Decision
    ) -> StartResult:
        p = sub.principal
        reason = f"order {order.channel_order_id}"
        if sub.replayed_by is not None:
            reason += f" (dead letter replayed by {sub.replayed_by.id})"

        async def go() -> StartResult:
            service = await self.service()
            req = SubscribeRequest(
                # Invoice orders bill the account (the payer), card orders the customer.
                email=decision.bill_to_email or order.email,
                plan_id=order.plan_id,
                interval=order.interval.value,
                currency=order.currency,
                payment_method_id=decision.payment_method_id,
                trial_days=None,  # the plan's (rule catalog.trial refused any other)
                quantity=order.quantity,
                timezone=order.timezone,
                anchor_day=order.anchor_day,
                request_id=order.request_id,
            )
            # Who, from the authenticated principal only (never from the payload).
            actor = Actor(
                actor=p.id,
                channel=f"intake:{order.channel.value}",
                reason=redact_cards(reason)[:500],
                request_id=order.request_id,
                tenant_id=p.tenant_id,
                role=p.role.value,
            )
            return await service.subscribe(
                req,
                actor,
                wait_for_payment=False,
                tenant_id=order.tenant_id,
                customer_id=p.customer_id if p.role == Role.CUSTOMER else None,
            )

        return await asyncio.wait_for(go(), self.settings.attempt_timeout_s)

    async def _retry(
        self,
        ch: Channel,
        step: Callable[[], Awaitable[T]],
        deadline: float,
        attempts: list[int],
    ) -> T:
        """Run ``step``; retry transient failures with backoff while the budget lasts.

        Raises:
            _Unavailable: the last transient failure, once retries are exhausted.
            Exception: anything not transient, unchanged.
        """
        delay = self.settings.backoff_initial_s
        tries = 0
        while True:
            tries += 1
            attempts[0] += 1
            try:
                return await step()
            except Exception as exc:
                transient = classify(exc)
                if transient is None:
                    raise
                code, message = transient
                remaining = deadline - time.monotonic()
                if tries >= self.settings.max_attempts or remaining <= delay:
                    raise _Unavailable(code, message, tries) from exc
                self.metrics.retries.labels(ch.value, code.value).inc()
                log.info("intake.retry", channel=ch.value, code=code.value, attempt=tries)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.settings.backoff_max_s)

    def _accepted_body(
        self, order: CanonicalOrder, decision: Decision, started: StartResult
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "order_id": order.order_id,
            "channel": order.channel.value,
            "channel_order_id": order.channel_order_id,
            "subscription_id": started.subscription_id,
            "customer_id": started.customer_id,
            "status": started.status.value,
            "plan_id": started.plan_id,
            "interval": started.interval.value,
            "quantity": order.quantity,
            "currency": started.currency,
            "first_invoice_date": started.first_invoice_date.isoformat(),
            "first_charge_minor": started.first_charge_minor,
            "trial_end": started.trial_end.isoformat() if started.trial_end else None,
            "billing": order.billing.value,
            **({"account_id": order.account_key} if order.billing == BillingMode.INVOICE else {}),
            "rule_set": decision.rule_set.value,
        }
        if decision.stock_to_reserve:
            body["reserved"] = {"sku": decision.sku, "quantity": decision.stock_to_reserve}
        if order.referral is not None:
            body["referral"] = order.referral.model_dump(exclude_none=True)
        return body
