"""Read-only views of the subscription: the ``state``, ``timeline`` and ``pending`` queries."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

from workflows.subscription.context import Status, Sub
from workflows.subscription.steps import dunning_step, notice_key

with workflow.unsafe.imports_passed_through():
    from models.calendar import local_midnight_utc
    from models.money import format_money
    from models.subscription import PendingView, SubscriptionView, Timeline, TimelineEvent

TIMELINE_RENEWALS = 3


def state_view(sub: Sub) -> SubscriptionView:
    st = sub.st
    snapshot = sub.snapshot()
    return SubscriptionView(
        **snapshot.model_dump(),
        next_billing_date=sub.due_date() if snapshot.next_billing_at else None,
        period_index=st.period_index,
        dunning_stage=st.dunning_stage,
        access=st.access,
        open_invoices=st.open_invoices,
        account_credit_minor=st.account_credit_minor,
        paused_on=st.paused_on,
        resume_on=st.resume_on,
        pending_approvals=len(st.approvals),
        scheduled_changes=len(st.scheduled_changes),
        needs_attention=st.attention is not None,
        attention_code=st.attention.code if st.attention else None,
        attention_message=st.attention.message if st.attention else None,
        carried_minor=st.carried_minor,
    )


def pending_view(sub: Sub) -> PendingView:
    return PendingView(
        subscription_id=sub.st.subscription_id,
        scheduled=list(sub.st.scheduled_changes),
        approvals=list(sub.st.approvals),
    )


def timeline_view(sub: Sub) -> Timeline:
    st = sub.st
    events: list[TimelineEvent] = []
    if st.open_invoices and not st.status.is_terminal:
        events.extend(_dunning_timeline(sub))
    elif not st.status.is_terminal and st.status != Status.paused:
        currency = st.terms.currency
        trialing = st.status == Status.trialing
        for i in range(TIMELINE_RENEWALS):
            n = st.period_index + i
            amount = sub.period_amount(n)
            at = local_midnight_utc(sub.due_date(n), st.timezone)
            if st.cancel_at_period_end:
                events.append(
                    TimelineEvent(
                        at=at, kind="cancellation", description="cancellation takes effect"
                    )
                )
                break
            first = i == 0
            key = notice_key(sub) if first else notice_key(sub, n)
            notice_at = at - timedelta(days=st.notice_days)
            if key not in st.notices_sent and notice_at > workflow.now():
                events.append(
                    TimelineEvent(
                        at=notice_at,
                        kind="trial_ending_notice"
                        if key == "trial_ending"
                        else "upcoming_charge_notice",
                        description=f"notice of the {format_money(amount, currency)} charge",
                    )
                )
            if trialing and first:
                events.append(TimelineEvent(at=at, kind="trial_end", description="trial ends"))
            events.append(
                TimelineEvent(
                    at=at,
                    kind="renewal" if n > st.first_period_index else "first_charge",
                    description=f"invoice period {n} and charge",
                    amount_minor=amount,
                    currency=currency,
                )
            )
    elif st.status == Status.paused and st.resume_on is not None:
        events.append(
            TimelineEvent(
                at=local_midnight_utc(st.resume_on, st.timezone),
                kind="resume",
                description="the pause ends",
            )
        )
    for approval in st.approvals:
        events.append(
            TimelineEvent(
                at=approval.deadline,
                kind="approval_deadline",
                description=f"approval of {approval.request_id} expires",
            )
        )
    events.sort(key=lambda e: e.at)
    return Timeline(subscription_id=st.subscription_id, status=st.status, events=events)


def _dunning_timeline(sub: Sub) -> list[TimelineEvent]:
    st = sub.st
    inv = st.open_invoices[0]
    if inv.first_failed_at is None or inv.schedule_start is None:
        return []
    step = dunning_step(sub, inv)
    events: list[TimelineEvent] = []
    if step.retry_at is not None:
        events.append(
            TimelineEvent(
                at=step.retry_at,
                kind="payment_retry",
                description=f"retry {inv.invoice_id} (attempt {inv.attempts})",
                amount_minor=inv.amount_minor,
                currency=st.terms.currency,
            )
        )
    if step.final_at is not None and st.status != Status.unpaid:
        events.append(
            TimelineEvent(
                at=step.final_at,
                kind="dunning_final_action",
                description=f"{st.dunning_rule.final_action.value} if still unpaid",
            )
        )
    return events
