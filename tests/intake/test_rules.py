"""The intake rules table: which rule set applies, which rule fires, with which code and sentence.

Pure: facts (credit account, stock) are built here and passed in, as the store does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from models.calendar import Interval
from models.catalog import default_catalog
from models.errors import ErrorCode
from models.identity import DEFAULT_TENANT, Principal, Role
from models.ids import customer_id_for_email
from models.intake_rules import (
    ACCESS_RULES,
    CHANNEL_ROLES,
    RULE_SETS,
    RULES,
    CreditFacts,
    CustomerTier,
    Decision,
    IntakeFacts,
    RuleSetName,
    StockFacts,
    check_channel_access,
    check_order_access,
    evaluate,
    priority_score,
    select_rule_set,
)
from models.orders import BillingMode, CanonicalOrder, Channel

CATALOG = default_catalog()
DOCS = Path(__file__).resolve().parents[2] / "docs" / "intake.md"

GOOD = CreditFacts(
    account_id="good",
    credit_limit_minor=100_000,
    paid_invoices=12,
    payment_method_id="pm_onfile1",
    billing_email="ap@good.example",
)
TRUSTED = GOOD.model_copy(update={"account_id": "acme", "trusted_partner": True})
LATE = GOOD.model_copy(update={"account_id": "late", "late_payments": 1})
ON_HOLD = GOOD.model_copy(update={"account_id": "hold", "good_standing": False})
SHORT = GOOD.model_copy(update={"account_id": "short", "paid_invoices": 1})


def order(**kw: Any) -> CanonicalOrder:
    values: dict[str, Any] = {
        "channel": Channel.WEB,
        "channel_order_id": "o-1",
        "email": "ada@example.com",
        "plan_id": "pro",
        "interval": Interval.MONTHLY,
        "currency": "USD",
        "payment_method_id": "pm_abc123",
    }
    values.update(kw)
    return CanonicalOrder(**values)


def judge(o: CanonicalOrder, credit: CreditFacts | None = None, stock: StockFacts | None = None):
    return evaluate(o, CATALOG, IntakeFacts(credit=credit, stock=stock))


def fired(d: Decision) -> list[tuple[str, ErrorCode]]:
    return [(v.rule, v.code) for v in d.violations]


# --- which rule set ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "credit", "rule_set", "tier"),
    [
        (Channel.WEB, None, RuleSetName.STRICT, CustomerTier.NEW),
        (Channel.STRIPE_CHECKOUT, None, RuleSetName.RELAXED, CustomerTier.NEW),
        (Channel.WEB, GOOD, RuleSetName.RELAXED, CustomerTier.ESTABLISHED),
        (Channel.WEB, SHORT, RuleSetName.STRICT, CustomerTier.ESTABLISHED),
        (Channel.WEB, LATE, RuleSetName.STRICT, CustomerTier.RISKY),
        (Channel.WEB, ON_HOLD, RuleSetName.STRICT, CustomerTier.RISKY),
        (Channel.PARTNER, TRUSTED, RuleSetName.RELAXED, CustomerTier.PARTNER),
        (Channel.PARTNER, GOOD, RuleSetName.STRICT, CustomerTier.ESTABLISHED),
        (
            Channel.WEB,
            GOOD.model_copy(update={"enterprise": True}),
            RuleSetName.RELAXED,
            CustomerTier.ENTERPRISE,
        ),
    ],
)
def test_trusted_partners_and_customers_in_good_standing_get_relaxed_rules_others_strict(
    channel: Channel, credit: CreditFacts | None, rule_set: RuleSetName, tier: CustomerTier
) -> None:
    chosen, reason, got_tier = select_rule_set(channel, credit)
    assert (chosen.name, got_tier) == (rule_set, tier)
    assert reason


def test_strict_rules_are_tighter_than_relaxed_on_every_threshold() -> None:
    strict, relaxed = RULE_SETS[RuleSetName.STRICT], RULE_SETS[RuleSetName.RELAXED]
    assert strict.max_quantity < relaxed.max_quantity
    assert strict.credit_headroom_pct < relaxed.credit_headroom_pct
    assert strict.max_late_payments < relaxed.max_late_payments
    assert strict.stock_deliveries > relaxed.stock_deliveries
    assert (
        strict.card_max_term_value_major is not None and relaxed.card_max_term_value_major is None
    )


# --- each rule ----------------------------------------------------------------------------


INVOICE = {"billing": BillingMode.INVOICE, "payment_method_id": None, "account_id": "good"}


@pytest.mark.parametrize(
    ("kw", "credit", "rule", "code"),
    [
        ({"email": "not-an-address"}, None, "order.email", ErrorCode.INVALID_REQUEST),
        ({"timezone": "Mars/Base"}, None, "order.timezone", ErrorCode.INVALID_TIMEZONE),
        # Trials come from the plan: Pro has 14 days; any other length is refused.
        ({"trial_days": 900}, None, "catalog.trial", ErrorCode.TRIAL_NOT_OFFERED),
        ({"trial_days": 0}, None, "catalog.trial", ErrorCode.TRIAL_NOT_OFFERED),
        (
            {"plan_id": "starter", "trial_days": 30},
            None,
            "catalog.trial",
            ErrorCode.TRIAL_NOT_OFFERED,
        ),
        (
            {"plan_id": "coffee-beans", "interval": Interval.WEEKLY, "anchor_day": 3},
            GOOD,
            "order.terms",
            ErrorCode.INVALID_REQUEST,
        ),
        ({"plan_id": "gold"}, None, "catalog.plan", ErrorCode.UNKNOWN_PLAN),
        (
            {"channel": Channel.MOBILE, "plan_id": "enterprise", "interval": Interval.YEARLY},
            None,
            "policy.channel_product",
            ErrorCode.CHANNEL_NOT_ALLOWED,
        ),
        (
            {"channel": Channel.PARTNER, "plan_id": "coffee-beans"},
            TRUSTED,
            "policy.channel_product",
            ErrorCode.CHANNEL_NOT_ALLOWED,
        ),
        (
            {"plan_id": "enterprise", "interval": Interval.MONTHLY, **INVOICE},
            GOOD,
            "policy.segment_interval",
            ErrorCode.SEGMENT_NOT_ALLOWED,
        ),
        ({"currency": "GBP"}, None, "catalog.price", ErrorCode.CURRENCY_NOT_OFFERED),
        (
            {"plan_id": "starter", "interval": Interval.QUARTERLY},
            None,
            "catalog.price",
            ErrorCode.INTERVAL_NOT_OFFERED,
        ),
        (
            {"channel": Channel.MOBILE, "interval": Interval.QUARTERLY},
            None,
            "policy.channel_interval",
            ErrorCode.CHANNEL_NOT_ALLOWED,
        ),
        (
            {"channel": Channel.MOBILE, **INVOICE},
            GOOD,
            "policy.channel_billing",
            ErrorCode.CHANNEL_NOT_ALLOWED,
        ),
        ({"quantity": 11}, None, "order.quantity", ErrorCode.INVALID_QUANTITY),
        ({"payment_method_id": None}, None, "payment.token", ErrorCode.PAYMENT_METHOD_REQUIRED),
        (
            {"payment_method_id": "4242 4242 4242 4242"},
            None,
            "payment.token",
            ErrorCode.CARD_NUMBER_REFUSED,
        ),
        (
            {"payment_method_id": "tok_visa"},
            None,
            "payment.token",
            ErrorCode.PAYMENT_METHOD_INVALID,
        ),
        (
            {"plan_id": "enterprise", "interval": Interval.YEARLY},
            None,
            "risk.order_value",
            ErrorCode.RISK_REJECTED,
        ),
        ({**INVOICE}, None, "credit.account", ErrorCode.CREDIT_LIMIT_EXCEEDED),
        ({**INVOICE}, ON_HOLD, "credit.standing", ErrorCode.ACCOUNT_ON_HOLD),
        ({**INVOICE}, LATE, "credit.history", ErrorCode.RISK_REJECTED),
        (
            {**INVOICE},
            GOOD.model_copy(update={"currency": "EUR"}),
            "credit.currency",
            ErrorCode.INVALID_CURRENCY,
        ),
        (
            {**INVOICE},
            GOOD.model_copy(update={"outstanding_minor": 108_000}),
            "credit.limit",
            ErrorCode.CREDIT_LIMIT_EXCEEDED,
        ),
        (
            {**INVOICE},
            GOOD.model_copy(update={"payment_method_id": None}),
            "credit.method_on_file",
            ErrorCode.PAYMENT_METHOD_REQUIRED,
        ),
        (
            {**INVOICE},
            GOOD.model_copy(update={"billing_email": None}),
            "credit.method_on_file",
            ErrorCode.PAYMENT_METHOD_REQUIRED,
        ),
        (
            {"plan_id": "coffee-beans", "interval": Interval.WEEKLY},
            None,
            "stock.coverage",
            ErrorCode.OUT_OF_STOCK,
        ),
    ],
)
def test_each_rule_fires_first_with_its_stable_code_and_an_actionable_sentence(
    kw: dict[str, Any], credit: CreditFacts | None, rule: str, code: ErrorCode
) -> None:
    d = judge(order(**kw), credit)
    assert not d.accepted
    assert d.primary is not None
    assert (d.primary.rule, d.primary.code) == (rule, code), fired(d)
    assert len(d.primary.message) > 25
    assert d.stock_to_reserve == 0 and d.credit_to_reserve_minor == 0


def test_every_rule_in_the_table_is_documented_in_docs_intake_md() -> None:
    text = DOCS.read_text()
    for rule, codes, _ in [*RULES, *ACCESS_RULES]:
        assert f"`{rule}`" in text, rule
        for code in codes.split(", "):
            assert code in text


def test_a_trial_is_the_plans_own_sent_or_not() -> None:
    assert judge(order(trial_days=None)).accepted
    assert judge(order(trial_days=14)).accepted  # Pro's trial, spelled out
    d = judge(order(trial_days=0))
    assert d.primary is not None and "14-day trial" in d.primary.message
    starter = judge(order(plan_id="starter", trial_days=14))
    assert starter.primary is not None and "no trial" in starter.primary.message


def test_a_clean_card_order_from_a_new_customer_is_accepted_under_strict_rules() -> None:
    d = judge(order(quantity=2))
    assert d.accepted and d.rule_set == RuleSetName.STRICT
    assert (d.unit_amount_minor, d.period_value_minor, d.term_value_minor) == (3000, 6000, 72000)
    assert d.payment_method_id == "pm_abc123" and d.credit_to_reserve_minor == 0


def test_all_rules_that_fire_are_listed_in_table_order() -> None:
    d = judge(order(plan_id="enterprise", interval=Interval.MONTHLY, payment_method_id=None))
    assert [r for r, _ in fired(d)] == [
        "policy.segment_interval",
        "catalog.price",
        "payment.token",
    ]


def test_relaxed_rules_allow_more_units_and_large_card_orders_than_strict() -> None:
    assert judge(order(quantity=11), GOOD).accepted
    assert judge(order(plan_id="enterprise", interval=Interval.YEARLY), GOOD).accepted


@pytest.mark.parametrize(
    ("credit", "outstanding", "accepted"),
    [
        (SHORT, 100_000 - 3000, True),  # strict: exactly at the limit
        (SHORT, 100_000 - 2999, False),
        (GOOD, 110_000 - 3000, True),  # relaxed: 10% over the limit is tolerated
        (GOOD, 110_000 - 2999, False),
    ],
)
def test_credit_limit_counts_outstanding_plus_reserved_plus_this_order(
    credit: CreditFacts, outstanding: int, accepted: bool
) -> None:
    facts = credit.model_copy(
        update={"outstanding_minor": outstanding - 1000, "reserved_minor": 1000}
    )
    d = judge(order(**{**INVOICE, "account_id": credit.account_id}), facts)
    assert d.accepted is accepted, fired(d)
    if accepted:
        assert d.credit_to_reserve_minor == 3000 and d.payment_method_id == "pm_onfile1"
        assert d.bill_to_email == "ap@good.example"  # invoice orders bill the account


def test_a_trusted_partner_with_two_late_payments_may_still_be_invoiced() -> None:
    facts = TRUSTED.model_copy(update={"late_payments": 2})
    d = judge(order(channel=Channel.PARTNER, **{**INVOICE, "account_id": "acme"}), facts)
    assert d.accepted and d.rule_set == RuleSetName.RELAXED


@pytest.mark.parametrize(
    ("credit", "available", "accepted", "reserve"),
    [
        (None, 6, True, 6),  # strict: 2 units x 3 deliveries
        (None, 5, False, 0),
        (GOOD, 4, True, 4),  # relaxed: 2 units x 2 deliveries
        (GOOD, 3, False, 0),
    ],
)
def test_physical_plans_need_stock_for_the_first_deliveries_and_reserve_it(
    credit: CreditFacts | None, available: int, accepted: bool, reserve: int
) -> None:
    stock = StockFacts(sku="BEANS-1KG", on_hand=available + 10, reserved=10)
    d = judge(order(plan_id="coffee-beans", interval=Interval.WEEKLY, quantity=2), credit, stock)
    assert d.accepted is accepted, fired(d)
    assert (d.sku, d.stock_to_reserve) == ("BEANS-1KG", reserve)
    if not accepted:
        assert d.primary is not None and f"{available} free in stock" in d.primary.message


# --- dead-letter priority -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "currency", "tier", "score"),
    [
        (36_000, "USD", CustomerTier.NEW, 360),  # Pro monthly: $30 x 12
        (1_200_000, "USD", CustomerTier.ENTERPRISE, 36_000),  # $12,000 x 3
        (48_000, "JPY", CustomerTier.PARTNER, 96_000),  # no minor unit in JPY
        (114_000, "KWD", CustomerTier.RISKY, 57),  # 3 decimals
        (36_000, "XXX", CustomerTier.NEW, 0),
        (0, "USD", CustomerTier.ENTERPRISE, 0),
    ],
)
def test_priority_is_one_year_value_in_major_units_times_tier_weight(
    value: int, currency: str, tier: CustomerTier, score: int
) -> None:
    assert priority_score(value, currency, tier) == score


def test_enterprise_plans_rank_their_failures_as_enterprise_customers() -> None:
    d = judge(order(plan_id="enterprise", interval=Interval.YEARLY, **INVOICE), GOOD)
    assert d.tier == CustomerTier.ENTERPRISE and d.priority == 36_000


# --- access: who may send which orders -------------------------------------------------------


def who(role: Role, **kw: Any) -> Principal:
    return Principal(
        id=f"p-{role.value}", tenant_id=kw.pop("tenant_id", DEFAULT_TENANT), role=role, **kw
    )


ADA = customer_id_for_email("ada@example.com")
CUSTOMER = who(Role.CUSTOMER, customer_id=ADA)
PARTNER = who(Role.PARTNER, partner_id="acme", accounts=("acme",))


@pytest.mark.parametrize(
    ("principal", "channel", "rule"),
    [
        (who(Role.APPROVER), Channel.WEB, "access.permission"),
        (who(Role.ADMIN), Channel.WEB, "access.permission"),
        (CUSTOMER, Channel.PARTNER, "access.channel"),
        (CUSTOMER, Channel.REFERRAL, "access.channel"),
        (CUSTOMER, Channel.STRIPE_CHECKOUT, "access.channel"),
        (PARTNER, Channel.WEB, "access.channel"),
        (PARTNER, Channel.MOBILE, "access.channel"),
        (who(Role.SERVICE), Channel.PARTNER, "access.channel"),
        (who(Role.OPERATOR, tenant_id="t2"), Channel.STRIPE_CHECKOUT, "access.channel"),
    ],
)
def test_channel_access_is_refused_with_forbidden(
    principal: Principal, channel: Channel, rule: str
) -> None:
    v = check_channel_access(principal, channel)
    assert v is not None and (v.rule, v.code) == (rule, ErrorCode.FORBIDDEN)
    assert len(v.message) > 25


def test_every_channel_takes_orders_from_someone_and_operators_use_all_but_none_others() -> None:
    for channel, roles in CHANNEL_ROLES.items():
        assert roles and Role.ADMIN not in roles and Role.APPROVER not in roles
        assert check_channel_access(who(Role.OPERATOR), channel) is None
    assert check_channel_access(PARTNER, Channel.PARTNER) is None
    assert check_channel_access(CUSTOMER, Channel.WEB) is None


@pytest.mark.parametrize(
    ("principal", "kw", "refused", "use_account"),
    [
        # The attack: an invoice order naming someone else's account.
        (CUSTOMER, {**INVOICE, "account_id": "acme"}, "access.account", False),
        # ... or naming no account: the e-mail's customer account is billed.
        (
            CUSTOMER,
            {**INVOICE, "account_id": None, "email": "cfo@acme.example"},
            "access.account",
            False,
        ),
        (CUSTOMER, {**INVOICE, "account_id": None}, None, True),  # its own account
        (CUSTOMER, {"account_id": "acme"}, "access.account", False),  # claiming acme's terms
        (CUSTOMER, {}, None, True),  # a card order for itself
        (CUSTOMER, {"email": "someone@example.com"}, None, False),  # judged as a new customer
        (
            who(Role.CUSTOMER, customer_id=ADA, accounts=("initech",)),
            {**INVOICE, "account_id": "initech"},
            None,
            True,
        ),
        (who(Role.OPERATOR), {**INVOICE, "account_id": "acme"}, None, True),
        (who(Role.SERVICE), {**INVOICE, "account_id": "acme"}, None, True),
        (
            PARTNER,
            {"channel": Channel.PARTNER, "partner_id": "acme", **INVOICE, "account_id": "acme"},
            None,
            True,
        ),
        (
            PARTNER,
            {"channel": Channel.PARTNER, "partner_id": "acme", **INVOICE, "account_id": "globex"},
            "access.account",
            False,
        ),
        (
            PARTNER,
            {"channel": Channel.PARTNER, "partner_id": "globex", **INVOICE, "account_id": "acme"},
            "access.partner",
            False,
        ),
    ],
)
def test_an_order_may_bill_only_an_account_its_principal_is_authorized_for(
    principal: Principal, kw: dict[str, Any], refused: str | None, use_account: bool
) -> None:
    access = check_order_access(order(**kw), principal)
    assert (access.refused.rule if access.refused else None) == refused
    assert access.use_account is use_account
    if access.refused is not None:
        assert access.refused.code == ErrorCode.ACCOUNT_NOT_AUTHORIZED
