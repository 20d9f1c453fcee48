"""One order through the intake: claim (rules, reservations), start, record; retries."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import structlog

from activities.intake_store import ClaimOutcome, OrderStatus
from models.errors import ErrorCode, OmsError, http_status
from models.intake_rules import Decision, IntakeFacts, evaluate
from models.orders import BillingMode, CanonicalOrder, Channel, ParsedItem
from models.subscription import Actor, StartResult
from starter.intake.dead_letters import DeadLetterWriter, _Replay
from starter.intake.results import INTERNAL, IntakeError, ItemResult, Outcome
from starter.intake.transient import _Unavailable, classify
from starter.service import SubscribeRequest

log = structlog.get_logger("starter.intake")  # the package's one logger name

T = TypeVar("T")


class OrderPath(DeadLetterWriter):
    """The intake of one order of a payload (``IntakeService._handle`` calls ``_item``)."""

    async def _item(
        self,
        ch: Channel,
        item: ParsedItem,
        hdrs: dict[str, str],
        received: datetime,
        replay: _Replay | None,
    ) -> ItemResult:
        self.metrics.received.labels(ch.value).inc()
        try:
            if item.error is not None:
                return await self._malformed(ch, item, hdrs, received, replay)
            assert item.order is not None
            return await self._order(ch, item, item.order, hdrs, received, replay)
        except Exception as exc:  # a bug: still never lose the order
            log.exception("intake.internal_error", channel=ch.value, index=item.index)
            dl_id = await self._dead_letter(
                self._draft(
                    ch,
                    item,
                    hdrs,
                    received,
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

    async def _malformed(
        self,
        ch: Channel,
        item: ParsedItem,
        hdrs: dict[str, str],
        received: datetime,
        replay: _Replay | None,
    ) -> ItemResult:
        err = item.error
        assert err is not None
        if item.hint.channel_order_id:
            # A broken copy of an order that was accepted (e.g. after a corrected replay): the
            # order exists, so answer with its result instead of dead-lettering it again.
            try:
                known = await self._db(self.store.get_order, ch.value, item.hint.channel_order_id)
            except Exception:
                known = None
            if known is not None and known.status == OrderStatus.ACCEPTED:
                self.metrics.duplicates.labels(ch.value).inc()
                return self._ok(item, Outcome.DUPLICATE, json.loads(known.result))
        dl_id = await self._dead_letter(
            self._draft(ch, item, hdrs, received, err.code.value, err.message, err.rule, 1, None),
            replay,
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
        self,
        ch: Channel,
        item: ParsedItem,
        order: CanonicalOrder,
        hdrs: dict[str, str],
        received: datetime,
        replay: _Replay | None,
    ) -> ItemResult:
        t0 = time.monotonic()
        deadline = t0 + self.settings.budget_s
        attempts = [0]
        sku = self._sku(order)

        def decide(facts: IntakeFacts) -> Decision:
            return evaluate(order, self.catalog, facts)

        try:
            claim = await self._retry(
                ch, lambda: self._db(self.store.claim, order, sku, decide), deadline, attempts
            )
        except _Unavailable as u:
            return await self._give_up(ch, item, order, None, u, hdrs, received, replay)
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
                ch, lambda: self._start(order, decision), deadline, attempts
            )
        except _Unavailable as u:
            return await self._give_up(ch, item, order, decision, u, hdrs, received, replay)
        except OmsError as err:  # the workflow (or the service's own checks) refused it
            await self._db(
                self.store.release,
                ch.value,
                order.channel_order_id,
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
                    self.store.complete,
                    ch.value,
                    order.channel_order_id,
                    started.subscription_id,
                    body,
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
        ch: Channel,
        item: ParsedItem,
        order: CanonicalOrder,
        decision: Decision | None,
        u: _Unavailable,
        hdrs: dict[str, str],
        received: datetime,
        replay: _Replay | None,
    ) -> ItemResult:
        rule = {
            ErrorCode.DATABASE_UNAVAILABLE: "dependency.database",
            ErrorCode.GATEWAY_UNAVAILABLE: "dependency.gateway",
            ErrorCode.TIMEOUT: "dependency.timeout",
        }.get(u.code, "dependency.temporal")
        dl_id = await self._dead_letter(
            self._draft(
                ch, item, hdrs, received, u.code.value, u.message, rule, u.attempts, decision
            ),
            replay,
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
                message=f"{u.message}; the order was recorded as {where} after {u.attempts} "
                "attempt(s): send it again later (same order id) or replay the dead letter",
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

    async def _start(self, order: CanonicalOrder, decision: Decision) -> StartResult:
        async def go() -> StartResult:
            service = await self.service()
            req = SubscribeRequest(
                # Invoice orders bill the account (the payer), card orders the customer.
                email=decision.bill_to_email or order.email,
                plan_id=order.plan_id,
                interval=order.interval.value,
                currency=order.currency,
                payment_method_id=decision.payment_method_id,
                trial_days=order.trial_days,
                quantity=order.quantity,
                timezone=order.timezone,
                anchor_day=order.anchor_day,
                request_id=order.request_id,
            )
            actor = Actor(
                actor=f"intake:{order.partner_id or order.channel.value}"[:200],
                channel=f"intake:{order.channel.value}",
                reason=f"order {order.channel_order_id}"[:500],
                request_id=order.request_id,
            )
            return await service.subscribe(req, actor, wait_for_payment=False)

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
