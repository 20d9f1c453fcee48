"""The catalog's terms as a subscription locks them (price and tier at subscription time)."""

from __future__ import annotations

from models.catalog import Catalog
from models.subscription.state import Terms


def catalog_terms(
    catalog: Catalog, plan_id: str, currency: str, interval: str, quantity: int
) -> Terms:
    """The terms a plan is sold at (price and tier from ``catalog``); OmsError if not sold."""
    plan = catalog.plan(plan_id)
    price = plan.price(currency, interval)
    return Terms(
        plan_id=plan.plan_id,
        plan_name=plan.name,
        interval=price.interval,
        currency=price.currency,
        unit_amount_minor=price.amount_minor,
        quantity=quantity,
        tier=plan.tier,
    )


def catalog_offers(catalog: Catalog, currency: str) -> list[Terms]:
    """Every plan and interval ``catalog`` sells in ``currency`` (quantity 1): a state snapshot."""
    return [
        catalog_terms(catalog, plan.plan_id, currency, price.interval, 1)
        for plan in catalog.plans
        for price in plan.prices
        if price.currency == currency.upper()
    ]
