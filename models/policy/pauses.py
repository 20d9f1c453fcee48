"""Deciding a pause and a resume, and how billing dates move."""

from __future__ import annotations

from datetime import date, timedelta

from models.errors import ErrorCode
from models.policy.decisions import PauseDecision, ResumeDecision
from models.policy.document import PolicyDocument
from models.policy.vocabulary import Segment


class PauseDecisions(PolicyDocument):
    """The pause and resume decisions of :class:`models.policy.Policy`."""

    def decide_pause(
        self,
        *,
        segment: Segment,
        plan_id: str,
        today: date,
        resume_on: date | None = None,
        currently_paused: bool = False,
    ) -> PauseDecision:
        """Decide a pause starting ``today``, optionally with the day service resumes.

        An open-ended pause under a rule with ``max_days`` resumes by itself after ``max_days``.

        Args:
            segment: The subscription's segment.
            plan_id: The current plan.
            today: The local date the pause starts.
            resume_on: The first local day of service again, or ``None`` for open-ended.
            currently_paused: Whether the subscription is paused already.

        Returns:
            A :class:`PauseDecision`; refusals carry ``SUBSCRIPTION_PAUSED``,
            ``CHANGE_NOT_ALLOWED``, ``INVALID_DATE_RANGE`` or ``INVALID_REQUEST``.
        """
        rule, source = self.pause_rule(segment=segment, plan_id=plan_id)
        sources = [source]
        if currently_paused:
            return PauseDecision.refused(
                ErrorCode.SUBSCRIPTION_PAUSED,
                "the subscription is already paused; resume it or change its resume date",
                sources=sources,
            )
        if not rule.allowed:
            return PauseDecision.refused(
                ErrorCode.CHANGE_NOT_ALLOWED,
                f"plan {plan_id} cannot be paused ({source}); cancel it instead",
                sources=sources,
            )
        if resume_on is not None and resume_on <= today:
            return PauseDecision.refused(
                ErrorCode.INVALID_DATE_RANGE,
                f"resume date {resume_on} must be after the pause starts ({today})",
                sources=sources,
            )
        if resume_on is None and rule.require_resume_date:
            return PauseDecision.refused(
                ErrorCode.INVALID_REQUEST,
                f"a pause on plan {plan_id} needs a resume date ({source})",
                sources=sources,
            )
        resume_by = None if rule.max_days is None else today + timedelta(days=rule.max_days)
        if resume_on is not None and resume_by is not None and resume_on > resume_by:
            return PauseDecision.refused(
                ErrorCode.CHANGE_NOT_ALLOWED,
                f"a pause lasts at most {rule.max_days} days: resume on or before {resume_by} "
                f"({source})",
                sources=sources,
            )
        resume = resume_on if resume_on is not None else resume_by
        days = None if resume is None else (resume - today).days

        reasons: list[str] = []
        if rule.approval.always:
            reasons.append(f"every pause needs approval here ({source})")
        limit = rule.approval.over_days
        if limit is not None and (days is None or days > limit):
            length = "an open-ended pause" if days is None else f"a {days}-day pause"
            reasons.append(f"{length} is longer than {limit} days ({source})")
        until = "until resumed" if resume is None else f"until {resume}"
        return PauseDecision(
            allowed=True,
            message=f"paused from {today} {until}",
            starts_on=today,
            resume_on=resume,
            resume_by=resume_by,
            max_days=rule.max_days,
            shift_billing_dates=rule.shift_billing_dates,
            sources=sources,
            **self._approval_fields(segment, plan_id, reasons),
        )

    def decide_resume(
        self,
        *,
        segment: Segment,
        plan_id: str,
        currently_paused: bool,
        paused_on: date | None,
        today: date,
    ) -> ResumeDecision:
        """Decide a resume on ``today`` and say how billing dates move.

        Args:
            segment: The subscription's segment.
            plan_id: The current plan.
            currently_paused: Whether the subscription is paused.
            paused_on: The local date the pause started (``None`` when not paused).
            today: The first local day of service again.

        Returns:
            A :class:`ResumeDecision` with the days paused; ``NOT_PAUSED`` when not paused.
        """
        rule, source = self.pause_rule(segment=segment, plan_id=plan_id)
        if not currently_paused or paused_on is None:
            return ResumeDecision.refused(
                ErrorCode.NOT_PAUSED, "the subscription is not paused", sources=[source]
            )
        if today < paused_on:
            return ResumeDecision.refused(
                ErrorCode.INVALID_DATE_RANGE,
                f"resume date {today} is before the pause started ({paused_on})",
                sources=[source],
            )
        days = (today - paused_on).days
        shift = "billing dates move" if rule.shift_billing_dates else "billing dates stay"
        return ResumeDecision(
            allowed=True,
            message=f"resumed after {days} days paused; {shift}",
            paused_days=days,
            shift_billing_dates=rule.shift_billing_dates,
            sources=[source],
        )
