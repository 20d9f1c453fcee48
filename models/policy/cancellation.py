"""Deciding a cancellation: when, what happens to unused time, minimum term and fee."""

from __future__ import annotations

from datetime import date
from fractions import Fraction

from models.calendar import billing_date
from models.errors import ErrorCode
from models.money import BillingInputError, format_money, round_minor
from models.policy.decisions import CancellationDecision
from models.policy.document import PolicyDocument
from models.policy.rules import FlatFee, NoFee, RemainingMonthsFee
from models.policy.terms import TermsSnapshot
from models.policy.vocabulary import (
    CreditHandling,
    Segment,
    Timing,
    WithinMinimumTerm,
    _credit_words,
    _timing_words,
    parse_timing,
)


class CancellationDecisions(PolicyDocument):
    """The cancellation decision of :class:`models.policy.Policy`."""

    def decide_cancellation(
        self,
        *,
        segment: Segment,
        terms: TermsSnapshot,
        subscribed_on: date,
        today: date,
        period_end: date,
        timing_requested: Timing | None = None,
    ) -> CancellationDecision:
        """Decide a cancellation: when, what happens to unused time, minimum term and fee.

        The cancellation takes effect ``today`` (immediately) or on ``period_end``. The minimum
        term ends ``minimum_term_months`` after ``subscribed_on`` (day clamped, as billing dates
        are); a cancellation taking effect before then is within the term. The remaining-months
        fee counts from the day the customer stops paying: the effective date when the unused
        time is given back (refund or account credit), else the period end (the customer keeps
        what they paid for), up to the end of the term; a started month counts whole.

        Args:
            segment: The subscription's segment.
            terms: The terms in force (plan, currency, monthly amount for the fee).
            subscribed_on: The day the subscription (and its minimum term) started.
            today: The local date of the request.
            period_end: The end (exclusive) of the current period: the next billing date.
            timing_requested: ``Timing.IMMEDIATELY``, ``Timing.PERIOD_END`` or ``None``.

        Returns:
            A :class:`CancellationDecision`; ``MINIMUM_TERM`` or ``CHANGE_NOT_ALLOWED`` refusals.

        Raises:
            BillingInputError: ``INVALID_DATE_RANGE`` when ``today`` precedes ``subscribed_on``
                or is not before ``period_end``.
            ValueError: When a flat fee lists no amount for the subscription's currency (a
                policy gap :meth:`check_catalog` reports at load time).
        """
        if not subscribed_on <= today < period_end:
            raise BillingInputError(
                ErrorCode.INVALID_DATE_RANGE,
                f"need subscribed_on <= today < period_end, got {subscribed_on}, {today}, "
                f"{period_end}",
            )
        rule, source = self.cancellation_rule(segment=segment, plan_id=terms.plan_id)
        sources = [source]
        timing = rule.timing if timing_requested is None else parse_timing(timing_requested)
        if timing not in rule.permitted_timings:
            offered = " or ".join(_timing_words(t) for t in rule.permitted_timings)
            return CancellationDecision.refused(
                ErrorCode.CHANGE_NOT_ALLOWED,
                f"on plan {terms.plan_id} a cancellation takes effect {offered}, not "
                f"{_timing_words(timing)} ({source})",
                sources=sources,
            )
        effective = today if timing is Timing.IMMEDIATELY else period_end
        term_ends = (
            billing_date(subscribed_on, rule.minimum_term_months, 1)
            if rule.minimum_term_months
            else None
        )
        within = term_ends is not None and effective < term_ends
        if within and rule.within_minimum_term is WithinMinimumTerm.REFUSE:
            return CancellationDecision.refused(
                ErrorCode.MINIMUM_TERM,
                f"plan {terms.plan_id} has a {rule.minimum_term_months}-month minimum term "
                f"until {term_ends}; a cancellation may take effect on or after that day "
                f"({source})",
                sources=sources,
                within_minimum_term=True,
                minimum_term_ends=term_ends,
            )
        refund = rule.refund if timing is Timing.IMMEDIATELY else CreditHandling.NONE
        fee = 0
        if within and term_ends is not None:
            stops_paying = effective if refund is not CreditHandling.NONE else period_end
            fee = _early_termination_fee(
                rule.early_termination_fee, terms, stops_paying, term_ends, source
            )

        reasons: list[str] = []
        when = rule.approval
        if when.always:
            reasons.append(f"every cancellation needs approval here ({source})")
        if when.immediately and timing is Timing.IMMEDIATELY:
            reasons.append(f"an immediate cancellation needs approval ({source})")
        if when.within_minimum_term and within:
            reasons.append(
                f"the cancellation takes effect within the minimum term, before {term_ends} "
                f"({source})"
            )
        parts = [f"cancellation takes effect {_timing_words(timing)} ({effective})"]
        if refund is not CreditHandling.NONE:
            parts.append(f"unused time goes to {_credit_words(refund)}")
        if fee:
            parts.append(f"early-termination fee {format_money(fee, terms.currency)}")
        return CancellationDecision(
            allowed=True,
            message="; ".join(parts),
            timing=timing,
            effective_date=effective,
            refund=refund,
            currency=terms.currency,
            within_minimum_term=within,
            minimum_term_ends=term_ends,
            early_termination_fee_minor=fee,
            sources=sources,
            **self._approval_fields(segment, terms.plan_id, reasons),
        )


def _months_until(start: date, end: date) -> int:
    """Whole months from ``start`` to ``end``, a started month counting whole (0 if none)."""
    if start >= end:
        return 0
    n = max(0, (end.year - start.year) * 12 + end.month - start.month - 1)
    while billing_date(start, 1, n) < end:
        n += 1
    return n


def _early_termination_fee(
    fee: NoFee | FlatFee | RemainingMonthsFee,
    terms: TermsSnapshot,
    stops_paying: date,
    term_ends: date,
    source: str,
) -> int:
    if isinstance(fee, FlatFee):
        if terms.currency not in fee.amount_minor:
            raise ValueError(
                f"{source}.early_termination_fee has no amount for {terms.currency}; "
                "add it (Policy.check_catalog finds these gaps)"
            )
        return fee.amount_minor[terms.currency]
    if isinstance(fee, RemainingMonthsFee):
        months = _months_until(stops_paying, term_ends)
        exact = months * terms.monthly_amount() * Fraction(fee.percent) / 100
        return round_minor(exact, terms.currency)
    return 0
