"""Deciding a change of terms: allowed?, when?, approval by whom?, where credits go."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from fractions import Fraction

from models.errors import ErrorCode, OmsError
from models.money import ensure_int, format_money, normalize_currency
from models.policy.decisions import ChangeDecision
from models.policy.document import PolicyDocument
from models.policy.rules import ChangeApprovalWhen, ChangeRule
from models.policy.terms import TermsSnapshot, classify_change, monthly_amount_delta_minor
from models.policy.vocabulary import (
    CHANGE_KINDS,
    ChangeKind,
    CreditHandling,
    Segment,
    Timing,
    _a,
    _label,
    _timing_words,
    parse_timing,
)


class ChangeDecisions(PolicyDocument):
    """The change decisions of :class:`models.policy.Policy`."""

    def decide_change(
        self,
        *,
        segment: Segment,
        plan_id: str,
        kinds: Iterable[ChangeKind],
        currency: str,
        amount_delta_minor: int = 0,
        quantity_before: int = 1,
        quantity_after: int = 1,
        discount_percent: Decimal | int = 0,
        timing_requested: Timing | None = None,
    ) -> ChangeDecision:
        """Decide a change of terms: allowed?, when?, approval by whom?, where credits go.

        Each kind is decided by its own rule (most specific level first). The change is allowed
        only if every rule allows it; it needs approval if any rule's condition holds. Without a
        requested timing it takes effect at period end if any rule defaults to that, else
        immediately; either way every rule must permit the timing. A credit is refunded only
        if every rule says ``refund`` (account credit can still be refunded later; a refund
        cannot be taken back).

        Args:
            segment: The subscription's segment.
            plan_id: The current plan (its rules and its segment's rules apply).
            kinds: What the change does (see :func:`classify_change`).
            currency: The subscription's currency.
            amount_delta_minor: New minus old monthly-equivalent recurring amount (see
                :func:`monthly_amount_delta_minor`); negative for a downgrade.
            quantity_before: Quantity now.
            quantity_after: Quantity after the change.
            discount_percent: The discount the change sets (0..100).
            timing_requested: The timing the requester asked for, or ``None`` for the default.

        Returns:
            A :class:`ChangeDecision`; a refusal has ``allowed=False`` and a ``code``.

        Raises:
            ValueError: For cancel/pause/resume kinds, an unknown currency or segment.
        """
        code = normalize_currency(currency)
        delta = ensure_int(amount_delta_minor, "amount_delta_minor")
        ordered = _ordered_kinds(kinds)
        if not ordered:
            return ChangeDecision.refused(
                ErrorCode.INVALID_REQUEST,
                "the request changes nothing: same plan, quantity, interval and discount",
            )
        for name, qty in (("quantity_before", quantity_before), ("quantity_after", quantity_after)):
            if isinstance(qty, bool) or not isinstance(qty, int) or qty < 1:
                return ChangeDecision.refused(
                    ErrorCode.INVALID_QUANTITY, f"{name} must be a whole number of at least 1"
                )
        discount = _percent(discount_percent)
        if discount is None:
            return ChangeDecision.refused(
                ErrorCode.INVALID_REQUEST,
                f"discount_percent must be between 0 and 100, got {discount_percent!r}",
            )

        rules: list[tuple[ChangeKind, ChangeRule, str]] = []
        for kind in ordered:
            rule, source = self.change_rule(segment=segment, plan_id=plan_id, kind=kind)
            rules.append((kind, rule, source))
        sources = [source for _, _, source in rules]
        for kind, rule, source in rules:
            if not rule.allowed:
                return ChangeDecision.refused(
                    ErrorCode.CHANGE_NOT_ALLOWED,
                    f"{_a(_label(kind))} is not allowed on plan {plan_id} ({source})",
                    kinds=ordered,
                    sources=sources,
                )

        timing_or_refusal = _common_timing(
            [(k, r.timing, r.permitted_timings, s) for k, r, s in rules], timing_requested
        )
        # Timing is a StrEnum, so test for it (not for str) to tell a timing from a refusal.
        if not isinstance(timing_or_refusal, Timing):
            return ChangeDecision.refused(
                ErrorCode.CHANGE_NOT_ALLOWED, timing_or_refusal, kinds=ordered, sources=sources
            )
        timing = timing_or_refusal

        reasons: list[str] = []
        for kind, rule, source in rules:
            reasons.extend(
                _change_reasons(
                    kind,
                    rule.approval,
                    source,
                    currency=code,
                    delta=delta,
                    before=quantity_before,
                    after=quantity_after,
                    discount=discount,
                )
            )
        refund = all(r.credit_handling is CreditHandling.REFUND for _, r, _ in rules)
        credit = CreditHandling.REFUND if refund else CreditHandling.ACCOUNT_CREDIT
        what = " and ".join(_label(k) for k in ordered)
        return ChangeDecision(
            allowed=True,
            message=f"{what} takes effect {_timing_words(timing)}",
            kinds=ordered,
            timing=timing,
            credit_handling=credit,
            sources=sources,
            **self._approval_fields(segment, plan_id, reasons),
        )

    def decide_terms_change(
        self,
        *,
        segment: Segment,
        current: TermsSnapshot,
        new: TermsSnapshot,
        timing_requested: Timing | None = None,
    ) -> ChangeDecision:
        """:meth:`decide_change` for two sets of terms: classifies and measures the change first.

        Args:
            segment: The subscription's segment.
            current: The terms in force (their plan's rules apply).
            new: The requested terms.
            timing_requested: The timing asked for, or ``None`` for the default.

        Returns:
            The decision; a currency switch or a quantity below 1 is a refusal with its code.
        """
        try:
            kinds = classify_change(current, new)
        except OmsError as error:
            return ChangeDecision.refused(error.code, error.message)
        return self.decide_change(
            segment=segment,
            plan_id=current.plan_id,
            kinds=kinds,
            currency=current.currency,
            amount_delta_minor=monthly_amount_delta_minor(current, new),
            quantity_before=current.quantity,
            quantity_after=new.quantity,
            discount_percent=new.discount_percent,
            timing_requested=timing_requested,
        )


def _ordered_kinds(kinds: Iterable[ChangeKind]) -> list[ChangeKind]:
    wanted = {ChangeKind(k) for k in kinds}
    others = wanted - set(CHANGE_KINDS)
    if others:
        names = ", ".join(sorted(k.value for k in others))
        raise ValueError(f"{names}: use decide_cancellation / decide_pause / decide_resume")
    return [k for k in CHANGE_KINDS if k in wanted]


def _percent(value: object) -> Fraction | None:
    """An exact percentage in 0..100, or ``None`` when ``value`` is not one (floats refused)."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return None
    if isinstance(value, Decimal) and not value.is_finite():
        return None
    exact = Fraction(value)
    return exact if 0 <= exact <= 100 else None


def _show_percent(value: Fraction) -> str:
    shown = (Decimal(value.numerator) / Decimal(value.denominator)).quantize(Decimal("0.01"))
    text = f"{shown:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _common_timing(
    rules: list[tuple[ChangeKind, Timing, tuple[Timing, ...], str]],
    requested: Timing | None,
) -> Timing | str:
    """The timing every rule permits, or a refusal sentence."""
    if requested is not None:
        wanted = parse_timing(requested)
        for kind, _, permitted, source in rules:
            if wanted not in permitted:
                return (
                    f"{_a(_label(kind))} cannot take effect {_timing_words(wanted)}; it takes "
                    f"effect {' or '.join(_timing_words(t) for t in permitted)} ({source})"
                )
        return wanted
    # The later default wins: a part that must wait for period end holds the whole change.
    later = any(default is Timing.PERIOD_END for _, default, _, _ in rules)
    preferred = [Timing.PERIOD_END, Timing.IMMEDIATELY] if later else list(Timing)
    for candidate in preferred:
        if all(candidate in permitted for _, _, permitted, _ in rules):
            return candidate
    names = " and ".join(_label(k) for k, _, _, _ in rules)
    return f"the rules for {names} allow no common timing; request them separately"


def _change_reasons(
    kind: ChangeKind,
    when: ChangeApprovalWhen,
    source: str,
    *,
    currency: str,
    delta: int,
    before: int,
    after: int,
    discount: Fraction,
) -> list[str]:
    label = _label(kind)
    reasons: list[str] = []
    if when.always:
        reasons.append(f"every {label} needs approval here ({source})")
    limits = when.amount_over_minor
    if limits is not None:
        limit = limits.get(currency)
        if limit is None:
            # Closed by default: an unpriced limit is a policy gap a person should look at.
            reasons.append(f"{label}: no approval limit is set for {currency} ({source})")
        elif abs(delta) > limit:
            reasons.append(
                f"{label} changes the monthly amount by {format_money(abs(delta), currency)}, "
                f"over the {format_money(limit, currency)} limit ({source})"
            )
    if kind is ChangeKind.QUANTITY_DECREASE:
        drop = before - after
        units = when.quantity_decrease_over_units
        if units is not None and drop > units:
            reasons.append(
                f"quantity falls by {drop} ({before} to {after}), over the {units}-unit limit "
                f"({source})"
            )
        pct_limit = when.quantity_decrease_over_percent
        pct = Fraction(drop * 100, before)
        if pct_limit is not None and pct > Fraction(pct_limit):
            reasons.append(
                f"quantity falls by {_show_percent(pct)}% ({before} to {after}), over the "
                f"{_show_percent(Fraction(pct_limit))}% limit ({source})"
            )
    if kind is ChangeKind.DISCOUNT:
        d_limit = when.discount_over_percent
        if d_limit is not None and discount > Fraction(d_limit):
            reasons.append(
                f"a {_show_percent(discount)}% discount is over the "
                f"{_show_percent(Fraction(d_limit))}% limit ({source})"
            )
    return reasons
