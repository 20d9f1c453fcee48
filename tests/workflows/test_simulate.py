"""``oms simulate``: months of renewals with injected declines, reconciled against the gateway.

Each simulation starts its own time-skipping server and localstripe process and uses the test's
database (SQLite file or PostgreSQL schema), so it is the real code path end to end. The
reconciliation of a hand-made database proves the integrity figures count what they say.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import SQLModel
from typer.testing import CliRunner

from activities.gateway import METADATA_IDEMPOTENCY_KEY, IntentInfo
from activities.reconcile import compare_books, load_books
from activities.store import Store
from activities.tables import (
    AuditLog,
    CreditLedgerEntry,
    Invoice,
    InvoiceLineRow,
    Payment,
    Refund,
    Subscription,
)
from starter.simulate import SimulationConfig, app, run_simulation

# Figures that must be 0 for any seed: the subscriptions never break.
NEVER_BROKEN = (
    "double_charges",
    "uncharged_periods",
    "payment_mismatches",
    "unrecorded_charges",
    "charges_after_cancel",
    "credit_mismatches",
    "refunds_over_payment",
    "workflows_failed",
    "workflows_stuck",
    "message_errors",
    "start_errors",
)

CONTRACT_KEYS = {
    "renewals_due",
    "renewals_paid",
    "renewal_success_rate",
    "first_attempt_failure_rate",
    "double_charges",
    "uncharged_periods",
    "wall_s",
    "recovery_by_step",
    "involuntary_churn",
    "subscriptions",
    "months",
    "decline_rate",
    "seed",
    "faults",
    "messages",
    "faults_injected",
    "messages_sent",
    "messages_rejected",
    "message_errors",
    "workflows_failed",
    "workflows_stuck",
    "charges_after_cancel",
    "credit_mismatches",
    "refunds_over_payment",
}


async def test_declines_are_measured_and_every_due_period_is_charged_exactly_once(
    db_url: str,
) -> None:
    result = await run_simulation(
        SimulationConfig(subscriptions=20, months=4, decline_rate=0.2, seed=7, database_url=db_url)
    )

    assert result.double_charges == 0
    assert result.uncharged_periods == 0
    assert result.payment_mismatches == 0 and result.unrecorded_charges == 0
    assert result.renewals_due > 0
    assert result.first_attempt_failure_rate is not None
    assert 0 < result.first_attempt_failure_rate < 1
    assert result.recovery_by_step and result.recovery_by_step[0].attempt == 1
    assert result.started + result.refused_at_start == 20
    assert result.reconciliation.ok


async def test_without_declines_every_renewal_is_paid_at_the_first_attempt(db_url: str) -> None:
    result = await run_simulation(
        SimulationConfig(subscriptions=10, months=3, decline_rate=0.0, seed=3, database_url=db_url)
    )

    assert result.renewals_due > 0
    assert result.renewal_success_rate == 1.0
    assert result.renewals_paid == result.renewals_due
    assert result.first_attempt_failure_rate == 0.0
    assert result.recovery_by_step == []
    assert (result.double_charges, result.uncharged_periods, result.refused_at_start) == (0, 0, 0)


def test_oms_simulate_json_prints_one_object_with_the_contract_keys(db_url: str) -> None:
    args = ["simulate", "--subscriptions", "3", "--months", "1", "--decline-rate", "0.1"]
    more = ["--faults", "0.05", "--messages", "1", "--seed", "5", "--json"]
    result = CliRunner().invoke(app, [*args, *more, "--database-url", db_url])

    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout.splitlines()[-1])
    assert not CONTRACT_KEYS - body.keys(), "missing keys"
    assert (body["subscriptions"], body["months"], body["decline_rate"]) == (3, 1, 0.1)
    assert (body["faults"], body["messages"]) == (0.05, 1.0)
    assert isinstance(body["double_charges"], int) and isinstance(body["wall_s"], float)
    assert all(isinstance(body[key], int) for key in NEVER_BROKEN)
    assert isinstance(body["messages_rejected"], dict)
    assert body["workflows_checked"] == 3


async def test_gateway_faults_and_concurrent_messages_never_break_a_subscription(
    db_url: str,
) -> None:
    result = await run_simulation(
        SimulationConfig(
            subscriptions=6,
            months=2,
            decline_rate=0.05,
            faults=0.2,
            messages=2,
            seed=8,  # before the rewrite: a workflow failed, a start refused in an outage
            database_url=db_url,
        )
    )

    # The faults and the messages happened...
    assert sum(result.faults_injected.values()) >= 5 and len(result.faults_injected) >= 3
    assert result.messages_sent >= 5 and result.renewals_due > 0
    # ...and no subscription broke.
    assert {key: getattr(result, key) for key in NEVER_BROKEN} == dict.fromkeys(NEVER_BROKEN, 0)
    assert not result.clock_blocked and result.days_simulated > 0
    assert result.workflows_checked == result.subscriptions


def test_oms_simulate_refuses_a_decline_rate_outside_zero_to_one() -> None:
    args = ["simulate", "--subscriptions", "3", "--months", "1", "--decline-rate", "1.5"]
    result = CliRunner().invoke(app, [*args, "--json"])

    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["code"] == "INVALID_REQUEST"


# --- the integrity figures, on a hand-made database ------------------------------------------

NOW = datetime(2027, 6, 1, tzinfo=UTC)
WALL = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)  # the database's own clock for the rows


def _subscription(sub: str, status: str) -> Subscription:
    return Subscription(
        id=sub,
        customer_id=f"cus_{sub}",
        plan_id="pro",
        interval="monthly",
        currency="USD",
        unit_amount_minor=1500,
        status=status,
        timezone="UTC",
        anchor_date=date(2027, 1, 1),
        payment_method_id="pm_1",
        created_at=WALL,
        updated_at=WALL,
    )


def _invoice(sub: str, inv: str, start: date, issued: datetime, kind: str = "period") -> Invoice:
    return Invoice(
        id=inv,
        subscription_id=sub,
        customer_id=f"cus_{sub}",
        kind=kind,
        period_index=start.month,  # unique per subscription and kind
        period_start=start,
        period_end=start + timedelta(days=30),
        currency="USD",
        subtotal_minor=1500,
        total_minor=1500,
        status="paid",
        payment_intent_id=None,
        issued_at=issued,
        updated_at=WALL,
    )


def _payment(sub: str, inv: str, intent: str, created: datetime = WALL) -> Payment:
    return Payment(
        idempotency_key=f"key-{intent}",
        invoice_id=inv,
        subscription_id=sub,
        gateway_intent_id=intent,
        amount_minor=1500,
        currency="USD",
        status="succeeded",
        created_at=created,
        updated_at=created,
    )


def _intent(sub: str, inv: str, intent: str, status: str = "succeeded") -> IntentInfo:
    return IntentInfo(
        id=intent,
        status=status,
        amount_minor=1500,
        currency="USD",
        customer_id=None,
        payment_method_id=None,
        metadata={
            "subscription_id": sub,
            "invoice_id": inv,
            METADATA_IDEMPOTENCY_KEY: f"key-{intent}",
        },
    )


def _canceled(sub: str, at: datetime, mode: str) -> AuditLog:
    return AuditLog(
        event_key=f"{sub}:9:canceled",
        subscription_id=sub,
        action="canceled",
        from_status="active",
        to_status="canceled",
        actor="simulation",
        channel="api",
        details=json.dumps({"mode": mode}),
        occurred_at=at,
        recorded_at=WALL,
    )


def _refund(sub: str, intent: str, key: str, amount: int, status: str) -> Refund:
    return Refund(
        idempotency_key=key,
        subscription_id=sub,
        gateway_intent_id=intent,
        amount_minor=amount,
        currency="USD",
        status=status,
        created_at=WALL,
        updated_at=WALL,
    )


def _credit(sub: str, key: str, amount: int) -> CreditLedgerEntry:
    return CreditLedgerEntry(
        entry_key=key,
        customer_id=f"cus_{sub}",
        subscription_id=sub,
        amount_minor=amount,
        currency="USD",
        balance_after_minor=0,
        reason="test",
        created_at=WALL,
    )


def test_a_double_charge_an_over_refund_a_credit_mismatch_and_late_charges_are_counted(
    engine: Engine,
) -> None:
    store = Store(engine)
    rows: list[SQLModel] = [_subscription(s, "active") for s in ("sub_dbl", "sub_ref", "sub_cr")]
    rows += [_subscription("sub_cr2", "active"), _subscription("sub_cx", "canceled")]
    rows.append(_subscription("sub_pe", "canceled"))
    intents: list[IntentInfo] = []
    t0 = datetime(2027, 2, 1, tzinfo=UTC)
    # A period charged twice: the second charge never made it into the books.
    rows += [
        _invoice("sub_dbl", "in_dbl", date(2027, 2, 1), t0),
        _payment("sub_dbl", "in_dbl", "pi_a"),
    ]
    intents += [_intent("sub_dbl", "in_dbl", "pi_a"), _intent("sub_dbl", "in_dbl", "pi_b")]
    # Refunds: 1000 + 800 (pending: the money may have left) of a 1500 payment is over; 1500 of
    # another 1500 is not; anything of a payment that never succeeded is.
    for n, intent in enumerate(("pi_r1", "pi_r2")):
        rows += [
            _invoice("sub_ref", f"in_r{n}", date(2027, 2 + n, 1), t0),
            _payment("sub_ref", f"in_r{n}", intent),
        ]
        intents.append(_intent("sub_ref", f"in_r{n}", intent))
    intents.append(_intent("sub_ref", "in_r9", "pi_r3", status="requires_payment_method"))
    rows += [
        _refund("sub_ref", "pi_r1", "rf1", 1000, "succeeded"),
        _refund("sub_ref", "pi_r1", "rf2", 800, "pending"),
        _refund("sub_ref", "pi_r1", "rf3", 900, "failed"),
        _refund("sub_ref", "pi_r2", "rf4", 1500, "succeeded"),
        _refund("sub_ref", "pi_r3", "rf5", 100, "succeeded"),
    ]
    # Credit: the ledger of sub_cr adds up to its state (300), the ledger of sub_cr2 does not.
    rows += [_credit("sub_cr", "c1", 500), _credit("sub_cr", "c2", -200)]
    rows += [_credit("sub_cr2", "c3", 100)]
    credits = {"sub_cr": 300, "sub_cr2": 250}
    # Canceled now on 2027-03-10 12:00 (recorded at WALL): the March renewal charged before is
    # fine and so is the cancellation fee; an April renewal and a charge started after the
    # cancellation was recorded are not.
    cancel_at = datetime(2027, 3, 10, 12, tzinfo=UTC)
    rows.append(_canceled("sub_cx", cancel_at, "now"))
    march, april = date(2027, 3, 1), date(2027, 4, 1)
    rows += [
        _invoice("sub_cx", "in_cx_mar", march, datetime(2027, 3, 1, tzinfo=UTC)),
        _payment("sub_cx", "in_cx_mar", "pi_c1", created=WALL - timedelta(hours=1)),
        _invoice("sub_cx", "in_cx_apr", april, datetime(2027, 4, 1, tzinfo=UTC)),
        _payment("sub_cx", "in_cx_apr", "pi_c2", created=WALL - timedelta(hours=1)),
        _invoice("sub_cx", "in_cx_fee", date(2027, 3, 10), cancel_at, kind="rfee"),
        InvoiceLineRow(
            invoice_id="in_cx_fee",
            position=0,
            kind="early_termination_fee",
            description="early termination fee",
            amount_minor=1500,
            currency="USD",
        ),
        _payment("sub_cx", "in_cx_fee", "pi_c3", created=WALL + timedelta(seconds=1)),
        _invoice("sub_cx", "in_cx_chg", date(2027, 3, 10), cancel_at - timedelta(hours=1), "rchg"),
        _payment("sub_cx", "in_cx_chg", "pi_c4", created=WALL + timedelta(hours=1)),
    ]
    intents += [
        _intent("sub_cx", f"in_cx_{x}", f"pi_c{n}")
        for n, x in enumerate(("mar", "apr", "fee", "chg"), start=1)
    ]
    # Canceled at the period end on 2027-05-01: the period starting that day must not be charged.
    rows.append(_canceled("sub_pe", datetime(2027, 5, 1, tzinfo=UTC), "at_period_end"))
    rows += [
        _invoice("sub_pe", "in_pe_may", date(2027, 5, 1), datetime(2027, 4, 30, 23, tzinfo=UTC)),
        _payment("sub_pe", "in_pe_may", "pi_p1", created=WALL - timedelta(hours=2)),
    ]
    intents.append(_intent("sub_pe", "in_pe_may", "pi_p1"))
    with store.session() as s:
        s.add_all(rows)
        s.commit()

    report = compare_books(load_books(store), intents, now=NOW, workflow_credits=credits)

    assert [(d.subscription_id, d.intent_ids) for d in report.double_charges] == [
        ("sub_dbl", ["pi_a", "pi_b"])
    ]
    assert sorted(
        (r.intent_id, r.paid_minor, r.refunded_minor) for r in report.refunds_over_payment
    ) == [
        ("pi_r1", 1500, 1800),
        ("pi_r3", 0, 100),
    ]
    assert [
        (c.subscription_id, c.workflow_credit_minor, c.ledger_credit_minor)
        for c in report.credit_mismatches
    ] == [("sub_cr2", 250, 100)]
    assert sorted((c.invoice_id, c.reason) for c in report.charges_after_cancel) == [
        ("in_cx_apr", "period_after_cancel"),
        ("in_cx_chg", "charged_after_cancel"),
        ("in_pe_may", "period_after_cancel"),
    ]
    assert report.summary()["charges_after_cancel"] == 3 and not report.ok
    assert (report.credits_checked, report.cancellations_checked) == (2, 2)
