"""Billing KPIs read from hand-built rows in a real database (SQLite or PostgreSQL).

Each test writes the rows a few subscriptions would have left (invoices, payment attempts, audit
entries in workflow time, subscription rows) and checks the figures of ``kpi_report``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from activities.kpis import kpi_report
from activities.store import Store
from activities.tables import AuditLog, Invoice, Payment, Subscription, utcnow
from models.ids import invoice_id, payment_idempotency_key
from starter import kpis_api
from starter.api import create_app
from starter.simulate import app as simulate_cli
from tests.support.auth import operator_headers, with_auth
from workers.config import Config

T0 = datetime(2027, 1, 1, tzinfo=UTC)


@dataclass
class Sub:
    """Writes the rows of one subscription, in the order its workflow would."""

    store: Store
    sub_id: str
    status: str = "active"
    seq: int = 0
    rows: list[object] = field(default_factory=list)

    def audit(self, action: str, to_status: str, at: datetime, **details: str) -> Sub:
        self.seq += 1
        self.rows.append(
            AuditLog(
                event_key=f"{self.sub_id}:{self.seq}:{action}",
                subscription_id=self.sub_id,
                action=action,
                from_status=None,
                to_status=to_status,
                actor="system",
                channel="system",
                details=json.dumps(details),
                occurred_at=at,
                recorded_at=utcnow(),
            )
        )
        return self

    def invoice(
        self, n: int, start: date, status: str, *, total: int = 900, schedule: int = 0
    ) -> Sub:
        issued = datetime.combine(start, datetime.min.time(), tzinfo=UTC)
        self.rows.append(
            Invoice(
                id=invoice_id(self.sub_id, n, schedule),
                kind="period" if schedule == 0 else f"period-s{schedule}",
                subscription_id=self.sub_id,
                customer_id="cust_x",
                period_index=n,
                period_start=start,
                period_end=start + timedelta(days=30),
                currency="USD",
                subtotal_minor=total,
                total_minor=total,
                status=status,
                issued_at=issued,
                updated_at=utcnow(),
            )
        )
        return self

    def attempts(self, n: int, *outcomes: str, schedule: int = 0) -> Sub:
        for k, outcome in enumerate(outcomes):
            self.rows.append(
                Payment(
                    idempotency_key=payment_idempotency_key(self.sub_id, n, k, schedule),
                    invoice_id=invoice_id(self.sub_id, n, schedule),
                    subscription_id=self.sub_id,
                    attempt=k,
                    amount_minor=900,
                    currency="USD",
                    status=outcome,
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
        return self

    def save(self) -> None:
        with self.store.session() as s:
            s.add(
                Subscription(
                    id=self.sub_id,
                    customer_id="cust_x",
                    plan_id="starter",
                    interval="monthly",
                    currency="USD",
                    unit_amount_minor=900,
                    status=self.status,
                    timezone="UTC",
                    anchor_date=date(2027, 1, 1),
                    payment_method_id="pm_x",
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
            for row in self.rows:
                s.add(row)
            s.commit()


def day(n: int) -> date:
    return (T0 + timedelta(days=n)).date()


def at(n: float) -> datetime:
    return T0 + timedelta(days=n)


@pytest.fixture
def store(engine: Engine) -> Store:
    return Store(engine)


def churned_after_four_renewals(store: Store) -> None:
    """First charge paid, 2 renewals paid (one after a retry), the 3rd never: canceled."""
    sub = Sub(store, "sub_churned", status="canceled")
    sub.audit("created", "incomplete", at(0)).invoice(0, day(0), "paid").attempts(0, "succeeded")
    sub.audit("activated", "active", at(0), invoice_id=invoice_id("sub_churned", 0))
    sub.invoice(1, day(31), "paid").attempts(1, "succeeded")
    sub.audit("renewed", "active", at(31), invoice_id=invoice_id("sub_churned", 1))
    sub.invoice(2, day(59), "paid").attempts(2, "declined", "succeeded")
    sub.audit("payment_failed", "past_due", at(59), invoice_id=invoice_id("sub_churned", 2))
    sub.audit("recovered", "active", at(60), invoice_id=invoice_id("sub_churned", 2))
    sub.invoice(3, day(90), "uncollectible").attempts(3, *["declined"] * 5)
    for k, offset in enumerate((0, 1, 3, 5, 7)):
        sub.audit(
            "payment_failed",
            "past_due",
            at(90 + offset),
            invoice_id=invoice_id("sub_churned", 3),
            attempt=str(k),
        )
    sub.audit("canceled", "canceled", at(104), mode="nonpayment")
    sub.save()


def refused_at_start(store: Store) -> None:
    """No trial, first charge declined: the start is refused, nothing is ever renewed."""
    sub = Sub(store, "sub_refused", status="incomplete_expired")
    sub.audit("created", "incomplete", at(5)).invoice(0, day(5), "void").attempts(0, "declined")
    sub.audit("creation_failed", "incomplete_expired", at(5))
    sub.save()


def test_renewals_exclude_the_first_charge_and_count_paid_failed_and_retries(
    store: Store,
) -> None:
    churned_after_four_renewals(store)
    refused_at_start(store)

    k = kpi_report(store)

    assert (k.first_charges_due, k.first_charges_paid) == (2, 1)
    assert (k.renewals_due, k.renewals_paid, k.renewals_failed) == (3, 2, 1)
    assert k.renewal_success_rate == pytest.approx(2 / 3, abs=1e-6)
    # Attempt 0 of the four invoices of sub_churned and of the refused start: 3 of 5 declined.
    assert (k.first_attempts, k.first_attempt_failures) == (5, 3)
    assert k.first_attempt_failure_rate == pytest.approx(0.6)
    steps = [(s.attempt, s.attempted, s.succeeded) for s in k.recovery_by_step]
    assert steps == [(1, 2, 1), (2, 1, 0), (3, 1, 0), (4, 1, 0)]
    # The refused start never entered dunning; of the two renewals that did, one recovered.
    assert (k.dunning_entered, k.dunning_recovered, k.dunning_recovery_rate) == (2, 1, 0.5)
    assert (k.subscriptions_live, k.involuntary_churned, k.involuntary_churn) == (1, 1, 1.0)
    assert k.voluntary_cancellations == 0
    assert (k.invoices, k.payments) == (5, 10)


def test_a_range_counts_renewals_by_billing_date_and_still_knows_which_is_the_first_charge(
    store: Store,
) -> None:
    churned_after_four_renewals(store)

    k = kpi_report(store, since=day(30), until=day(60))

    assert k.first_charges_due == 0  # period 0 (day 0) is before the range
    assert (k.renewals_due, k.renewals_paid) == (2, 2)  # periods 1 (day 31) and 2 (day 59)
    assert (k.first_attempts, k.first_attempt_failures) == (2, 1)
    assert [(s.attempt, s.attempted, s.succeeded) for s in k.recovery_by_step] == [(1, 1, 1)]
    assert k.involuntary_churned == 0  # canceled on day 104, after the range
    assert k.subscriptions_live == 1


def test_churn_counts_subscriptions_live_in_the_range_and_cancellations_inside_it(
    store: Store,
) -> None:
    churned_after_four_renewals(store)
    voluntary = Sub(store, "sub_left", status="canceled")
    voluntary.audit("created", "incomplete", at(2)).invoice(0, day(2), "paid")
    voluntary.attempts(0, "succeeded")
    voluntary.audit("activated", "active", at(2), invoice_id=invoice_id("sub_left", 0))
    voluntary.audit("canceled", "canceled", at(20), mode="now")
    voluntary.save()

    later = kpi_report(store, since=day(100), until=day(120))
    assert (later.subscriptions_live, later.involuntary_churned) == (1, 1)  # sub_left ended
    assert later.involuntary_churn == 1.0
    assert later.voluntary_cancellations == 0
    assert later.renewals_due == 0 and later.renewal_success_rate is None

    early = kpi_report(store, since=day(0), until=day(30))
    assert (early.subscriptions_live, early.voluntary_cancellations) == (2, 1)
    assert early.involuntary_churned == 0 and early.involuntary_churn == 0.0


def test_a_renewal_paid_after_the_subscription_was_marked_unpaid_is_paid_late(
    store: Store,
) -> None:
    sub = Sub(store, "sub_ent")
    sub.audit("created", "incomplete", at(0)).invoice(0, day(0), "paid").attempts(0, "succeeded")
    sub.audit("activated", "active", at(0), invoice_id=invoice_id("sub_ent", 0))
    sub.invoice(1, day(365), "paid").attempts(1, "declined", "declined", "succeeded")
    sub.audit("payment_failed", "past_due", at(365), invoice_id=invoice_id("sub_ent", 1))
    sub.audit("payment_failed", "past_due", at(368), invoice_id=invoice_id("sub_ent", 1))
    sub.audit("marked_unpaid", "unpaid", at(395))
    sub.audit("payment_method_updated", "unpaid", at(400))
    sub.audit("recovered", "active", at(400), invoice_id=invoice_id("sub_ent", 1))
    sub.save()

    k = kpi_report(store)

    assert (k.renewals_due, k.renewals_paid, k.renewals_paid_late) == (1, 0, 1)
    assert k.renewal_success_rate == 0.0
    assert k.marked_unpaid == 1
    assert (k.dunning_entered, k.dunning_recovered) == (1, 0)


def test_renewals_still_in_dunning_are_pending_and_left_out_of_the_rate(store: Store) -> None:
    sub = Sub(store, "sub_dunning", status="past_due")
    sub.audit("created", "incomplete", at(0)).invoice(0, day(0), "paid").attempts(0, "succeeded")
    sub.audit("activated", "active", at(0), invoice_id=invoice_id("sub_dunning", 0))
    sub.invoice(1, day(31), "paid").attempts(1, "succeeded")
    sub.audit("renewed", "active", at(31), invoice_id=invoice_id("sub_dunning", 1))
    sub.invoice(2, day(59), "open").attempts(2, "declined", "pending")
    sub.audit("payment_failed", "past_due", at(59), invoice_id=invoice_id("sub_dunning", 2))
    sub.save()

    k = kpi_report(store)

    assert (k.renewals_due, k.renewals_paid, k.renewals_pending, k.renewals_failed) == (2, 1, 1, 0)
    assert k.renewal_success_rate == 1.0
    assert k.recovery_by_step == []  # the retry has no outcome yet


def test_zero_total_invoices_are_neither_first_charges_nor_renewals(store: Store) -> None:
    sub = Sub(store, "sub_free")
    sub.audit("created", "trialing", at(0))
    sub.invoice(0, day(0), "paid", total=0)
    sub.audit("activated", "active", at(0), invoice_id=invoice_id("sub_free", 0))
    sub.invoice(1, day(31), "paid").attempts(1, "succeeded")
    sub.save()

    k = kpi_report(store)

    assert (k.first_charges_due, k.first_charges_paid, k.renewals_due) == (1, 1, 0)


def test_a_new_billing_schedule_restarting_period_numbers_keeps_renewals_in_billing_order(
    store: Store,
) -> None:
    sub = Sub(store, "sub_switch")
    sub.audit("created", "incomplete", at(0)).invoice(0, day(0), "paid").attempts(0, "succeeded")
    sub.audit("activated", "active", at(0), invoice_id=invoice_id("sub_switch", 0))
    sub.invoice(1, day(31), "paid").attempts(1, "succeeded")
    # Monthly to yearly on day 45: a new schedule numbers its periods from 0 again.
    sub.invoice(0, day(45), "paid", schedule=1).attempts(0, "declined", "succeeded", schedule=1)
    sub.audit("payment_failed", "past_due", at(45), invoice_id=invoice_id("sub_switch", 0, 1))
    sub.audit("recovered", "active", at(46), invoice_id=invoice_id("sub_switch", 0, 1))
    sub.invoice(1, day(410), "open", schedule=1).attempts(1, "declined", schedule=1)
    sub.status = "past_due"
    sub.save()

    k = kpi_report(store)

    assert (k.first_charges_due, k.first_charges_paid) == (1, 1)
    assert (k.renewals_due, k.renewals_paid, k.renewals_pending) == (3, 2, 1)
    assert (k.first_attempts, k.first_attempt_failures) == (4, 2)
    assert [(s.attempt, s.attempted, s.succeeded) for s in k.recovery_by_step] == [(1, 1, 1)]


def test_since_must_be_before_until(store: Store) -> None:
    with pytest.raises(ValueError, match="before"):
        kpi_report(store, since=day(10), until=day(10))


async def test_the_api_serves_the_kpis_of_a_range_and_refuses_an_empty_one(
    engine: Engine, db_url: str
) -> None:
    churned_after_four_renewals(Store(engine))
    app = create_app(Config.model_validate(with_auth({"database": {"url": db_url}})))
    app.include_router(kpis_api.router)

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api", headers=operator_headers(engine)
        ) as client:
            ranged = await client.get(
                "/kpis", params={"since": "2027-01-30", "until": "2027-03-02"}
            )
            everything = await client.get("/kpis")
            refused = await client.get(
                "/kpis", params={"since": "2027-03-01", "until": "2027-03-01"}
            )

    body = ranged.json()
    assert (body["renewals_due"], body["renewals_paid"]) == (2, 2)
    assert body["since"] == "2027-01-30" and body["first_charges_due"] == 0
    assert everything.json()["renewal_success_rate"] == pytest.approx(2 / 3, abs=1e-6)
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "INVALID_REQUEST"


def test_oms_kpis_prints_the_configured_databases_kpis_as_json(
    engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    churned_after_four_renewals(Store(engine))
    monkeypatch.setenv("OMS_DATABASE_URL", db_url)

    result = CliRunner().invoke(simulate_cli, ["kpis", "--json", "--until", "2027-03-01"])

    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert (body["renewals_due"], body["first_charges_due"], body["until"]) == (1, 1, "2027-03-01")
    bad = CliRunner().invoke(simulate_cli, ["kpis", "--json", "--since", "March"])
    assert bad.exit_code == 2
    assert json.loads(bad.stdout)["error"]["code"] == "INVALID_REQUEST"
