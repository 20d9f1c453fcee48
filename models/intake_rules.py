"""Intake validation: pure rules over a canonical order and the facts the store looked up.

Two rule sets, ``strict`` and ``relaxed``, differ only in thresholds (:data:`RULE_SETS`). Which one
applies depends on the channel and the account (:func:`select_rule_set`): trusted partners and
customers in good standing get ``relaxed``, new or risky ones ``strict``. :func:`evaluate` runs
every rule in :data:`RULES` order and returns a :class:`Decision`; a rejection names the rule that
fired (``rule``), a stable :class:`ErrorCode` and a sentence a person can act on. The same table is
in ``docs/intake.md``; keep them together.

Facts (credit account, stock) are arguments: the store fetches them, nothing here does I/O.

Before any of that, the **access rules** (:data:`ACCESS_RULES`) decide whether the authenticated
principal may send orders through the channel at all (:func:`check_channel_access`) and may bill
the order's account (:func:`check_order_access`). They depend on the principal, never on the
payload's say-so; a refused order is not recorded and reserves nothing.

Trial length and prices come from the catalog, never from a payload: a payload that asks for
another trial than the plan's is refused (``catalog.trial``), and no channel carries a price that
is used (the one-year value, credit reservations and every charge use the catalog's price).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from models.calendar import Interval, validate_timezone
from models.catalog import Catalog, Plan, Price
from models.errors import ErrorCode, OmsError
from models.identity import DEFAULT_TENANT, Permission, Principal, Role
from models.ids import is_valid_id
from models.money import BillingInputError, format_money, minor_unit_exponent
from models.orders import BillingMode, CanonicalOrder, Channel, OrderHint, term_value_minor

__all__ = [
    "ACCESS_RULES",
    "CHANNEL_POLICIES",
    "CHANNEL_ROLES",
    "RULES",
    "RULE_SETS",
    "TIER_WEIGHTS",
    "ChannelPolicy",
    "CreditFacts",
    "CustomerTier",
    "Decision",
    "IntakeFacts",
    "OrderAccess",
    "RuleSet",
    "RuleSetName",
    "StockFacts",
    "Violation",
    "check_channel_access",
    "check_order_access",
    "estimate_term_value",
    "evaluate",
    "priority_score",
    "select_rule_set",
]

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
CARD_LIKE_RE = re.compile(r"^[\d\s-]{12,23}$")
GOOD_HISTORY_PAID_INVOICES = 3

_Fire = Callable[[str, ErrorCode, str], None]


class RuleSetName(StrEnum):
    STRICT = "strict"
    RELAXED = "relaxed"


class RuleSet(BaseModel):
    """Thresholds of one rule set (see the table in docs/intake.md)."""

    model_config = ConfigDict(frozen=True)

    name: RuleSetName
    max_quantity: int
    # Card orders: largest one-year value (major units, any currency) accepted without review.
    card_max_term_value_major: int | None
    # Invoice orders: outstanding + reserved + this order must stay within limit * pct / 100.
    credit_headroom_pct: int
    max_late_payments: int
    # Physical plans: free stock must cover this many deliveries of the order (and is reserved).
    stock_deliveries: int


RULE_SETS: dict[RuleSetName, RuleSet] = {
    RuleSetName.STRICT: RuleSet(
        name=RuleSetName.STRICT,
        max_quantity=10,
        card_max_term_value_major=10_000,
        credit_headroom_pct=100,
        max_late_payments=0,
        stock_deliveries=3,
    ),
    RuleSetName.RELAXED: RuleSet(
        name=RuleSetName.RELAXED,
        max_quantity=250,
        card_max_term_value_major=None,
        credit_headroom_pct=110,
        max_late_payments=2,
        stock_deliveries=2,
    ),
}


class ChannelPolicy(BaseModel):
    """What a channel may sell."""

    model_config = ConfigDict(frozen=True)

    intervals: frozenset[Interval]
    kinds: frozenset[str]
    segments: frozenset[str]
    billing: frozenset[BillingMode]
    # New customers (no account) get the relaxed set on this channel (payment already collected).
    relaxed_for_new: bool = False
    # Only trusted partners get the relaxed set on this channel (good standing is not enough).
    relaxed_needs_trusted_partner: bool = False


_ALL_INTERVALS = frozenset(Interval)
CHANNEL_POLICIES: dict[Channel, ChannelPolicy] = {
    Channel.WEB: ChannelPolicy(
        intervals=_ALL_INTERVALS,
        kinds=frozenset({"service", "physical"}),
        segments=frozenset({"self_serve", "enterprise"}),
        billing=frozenset({BillingMode.CARD, BillingMode.INVOICE}),
    ),
    Channel.MOBILE: ChannelPolicy(
        intervals=frozenset(
            {Interval.WEEKLY, Interval.BIWEEKLY, Interval.MONTHLY, Interval.YEARLY}
        ),
        kinds=frozenset({"service", "physical"}),
        segments=frozenset({"self_serve"}),
        billing=frozenset({BillingMode.CARD}),
    ),
    Channel.PARTNER: ChannelPolicy(
        intervals=frozenset({Interval.MONTHLY, Interval.QUARTERLY, Interval.YEARLY}),
        kinds=frozenset({"service"}),
        segments=frozenset({"self_serve", "enterprise"}),
        billing=frozenset({BillingMode.CARD, BillingMode.INVOICE}),
        relaxed_needs_trusted_partner=True,
    ),
    Channel.STRIPE_CHECKOUT: ChannelPolicy(
        intervals=frozenset({Interval.MONTHLY, Interval.QUARTERLY, Interval.YEARLY}),
        kinds=frozenset({"service"}),
        segments=frozenset({"self_serve"}),
        billing=frozenset({BillingMode.CARD}),
        relaxed_for_new=True,
    ),
    Channel.REFERRAL: ChannelPolicy(
        intervals=frozenset({Interval.MONTHLY, Interval.YEARLY}),
        kinds=frozenset({"service"}),
        segments=frozenset({"self_serve"}),
        billing=frozenset({BillingMode.CARD}),
    ),
}

# Billing intervals each customer segment may buy, whatever the catalog prices.
SEGMENT_INTERVALS: dict[str, frozenset[Interval]] = {
    "self_serve": _ALL_INTERVALS,
    "enterprise": frozenset({Interval.YEARLY}),
}


class CustomerTier(StrEnum):
    """How much a customer's failed order matters, for ranking dead letters."""

    ENTERPRISE = "enterprise"
    PARTNER = "partner"
    ESTABLISHED = "established"
    NEW = "new"
    RISKY = "risky"


TIER_WEIGHTS: dict[CustomerTier, float] = {
    CustomerTier.ENTERPRISE: 3.0,
    CustomerTier.PARTNER: 2.0,
    CustomerTier.ESTABLISHED: 1.5,
    CustomerTier.NEW: 1.0,
    CustomerTier.RISKY: 0.5,
}


class CreditFacts(BaseModel):
    """An account of the internal credit ledger, as the store read it."""

    model_config = ConfigDict(frozen=True)

    account_id: str
    currency: str = "USD"
    credit_limit_minor: int = 0
    outstanding_minor: int = 0  # invoiced, not yet paid (kept by billing)
    reserved_minor: int = 0  # accepted intake orders on credit, not yet invoiced (other orders)
    good_standing: bool = True
    trusted_partner: bool = False
    enterprise: bool = False
    paid_invoices: int = 0
    late_payments: int = 0
    billing_email: str | None = None  # who is billed for invoice orders
    payment_method_id: str | None = None  # settles the account's invoices


class StockFacts(BaseModel):
    """A SKU's stock as the store read it; ``reserved`` excludes this order's own reservation."""

    model_config = ConfigDict(frozen=True)

    sku: str
    on_hand: int = 0
    reserved: int = 0

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


class IntakeFacts(BaseModel):
    """Everything outside the order that the rules look at."""

    model_config = ConfigDict(frozen=True)

    credit: CreditFacts | None = None
    stock: StockFacts | None = None


class Violation(BaseModel):
    """A rule that fired."""

    model_config = ConfigDict(frozen=True)

    rule: str
    code: ErrorCode
    message: str


class Decision(BaseModel):
    """The verdict on one order, with what to reserve when it is accepted."""

    model_config = ConfigDict(frozen=True)

    rule_set: RuleSetName
    rule_set_reason: str
    tier: CustomerTier
    violations: list[Violation] = Field(default_factory=list)
    unit_amount_minor: int = 0
    period_value_minor: int = 0  # one period of the order (price x quantity)
    term_value_minor: int = 0  # one year of it
    priority: int = 0
    sku: str | None = None
    stock_to_reserve: int = 0
    credit_to_reserve_minor: int = 0
    payment_method_id: str | None = None  # the order's token, or the account's method on file
    # Who the subscription bills: the account's billing e-mail for invoice orders, else None
    # (the customer who ordered).
    bill_to_email: str | None = None

    @property
    def accepted(self) -> bool:
        return not self.violations

    @property
    def primary(self) -> Violation | None:
        """The rule reported to the caller: the first in table order."""
        return self.violations[0] if self.violations else None


# Every rule, in evaluation order: (id, code(s), what it checks). docs/intake.md renders it.
RULES: list[tuple[str, str, str]] = [
    ("order.email", "INVALID_REQUEST", "the customer e-mail address looks like one"),
    ("order.timezone", "INVALID_TIMEZONE", "the billing time zone is an IANA zone"),
    ("order.terms", "INVALID_REQUEST", "anchor day 1..31, and only with month intervals"),
    ("catalog.plan", "UNKNOWN_PLAN", "the plan exists"),
    ("catalog.trial", "TRIAL_NOT_OFFERED", "trial days, if sent, are the plan's own trial"),
    ("policy.channel_product", "CHANNEL_NOT_ALLOWED", "the channel sells this kind/segment"),
    ("policy.segment_interval", "SEGMENT_NOT_ALLOWED", "the segment allows the interval"),
    (
        "catalog.price",
        "CURRENCY_NOT_OFFERED, INTERVAL_NOT_OFFERED",
        "the plan is sold in the currency and interval",
    ),
    ("policy.channel_interval", "CHANNEL_NOT_ALLOWED", "the channel may sell the interval"),
    ("policy.channel_billing", "CHANNEL_NOT_ALLOWED", "the channel may bill this way"),
    ("order.quantity", "INVALID_QUANTITY", "1 <= quantity <= max_quantity"),
    (
        "payment.token",
        "PAYMENT_METHOD_REQUIRED, CARD_NUMBER_REFUSED, PAYMENT_METHOD_INVALID",
        "card orders carry a payment method token (pm_...), never a card number",
    ),
    ("risk.order_value", "RISK_REJECTED", "card orders: one-year value <= card cap"),
    ("credit.account", "CREDIT_LIMIT_EXCEEDED", "invoice orders: the account has a credit line"),
    ("credit.standing", "ACCOUNT_ON_HOLD", "invoice orders: the account is in good standing"),
    ("credit.history", "RISK_REJECTED", "invoice orders: late payments <= max_late_payments"),
    ("credit.currency", "INVALID_CURRENCY", "invoice orders: the order is in the line's currency"),
    (
        "credit.limit",
        "CREDIT_LIMIT_EXCEEDED",
        "invoice orders: outstanding + reserved + one period <= limit x headroom",
    ),
    (
        "credit.method_on_file",
        "PAYMENT_METHOD_REQUIRED",
        "invoice orders: the account has a billing e-mail and a payment method on file",
    ),
    ("stock.coverage", "OUT_OF_STOCK", "physical plans: free stock >= quantity x deliveries"),
]


def select_rule_set(
    channel: Channel, credit: CreditFacts | None
) -> tuple[RuleSet, str, CustomerTier]:
    """The rule set for an order from ``channel`` by the account ``credit`` (None: new customer).

    Returns:
        The rule set, a short reason (recorded with every decision) and the customer tier.
    """
    policy = CHANNEL_POLICIES[channel]
    strict, relaxed = RULE_SETS[RuleSetName.STRICT], RULE_SETS[RuleSetName.RELAXED]
    if credit is None:
        if policy.relaxed_for_new:
            return relaxed, f"new customer; payment collected by {channel.value}", CustomerTier.NEW
        return strict, "new customer (no account)", CustomerTier.NEW
    if not credit.good_standing:
        return strict, "account not in good standing", CustomerTier.RISKY
    if credit.trusted_partner:
        return relaxed, "trusted partner", CustomerTier.PARTNER
    tier = CustomerTier.ENTERPRISE if credit.enterprise else CustomerTier.ESTABLISHED
    if credit.late_payments > 0:
        return strict, f"{credit.late_payments} late payment(s)", CustomerTier.RISKY
    if policy.relaxed_needs_trusted_partner:
        return strict, f"{channel.value} account is not a trusted partner", tier
    if credit.paid_invoices < GOOD_HISTORY_PAID_INVOICES:
        return strict, f"short payment history ({credit.paid_invoices} paid invoices)", tier
    return relaxed, "customer in good standing", tier


def priority_score(term_value_minor: int, currency: str | None, tier: CustomerTier) -> int:
    """Dead-letter priority: the order's one-year value in major units x the tier's weight.

    Currencies are not converted (no FX here): 1 JPY counts like 1 USD. Unknown currency or value
    gives 0, so such entries sort last among equals.
    """
    if not currency or term_value_minor <= 0:
        return 0
    try:
        exponent = minor_unit_exponent(currency)
    except BillingInputError:
        return 0
    scale: int = 10**exponent
    return round(term_value_minor / scale * TIER_WEIGHTS[tier])


def estimate_term_value(catalog: Catalog, hint: OrderHint) -> tuple[int, str | None]:
    """A best-effort one-year value from whatever a broken payload revealed: (minor, currency)."""
    if not hint.plan_id:
        return 0, hint.currency
    try:
        plan = catalog.plan(hint.plan_id)
        currency = (hint.currency or plan.currencies[0]).upper()
        interval = hint.interval or plan.price(currency, plan.intervals[0]).interval
        price = plan.price(currency, interval)
    except (OmsError, ValueError):
        return 0, hint.currency
    quantity = hint.quantity if hint.quantity and hint.quantity > 0 else 1
    return term_value_minor(price.amount_minor, quantity, price.interval), price.currency


def evaluate(order: CanonicalOrder, catalog: Catalog, facts: IntakeFacts) -> Decision:
    """Run every rule on ``order``; the decision lists the rules that fired, in table order."""
    rule_set, reason, tier = select_rule_set(order.channel, facts.credit)
    v: list[Violation] = []

    def fire(rule: str, code: ErrorCode, message: str) -> None:
        v.append(Violation(rule=rule, code=code, message=message))

    _check_order_terms(order, fire)
    try:
        plan: Plan | None = catalog.plan(order.plan_id)
    except OmsError as err:
        fire("catalog.plan", err.code, err.message)
        plan = None
    if plan is None:
        return Decision(rule_set=rule_set.name, rule_set_reason=reason, tier=tier, violations=v)
    if order.trial_days is not None and order.trial_days != plan.trial_days:
        offered = f"{plan.trial_days}-day trial" if plan.trial_days else "no trial"
        fire(
            "catalog.trial",
            ErrorCode.TRIAL_NOT_OFFERED,
            f"{plan.plan_id} comes with {offered}; the order asked for {order.trial_days} "
            "day(s). Trials come from the plan: leave trial days out (or send the plan's)",
        )
    if plan.segment == "enterprise":
        tier = CustomerTier.ENTERPRISE if tier != CustomerTier.RISKY else tier
    policy = CHANNEL_POLICIES[order.channel]
    if plan.kind not in policy.kinds or plan.segment not in policy.segments:
        what = "physical products" if plan.kind not in policy.kinds else f"{plan.segment} plans"
        fire(
            "policy.channel_product",
            ErrorCode.CHANNEL_NOT_ALLOWED,
            f"the {order.channel.value} channel does not sell {what} such as {plan.plan_id}; "
            "order it through the web store or your account manager",
        )
    allowed = SEGMENT_INTERVALS.get(plan.segment, _ALL_INTERVALS)
    if order.interval not in allowed:
        fire(
            "policy.segment_interval",
            ErrorCode.SEGMENT_NOT_ALLOWED,
            f"{plan.segment} plans such as {plan.plan_id} are sold "
            f"{_words(allowed)} only, not {order.interval.value}",
        )
    price: Price | None
    try:
        price = plan.price(order.currency, order.interval)
    except OmsError as err:
        fire("catalog.price", err.code, err.message)
        price = None
    if order.interval not in policy.intervals:
        fire(
            "policy.channel_interval",
            ErrorCode.CHANNEL_NOT_ALLOWED,
            f"the {order.channel.value} channel sells {_words(policy.intervals)} billing, "
            f"not {order.interval.value}; choose one of those",
        )
    if order.billing not in policy.billing:
        fire(
            "policy.channel_billing",
            ErrorCode.CHANNEL_NOT_ALLOWED,
            f"the {order.channel.value} channel takes {_words(policy.billing)} payment, "
            f"not {order.billing.value}",
        )
    if not 1 <= order.quantity <= rule_set.max_quantity:
        fire(
            "order.quantity",
            ErrorCode.INVALID_QUANTITY,
            f"quantity must be 1 to {rule_set.max_quantity} per order for this account "
            f"({rule_set.name.value} rules), got {order.quantity}; split the order or ask for "
            "an account review",
        )
    unit = price.amount_minor if price else 0
    quantity = max(order.quantity, 0)
    period_value = unit * quantity
    term_value = term_value_minor(unit, quantity, order.interval)
    payment_method_id = order.payment_method_id
    credit_to_reserve = 0
    bill_to: str | None = None
    if order.billing == BillingMode.CARD:
        _check_card(order, rule_set, price, term_value, fire)
    else:
        payment_method_id, credit_to_reserve = _check_credit(
            order, rule_set, facts.credit, price, period_value, fire
        )
        bill_to = facts.credit.billing_email if facts.credit else None
    sku, stock_to_reserve = None, 0
    if plan.kind == "physical":
        sku = plan.sku or plan.plan_id
        stock_to_reserve = quantity * rule_set.stock_deliveries
        available = facts.stock.available if facts.stock else 0
        if available < stock_to_reserve:
            fire(
                "stock.coverage",
                ErrorCode.OUT_OF_STOCK,
                f"{sku}: {max(available, 0)} free in stock, but the first "
                f"{rule_set.stock_deliveries} deliveries of {quantity} need {stock_to_reserve}; "
                "order a smaller quantity or retry after the next restock",
            )
    currency = price.currency if price else order.currency
    return Decision(
        rule_set=rule_set.name,
        rule_set_reason=reason,
        tier=tier,
        violations=v,
        unit_amount_minor=unit,
        period_value_minor=period_value,
        term_value_minor=term_value,
        priority=priority_score(term_value, currency, tier),
        sku=sku,
        stock_to_reserve=stock_to_reserve if not v else 0,
        credit_to_reserve_minor=credit_to_reserve if not v else 0,
        payment_method_id=payment_method_id,
        bill_to_email=bill_to,
    )


def _check_order_terms(order: CanonicalOrder, fire: _Fire) -> None:
    if not EMAIL_RE.match(order.email.strip()):
        fire(
            "order.email",
            ErrorCode.INVALID_REQUEST,
            f"{order.email[:80]!r} is not an e-mail address; correct the customer's address",
        )
    if order.timezone is not None:
        try:
            validate_timezone(order.timezone)
        except ValueError as err:
            fire("order.timezone", ErrorCode.INVALID_TIMEZONE, str(err))
    if order.anchor_day is not None:
        if not 1 <= order.anchor_day <= 31:
            fire(
                "order.terms",
                ErrorCode.INVALID_REQUEST,
                f"anchor day must be between 1 and 31, got {order.anchor_day}",
            )
        elif order.interval.months is None:
            fire(
                "order.terms",
                ErrorCode.INVALID_REQUEST,
                f"an anchor day needs a month interval, not {order.interval.value}; drop it",
            )


def _check_card(
    order: CanonicalOrder,
    rule_set: RuleSet,
    price: Price | None,
    term_value: int,
    fire: _Fire,
) -> None:
    pm = (order.payment_method_id or "").strip()
    if not pm:
        fire(
            "payment.token",
            ErrorCode.PAYMENT_METHOD_REQUIRED,
            "card orders need a payment method token (pm_...) from the payment gateway",
        )
    elif CARD_LIKE_RE.match(pm):
        fire(
            "payment.token",
            ErrorCode.CARD_NUMBER_REFUSED,
            "card numbers are never accepted; send the gateway's payment method token (pm_...)",
        )
    elif not pm.startswith("pm_") or not is_valid_id(pm):
        fire(
            "payment.token",
            ErrorCode.PAYMENT_METHOD_INVALID,
            f"{pm[:40]!r} is not a payment method token (pm_...)",
        )
    cap = rule_set.card_max_term_value_major
    if cap is not None and price is not None:
        cap_minor = cap * 10 ** minor_unit_exponent(price.currency)
        if term_value > cap_minor:
            fire(
                "risk.order_value",
                ErrorCode.RISK_REJECTED,
                f"a one-year value of {format_money(term_value, price.currency)} is above the "
                f"{format_money(cap_minor, price.currency)} accepted by card from a new or "
                "risky account; open an account (invoice billing) or ask sales for a review",
            )


def _check_credit(
    order: CanonicalOrder,
    rule_set: RuleSet,
    credit: CreditFacts | None,
    price: Price | None,
    period_value: int,
    fire: _Fire,
) -> tuple[str | None, int]:
    """The invoice-billing rules; returns (payment method on file, credit to reserve)."""
    if credit is None:
        fire(
            "credit.account",
            ErrorCode.CREDIT_LIMIT_EXCEEDED,
            f"account {order.account_key} has no credit line, so it cannot be invoiced; pay by "
            "card or ask finance to open a credit line",
        )
        return None, 0
    if not credit.good_standing:
        fire(
            "credit.standing",
            ErrorCode.ACCOUNT_ON_HOLD,
            f"account {credit.account_id} is on hold (not in good standing); settle its overdue "
            "invoices or pay this order by card",
        )
    if credit.late_payments > rule_set.max_late_payments:
        fire(
            "credit.history",
            ErrorCode.RISK_REJECTED,
            f"account {credit.account_id} has {credit.late_payments} late payment(s), more than "
            f"the {rule_set.max_late_payments} the {rule_set.name.value} rules allow for invoice "
            "billing; pay by card or ask finance for a review",
        )
    if price is not None and credit.currency.upper() != price.currency:
        fire(
            "credit.currency",
            ErrorCode.INVALID_CURRENCY,
            f"account {credit.account_id}'s credit line is in {credit.currency.upper()}, the order "
            f"in {price.currency}; order in {credit.currency.upper()}",
        )
    elif price is not None:
        ceiling = credit.credit_limit_minor * rule_set.credit_headroom_pct // 100
        exposure = credit.outstanding_minor + credit.reserved_minor + period_value
        if exposure > ceiling:
            c = price.currency
            fire(
                "credit.limit",
                ErrorCode.CREDIT_LIMIT_EXCEEDED,
                f"account {credit.account_id}: outstanding "
                f"{format_money(credit.outstanding_minor, c)} + reserved "
                f"{format_money(credit.reserved_minor, c)} + this order "
                f"{format_money(period_value, c)} exceeds the credit limit "
                f"{format_money(credit.credit_limit_minor, c)}"
                + (
                    f" (+{rule_set.credit_headroom_pct - 100}% tolerance)"
                    if rule_set.credit_headroom_pct > 100
                    else ""
                )
                + "; collect payment first or ask finance to raise the limit",
            )
    pm = credit.payment_method_id
    missing = [
        what
        for what, value in (("payment method", pm), ("billing e-mail", credit.billing_email))
        if not value
    ]
    if missing:
        fire(
            "credit.method_on_file",
            ErrorCode.PAYMENT_METHOD_REQUIRED,
            f"account {credit.account_id} has no {' or '.join(missing)} on file to bill and settle "
            "its invoices; add them to the account (oms intake seed) or pay by card",
        )
    return pm, period_value


def _words(values: frozenset[Interval] | frozenset[BillingMode]) -> str:
    order = {v: i for i, v in enumerate([*Interval, *BillingMode])}
    names = [v.value for v in sorted(values, key=lambda x: order[x])]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


# --- access: who may send which orders -------------------------------------------------------

# The roles that may send orders through each channel (besides orders:submit). ``stripe-checkout``
# orders are authenticated by their Stripe signature and always act as the ``stripe-checkout``
# service principal of the default tenant; an operator of that tenant may also submit a signed
# event (``oms intake file``). Partners send their CSV files only.
CHANNEL_ROLES: dict[Channel, frozenset[Role]] = {
    Channel.WEB: frozenset({Role.CUSTOMER, Role.OPERATOR, Role.SERVICE}),
    Channel.MOBILE: frozenset({Role.CUSTOMER, Role.OPERATOR, Role.SERVICE}),
    Channel.PARTNER: frozenset({Role.PARTNER, Role.OPERATOR}),
    Channel.STRIPE_CHECKOUT: frozenset({Role.SERVICE, Role.OPERATOR}),
    Channel.REFERRAL: frozenset({Role.OPERATOR, Role.SERVICE}),
}

# The access rules, in evaluation order: (id, code, what it checks). docs/intake.md renders it.
ACCESS_RULES: list[tuple[str, str, str]] = [
    ("access.permission", "FORBIDDEN", "the principal's role grants orders:submit"),
    (
        "access.channel",
        "FORBIDDEN",
        "the principal's role may send orders through the channel (CHANNEL_ROLES)",
    ),
    ("access.partner", "ACCOUNT_NOT_AUTHORIZED", "a partner's orders name its own partner id"),
    (
        "access.account",
        "ACCOUNT_NOT_AUTHORIZED",
        "the principal may bill the order's account (invoice orders: the billed account; any "
        "order: an account_id it names)",
    ),
]


class OrderAccess(BaseModel):
    """What :func:`check_order_access` decided for one order."""

    model_config = ConfigDict(frozen=True)

    refused: Violation | None = None
    # Whether the rules may look at the order's account (its credit line, history, standing):
    # only for an account the principal may bill. Otherwise the order is judged as a new
    # customer's.
    use_account: bool = True


def _words_of(roles: frozenset[Role]) -> str:
    names = sorted(r.value for r in roles)
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def check_channel_access(principal: Principal, channel: Channel) -> Violation | None:
    """May ``principal`` send orders through ``channel`` at all? A violation when not."""
    if not principal.can(Permission.ORDERS_SUBMIT):
        return Violation(
            rule="access.permission",
            code=ErrorCode.FORBIDDEN,
            message=f"a {principal.role.value} may not submit orders (needs "
            f"{Permission.ORDERS_SUBMIT.value}); ask an operator of your tenant",
        )
    roles = CHANNEL_ROLES[channel]
    if principal.role not in roles:
        return Violation(
            rule="access.channel",
            code=ErrorCode.FORBIDDEN,
            message=f"the {channel.value} channel takes orders from a {_words_of(roles)}, not "
            f"a {principal.role.value}"
            + (
                "; partners send their CSV files to /orders/partner"
                if principal.role == Role.PARTNER
                else ""
            ),
        )
    if channel == Channel.STRIPE_CHECKOUT and principal.tenant_id != DEFAULT_TENANT:
        return Violation(
            rule="access.channel",
            code=ErrorCode.FORBIDDEN,
            message="stripe-checkout events belong to the default tenant's Stripe account; "
            "an operator of another tenant may not submit them",
        )
    return None


def check_order_access(order: CanonicalOrder, principal: Principal) -> OrderAccess:
    """May ``principal`` place ``order``? Account authorization, from the principal only.

    - A partner's order must carry its own partner id (``access.partner``).
    - An invoice order bills its account (``account_id``, else the customer's own): the principal
      must be authorized for it (``principal.may_bill``), else ``access.account``.
    - A card order that names an ``account_id`` claims that account's terms (its rule set and
      tier): the principal must be authorized for it too.
    - A card order without an ``account_id`` is judged with the customer's own account only when
      the principal may bill it; otherwise as a new customer (``use_account`` False).
    """
    if principal.role == Role.PARTNER and order.partner_id != principal.partner_id:
        return OrderAccess(
            refused=Violation(
                rule="access.partner",
                code=ErrorCode.ACCOUNT_NOT_AUTHORIZED,
                message=f"this key belongs to partner {principal.partner_id or '(none)'}; it may "
                f"not send orders of partner {(order.partner_id or '(none)')[:64]}",
            ),
            use_account=False,
        )
    named = order.billing == BillingMode.INVOICE or order.account_id is not None
    account = order.account_key
    if principal.may_bill(account):
        return OrderAccess()
    if not named:
        return OrderAccess(use_account=False)
    what = "invoice" if order.billing == BillingMode.INVOICE else "order against"
    return OrderAccess(
        refused=Violation(
            rule="access.account",
            code=ErrorCode.ACCOUNT_NOT_AUTHORIZED,
            message=f"this {principal.role.value} is not authorized to {what} account "
            f"{account[:64]}; order for an account your credentials name (ask an operator of "
            "your tenant to grant it)",
        ),
        use_account=False,
    )
