"""Policies as data: rule selection, every decision, approvers, SLAs and document validation."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from models.calendar import Interval
from models.catalog import default_catalog, parse_catalog
from models.errors import ErrorCode, OmsError
from models.invoice import LineKind
from models.policy import (
    CancellationDecision,
    ChangeDecision,
    ChangeKind,
    CreditHandling,
    Policy,
    Segment,
    TermsSnapshot,
    Timing,
    classify_change,
    default_policy,
    load_policy,
    monthly_amount_delta_minor,
    parse_duration,
    parse_timing,
)

D = date
K = ChangeKind
NOW = Timing.IMMEDIATELY
END = Timing.PERIOD_END

# A policy written for these tests, so they do not move when the shipped defaults do. It has one
# of everything: a segment override, plan overrides with `any`, each fee kind, a refusing term.
POLICY_YAML = """
version: 1
approver_groups:
  approvers: [alice, bob]
  directors: [carol]
  enterprise-approvers: [dave]
  vip-approvers: [vera]
default:
  approval:
    groups: [approvers, directors]
    sla: {reminder_after: 1d, escalate_after: 2d, expire_after: 5d}
  changes:
    upgrade: {timing: immediately, credit_handling: refund}
    downgrade:
      timing: period_end
      approval: {amount_over_minor: {USD: 5000, jpy: 7000}}
    quantity_increase: {timing: immediately, credit_handling: refund}
    quantity_decrease:
      timing: period_end
      approval: {quantity_decrease_over_percent: 50, quantity_decrease_over_units: 10}
    interval_change: {timing: period_end, timings: [period_end]}
    discount:
      timing: immediately
      timings: [immediately]
      approval: {discount_over_percent: 20}
  cancellation: {timing: period_end, refund: account_credit}
  pause: {max_days: 90, approval: {over_days: 30}}
segments:
  enterprise:
    approval:
      groups: [enterprise-approvers]
      sla: {expire_after: 3d}
    changes:
      any: {timing: period_end, approval: {always: true}}
      upgrade: {timing: immediately, approval: {always: true}}
    cancellation:
      refund: refund
      minimum_term_months: 12
      early_termination_fee: {kind: remaining_months, percent: 50}
      approval: {within_minimum_term: true}
    pause: {allowed: false}
plans:
  legacy:
    changes:
      any: {allowed: false}
  vip:
    approval: {groups: [vip-approvers], sla: {expire_after: 1d}}
    changes:
      any: {timing: immediately, approval: {always: true}}
    cancellation:
      timing: immediately
      timings: [immediately]
      refund: none
      minimum_term_months: 6
      early_termination_fee: {kind: flat, amount_minor: {USD: 2500}}
      approval: {immediately: true, always: true}
  locked:
    cancellation: {minimum_term_months: 12, within_minimum_term: refuse}
    pause: {require_resume_date: true, shift_billing_dates: false}
  open:
    pause: {approval: {over_days: 10}}
"""


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(POLICY_YAML)


def terms(
    plan_id: str = "pro",
    *,
    tier: int = 2,
    currency: str = "USD",
    interval: Interval = Interval.MONTHLY,
    unit: int = 3000,
    quantity: int = 1,
    discount: Decimal | int = 0,
) -> TermsSnapshot:
    return TermsSnapshot(
        plan_id=plan_id,
        tier=tier,
        currency=currency,
        interval=interval,
        unit_amount_minor=unit,
        quantity=quantity,
        discount_percent=Decimal(discount),
    )


# ---------------------------------------------------------------------------------------------
# Small parsers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4h", timedelta(hours=4)),
        ("2d", timedelta(days=2)),
        ("1w2d", timedelta(days=9)),
        ("90m", timedelta(minutes=90)),
        ("30s", timedelta(seconds=30)),
        (" 1D 12H ", timedelta(days=1, hours=12)),
        ("P2D", timedelta(days=2)),
        ("PT4H", timedelta(hours=4)),
        (timedelta(minutes=5), timedelta(minutes=5)),
    ],
)
def test_parse_duration_reads_units_and_iso_8601(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", [2, 2.5, True, "2", "", "abc", "2x", "d", None])
def test_parse_duration_refuses_bare_numbers_and_unknown_units(text: object) -> None:
    with pytest.raises(ValueError, match="needs a unit"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("Immediately", NOW),
        ("immediate", NOW),
        ("period_end", END),
        ("period-end", END),
        ("at_period_end", END),
        ("AT-PERIOD-END", END),
        (END, END),
    ],
)
def test_parse_timing_accepts_the_cli_words(text: object, expected: Timing) -> None:
    assert parse_timing(text) is expected


@pytest.mark.parametrize("text", ["later", "", 1, None])
def test_parse_timing_refuses_other_words_with_invalid_request(text: object) -> None:
    with pytest.raises(ValueError, match="unknown timing") as caught:
        parse_timing(text)
    assert getattr(caught.value, "code", None) is ErrorCode.INVALID_REQUEST


# ---------------------------------------------------------------------------------------------
# Classifying a change
# ---------------------------------------------------------------------------------------------

STARTER = terms("starter", tier=1, unit=900)
PRO = terms("pro", tier=2, unit=3000)
PRO_YEARLY = terms("pro", tier=2, interval=Interval.YEARLY, unit=30000)
BUSINESS_YEARLY = terms("business", tier=3, interval=Interval.YEARLY, unit=99000)


@pytest.mark.parametrize(
    ("current", "new", "expected"),
    [
        (STARTER, PRO, {K.UPGRADE}),
        (PRO, STARTER, {K.DOWNGRADE}),
        # a higher tier wins even when it is cheaper per month
        (PRO, terms("team", tier=3, unit=100), {K.UPGRADE}),
        # equal tier: the monthly-equivalent unit price decides; a sideways move is a downgrade
        (PRO, terms("pro-plus", tier=2, unit=3001), {K.UPGRADE}),
        (PRO, terms("pro-lite", tier=2, unit=2999), {K.DOWNGRADE}),
        (PRO, terms("pro-twin", tier=2, unit=3000), {K.DOWNGRADE}),
        (PRO, terms("pro-yr", tier=2, interval=Interval.YEARLY, unit=36012),
         {K.UPGRADE, K.INTERVAL_CHANGE}),
        # the same plan on another interval is not a downgrade though yearly is cheaper per month
        (PRO, PRO_YEARLY, {K.INTERVAL_CHANGE}),
        (PRO_YEARLY, PRO, {K.INTERVAL_CHANGE}),
        (PRO, BUSINESS_YEARLY, {K.UPGRADE, K.INTERVAL_CHANGE}),
        (PRO, terms(quantity=3), {K.QUANTITY_INCREASE}),
        (terms(quantity=3), PRO, {K.QUANTITY_DECREASE}),
        (PRO, terms(discount=10), {K.DISCOUNT}),
        (terms(discount=10), PRO, {K.DISCOUNT}),
        (terms(quantity=5), terms("starter", tier=1, unit=900, quantity=2, discount=5),
         {K.DOWNGRADE, K.QUANTITY_DECREASE, K.DISCOUNT}),
        (
            terms("beans", tier=1, interval=Interval.WEEKLY, unit=2400),
            terms("beans", tier=1, interval=Interval.MONTHLY, unit=2200),
            {K.INTERVAL_CHANGE},
        ),
        (PRO, PRO, set()),
    ],
)  # fmt: skip
def test_classify_change_by_tier_price_quantity_interval_and_discount(
    current: TermsSnapshot, new: TermsSnapshot, expected: set[ChangeKind]
) -> None:
    assert classify_change(current, new) == expected


@pytest.mark.parametrize(
    ("current", "new", "code"),
    [
        (PRO, terms(currency="EUR"), ErrorCode.CHANGE_NOT_ALLOWED),
        (PRO, terms(quantity=0), ErrorCode.INVALID_QUANTITY),
        (terms(quantity=0), PRO, ErrorCode.INVALID_QUANTITY),
        (PRO, terms(quantity=-2), ErrorCode.INVALID_QUANTITY),
    ],
)
def test_classify_change_refuses_currency_switch_and_quantity_below_one(
    current: TermsSnapshot, new: TermsSnapshot, code: ErrorCode
) -> None:
    with pytest.raises(OmsError) as caught:
        classify_change(current, new)
    assert caught.value.code is code


@pytest.mark.parametrize(
    ("current", "new", "expected"),
    [
        (terms("business", tier=3, unit=9900), STARTER, -9000),
        (STARTER, PRO, 2100),
        # yearly 300.00 is 25.00 a month
        (PRO, PRO_YEARLY, -500),
        # quarterly 85.00 is 28.3333 a month: -1.6666 rounds once, half away from zero
        (PRO, terms(interval=Interval.QUARTERLY, unit=8500), -167),
        # 52 weeks a year: 24.00 weekly is 104.00 a month
        (
            terms("beans", tier=1, interval=Interval.WEEKLY, unit=2400),
            terms("beans", tier=1, interval=Interval.MONTHLY, unit=2200),
            -8200,
        ),
        (terms("beans", tier=1, interval=Interval.BIWEEKLY, unit=1200), PRO, 3000 - 2600),
        (PRO, terms(quantity=3), 6000),
        (PRO, terms(discount=25), -750),
        (terms(quantity=2, discount=Decimal("12.5")), terms(quantity=2), 750),
        (terms(currency="JPY", unit=4000), terms("starter", tier=1, currency="JPY", unit=1200),
         -2800),
        (PRO, PRO, 0),
    ],
)  # fmt: skip
def test_monthly_amount_delta_is_exact_then_rounded_once(
    current: TermsSnapshot, new: TermsSnapshot, expected: int
) -> None:
    assert monthly_amount_delta_minor(current, new) == expected


def test_monthly_amount_delta_refuses_two_currencies() -> None:
    with pytest.raises(ValueError, match="cannot compare"):
        monthly_amount_delta_minor(PRO, terms(currency="EUR"))


def test_terms_snapshot_from_plan_reads_the_catalog_price() -> None:
    plan = default_catalog().plan("pro")
    snap = TermsSnapshot.from_plan(plan, currency="usd", interval="quarterly", quantity=4)
    assert (snap.plan_id, snap.tier, snap.currency, snap.interval) == (
        "pro",
        2,
        "USD",
        Interval.QUARTERLY,
    )
    assert (snap.unit_amount_minor, snap.quantity) == (8500, 4)


@pytest.mark.parametrize(
    ("currency", "interval", "code"),
    [
        ("GBP", "monthly", ErrorCode.CURRENCY_NOT_OFFERED),
        ("EUR", "yearly", ErrorCode.INTERVAL_NOT_OFFERED),
        ("USD", "fortnightly", ErrorCode.INVALID_INTERVAL),
    ],
)
def test_terms_snapshot_from_plan_refuses_what_the_plan_does_not_offer(
    currency: str, interval: str, code: ErrorCode
) -> None:
    with pytest.raises(OmsError) as caught:
        TermsSnapshot.from_plan(default_catalog().plan("pro"), currency=currency, interval=interval)
    assert caught.value.code is code


# ---------------------------------------------------------------------------------------------
# Rule selection: plan > segment > default, exact kind before `any` within a level
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segment", "plan_id", "kind", "source"),
    [
        ("self_serve", "pro", K.UPGRADE, "default.changes.upgrade"),
        ("self_serve", None, K.DISCOUNT, "default.changes.discount"),
        ("enterprise", "enterprise", K.DOWNGRADE, "segments.enterprise.changes.any"),
        ("enterprise", "enterprise", K.UPGRADE, "segments.enterprise.changes.upgrade"),
        # a plan's `any` beats the segment's exact rule: the plan is the more specific level
        ("enterprise", "legacy", K.UPGRADE, "plans.legacy.changes.any"),
        ("self_serve", "vip", K.QUANTITY_DECREASE, "plans.vip.changes.any"),
        # a plan without change rules falls through to its segment, then to default
        ("enterprise", "locked", K.INTERVAL_CHANGE, "segments.enterprise.changes.any"),
        ("self_serve", "locked", K.INTERVAL_CHANGE, "default.changes.interval_change"),
    ],
)
def test_change_rule_most_specific_level_wins(
    policy: Policy, segment: Segment, plan_id: str | None, kind: ChangeKind, source: str
) -> None:
    assert policy.change_rule(segment=segment, plan_id=plan_id, kind=kind)[1] == source


@pytest.mark.parametrize(
    ("segment", "plan_id", "approval", "cancellation", "pause"),
    [
        ("self_serve", "pro", "default.approval", "default.cancellation", "default.pause"),
        (
            "enterprise",
            "pro",
            "segments.enterprise.approval",
            "segments.enterprise.cancellation",
            "segments.enterprise.pause",
        ),
        ("self_serve", "vip", "plans.vip.approval", "plans.vip.cancellation", "default.pause"),
        (
            "enterprise",
            "locked",
            "segments.enterprise.approval",
            "plans.locked.cancellation",
            "plans.locked.pause",
        ),
    ],
)
def test_sections_resolve_plan_then_segment_then_default(
    policy: Policy,
    segment: Segment,
    plan_id: str,
    approval: str,
    cancellation: str,
    pause: str,
) -> None:
    assert policy.approval_route(segment=segment, plan_id=plan_id)[1] == approval
    assert policy.cancellation_rule(segment=segment, plan_id=plan_id)[1] == cancellation
    assert policy.pause_rule(segment=segment, plan_id=plan_id)[1] == pause


def test_change_rule_refuses_kinds_decided_elsewhere(policy: Policy) -> None:
    with pytest.raises(ValueError, match="own method"):
        policy.change_rule(segment="self_serve", plan_id="pro", kind=K.CANCEL)


def test_unknown_segment_is_an_invalid_request(policy: Policy) -> None:
    with pytest.raises(ValueError, match="unknown segment") as caught:
        policy.approval_route(segment="smb", plan_id=None)  # type: ignore[arg-type]
    assert getattr(caught.value, "code", None) is ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize(
    ("segment", "plan_id", "members"),
    [
        ("self_serve", "pro", ["alice", "bob", "carol"]),
        ("enterprise", "pro", ["dave"]),
        ("self_serve", "vip", ["vera"]),
    ],
)
def test_approvers_lists_every_member_of_the_route(
    policy: Policy, segment: Segment, plan_id: str, members: list[str]
) -> None:
    assert policy.approvers(segment=segment, plan_id=plan_id) == members


# ---------------------------------------------------------------------------------------------
# decide_change
# ---------------------------------------------------------------------------------------------

DEFAULT_GROUPS = ["approvers", "directors"]


@pytest.mark.parametrize(
    ("segment", "plan_id", "kinds", "kw", "timing", "credit", "reasons", "groups"),
    [
        # self-serve defaults
        ("self_serve", "pro", {K.UPGRADE}, {}, NOW, CreditHandling.REFUND, [], []),
        ("self_serve", "pro", {K.DOWNGRADE}, {"amount_delta_minor": -4000}, END,
         CreditHandling.ACCOUNT_CREDIT, [], []),
        # the limit itself needs no approval; one minor unit over does
        ("self_serve", "pro", {K.DOWNGRADE}, {"amount_delta_minor": -5000}, END,
         CreditHandling.ACCOUNT_CREDIT, [], []),
        ("self_serve", "pro", {K.DOWNGRADE}, {"amount_delta_minor": -5001}, END,
         CreditHandling.ACCOUNT_CREDIT, ["by $50.01, over the $50.00 limit"], DEFAULT_GROUPS),
        ("self_serve", "pro", {K.DOWNGRADE}, {"amount_delta_minor": -7001, "currency": "JPY"},
         END, CreditHandling.ACCOUNT_CREDIT, ["over the ¥7,000 limit"], DEFAULT_GROUPS),
        # a currency without a limit is closed by default: a person decides
        ("self_serve", "pro", {K.DOWNGRADE}, {"amount_delta_minor": -1, "currency": "KWD"},
         END, CreditHandling.ACCOUNT_CREDIT, ["no approval limit is set for KWD"], DEFAULT_GROUPS),
        ("self_serve", "pro", {K.DOWNGRADE}, {"timing_requested": NOW}, NOW,
         CreditHandling.ACCOUNT_CREDIT, [], []),
        ("self_serve", "pro", {K.DOWNGRADE}, {"timing_requested": "now"}, NOW,
         CreditHandling.ACCOUNT_CREDIT, [], []),
        ("self_serve", "pro", {K.UPGRADE}, {"timing_requested": "period-end"}, END,
         CreditHandling.REFUND, [], []),
        # quantity decreases: 50% is the limit, 60% is over; 11 units is over 10
        ("self_serve", "pro", {K.QUANTITY_DECREASE}, {"quantity_before": 10, "quantity_after": 5},
         END, CreditHandling.ACCOUNT_CREDIT, [], []),
        ("self_serve", "pro", {K.QUANTITY_DECREASE}, {"quantity_before": 10, "quantity_after": 4},
         END, CreditHandling.ACCOUNT_CREDIT, ["falls by 60% (10 to 4), over the 50% limit"],
         DEFAULT_GROUPS),
        ("self_serve", "pro", {K.QUANTITY_DECREASE}, {"quantity_before": 30, "quantity_after": 19},
         END, CreditHandling.ACCOUNT_CREDIT, ["falls by 11 (30 to 19), over the 10-unit limit"],
         DEFAULT_GROUPS),
        ("self_serve", "pro", {K.QUANTITY_DECREASE}, {"quantity_before": 3, "quantity_after": 1},
         END, CreditHandling.ACCOUNT_CREDIT, ["falls by 66.67% (3 to 1)"], DEFAULT_GROUPS),
        ("self_serve", "pro", {K.QUANTITY_DECREASE}, {"quantity_before": 30, "quantity_after": 10},
         END, CreditHandling.ACCOUNT_CREDIT, ["over the 10-unit limit", "over the 50% limit"],
         DEFAULT_GROUPS),
        ("self_serve", "pro", {K.QUANTITY_INCREASE}, {"quantity_before": 1, "quantity_after": 50},
         NOW, CreditHandling.REFUND, [], []),
        # discounts: 20% is the limit
        ("self_serve", "pro", {K.DISCOUNT}, {"discount_percent": 20}, NOW,
         CreditHandling.ACCOUNT_CREDIT, [], []),
        ("self_serve", "pro", {K.DISCOUNT}, {"discount_percent": Decimal("20.5")}, NOW,
         CreditHandling.ACCOUNT_CREDIT, ["a 20.5% discount is over the 20% limit"],
         DEFAULT_GROUPS),
        # several kinds: the later default wins; a credit is refunded only if every rule says so
        ("self_serve", "pro", {K.UPGRADE, K.INTERVAL_CHANGE}, {}, END,
         CreditHandling.ACCOUNT_CREDIT, [], []),
        ("self_serve", "pro", {K.UPGRADE, K.QUANTITY_INCREASE}, {"quantity_after": 2}, NOW,
         CreditHandling.REFUND, [], []),
        ("self_serve", "pro", {K.DOWNGRADE, K.QUANTITY_DECREASE},
         {"amount_delta_minor": -9000, "quantity_before": 10, "quantity_after": 2}, END,
         CreditHandling.ACCOUNT_CREDIT, ["over the $50.00 limit", "over the 50% limit"],
         DEFAULT_GROUPS),
        # enterprise: any change needs approval by the segment's group; upgrades still apply now
        ("enterprise", "enterprise", {K.QUANTITY_INCREASE}, {"quantity_after": 2}, END,
         CreditHandling.ACCOUNT_CREDIT,
         ["every quantity increase needs approval here (segments.enterprise.changes.any)"],
         ["enterprise-approvers"]),
        ("enterprise", "enterprise", {K.UPGRADE}, {}, NOW, CreditHandling.ACCOUNT_CREDIT,
         ["every upgrade needs approval here (segments.enterprise.changes.upgrade)"],
         ["enterprise-approvers"]),
        # a plan's own route and rules
        ("self_serve", "vip", {K.DOWNGRADE}, {"amount_delta_minor": -1}, NOW,
         CreditHandling.ACCOUNT_CREDIT, ["every downgrade needs approval here (plans.vip"],
         ["vip-approvers"]),
        ("self_serve", "vip", {K.DISCOUNT}, {"discount_percent": 90}, NOW,
         CreditHandling.ACCOUNT_CREDIT, ["every discount needs approval"], ["vip-approvers"]),
    ],
)  # fmt: skip
def test_decide_change_timing_credit_and_approval(
    policy: Policy,
    segment: Segment,
    plan_id: str,
    kinds: set[ChangeKind],
    kw: dict[str, Any],
    timing: Timing,
    credit: CreditHandling,
    reasons: list[str],
    groups: list[str],
) -> None:
    args: dict[str, Any] = {"currency": "USD", **kw}
    decision = policy.decide_change(segment=segment, plan_id=plan_id, kinds=kinds, **args)
    assert decision.allowed and decision.code is None
    assert (decision.timing, decision.credit_handling) == (timing, credit)
    assert decision.needs_approval is bool(reasons)
    assert len(decision.approval_reasons) == len(reasons)
    for got, want in zip(decision.approval_reasons, reasons, strict=True):
        assert want in got
    assert decision.approver_groups == groups
    assert (decision.sla is not None) is bool(reasons)


@pytest.mark.parametrize(
    ("segment", "plan_id", "kinds", "kw", "code", "message"),
    [
        ("self_serve", "pro", set(), {}, ErrorCode.INVALID_REQUEST, "changes nothing"),
        ("self_serve", "pro", {K.QUANTITY_DECREASE}, {"quantity_after": 0},
         ErrorCode.INVALID_QUANTITY, "quantity_after must be"),
        ("self_serve", "pro", {K.QUANTITY_INCREASE}, {"quantity_before": 0},
         ErrorCode.INVALID_QUANTITY, "quantity_before must be"),
        ("self_serve", "pro", {K.QUANTITY_INCREASE}, {"quantity_after": True},
         ErrorCode.INVALID_QUANTITY, "quantity_after"),
        ("self_serve", "pro", {K.DISCOUNT}, {"discount_percent": 101},
         ErrorCode.INVALID_REQUEST, "between 0 and 100"),
        ("self_serve", "pro", {K.DISCOUNT}, {"discount_percent": -1},
         ErrorCode.INVALID_REQUEST, "between 0 and 100"),
        ("self_serve", "pro", {K.DISCOUNT}, {"discount_percent": 12.5},
         ErrorCode.INVALID_REQUEST, "between 0 and 100"),
        ("self_serve", "pro", {K.DISCOUNT}, {"discount_percent": Decimal("NaN")},
         ErrorCode.INVALID_REQUEST, "between 0 and 100"),
        ("self_serve", "legacy", {K.UPGRADE}, {}, ErrorCode.CHANGE_NOT_ALLOWED,
         "an upgrade is not allowed on plan legacy (plans.legacy.changes.any)"),
        ("enterprise", "legacy", {K.DOWNGRADE}, {}, ErrorCode.CHANGE_NOT_ALLOWED,
         "not allowed on plan legacy"),
        # interval changes wait for period end in this policy; discounts apply only now
        ("self_serve", "pro", {K.INTERVAL_CHANGE}, {"timing_requested": NOW},
         ErrorCode.CHANGE_NOT_ALLOWED, "an interval change cannot take effect immediately"),
        ("self_serve", "pro", {K.UPGRADE, K.INTERVAL_CHANGE}, {"timing_requested": NOW},
         ErrorCode.CHANGE_NOT_ALLOWED, "default.changes.interval_change"),
        ("self_serve", "pro", {K.DISCOUNT}, {"timing_requested": END},
         ErrorCode.CHANGE_NOT_ALLOWED, "it takes effect immediately"),
        ("self_serve", "pro", {K.INTERVAL_CHANGE, K.DISCOUNT}, {},
         ErrorCode.CHANGE_NOT_ALLOWED, "allow no common timing"),
    ],
)  # fmt: skip
def test_decide_change_refusals_carry_a_code_and_a_reason(
    policy: Policy,
    segment: Segment,
    plan_id: str,
    kinds: set[ChangeKind],
    kw: dict[str, Any],
    code: ErrorCode,
    message: str,
) -> None:
    args: dict[str, Any] = {"currency": "USD", **kw}
    decision = policy.decide_change(segment=segment, plan_id=plan_id, kinds=kinds, **args)
    assert not decision.allowed
    assert decision.code is code
    assert message in decision.message
    assert not decision.needs_approval
    with pytest.raises(OmsError) as caught:
        decision.raise_if_refused()
    assert caught.value.code is code


def test_decide_change_reports_kinds_in_canonical_order_and_sources(policy: Policy) -> None:
    decision = policy.decide_change(
        segment="self_serve",
        plan_id="pro",
        kinds=[K.INTERVAL_CHANGE, K.UPGRADE],
        currency="usd",
    )
    assert decision.kinds == [K.UPGRADE, K.INTERVAL_CHANGE]
    assert decision.sources == ["default.changes.upgrade", "default.changes.interval_change"]
    assert decision.message == "upgrade and interval change takes effect at period end"
    assert decision.raise_if_refused() is decision


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"kinds": {K.CANCEL}}, "decide_cancellation"),
        ({"kinds": {K.UPGRADE, K.PAUSE}}, "pause"),
        ({"currency": "XYZ"}, "unknown currency"),
        ({"segment": "smb"}, "unknown segment"),
        ({"amount_delta_minor": 1.5}, "amount_delta_minor"),
    ],
)
def test_decide_change_raises_for_programming_errors(
    policy: Policy, kw: dict[str, Any], match: str
) -> None:
    args: dict[str, Any] = {
        "segment": "self_serve",
        "plan_id": "pro",
        "kinds": {K.UPGRADE},
        "currency": "USD",
        **kw,
    }
    with pytest.raises(ValueError, match=match):
        policy.decide_change(**args)


@pytest.mark.parametrize(
    ("current", "new", "kinds", "needs_approval", "code"),
    [
        (terms("business", tier=3, unit=9900), STARTER, [K.DOWNGRADE], True, None),
        (PRO, STARTER, [K.DOWNGRADE], False, None),
        (terms(quantity=10), terms(quantity=4), [K.QUANTITY_DECREASE], True, None),
        (PRO, terms(currency="EUR"), [], False, ErrorCode.CHANGE_NOT_ALLOWED),
        (PRO, terms(quantity=0), [], False, ErrorCode.INVALID_QUANTITY),
        (PRO, PRO, [], False, ErrorCode.INVALID_REQUEST),
    ],
)
def test_decide_terms_change_classifies_and_measures_first(
    policy: Policy,
    current: TermsSnapshot,
    new: TermsSnapshot,
    kinds: list[ChangeKind],
    needs_approval: bool,
    code: ErrorCode | None,
) -> None:
    decision = policy.decide_terms_change(segment="self_serve", current=current, new=new)
    assert decision.kinds == kinds
    assert decision.needs_approval is needs_approval
    assert decision.code is code
    assert decision.allowed is (code is None)


# ---------------------------------------------------------------------------------------------
# decide_cancellation
# ---------------------------------------------------------------------------------------------

TWO_PRO = terms(quantity=2)  # 60.00 USD a month


@pytest.mark.parametrize(
    ("segment", "snap", "dates", "requested", "expected"),
    [
        # self-serve default: period end, nothing refunded; "now" returns unused time as credit
        ("self_serve", TWO_PRO, (D(2024, 1, 31), D(2024, 5, 10), D(2024, 5, 31)), None,
         {"timing": END, "effective_date": D(2024, 5, 31), "refund": CreditHandling.NONE,
          "fee": 0, "within": False, "term_ends": None, "reasons": 0}),
        ("self_serve", TWO_PRO, (D(2024, 1, 31), D(2024, 5, 10), D(2024, 5, 31)), NOW,
         {"timing": NOW, "effective_date": D(2024, 5, 10),
          "refund": CreditHandling.ACCOUNT_CREDIT, "fee": 0, "within": False,
          "term_ends": None, "reasons": 0}),
        # enterprise, 12-month term, fee 50% of remaining months at 60.00: at period end the
        # customer has paid to May 31, 8 months remain to Jan 31 -> 8 * 60.00 * 50% = 240.00
        ("enterprise", TWO_PRO, (D(2024, 1, 31), D(2024, 5, 10), D(2024, 5, 31)), None,
         {"timing": END, "effective_date": D(2024, 5, 31), "refund": CreditHandling.NONE,
          "fee": 24000, "within": True, "term_ends": D(2025, 1, 31), "reasons": 1}),
        # now, with the unused time refunded: the fee counts from today, 9 started months
        ("enterprise", TWO_PRO, (D(2024, 1, 31), D(2024, 5, 10), D(2024, 5, 31)), NOW,
         {"timing": NOW, "effective_date": D(2024, 5, 10), "refund": CreditHandling.REFUND,
          "fee": 27000, "within": True, "term_ends": D(2025, 1, 31), "reasons": 1}),
        # term over: no fee, no approval
        ("enterprise", TWO_PRO, (D(2023, 1, 31), D(2024, 5, 10), D(2024, 5, 31)), None,
         {"timing": END, "effective_date": D(2024, 5, 31), "refund": CreditHandling.NONE,
          "fee": 0, "within": False, "term_ends": D(2024, 1, 31), "reasons": 0}),
        # a term from Feb 29 ends on Feb 28 the next year (clamped like billing dates)
        ("enterprise", TWO_PRO, (D(2024, 2, 29), D(2025, 2, 27), D(2025, 3, 1)), NOW,
         {"timing": NOW, "effective_date": D(2025, 2, 27), "refund": CreditHandling.REFUND,
          "fee": 3000, "within": True, "term_ends": D(2025, 2, 28), "reasons": 1}),
        # ending exactly on the term's last day is not within it
        ("enterprise", TWO_PRO, (D(2024, 1, 1), D(2024, 12, 10), D(2025, 1, 1)), END,
         {"timing": END, "effective_date": D(2025, 1, 1), "refund": CreditHandling.NONE,
          "fee": 0, "within": False, "term_ends": D(2025, 1, 1), "reasons": 0}),
        # rounding once: 3 months * 10.00 JPY-free KWD 9.500 * 50% = 14.250 KWD
        ("enterprise", terms(currency="KWD", unit=9500),
         (D(2024, 1, 1), D(2024, 9, 15), D(2024, 10, 1)), None,
         {"timing": END, "effective_date": D(2024, 10, 1), "refund": CreditHandling.NONE,
          "fee": 14250, "within": True, "term_ends": D(2025, 1, 1), "reasons": 1}),
        # 25% off the monthly amount is 25% off the fee base: 1 month * 22.50 * 50% = 11.25
        ("enterprise", terms(discount=25), (D(2024, 1, 1), D(2024, 11, 15), D(2024, 12, 1)),
         None,
         {"timing": END, "effective_date": D(2024, 12, 1), "refund": CreditHandling.NONE,
          "fee": 1125, "within": True, "term_ends": D(2025, 1, 1), "reasons": 1}),
        # plan vip: immediately only, nothing refunded, flat fee, always approved
        ("self_serve", terms("vip"), (D(2024, 1, 1), D(2024, 3, 1), D(2024, 4, 1)), None,
         {"timing": NOW, "effective_date": D(2024, 3, 1), "refund": CreditHandling.NONE,
          "fee": 2500, "within": True, "term_ends": D(2024, 7, 1), "reasons": 2}),
        ("self_serve", terms("vip"), (D(2023, 1, 1), D(2024, 3, 1), D(2024, 4, 1)), NOW,
         {"timing": NOW, "effective_date": D(2024, 3, 1), "refund": CreditHandling.NONE,
          "fee": 0, "within": False, "term_ends": D(2023, 7, 1), "reasons": 2}),
        # plan locked refuses within the term, but a period end on the term's end is fine
        ("self_serve", terms("locked"), (D(2024, 1, 1), D(2024, 12, 10), D(2025, 1, 1)), None,
         {"timing": END, "effective_date": D(2025, 1, 1), "refund": CreditHandling.NONE,
          "fee": 0, "within": False, "term_ends": D(2025, 1, 1), "reasons": 0}),
    ],
)  # fmt: skip
def test_decide_cancellation_timing_refund_minimum_term_and_fee(
    policy: Policy,
    segment: Segment,
    snap: TermsSnapshot,
    dates: tuple[date, date, date],
    requested: Timing | None,
    expected: dict[str, Any],
) -> None:
    subscribed_on, today, period_end = dates
    decision = policy.decide_cancellation(
        segment=segment,
        terms=snap,
        subscribed_on=subscribed_on,
        today=today,
        period_end=period_end,
        timing_requested=requested,
    )
    assert decision.allowed and decision.code is None
    assert decision.timing is expected["timing"]
    assert decision.effective_date == expected["effective_date"]
    assert decision.refund is expected["refund"]
    assert decision.early_termination_fee_minor == expected["fee"]
    assert decision.within_minimum_term is expected["within"]
    assert decision.minimum_term_ends == expected["term_ends"]
    assert len(decision.approval_reasons) == expected["reasons"]
    assert decision.needs_approval is bool(expected["reasons"])


@pytest.mark.parametrize(
    ("snap", "dates", "requested", "code", "message"),
    [
        (terms("vip"), (D(2024, 1, 1), D(2024, 3, 1), D(2024, 4, 1)), END,
         ErrorCode.CHANGE_NOT_ALLOWED, "takes effect immediately, not at period end"),
        (terms("locked"), (D(2024, 1, 1), D(2024, 6, 5), D(2024, 7, 1)), None,
         ErrorCode.MINIMUM_TERM, "12-month minimum term until 2025-01-01"),
        (terms("locked"), (D(2024, 1, 1), D(2024, 12, 10), D(2025, 1, 1)), NOW,
         ErrorCode.MINIMUM_TERM, "on or after that day"),
    ],
)  # fmt: skip
def test_decide_cancellation_refusals(
    policy: Policy,
    snap: TermsSnapshot,
    dates: tuple[date, date, date],
    requested: Timing | None,
    code: ErrorCode,
    message: str,
) -> None:
    subscribed_on, today, period_end = dates
    decision = policy.decide_cancellation(
        segment="self_serve",
        terms=snap,
        subscribed_on=subscribed_on,
        today=today,
        period_end=period_end,
        timing_requested=requested,
    )
    assert not decision.allowed
    assert decision.code is code
    assert message in decision.message


@pytest.mark.parametrize(
    "dates",
    [
        (D(2024, 5, 1), D(2024, 4, 30), D(2024, 5, 31)),  # today before the subscription
        (D(2024, 1, 1), D(2024, 5, 31), D(2024, 5, 31)),  # today is already the period end
        (D(2024, 1, 1), D(2024, 6, 1), D(2024, 5, 31)),
    ],
)
def test_decide_cancellation_refuses_dates_out_of_order(
    policy: Policy, dates: tuple[date, date, date]
) -> None:
    with pytest.raises(ValueError, match="subscribed_on <= today < period_end") as caught:
        policy.decide_cancellation(
            segment="self_serve",
            terms=PRO,
            subscribed_on=dates[0],
            today=dates[1],
            period_end=dates[2],
        )
    assert getattr(caught.value, "code", None) is ErrorCode.INVALID_DATE_RANGE


def test_flat_fee_without_the_currency_is_a_policy_gap(policy: Policy) -> None:
    with pytest.raises(ValueError, match="no amount for EUR"):
        policy.decide_cancellation(
            segment="self_serve",
            terms=terms("vip", currency="EUR"),
            subscribed_on=D(2024, 1, 1),
            today=D(2024, 2, 1),
            period_end=D(2024, 3, 1),
        )


def test_fee_line_is_an_early_termination_fee_invoice_line(policy: Policy) -> None:
    decision = policy.decide_cancellation(
        segment="enterprise",
        terms=TWO_PRO,
        subscribed_on=D(2024, 1, 31),
        today=D(2024, 5, 10),
        period_end=D(2024, 5, 31),
    )
    line = decision.fee_line()
    assert line is not None
    assert (line.kind, line.amount_minor, line.currency) == (
        LineKind.EARLY_TERMINATION_FEE,
        24000,
        "USD",
    )
    assert "2025-01-31" in line.description


def test_no_fee_means_no_fee_line(policy: Policy) -> None:
    decision = policy.decide_cancellation(
        segment="self_serve",
        terms=PRO,
        subscribed_on=D(2024, 1, 31),
        today=D(2024, 5, 10),
        period_end=D(2024, 5, 31),
    )
    assert decision.fee_line() is None


# ---------------------------------------------------------------------------------------------
# decide_pause / decide_resume
# ---------------------------------------------------------------------------------------------

JAN1 = D(2024, 1, 1)


@pytest.mark.parametrize(
    ("segment", "plan_id", "resume_on", "expected"),
    [
        # an open-ended pause resumes by itself after max_days, and counts as that long
        ("self_serve", "pro", None,
         {"resume_on": D(2024, 3, 31), "resume_by": D(2024, 3, 31), "shift": True,
          "reasons": ["a 90-day pause is longer than 30 days"]}),
        ("self_serve", "pro", D(2024, 1, 31),
         {"resume_on": D(2024, 1, 31), "resume_by": D(2024, 3, 31), "shift": True,
          "reasons": []}),
        ("self_serve", "pro", D(2024, 2, 1),
         {"resume_on": D(2024, 2, 1), "resume_by": D(2024, 3, 31), "shift": True,
          "reasons": ["a 31-day pause is longer than 30 days"]}),
        ("self_serve", "pro", D(2024, 3, 31),
         {"resume_on": D(2024, 3, 31), "resume_by": D(2024, 3, 31), "shift": True,
          "reasons": ["a 90-day pause"]}),
        # no max_days: open-ended stays open, and counts as longer than any approval limit
        ("self_serve", "open", None,
         {"resume_on": None, "resume_by": None, "shift": True,
          "reasons": ["an open-ended pause is longer than 10 days"]}),
        ("self_serve", "locked", D(2025, 6, 1),
         {"resume_on": D(2025, 6, 1), "resume_by": None, "shift": False, "reasons": []}),
    ],
)  # fmt: skip
def test_decide_pause_length_resume_date_shift_and_approval(
    policy: Policy,
    segment: Segment,
    plan_id: str,
    resume_on: date | None,
    expected: dict[str, Any],
) -> None:
    decision = policy.decide_pause(
        segment=segment, plan_id=plan_id, today=JAN1, resume_on=resume_on
    )
    assert decision.allowed and decision.code is None
    assert decision.starts_on == JAN1
    assert decision.resume_on == expected["resume_on"]
    assert decision.resume_by == expected["resume_by"]
    assert decision.shift_billing_dates is expected["shift"]
    assert len(decision.approval_reasons) == len(expected["reasons"])
    for got, want in zip(decision.approval_reasons, expected["reasons"], strict=True):
        assert want in got
    assert decision.needs_approval is bool(expected["reasons"])


@pytest.mark.parametrize(
    ("segment", "plan_id", "resume_on", "paused", "code", "message"),
    [
        ("self_serve", "pro", None, True, ErrorCode.SUBSCRIPTION_PAUSED, "already paused"),
        ("enterprise", "pro", None, False, ErrorCode.CHANGE_NOT_ALLOWED, "cannot be paused"),
        ("self_serve", "pro", JAN1, False, ErrorCode.INVALID_DATE_RANGE, "must be after"),
        ("self_serve", "pro", D(2023, 12, 1), False, ErrorCode.INVALID_DATE_RANGE,
         "must be after"),
        ("self_serve", "pro", D(2024, 4, 1), False, ErrorCode.CHANGE_NOT_ALLOWED,
         "at most 90 days: resume on or before 2024-03-31"),
        ("self_serve", "locked", None, False, ErrorCode.INVALID_REQUEST, "needs a resume date"),
    ],
)  # fmt: skip
def test_decide_pause_refusals(
    policy: Policy,
    segment: Segment,
    plan_id: str,
    resume_on: date | None,
    paused: bool,
    code: ErrorCode,
    message: str,
) -> None:
    decision = policy.decide_pause(
        segment=segment, plan_id=plan_id, today=JAN1, resume_on=resume_on, currently_paused=paused
    )
    assert not decision.allowed
    assert decision.code is code
    assert message in decision.message


@pytest.mark.parametrize(
    ("plan_id", "paused", "paused_on", "today", "expected"),
    [
        ("pro", True, JAN1, D(2024, 1, 15), (True, None, 14, True)),
        ("pro", True, JAN1, JAN1, (True, None, 0, True)),
        ("locked", True, JAN1, D(2024, 3, 1), (True, None, 60, False)),
        ("pro", False, None, JAN1, (False, ErrorCode.NOT_PAUSED, 0, True)),
        ("pro", True, None, JAN1, (False, ErrorCode.NOT_PAUSED, 0, True)),
        ("pro", True, D(2024, 2, 1), JAN1, (False, ErrorCode.INVALID_DATE_RANGE, 0, True)),
    ],
)
def test_decide_resume_counts_paused_days_and_says_whether_dates_shift(
    policy: Policy,
    plan_id: str,
    paused: bool,
    paused_on: date | None,
    today: date,
    expected: tuple[bool, ErrorCode | None, int, bool],
) -> None:
    decision = policy.decide_resume(
        segment="self_serve",
        plan_id=plan_id,
        currently_paused=paused,
        paused_on=paused_on,
        today=today,
    )
    assert (
        decision.allowed,
        decision.code,
        decision.paused_days,
        decision.shift_billing_dates,
    ) == expected


# ---------------------------------------------------------------------------------------------
# Approvers and SLAs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("approver", "requester", "segment", "plan_id", "memberships", "code"),
    [
        ("alice", "zed", "self_serve", "pro", None, None),
        ("bob", "zed", "self_serve", None, None, None),
        # the escalation group may decide too
        ("carol", "zed", "self_serve", "pro", None, None),
        (" Alice ", "zed", "self_serve", "pro", None, None),
        ("dave", "zed", "enterprise", "pro", None, None),
        ("vera", "zed", "self_serve", "vip", None, None),
        ("dave", "zed", "self_serve", "pro", None, ErrorCode.APPROVER_NOT_AUTHORIZED),
        ("alice", "zed", "enterprise", "pro", None, ErrorCode.APPROVER_NOT_AUTHORIZED),
        ("alice", "zed", "self_serve", "vip", None, ErrorCode.APPROVER_NOT_AUTHORIZED),
        ("mallory", "zed", "self_serve", "pro", None, ErrorCode.APPROVER_NOT_AUTHORIZED),
        ("", "zed", "self_serve", "pro", None, ErrorCode.APPROVER_NOT_AUTHORIZED),
        ("alice", "alice", "self_serve", "pro", None, ErrorCode.SELF_APPROVAL),
        (" ALICE", "alice ", "self_serve", "pro", None, ErrorCode.SELF_APPROVAL),
        # self-approval is refused as such even for someone who could not approve anyway
        ("mallory", "mallory", "self_serve", "pro", None, ErrorCode.SELF_APPROVAL),
        # an identity service's memberships replace the policy's directory
        ("zoe", "zed", "self_serve", "pro", {"approvers": ["zoe"]}, None),
        ("alice", "zed", "self_serve", "pro", {"approvers": ["zoe"]},
         ErrorCode.APPROVER_NOT_AUTHORIZED),
    ],
)  # fmt: skip
def test_approver_may_decide(
    policy: Policy,
    approver: str,
    requester: str,
    segment: Segment,
    plan_id: str | None,
    memberships: dict[str, list[str]] | None,
    code: ErrorCode | None,
) -> None:
    def decide() -> None:
        policy.approver_may_decide(
            approver=approver,
            requester=requester,
            segment=segment,
            plan_id=plan_id,
            memberships=memberships,
        )

    if code is None:
        decide()
        return
    with pytest.raises(OmsError) as caught:
        decide()
    assert caught.value.code is code


def test_approval_sla_instants_from_the_request_time(policy: Policy) -> None:
    route, _ = policy.approval_route(segment="self_serve", plan_id="pro")
    at = datetime(2024, 4, 1, 9, 30, tzinfo=UTC)
    assert route.sla.reminder_at(at) == datetime(2024, 4, 2, 9, 30, tzinfo=UTC)
    assert route.sla.escalate_at(at) == datetime(2024, 4, 3, 9, 30, tzinfo=UTC)
    assert route.sla.expires_at(at) == datetime(2024, 4, 6, 9, 30, tzinfo=UTC)
    assert route.groups == ["approvers", "directors"]


def test_approval_sla_without_reminder_or_escalation(policy: Policy) -> None:
    route, _ = policy.approval_route(segment="enterprise", plan_id="pro")
    at = datetime(2024, 4, 1, tzinfo=UTC)
    assert route.sla.reminder_at(at) is None
    assert route.sla.escalate_at(at) is None
    assert route.sla.expires_at(at) == datetime(2024, 4, 4, tzinfo=UTC)


@pytest.mark.parametrize("method", ["reminder_at", "escalate_at", "expires_at"])
def test_approval_sla_refuses_naive_instants(policy: Policy, method: str) -> None:
    route, _ = policy.approval_route(segment="self_serve", plan_id="pro")
    with pytest.raises(ValueError, match="timezone-aware"):
        getattr(route.sla, method)(datetime(2024, 4, 1))


def test_decisions_round_trip_through_json(policy: Policy) -> None:
    change = policy.decide_change(
        segment="self_serve",
        plan_id="pro",
        kinds={K.DOWNGRADE},
        currency="USD",
        amount_delta_minor=-9000,
    )
    cancel = policy.decide_cancellation(
        segment="enterprise",
        terms=TWO_PRO,
        subscribed_on=D(2024, 1, 31),
        today=D(2024, 5, 10),
        period_end=D(2024, 5, 31),
    )
    assert ChangeDecision.model_validate_json(change.model_dump_json()) == change
    assert CancellationDecision.model_validate_json(cancel.model_dump_json()) == cancel


# ---------------------------------------------------------------------------------------------
# The shipped policy
# ---------------------------------------------------------------------------------------------


def shipped(plan_id: str, currency: str, interval: str, quantity: int = 1) -> TermsSnapshot:
    plan = default_catalog().plan(plan_id)
    return TermsSnapshot.from_plan(plan, currency=currency, interval=interval, quantity=quantity)


def test_default_policy_fits_the_default_catalog() -> None:
    default_policy().check_catalog(default_catalog())


@pytest.mark.parametrize(
    ("segment", "current", "new", "timing", "groups"),
    [
        ("self_serve", shipped("starter", "USD", "monthly"), shipped("pro", "USD", "monthly"),
         NOW, []),
        # Business 99.00 -> Starter 9.00 is 90.00 a month less: over the 50.00 limit
        ("self_serve", shipped("business", "USD", "monthly"), shipped("starter", "USD", "monthly"),
         END, ["billing-approvers", "finance-directors"]),
        ("self_serve", shipped("pro", "USD", "monthly"), shipped("starter", "USD", "monthly"),
         END, []),
        ("self_serve", shipped("pro", "JPY", "monthly"), shipped("starter", "JPY", "monthly"),
         END, []),
        ("self_serve", shipped("pro", "KWD", "monthly", 10), shipped("pro", "KWD", "monthly", 4),
         END, ["billing-approvers", "finance-directors"]),
        ("self_serve", shipped("pro", "USD", "monthly"), shipped("pro", "USD", "yearly"),
         END, []),
        ("self_serve", shipped("pro", "USD", "monthly", 3), shipped("pro", "USD", "monthly", 5),
         NOW, []),
        ("enterprise", shipped("enterprise", "USD", "yearly"),
         shipped("enterprise", "USD", "yearly", 2), END,
         ["account-managers", "finance-directors"]),
        # upgrade (now) + interval change (period end): the whole change waits for period end
        ("enterprise", shipped("business", "USD", "monthly"),
         shipped("enterprise", "USD", "yearly"), END, ["account-managers", "finance-directors"]),
        ("enterprise", shipped("enterprise", "EUR", "yearly"),
         shipped("enterprise", "EUR", "yearly").model_copy(update={"plan_id": "enterprise-plus",
                                                                   "tier": 5}),
         NOW, ["account-managers", "finance-directors"]),
    ],
)  # fmt: skip
def test_default_policy_change_rules(
    segment: Segment,
    current: TermsSnapshot,
    new: TermsSnapshot,
    timing: Timing,
    groups: list[str],
) -> None:
    decision = default_policy().decide_terms_change(segment=segment, current=current, new=new)
    assert decision.allowed
    assert decision.timing is timing
    assert decision.approver_groups == groups
    assert decision.needs_approval is bool(groups)


def test_default_policy_discount_over_twenty_percent_needs_approval() -> None:
    policy = default_policy()
    base = shipped("pro", "USD", "monthly")
    small = base.model_copy(update={"discount_percent": Decimal(20)})
    large = base.model_copy(update={"discount_percent": Decimal(25)})
    allowed = policy.decide_terms_change(segment="self_serve", current=base, new=small)
    approval = policy.decide_terms_change(segment="self_serve", current=base, new=large)
    assert not allowed.needs_approval
    assert approval.needs_approval
    assert "a 25% discount is over the 20% limit" in approval.approval_reasons[0]


@pytest.mark.parametrize(
    ("segment", "snap", "dates", "requested", "expected"),
    [
        ("self_serve", shipped("pro", "USD", "monthly"),
         (D(2024, 1, 10), D(2024, 4, 20), D(2024, 5, 10)), None,
         (END, CreditHandling.NONE, 0, False)),
        ("self_serve", shipped("pro", "USD", "monthly"),
         (D(2024, 1, 10), D(2024, 4, 20), D(2024, 5, 10)), NOW,
         (NOW, CreditHandling.ACCOUNT_CREDIT, 0, False)),
        # a two-year contract cancelled at the first anniversary: 12 months x 1,000.00 USD
        ("enterprise", shipped("enterprise", "USD", "yearly"),
         (D(2024, 3, 1), D(2024, 11, 5), D(2025, 3, 1)), None,
         (END, CreditHandling.NONE, 1_200_000, True)),
        ("enterprise", shipped("enterprise", "USD", "yearly"),
         (D(2024, 3, 1), D(2025, 11, 5), D(2026, 3, 1)), None,
         (END, CreditHandling.NONE, 0, True)),
        ("self_serve", shipped("coffee-beans", "USD", "weekly"),
         (D(2024, 1, 1), D(2024, 1, 10), D(2024, 1, 15)), None,
         (NOW, CreditHandling.NONE, 0, False)),
    ],
)  # fmt: skip
def test_default_policy_cancellation_rules(
    segment: Segment,
    snap: TermsSnapshot,
    dates: tuple[date, date, date],
    requested: Timing | None,
    expected: tuple[Timing, CreditHandling, int, bool],
) -> None:
    decision = default_policy().decide_cancellation(
        segment=segment,
        terms=snap,
        subscribed_on=dates[0],
        today=dates[1],
        period_end=dates[2],
        timing_requested=requested,
    )
    assert decision.allowed
    assert (
        decision.timing,
        decision.refund,
        decision.early_termination_fee_minor,
        decision.needs_approval,
    ) == expected


@pytest.mark.parametrize(
    ("segment", "plan_id", "allowed", "max_days", "shift"),
    [
        ("self_serve", "pro", True, 90, True),
        ("self_serve", "coffee-beans", True, 180, False),
        ("enterprise", "enterprise", False, None, True),
    ],
)
def test_default_policy_pause_rules(
    segment: Segment, plan_id: str, allowed: bool, max_days: int | None, shift: bool
) -> None:
    decision = default_policy().decide_pause(segment=segment, plan_id=plan_id, today=JAN1)
    assert decision.allowed is allowed
    if allowed:
        assert (decision.max_days, decision.shift_billing_dates) == (max_days, shift)
    else:
        assert decision.code is ErrorCode.CHANGE_NOT_ALLOWED


def test_default_policy_is_parsed_once() -> None:
    assert default_policy() is default_policy()


# ---------------------------------------------------------------------------------------------
# Document validation
# ---------------------------------------------------------------------------------------------


def base_doc() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(POLICY_YAML))


Mutation = Callable[[dict[str, Any]], object]


def _set(path: str, value: object) -> Mutation:
    def apply(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return apply


def _delete(path: str) -> Mutation:
    def apply(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[key]
        del node[last]

    return apply


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set("version", 2), "version"),
        (_delete("default.changes.downgrade"), "missing: downgrade"),
        (_delete("default.pause"), "missing: pause"),
        (_delete("default.approval"), "missing: approval"),
        (_set("default.changes.cancel", {}), "its rules go under 'cancellation:'"),
        (_set("default.changes.pause", {}), "its rules go under 'pause:'"),
        (_set("default.changes.upgarde", {}), "unknown change kind 'upgarde'"),
        (_set("default.changes.upgrade.approval", {"quantity_decrease_over_units": 1}),
         "applies to quantity_decrease (or any) only"),
        (_set("default.changes.downgrade.approval", {"discount_over_percent": 5}),
         "applies to discount (or any) only"),
        (_set("default.changes.upgrade.timming", "immediately"), "Extra inputs are not permitted"),
        (_set("default.changes.upgrade.timing", "tomorrow"), "immediately"),
        (_set("default.changes.discount.timing", "period_end"),
         "default timing period_end is not in timings"),
        (_set("default.changes.discount.timings", []), "at least one"),
        (_set("default.changes.upgrade.timings", ["immediately", "immediately"]), "twice"),
        (_set("default.changes.upgrade.credit_handling", "none"), "not none"),
        (_set("default.changes.downgrade.approval.amount_over_minor", {"XYZ": 1}),
         "unknown currency"),
        (_set("default.changes.downgrade.approval.amount_over_minor", {"USD": -1}),
         "greater than or equal to 0"),
        (_set("default.changes.downgrade.approval.amount_over_minor", {"USD": 1, "usd": 2}),
         "listed twice"),
        (_set("default.changes.downgrade.approval.amount_over_minor", {"USD": 50.5}),
         "valid integer"),
        (_set("default.changes.downgrade.approval.amount_over_minor", {}),
         "at least one currency"),
        (_set("default.changes.discount.approval.discount_over_percent", 101),
         "less than or equal to 100"),
        (_set("default.approval.groups", ["approvers", "nobody"]),
         "names group 'nobody', which is not in approver_groups"),
        (_set("segments.enterprise.approval.groups", ["ghosts"]),
         "segments.enterprise.approval names group 'ghosts'"),
        (_set("default.approval.groups", []), "at least 1 item"),
        (_set("default.approval.groups", ["approvers", "approvers"]), "must differ"),
        (_delete("default.approval.sla.escalate_after"), "has no escalate_after"),
        (_set("default.approval.groups", ["approvers"]), "has no escalation group"),
        (_set("default.approval.sla.reminder_after", "5d"), "must come before expire_after"),
        (_set("default.approval.sla.escalate_after", "6d"), "must come before expire_after"),
        (_set("default.approval.sla.expire_after", 5), "needs a unit"),
        (_set("default.approval.sla.reminder_after", "0s"), "longer than zero"),
        (_delete("default.approval.sla.expire_after"), "Field required"),
        (_set("segments.enterprise.cancellation.early_termination_fee", {"kind": "flat"}),
         "amount_minor"),
        (_set("segments.enterprise.cancellation.early_termination_fee", {"kind": "steep"}),
         "'none', 'flat', 'remaining_months'"),
        (_set("segments.enterprise.cancellation.early_termination_fee",
              {"kind": "remaining_months", "amount_minor": {"USD": 1}}),
         "Extra inputs are not permitted"),
        (_set("segments.enterprise.cancellation.minimum_term_months", 0),
         "needs a minimum_term_months above 0"),
        (_set("segments.enterprise.cancellation.within_minimum_term", "refuse"),
         "never applies when within_minimum_term is refuse"),
        (_set("segments.enterprise.cancellation.refund", "cash"), "refund"),
        (_set("segments.enterprise.cancellation.timings", ["immediately"]),
         "default timing period_end is not in timings"),
        (_set("default.pause.max_days", 0), "greater than or equal to 1"),
        (_set("default.pause.approval.over_days", "a week"), "valid integer"),
        (_set("segments.smb", {}), "'self_serve' or 'enterprise'"),
        (_set("approver_groups.directors", []), "needs at least one non-empty id"),
        (_set("approver_groups.directors", ["carol", " "]), "needs at least one non-empty id"),
        (_set("approver_groups.directors", ["carol", "Carol"]), "lists a member twice"),
        (_delete("approver_groups"), "Field required"),
        (_set("owner", "ops"), "Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_bad_documents_are_refused_naming_the_problem(mutate: Mutation, message: str) -> None:
    doc = base_doc()
    mutate(doc)
    with pytest.raises(ValidationError) as caught:
        load_policy(yaml.safe_dump(doc))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "YAML mapping"),
        ("- a\n- b\n", "YAML mapping"),
        ("just words", "YAML mapping"),
        ("default: [unclosed", "not valid YAML"),
    ],
)
def test_documents_that_are_not_a_mapping_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_policy(text)


def test_the_any_key_accepts_every_approval_condition() -> None:
    doc = base_doc()
    doc["plans"]["vip"]["changes"]["any"]["approval"] = {
        "quantity_decrease_over_units": 1,
        "discount_over_percent": 5,
    }
    policy = load_policy(yaml.safe_dump(doc))
    # the quantity condition only speaks for a quantity decrease, the discount one for discounts
    up = policy.decide_change(
        segment="self_serve", plan_id="vip", kinds={K.UPGRADE}, currency="USD"
    )
    assert not up.needs_approval
    down = policy.decide_change(
        segment="self_serve",
        plan_id="vip",
        kinds={K.QUANTITY_DECREASE, K.DISCOUNT},
        currency="USD",
        quantity_before=5,
        quantity_after=2,
        discount_percent=10,
    )
    assert len(down.approval_reasons) == 2


def test_policy_documents_are_immutable(policy: Policy) -> None:
    with pytest.raises(ValidationError):
        policy.default.cancellation.timing = NOW  # type: ignore[misc,union-attr]


def test_check_catalog_lists_unknown_plans_and_missing_currencies(policy: Policy) -> None:
    catalog = parse_catalog(
        """
plans:
  - plan_id: pro
    name: Pro
    tier: 2
    prices:
      - {currency: USD, interval: monthly, amount_minor: 3000}
      - {currency: KWD, interval: monthly, amount_minor: 9500}
  - plan_id: vip
    name: VIP
    tier: 5
    prices:
      - {currency: USD, interval: monthly, amount_minor: 9000}
      - {currency: EUR, interval: monthly, amount_minor: 9000}
"""
    )
    with pytest.raises(ValueError) as caught:
        policy.check_catalog(catalog)
    text = str(caught.value)
    for fragment in (
        "plans.legacy: no such plan",
        "plans.locked: no such plan",
        "default.changes.downgrade.approval.amount_over_minor has no KWD (plan pro)",
        "plans.vip.cancellation.early_termination_fee.amount_minor has no EUR (plan vip)",
    ):
        assert fragment in text
