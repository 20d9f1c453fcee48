"""``oms simulate``: months of renewals with injected declines, reconciled against the gateway.

Each simulation starts its own time-skipping server and localstripe process and uses the test's
database (SQLite file or PostgreSQL schema), so it is the real code path end to end.
"""

from __future__ import annotations

import json

from typer.testing import CliRunner

from starter.simulate import SimulationConfig, app, run_simulation

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
    result = CliRunner().invoke(app, [*args, "--seed", "5", "--json", "--database-url", db_url])

    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert not CONTRACT_KEYS - body.keys(), "missing keys"
    assert (body["subscriptions"], body["months"], body["decline_rate"]) == (3, 1, 0.1)
    assert isinstance(body["double_charges"], int) and isinstance(body["wall_s"], float)


def test_oms_simulate_refuses_a_decline_rate_outside_zero_to_one() -> None:
    args = ["simulate", "--subscriptions", "3", "--months", "1", "--decline-rate", "1.5"]
    result = CliRunner().invoke(app, [*args, "--json"])

    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["code"] == "INVALID_REQUEST"
