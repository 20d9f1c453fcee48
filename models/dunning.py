"""Dunning policy: what to do after a failed renewal payment (pure; takes ``now``).

Business retries are workflow timers (visible, interruptible by a new card, each attempt with a new
idempotency key); transport failures never reach here (activity retries handle them).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from importlib import resources

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Access(StrEnum):
    full = "full"
    grace = "grace"
    restricted = "restricted"


class FinalAction(StrEnum):
    cancel = "cancel"
    mark_unpaid = "mark_unpaid"


class RenewalDuringDunning(StrEnum):
    invoice_and_wait = "invoice_and_wait"
    skip = "skip"


class DunningRule(BaseModel):
    """One rule of the policy (see models/data/dunning.yaml for the meaning of each field)."""

    model_config = ConfigDict(frozen=True)

    retry_days: list[int] = Field(default_factory=lambda: [1, 3, 5, 7])
    window_days: int = Field(default=14, ge=1)
    access: Access = Access.grace
    grace_days: int = Field(default=7, ge=0)
    final_action: FinalAction = FinalAction.cancel
    reset_on_payment_method_update: bool = True
    renewal_during_dunning: RenewalDuringDunning = RenewalDuringDunning.invoice_and_wait

    @model_validator(mode="after")
    def _schedule_fits(self) -> DunningRule:
        days = self.retry_days
        if any(d <= 0 for d in days) or days != sorted(set(days)):
            raise ValueError("retry_days must be positive and strictly increasing")
        if days and days[-1] > self.window_days:
            raise ValueError("every retry must fall inside window_days")
        return self


class DunningPolicy(BaseModel):
    """Rules per plan, else per segment, else the default."""

    model_config = ConfigDict(frozen=True)

    default: DunningRule = Field(default_factory=DunningRule)
    segments: dict[str, DunningRule] = Field(default_factory=dict)
    plans: dict[str, DunningRule] = Field(default_factory=dict)

    def rule_for(self, plan_id: str, segment: str) -> DunningRule:
        return self.plans.get(plan_id) or self.segments.get(segment) or self.default


class DunningStep(BaseModel):
    """What to do next for an unpaid invoice."""

    model_config = ConfigDict(frozen=True)

    stage: str  # retrying | awaiting_payment_method | final
    retry_at: datetime | None = None  # when to charge again (None: wait for a new card)
    final_at: datetime | None = None  # when the final action applies if still unpaid
    final_action: FinalAction | None = None  # set when the final action applies now
    access: Access = Access.full


HARD_CATEGORIES = frozenset({"hard", "authentication_required"})


def next_step(
    rule: DunningRule,
    *,
    failures: int,
    schedule_start: datetime,
    first_failed_at: datetime,
    decline_category: str | None,
    now: datetime,
) -> DunningStep:
    """The next dunning step for an invoice that has failed ``failures`` times.

    Args:
        rule: the applicable rule.
        failures: failed attempts so far (>= 1), counted since ``schedule_start``.
        schedule_start: when the retry schedule started (the first failure, or the last card
            update when the rule resets on it).
        first_failed_at: the first failure: the window (and grace) count from here.
        decline_category: ``hard``/``authentication_required`` wait for a new card; anything
            else follows the retry schedule.
        now: the current instant.
    """
    if failures < 1:
        raise ValueError("next_step needs at least one failed attempt")
    final_at = first_failed_at + timedelta(days=rule.window_days)
    access = _access(rule, first_failed_at, now)
    if now >= final_at:
        return DunningStep(
            stage="final", final_at=final_at, final_action=rule.final_action, access=access
        )
    if decline_category in HARD_CATEGORIES:
        return DunningStep(stage="awaiting_payment_method", final_at=final_at, access=access)
    if failures - 1 < len(rule.retry_days):
        retry_at = schedule_start + timedelta(days=rule.retry_days[failures - 1])
        if retry_at < final_at:
            return DunningStep(
                stage="retrying", retry_at=max(retry_at, now), final_at=final_at, access=access
            )
    return DunningStep(stage="awaiting_payment_method", final_at=final_at, access=access)


def _access(rule: DunningRule, first_failed_at: datetime, now: datetime) -> Access:
    if rule.access != Access.grace:
        return rule.access
    if now < first_failed_at + timedelta(days=rule.grace_days):
        return Access.full
    return Access.restricted


def parse_dunning_policy(text: str) -> DunningPolicy:
    return DunningPolicy.model_validate(yaml.safe_load(text))


def default_dunning_policy() -> DunningPolicy:
    """The policy shipped in ``models/data/dunning.yaml``."""
    text = resources.files("models").joinpath("data/dunning.yaml").read_text()
    return parse_dunning_policy(text)
