"""What the subscription does next, and when: one pure decision over its state.

The main loop asks :func:`plan` for the next step, sleeps until its instant (or until a message
changes the state, when it asks again) and then carries it out under the state lock, after asking
once more. Every timer of the subscription is here: renewals and their notices, dunning retries and
final actions, charges still processing at the gateway, the end of a pause, approval reminders,
escalations and deadlines, and the retry of a step that needed attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from temporalio import workflow

from workflows.subscription.context import Status, Sub

with workflow.unsafe.imports_passed_through():
    from models.calendar import local_midnight_utc
    from models.dunning import DunningStep, RenewalDuringDunning, next_step
    from models.subscription import OpenInvoice


class Kind(StrEnum):
    """The kinds of step, in the order they are taken when due at the same instant."""

    BEGIN = "begin"
    POLL = "poll"
    COLLECT = "collect"
    DUNNING_FINAL = "dunning_final"
    DUNNING_RETRY = "dunning_retry"
    APPROVAL = "approval"
    RESUME = "resume"
    NOTICE = "notice"
    CANCEL_AT_PERIOD_END = "cancel_at_period_end"
    RENEW = "renew"
    WAIT = "wait"  # nothing is scheduled: the subscription waits for a message


ORDER = list(Kind)


@dataclass(frozen=True)
class Step:
    kind: Kind
    at: datetime | None  # None: no timer (only a message moves the subscription on)

    def due(self, now: datetime) -> bool:
        return self.at is not None and self.at <= now


def dunning_step(sub: Sub, inv: OpenInvoice, now: datetime | None = None) -> DunningStep:
    """The dunning policy's next step for an unpaid invoice that has failed at least once."""
    assert inv.schedule_start is not None and inv.first_failed_at is not None
    return next_step(
        sub.st.dunning_rule,
        failures=max(1, inv.failures_in_schedule),
        schedule_start=inv.schedule_start,
        first_failed_at=inv.first_failed_at,
        decline_category=inv.last_decline_category,
        now=now or workflow.now(),
    )


def notice_key(sub: Sub, n: int | None = None) -> str:
    """The key of the notice before period ``n`` (default: the next); unique per schedule."""
    st = sub.st
    if st.status == Status.trialing and n is None:
        return "trial_ending"
    index = st.period_index if n is None else n
    # A pause or an interval change restarts the numbering: the schedule keeps keys apart.
    return f"upcoming:{index}" if st.schedule == 0 else f"upcoming:s{st.schedule}:{index}"


def plan(sub: Sub) -> Step:
    """The next step of the subscription (the earliest of its candidates)."""
    st, now = sub.st, workflow.now()
    if st.status.is_terminal:
        return Step(Kind.WAIT, None)
    candidates: list[Step] = []
    if st.status == Status.incomplete and st.gateway_customer_id is None:
        candidates.append(Step(Kind.BEGIN, now))
    elif st.status == Status.paused:
        if st.resume_on is not None:
            candidates.append(Step(Kind.RESUME, local_midnight_utc(st.resume_on, st.timezone)))
        processing = [i for i in st.open_invoices if i.processing_key is not None]
        candidates.extend(Step(Kind.POLL, i.next_poll_at or now) for i in processing[:1])
    else:
        candidates.extend(_billing_steps(sub, now))
    for approval in st.approvals:
        instants = [approval.deadline]
        if approval.reminder_at is not None and not approval.reminded:
            instants.append(approval.reminder_at)
        if approval.escalate_at is not None and not approval.escalated:
            instants.append(approval.escalate_at)
        candidates.append(Step(Kind.APPROVAL, min(instants)))
    timed = [c for c in candidates if c.at is not None]
    if not timed:
        return Step(Kind.WAIT, None)
    step = min(timed, key=lambda c: (c.at, ORDER.index(c.kind)))
    attention = st.attention
    blocked = attention is not None and attention.blocking
    if blocked and attention is not None and step.at is not None and step.at < attention.retry_at:
        step = Step(step.kind, attention.retry_at)  # a refused step waits for its retry
    return step


def _billing_steps(sub: Sub, now: datetime) -> list[Step]:
    st = sub.st
    steps: list[Step] = []
    if st.open_invoices:
        inv = st.open_invoices[0]
        if inv.processing_key is not None:
            return [Step(Kind.POLL, inv.next_poll_at or now)]
        if inv.attempts == 0 or inv.first_failed_at is None or inv.schedule_start is None:
            return [Step(Kind.COLLECT, now)]  # invoiced, never attempted: collect in order
        if st.status == Status.unpaid:
            if st.cancel_at_period_end:
                return [Step(Kind.CANCEL_AT_PERIOD_END, sub.due_at())]
            return []  # the final action was to wait for a new payment method
        step = dunning_step(sub, inv, now)
        if step.final_action is not None:
            return [Step(Kind.DUNNING_FINAL, now)]
        if step.retry_at is not None:
            steps.append(Step(Kind.DUNNING_RETRY, step.retry_at))
        if step.final_at is not None:
            steps.append(Step(Kind.DUNNING_FINAL, step.final_at))
        renews = st.dunning_rule.renewal_during_dunning != RenewalDuringDunning.skip
        if st.cancel_at_period_end:
            steps.append(Step(Kind.CANCEL_AT_PERIOD_END, sub.due_at()))
        elif renews:
            steps.append(Step(Kind.RENEW, sub.due_at()))
        return steps
    due_at = sub.due_at()
    if st.cancel_at_period_end:
        return [Step(Kind.CANCEL_AT_PERIOD_END, due_at)]
    if notice_key(sub) not in st.notices_sent and due_at > now:
        steps.append(Step(Kind.NOTICE, sub.notice_at()))
    steps.append(Step(Kind.RENEW, due_at))
    return steps
