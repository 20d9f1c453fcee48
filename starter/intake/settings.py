"""Intake knobs: :class:`IntakeSettings` and :func:`load_intake_settings` (the environment)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from workers.config import Config

LOCAL_WEBHOOK_SECRET = "whsec_local"


@dataclass(frozen=True)
class IntakeSettings:
    """Intake knobs (environment variables in :func:`load_intake_settings`).

    Attributes:
        webhook_secret: Stripe's endpoint signing secret for ``stripe-checkout``.
        budget_s: No retry starts after this long (the request's latency budget).
        attempt_timeout_s: One attempt (a DB step, the workflow start) is cut off after this.
        backoff_initial_s: First retry delay; doubles each time up to ``backoff_max_s``.
        max_attempts: Attempts per step at most.
        batch_concurrency: Orders of one batch processed at the same time.
        spool_path: Where dead letters go when the database cannot take them.
    """

    webhook_secret: str | None = LOCAL_WEBHOOK_SECRET
    budget_s: float = 0.15
    attempt_timeout_s: float = 2.0
    backoff_initial_s: float = 0.01
    backoff_max_s: float = 0.05
    max_attempts: int = 4
    batch_concurrency: int = 8
    signature_tolerance_s: int = 300
    max_batch_items: int = 10_000
    spool_path: str = ".oms/intake-spool.jsonl"


def load_intake_settings(
    config: Config | None = None, env: Mapping[str, str] | None = None
) -> IntakeSettings:
    """Settings from the environment.

    ``OMS_STRIPE_WEBHOOK_SECRET`` (default ``whsec_local`` only when the gateway is the local
    localstripe, i.e. ``gateway.api_base`` is set; none for real Stripe), ``OMS_INTAKE_BUDGET_MS``,
    ``OMS_INTAKE_ATTEMPT_TIMEOUT_MS``, ``OMS_INTAKE_SPOOL``.
    """
    env = os.environ if env is None else env
    local = config is None or bool(config.gateway.api_base)
    secret = env.get("OMS_STRIPE_WEBHOOK_SECRET") or (LOCAL_WEBHOOK_SECRET if local else None)
    s = IntakeSettings(webhook_secret=secret)
    if "OMS_INTAKE_BUDGET_MS" in env:
        s = replace(s, budget_s=float(env["OMS_INTAKE_BUDGET_MS"]) / 1000)
    if "OMS_INTAKE_ATTEMPT_TIMEOUT_MS" in env:
        s = replace(s, attempt_timeout_s=float(env["OMS_INTAKE_ATTEMPT_TIMEOUT_MS"]) / 1000)
    if env.get("OMS_INTAKE_SPOOL"):
        s = replace(s, spool_path=env["OMS_INTAKE_SPOOL"])
    return s
