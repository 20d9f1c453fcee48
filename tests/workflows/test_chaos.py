"""Chaos: kill the worker at random moments and take the gateway away; no period is charged twice.

A few hundred subscriptions (``OMS_CHAOS_SUBSCRIPTIONS``; 30 by default, so a CI run takes one to
one and a half minutes) renew on the real dev server while the production worker, in a subprocess,
is SIGKILLed and restarted at random instants and the gateway is down for a while. Afterwards the
database is reconciled against the gateway. ``OMS_CHAOS_SEED`` picks another random schedule. How
and why: ``tests/support/chaos_harness.py``; the same run at benchmark scale:
``python -m bench.chaos --subscriptions 300``.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.chaos_harness import ChaosConfig, run_chaos

SUBSCRIPTIONS = int(os.environ.get("OMS_CHAOS_SUBSCRIPTIONS", "30"))
SEED = int(os.environ.get("OMS_CHAOS_SEED", "1"))


async def test_killed_workers_and_a_gateway_outage_leave_every_period_charged_exactly_once(
    db_url: str, tmp_path: Path
) -> None:
    cfg = ChaosConfig(subscriptions=SUBSCRIPTIONS, seed=SEED)

    report = await run_chaos(cfg, db_url, tmp_path)

    print("\n" + "\n".join(report.events))
    print({k: v for k, v in report.figures().items() if k != "statuses"})
    recon = report.reconciliation
    # The faults happened: every kill and the outage, while charges were being made.
    assert report.kills == cfg.kills
    assert any("gateway back" in e for e in report.events)
    assert report.created == SUBSCRIPTIONS
    assert report.renewals >= 2 * SUBSCRIPTIONS
    # No period charged twice, none left uncharged, every payment row matches a gateway object.
    assert recon.double_charges == []
    assert recon.uncharged_periods == []
    assert recon.mismatches == []
    assert recon.unrecorded_charges == []
    assert recon.unsettled_payments == 0
    assert recon.payments_checked == report.payments
    # Outages are not declines: nobody entered dunning.
    assert report.statuses == {"active": SUBSCRIPTIONS}
