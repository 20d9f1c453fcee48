"""What every part of the subscription workflow shares: its state, activities, lock and clock.

The workflow keeps one ``SubscriptionState`` (the model continue-as-new carries). Everything that
changes it with side effects runs under one lock, taken by the main loop for each action and by
each message handler for its whole body, so a handler never interleaves with a renewal, a dunning
retry or another handler. Handlers never wait for the loop (the loop waits for them only before
continue-as-new), which is what keeps the two from deadlocking.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta

from temporalio import workflow

from workflows.subscription.calls import Calls, Refused

with workflow.unsafe.imports_passed_through():
    from models import search_attributes as sa
    from models.billing import billed_span, period_amount
    from models.calendar import local_date, local_midnight_utc
    from models.policy import Policy, TermsSnapshot, default_policy
    from models.subscription import (
        Actor,
        Attention,
        AuditEntry,
        Notification,
        SubscriptionSnapshot,
        SubscriptionState,
        SubscriptionStatus,
        Terms,
        TransitionRecord,
    )
    from models.vocabulary import AuditAction

Status = SubscriptionStatus

# Longest text a message may carry into state, history and audit rows (columns are bounded too).
MAX_TEXT = 500
MAX_ID = 64
ATTENTION_BACKOFF = (
    timedelta(minutes=5),
    timedelta(hours=1),
    timedelta(hours=6),
    timedelta(days=1),
)


def clip(text: str | None, limit: int = MAX_TEXT) -> str | None:
    """``text`` cut to ``limit`` characters (None stays None)."""
    return None if text is None else text[:limit]


def clip_actor(by: Actor) -> Actor:
    """An actor whose strings fit the audit columns."""
    return Actor(
        actor=by.actor[:MAX_ID],
        channel=by.channel[:32],
        request_id=clip(by.request_id, MAX_ID),
        reason=clip(by.reason),
    )


class Sub:
    """The state and the shared operations of one subscription workflow run."""

    def __init__(self, state: SubscriptionState) -> None:
        self.st = state
        self.calls = Calls()
        self.lock = asyncio.Lock()
        # Bumped whenever a handler finished changing state: the loop's sleep compares it with the
        # value it planned on, so a message that lands while the loop acts is never missed.
        self.version = 0
        # Immediate cancellations accepted and not yet carried out: no charge starts meanwhile.
        self.cancels_waiting = 0
        self.messages = 0  # messages handled in this run (bounds history with continue-as-new)

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the state lock for a handler's body; wake the loop when done."""
        self.messages += 1
        async with self.lock:
            try:
                yield
            finally:
                self.version += 1

    # --- time and schedule ----------------------------------------------------------------

    def now(self) -> datetime:
        return workflow.now()

    def today(self) -> date:
        return local_date(workflow.now(), self.st.timezone)

    def billing_start(self) -> date:
        return self.st.billing_start or self.st.anchor

    def due_date(self, n: int | None = None) -> date:
        """The local date period ``n`` (default: the next) is billed on."""
        index = self.st.period_index if n is None else n
        span, _ = billed_span(self.st.anchor, self.st.terms.interval, index, self.billing_start())
        return span[0]

    def due_at(self, n: int | None = None) -> datetime:
        return local_midnight_utc(self.due_date(n), self.st.timezone)

    def notice_at(self) -> datetime:
        """When the upcoming-charge (or trial-ending) notice of the next charge goes out."""
        st = self.st
        days = st.notice_days
        if st.notice_days_by_interval is not None:
            days = st.notice_days_by_interval.get(st.terms.interval.value, days)
        return self.due_at() - timedelta(days=days)

    def period_amount(self, n: int | None = None, terms: Terms | None = None) -> int:
        st = self.st
        t = terms or st.terms
        return period_amount(
            anchor=st.anchor,
            interval=st.terms.interval,
            n=st.period_index if n is None else n,
            billing_start=self.billing_start(),
            currency=t.currency,
            unit_amount_minor=t.unit_amount_minor,
            quantity=t.quantity,
        )

    def policy(self) -> Policy:
        return self.st.policy or default_policy()

    @staticmethod
    def terms_snapshot(terms: Terms) -> TermsSnapshot:
        return TermsSnapshot(
            plan_id=terms.plan_id,
            tier=terms.tier,
            currency=terms.currency,
            interval=terms.interval,
            unit_amount_minor=terms.unit_amount_minor,
            quantity=terms.quantity,
        )

    def current_period(self) -> tuple[date, date] | None:
        st = self.st
        if st.status == Status.trialing and st.trial_end is not None:
            return (st.start_date, st.trial_end)
        if st.billed is not None:
            return (st.billed.start, st.billed.end)
        return None

    def next_billing_at(self) -> datetime | None:
        if self.st.status.is_terminal or self.st.cancel_at_period_end:
            return None
        return self.due_at()

    # --- views and search attributes --------------------------------------------------------

    def snapshot(self) -> SubscriptionSnapshot:
        st = self.st
        current = self.current_period()
        return SubscriptionSnapshot(
            subscription_id=st.subscription_id,
            customer_id=st.customer_id,
            tenant_id=st.tenant_id,
            plan_id=st.terms.plan_id,
            interval=st.terms.interval,
            currency=st.terms.currency,
            unit_amount_minor=st.terms.unit_amount_minor,
            quantity=st.terms.quantity,
            status=st.status,
            timezone=st.timezone,
            anchor=st.anchor,
            trial_end=st.trial_end,
            current_period_start=current[0] if current else None,
            current_period_end=current[1] if current else None,
            next_billing_at=self.next_billing_at(),
            cancel_at_period_end=st.cancel_at_period_end,
            canceled_at=st.canceled_at,
            payment_method_id=st.payment_method_id,
        )

    def mirror(self) -> None:
        """Mirror what operators filter on into search attributes (a view, not the truth)."""
        st = self.st
        if not st.search_attributes:
            return
        next_at = self.next_billing_at()
        workflow.upsert_search_attributes(
            [
                sa.SUBSCRIPTION_STATUS.value_set(st.status.value),
                sa.NEXT_BILLING_AT.value_set(next_at)
                if next_at
                else sa.NEXT_BILLING_AT.value_unset(),
                sa.DUNNING_STAGE.value_set(st.dunning_stage)
                if st.dunning_stage
                else sa.DUNNING_STAGE.value_unset(),
                sa.PENDING_APPROVAL.value_set(bool(st.approvals)),
                sa.PLAN_ID.value_set(st.terms.plan_id),
                sa.NEEDS_ATTENTION.value_set(st.attention is not None),
            ]
        )

    # --- audit and notices -----------------------------------------------------------------

    async def transition(
        self,
        action: str,
        to_status: SubscriptionStatus,
        by: Actor,
        details: dict[str, str] | None = None,
    ) -> None:
        """Move to ``to_status``, mirror it and write the audit row.

        The state changes first: the transition has happened whatever the audit write does. A
        refused audit write raises NeedsAttention (ops repair the row) instead of undoing it.
        """
        st = self.st
        from_status = st.status
        st.status = to_status
        st.audit_seq += 1
        self.mirror()
        entry = AuditEntry(
            event_key=f"{st.subscription_id}:{st.audit_seq}:{action}",
            subscription_id=st.subscription_id,
            action=action,
            from_status=from_status.value,
            to_status=to_status.value,
            actor=clip_actor(by).actor,
            channel=clip_actor(by).channel,
            request_id=clip(by.request_id, MAX_ID),
            reason=clip(by.reason),
            details={
                k: (v[:MAX_TEXT] if isinstance(v, str) else str(v))
                for k, v in (details or {}).items()
            },
            occurred_at=workflow.now(),
        )
        try:
            await self.calls.record_transition(
                TransitionRecord(snapshot=self.snapshot(), audit=entry)
            )
        except Refused as err:
            self.flag(err, f"audit:{action}", blocking=False)

    async def notify(
        self, kind: str, key: str, data: dict[str, str], at: datetime | None = None
    ) -> None:
        """Queue a notice in the outbox; a refused write flags NeedsAttention, never blocks."""
        st = self.st
        try:
            await self.calls.notify(
                Notification(
                    key=f"{st.subscription_id}:{key}",
                    subscription_id=st.subscription_id,
                    customer_id=st.customer_id,
                    kind=kind,
                    scheduled_for=at or workflow.now(),
                    data=data,
                )
            )
        except Refused as err:
            self.flag(err, f"notice:{kind}", blocking=False)

    # --- needs attention -------------------------------------------------------------------

    def flag(self, err: Refused, step: str, *, blocking: bool = True) -> Attention:
        """Raise NeedsAttention for a refused step; it is retried on a growing back-off.

        A blocking attention holds every step of the loop until its retry; a non-blocking one (a
        record that could not be written) only marks the subscription for an operator.
        """
        st = self.st
        now = workflow.now()
        if st.attention is not None and st.attention.blocking and not blocking:
            # A record that could not be written while a refused step waits: the step keeps
            # its retry (and clears the flag when it succeeds); the record is in the log.
            workflow.logger.warning("record refused", extra={"code": err.code, "step": step})
            return st.attention
        attempts = st.attention.attempts + 1 if st.attention is not None else 1
        delay = ATTENTION_BACKOFF[min(attempts, len(ATTENTION_BACKOFF)) - 1]
        st.attention = Attention(
            code=err.code,
            message=err.message[:MAX_TEXT],
            step=step,
            since=st.attention.since if st.attention is not None else now,
            retry_at=now + delay,
            attempts=attempts,
            blocking=blocking or (st.attention is not None and st.attention.blocking),
        )
        workflow.logger.warning(
            "subscription needs attention",
            extra={"code": err.code, "step": step, "retry_at": st.attention.retry_at.isoformat()},
        )
        self.mirror()
        return st.attention

    async def clear_attention(self) -> None:
        st = self.st
        if st.attention is None:
            return
        cleared = st.attention
        st.attention = None
        await self.transition(
            AuditAction.ATTENTION_CLEARED,
            st.status,
            Actor(),
            {"code": cleared.code, "step": cleared.step},
        )
