"""The plan catalog: tiers, features, prices per currency and interval, trial days."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.calendar import Interval
from models.errors import ErrorCode, OmsError
from models.money import minor_unit_exponent


class Price(BaseModel):
    """One price of a plan: an amount in minor units per billing interval and currency."""

    model_config = ConfigDict(frozen=True)

    currency: str
    interval: Interval
    amount_minor: int = Field(ge=0, strict=True)

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        minor_unit_exponent(value)
        return value.upper()


class Plan(BaseModel):
    """A plan customers subscribe to."""

    model_config = ConfigDict(frozen=True)

    plan_id: str
    name: str
    tier: int
    kind: Literal["service", "physical"] = "service"
    segment: Literal["self_serve", "enterprise"] = "self_serve"
    sku: str | None = None
    description: str = ""
    trial_days: int = Field(default=0, ge=0)
    features: list[str] = Field(default_factory=list)
    prices: list[Price]

    @model_validator(mode="after")
    def _unique_prices(self) -> Plan:
        keys = [(p.currency, p.interval) for p in self.prices]
        if len(keys) != len(set(keys)):
            raise ValueError(f"plan {self.plan_id}: duplicate price for a currency and interval")
        if not self.prices:
            raise ValueError(f"plan {self.plan_id}: has no price")
        return self

    @property
    def currencies(self) -> list[str]:
        return sorted({p.currency for p in self.prices})

    @property
    def intervals(self) -> list[Interval]:
        order = list(Interval)
        return sorted({p.interval for p in self.prices}, key=order.index)

    def price(self, currency: str, interval: Interval | str) -> Price:
        """The price for a currency and interval, or an :class:`OmsError` naming what is missing."""
        currency = currency.upper()
        try:
            interval = Interval(interval)
        except ValueError:
            raise OmsError(
                ErrorCode.INVALID_INTERVAL,
                f"unknown interval {interval!r}; use one of {', '.join(i.value for i in Interval)}",
            ) from None
        if currency not in self.currencies:
            raise OmsError(
                ErrorCode.CURRENCY_NOT_OFFERED,
                f"plan {self.plan_id} is not sold in {currency}; "
                f"it is sold in {', '.join(self.currencies)}",
            )
        for p in self.prices:
            if p.currency == currency and p.interval == interval:
                return p
        offered = ", ".join(p.interval.value for p in self.prices if p.currency == currency)
        raise OmsError(
            ErrorCode.INTERVAL_NOT_OFFERED,
            f"plan {self.plan_id} in {currency} is billed {offered}, not {interval.value}",
        )


class Catalog(BaseModel):
    """All plans, looked up by id."""

    model_config = ConfigDict(frozen=True)

    plans: list[Plan]

    @model_validator(mode="after")
    def _unique_ids(self) -> Catalog:
        ids = [p.plan_id for p in self.plans]
        if len(ids) != len(set(ids)):
            raise ValueError("catalog has duplicate plan ids")
        return self

    def plan(self, plan_id: str) -> Plan:
        """The plan with this id, or ``OmsError(UNKNOWN_PLAN)`` listing the valid ones."""
        for p in self.plans:
            if p.plan_id == plan_id:
                return p
        raise OmsError(
            ErrorCode.UNKNOWN_PLAN,
            f"unknown plan {plan_id!r}; choose one of {', '.join(p.plan_id for p in self.plans)}",
        )


def parse_catalog(text: str) -> Catalog:
    """Parse and validate a catalog YAML document."""
    return Catalog.model_validate(yaml.safe_load(text))


@lru_cache(maxsize=1)
def default_catalog() -> Catalog:
    """The catalog shipped in ``models/data/catalog.yaml`` (read once per process)."""
    text = resources.files("models").joinpath("data/catalog.yaml").read_text()
    return parse_catalog(text)
