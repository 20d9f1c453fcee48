"""Order intake tests: adapters, rules, store, service, API and CLI.

Shared helpers (plain functions, no fixtures): sample payloads under ``samples/``, Stripe
signatures made with the real SDK, the principals orders are sent as, and the in-process API over
the ``stack`` fixture (which authenticates as the default tenant's operator unless told otherwise).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import stripe
from fastapi import FastAPI
from sqlalchemy import Engine

from models.identity import DEFAULT_TENANT, Principal, Role
from starter.api import create_app
from starter.intake import IntakeSettings
from starter.intake_api import mount
from tests.support.auth import operator_headers, principal, with_auth
from workers.config import Config

SAMPLES = Path(__file__).parent / "samples"
TEST_SECRET = "whsec_test_intake"
VISA = "4242424242424242"


def sample(name: str) -> str:
    """A sample payload's text."""
    return (SAMPLES / name).read_text()


def sample_json(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(sample(name))
    return loaded


def operator(engine: Engine, tenant_id: str = DEFAULT_TENANT) -> Principal:
    """The tenant's operator, written to the principal store (the API client's default caller:
    ``tests.support.auth.operator_headers`` names the same principal)."""
    return principal(engine, Role.OPERATOR, f"{tenant_id}-operator", tenant_id=tenant_id)


def stripe_signature(payload: str, secret: str = TEST_SECRET, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header made by the real Stripe SDK."""
    header: str = stripe.WebhookSignature.generate_signature_header(
        payload, secret, timestamp=timestamp if timestamp is not None else int(time.time())
    )
    return header


def test_settings(tmp: Path, **overrides: Any) -> IntakeSettings:
    """Settings for tests: a known webhook secret, a spool under ``tmp``, roomy time-outs (the
    first workflow task of a fresh worker imports the workflow sandbox)."""
    values: dict[str, Any] = {
        "webhook_secret": TEST_SECRET,
        "spool_path": str(tmp / "spool.jsonl"),
        "attempt_timeout_s": 15.0,
    }
    values.update(overrides)
    return IntakeSettings(**values)


test_settings.__test__ = False  # type: ignore[attr-defined]  # not a test despite its name


def test_config(db_url: str, localstripe_url: str, api_key: str) -> Config:
    return Config.model_validate(
        with_auth(
            {
                "database": {"url": db_url},
                "gateway": {"api_base": localstripe_url, "api_key": api_key},
            }
        )
    )


test_config.__test__ = False  # type: ignore[attr-defined]


@asynccontextmanager
async def intake_api(
    config: Config, service: Any, settings: IntakeSettings
) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """``create_app`` with the intake router mounted, served in-process."""
    app = mount(create_app(config, service=service), settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = operator_headers(app.state.rt.engine)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api", headers=headers
        ) as client:
            yield client, app
