"""The policy document: its levels, validation, which rule applies, and who approves.

For every decision the most specific level that has a rule wins (plan > segment > default), and
the winning rule is used whole. :class:`PolicyDocument` is the base of
:class:`models.policy.Policy`; the decisions are in ``changes``, ``cancellation`` and ``pauses``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Literal, Self, TypeVar

from pydantic import Field, field_validator, model_validator

from models.catalog import Catalog, Plan
from models.errors import ErrorCode, OmsError
from models.money import BillingInputError
from models.policy.decisions import _ApprovalFields
from models.policy.fields import _Doc
from models.policy.rules import (
    ApprovalRoute,
    CancellationRule,
    ChangeRule,
    FlatFee,
    PauseRule,
    RuleSet,
)
from models.policy.vocabulary import CHANGE_KINDS, SEGMENTS, ChangeKind, Segment

_T = TypeVar("_T")


class PolicyDocument(_Doc):
    """The fields of :class:`Policy`, their validation, and which rule applies.

    Attributes:
        version: The document format version (1).
        approver_groups: Approver group name -> member ids (the approver directory).
        default: Rules that apply when no segment or plan rule does; must be complete.
        segments: Rules per segment (``self_serve``, ``enterprise``).
        plans: Rules per plan id.
    """

    version: Literal[1] = 1
    approver_groups: dict[str, list[str]]
    default: RuleSet
    segments: dict[Segment, RuleSet] = Field(default_factory=dict)
    plans: dict[str, RuleSet] = Field(default_factory=dict)

    @field_validator("approver_groups")
    @classmethod
    def _members(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for group, members in value.items():
            if not group.strip():
                raise ValueError("an approver group needs a name")
            cleaned = [m.strip() for m in members]
            if not cleaned or any(not m for m in cleaned):
                raise ValueError(f"approver group {group!r} needs at least one non-empty id")
            folded = [m.casefold() for m in cleaned]
            if len(set(folded)) != len(folded):
                raise ValueError(f"approver group {group!r} lists a member twice")
        return {group: [m.strip() for m in members] for group, members in value.items()}

    @model_validator(mode="after")
    def _complete_and_linked(self) -> Self:
        missing = [k.value for k in CHANGE_KINDS if self.default.change_rule(k) is None]
        for section in ("approval", "cancellation", "pause"):
            if getattr(self.default, section) is None:
                missing.append(section)
        if missing:
            raise ValueError(
                "default must rule every case so no decision is left undefined; missing: "
                + ", ".join(missing)
            )
        for where, level in self._all_levels():
            if level.approval is None:
                continue
            for group in level.approval.groups:
                if group not in self.approver_groups:
                    known = ", ".join(self.approver_groups) or "none"
                    raise ValueError(
                        f"{where}.approval names group {group!r}, which is not in "
                        f"approver_groups (known: {known})"
                    )
        return self

    def _all_levels(self) -> list[tuple[str, RuleSet]]:
        return [
            ("default", self.default),
            *((f"segments.{s}", r) for s, r in self.segments.items()),
            *((f"plans.{p}", r) for p, r in self.plans.items()),
        ]

    # -- resolution ---------------------------------------------------------------------------

    def _levels(self, segment: str, plan_id: str | None) -> list[tuple[str, RuleSet]]:
        """The levels that apply, most specific first."""
        if segment not in SEGMENTS:
            raise BillingInputError(
                ErrorCode.INVALID_REQUEST,
                f"unknown segment {segment!r}; use one of {', '.join(SEGMENTS)}",
            )
        levels: list[tuple[str, RuleSet]] = []
        if plan_id is not None and plan_id in self.plans:
            levels.append((f"plans.{plan_id}", self.plans[plan_id]))
        if segment in self.segments:
            levels.append((f"segments.{segment}", self.segments[segment]))
        levels.append(("default", self.default))
        return levels

    def _section(
        self, segment: str, plan_id: str | None, section: str, kind: type[_T]
    ) -> tuple[_T, str]:
        for where, level in self._levels(segment, plan_id):
            rule = getattr(level, section)
            if rule is not None:
                assert isinstance(rule, kind)
                return rule, f"{where}.{section}"
        raise AssertionError(f"default.{section} is required by validation")

    def change_rule(
        self, *, segment: Segment, plan_id: str | None, kind: ChangeKind
    ) -> tuple[ChangeRule, str]:
        """The rule for one change kind and where it came from (e.g. ``plans.pro.changes.any``).

        Raises:
            ValueError: For a kind that is not ruled under ``changes:`` (cancel, pause, resume).
        """
        if kind not in CHANGE_KINDS:
            raise ValueError(f"{kind.value} is decided by its own method, not by change rules")
        for where, level in self._levels(segment, plan_id):
            found = level.change_rule(kind)
            if found is not None:
                return found[0], f"{where}.changes.{found[1]}"
        raise AssertionError("default covers every change kind by validation")

    def cancellation_rule(
        self, *, segment: Segment, plan_id: str | None
    ) -> tuple[CancellationRule, str]:
        """The cancellation rule that applies and where it came from."""
        return self._section(segment, plan_id, "cancellation", CancellationRule)

    def pause_rule(self, *, segment: Segment, plan_id: str | None) -> tuple[PauseRule, str]:
        """The pause rule that applies and where it came from."""
        return self._section(segment, plan_id, "pause", PauseRule)

    def approval_route(self, *, segment: Segment, plan_id: str | None) -> tuple[ApprovalRoute, str]:
        """The approval route (groups and SLA) that applies and where it came from."""
        return self._section(segment, plan_id, "approval", ApprovalRoute)

    def approvers(self, *, segment: Segment, plan_id: str | None) -> list[str]:
        """Every member id who may decide approvals for this segment and plan."""
        route, _ = self.approval_route(segment=segment, plan_id=plan_id)
        return [m for g in route.groups for m in self.approver_groups[g]]

    # -- approvers ----------------------------------------------------------------------------

    def approver_may_decide(
        self,
        *,
        approver: str,
        requester: str,
        segment: Segment,
        plan_id: str | None = None,
        memberships: Mapping[str, Collection[str]] | None = None,
    ) -> None:
        """Check that ``approver`` may approve or reject ``requester``'s request.

        Ids compare case-insensitively and without surrounding blanks, so ``Alice`` cannot
        approve ``alice``'s request. Members of the first and the escalation group may decide.

        Args:
            approver: The id of the person deciding.
            requester: The id of the person who made the request.
            segment: The subscription's segment.
            plan_id: The subscription's plan (a plan may route approvals elsewhere).
            memberships: Group -> member ids from an identity service; defaults to the policy's
                ``approver_groups``.

        Raises:
            OmsError: ``SELF_APPROVAL`` when approver and requester are the same person;
                ``APPROVER_NOT_AUTHORIZED`` when the approver is in none of the route's groups.
        """
        who = approver.strip().casefold()
        if not who:
            raise OmsError(ErrorCode.APPROVER_NOT_AUTHORIZED, "name the approver (--as ID)")
        if who == requester.strip().casefold():
            raise OmsError(
                ErrorCode.SELF_APPROVAL,
                f"{approver} made this request and cannot approve or reject it; ask another "
                "approver",
            )
        route, source = self.approval_route(segment=segment, plan_id=plan_id)
        directory: Mapping[str, Collection[str]] = (
            self.approver_groups if memberships is None else memberships
        )
        for group in route.groups:
            if who in {m.strip().casefold() for m in directory.get(group, ())}:
                return
        groups = " or ".join(route.groups)
        raise OmsError(
            ErrorCode.APPROVER_NOT_AUTHORIZED,
            f"{approver} is not in {groups}, who approve {segment} requests ({source})",
        )

    def _approval_fields(
        self, segment: Segment, plan_id: str | None, reasons: list[str]
    ) -> _ApprovalFields:
        if not reasons:
            return {"needs_approval": False, "approval_reasons": [], "approver_groups": []}
        route, _ = self.approval_route(segment=segment, plan_id=plan_id)
        return {
            "needs_approval": True,
            "approval_reasons": reasons,
            "approver_groups": list(route.groups),
            "sla": route.sla,
        }

    # -- catalog cross-check ------------------------------------------------------------------

    def check_catalog(self, catalog: Catalog) -> None:
        """Check the policy against a catalog: plan ids exist, every currency has its amounts.

        Run at startup: a missing approval limit would send every change in that currency to
        approval, and a missing flat fee would fail the cancellation.

        Raises:
            ValueError: Listing every problem found.
        """
        problems: list[str] = []
        known = {p.plan_id for p in catalog.plans}
        problems.extend(
            f"plans.{plan_id}: no such plan in the catalog"
            for plan_id in self.plans
            if plan_id not in known
        )
        for plan in catalog.plans:
            problems.extend(self._currency_gaps(plan))
        if problems:
            raise ValueError("policy does not fit the catalog: " + "; ".join(problems))

    def _currency_gaps(self, plan: Plan) -> list[str]:
        gaps: list[str] = []
        currencies = set(plan.currencies)
        for kind in CHANGE_KINDS:
            rule, source = self.change_rule(segment=plan.segment, plan_id=plan.plan_id, kind=kind)
            limits = rule.approval.amount_over_minor
            if limits is not None and (missing := currencies - set(limits)):
                gaps.append(
                    f"{source}.approval.amount_over_minor has no {', '.join(sorted(missing))} "
                    f"(plan {plan.plan_id})"
                )
        cancel, source = self.cancellation_rule(segment=plan.segment, plan_id=plan.plan_id)
        fee = cancel.early_termination_fee
        if isinstance(fee, FlatFee) and (missing := currencies - set(fee.amount_minor)):
            gaps.append(
                f"{source}.early_termination_fee.amount_minor has no "
                f"{', '.join(sorted(missing))} (plan {plan.plan_id})"
            )
        return gaps
