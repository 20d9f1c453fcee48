"""The dunning policy: retry schedule, hard declines, grace access, final action."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from models.dunning import (
    Access,
    DunningRule,
    FinalAction,
    default_dunning_policy,
    next_step,
    parse_dunning_policy,
)

T0 = datetime(2027, 3, 1, tzinfo=UTC)
RULE = DunningRule(retry_days=[1, 3, 5, 7], window_days=14, access=Access.grace, grace_days=7)


@pytest.mark.parametrize(
    ("failures", "now_days", "stage", "retry_day"),
    [
        (1, 0, "retrying", 1),
        (2, 1, "retrying", 3),
        (4, 5, "retrying", 7),
        (5, 7, "awaiting_payment_method", None),  # schedule exhausted: wait for a card
        (5, 14, "final", None),
    ],
)
def test_soft_declines_follow_the_schedule_then_wait_then_end(
    failures: int, now_days: int, stage: str, retry_day: int | None
) -> None:
    step = next_step(
        RULE,
        failures=failures,
        schedule_start=T0,
        first_failed_at=T0,
        decline_category="soft",
        now=T0 + timedelta(days=now_days),
    )
    assert step.stage == stage
    assert step.retry_at == (T0 + timedelta(days=retry_day) if retry_day else None)
    assert step.final_action == (FinalAction.cancel if stage == "final" else None)


@pytest.mark.parametrize("category", ["hard", "authentication_required"])
def test_hard_declines_are_not_retried_on_the_same_card(category: str) -> None:
    step = next_step(
        RULE,
        failures=1,
        schedule_start=T0,
        first_failed_at=T0,
        decline_category=category,
        now=T0,
    )
    assert step.stage == "awaiting_payment_method" and step.retry_at is None
    assert step.final_at == T0 + timedelta(days=14)


def test_grace_access_turns_restricted_after_the_grace_days() -> None:
    def access(days: int) -> Access:
        return next_step(
            RULE,
            failures=1,
            schedule_start=T0,
            first_failed_at=T0,
            decline_category="soft",
            now=T0 + timedelta(days=days),
        ).access

    assert (access(6), access(7)) == (Access.full, Access.restricted)


def test_a_reset_schedule_counts_from_the_card_update_but_the_window_from_the_first_failure() -> (
    None
):
    updated = T0 + timedelta(days=4)
    step = next_step(
        RULE,
        failures=1,
        schedule_start=updated,
        first_failed_at=T0,
        decline_category="soft",
        now=updated,
    )
    assert step.retry_at == updated + timedelta(days=1)
    assert step.final_at == T0 + timedelta(days=14)


def test_rules_are_chosen_by_plan_then_segment_then_default() -> None:
    policy = default_dunning_policy()
    assert policy.rule_for("coffee-beans", "self_serve").window_days == 7
    assert policy.rule_for("enterprise", "enterprise").final_action == FinalAction.mark_unpaid
    assert policy.rule_for("pro", "self_serve") == policy.default


@pytest.mark.parametrize(
    "text",
    [
        "default:\n  retry_days: [3, 1]\n",
        "default:\n  retry_days: [1, 20]\n  window_days: 14\n",
        "default:\n  final_action: shrug\n",
    ],
)
def test_bad_policies_are_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_dunning_policy(text)


def test_next_step_needs_a_failure() -> None:
    with pytest.raises(ValueError, match="at least one failed attempt"):
        next_step(
            RULE, failures=0, schedule_start=T0, first_failed_at=T0, decline_category=None, now=T0
        )
