"""Signed webhooks: the signature, its check, and one delivery attempt.

The signature has the shape of Stripe's: ``Oms-Signature: t=<unix seconds>,v1=<hex>``, where
``v1`` is HMAC-SHA256 over ``"<t>." + body`` with the endpoint's secret. Receivers check it with
:func:`verify` (or their own code) and refuse a timestamp outside their tolerance (replays).
Each request also carries ``Oms-Event-Id`` (derived from the notification key: the same on every
retry, so receivers can drop duplicates) and ``Oms-Event-Type``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

import httpx

SIGNATURE_HEADER = "Oms-Signature"
EVENT_ID_HEADER = "Oms-Event-Id"
EVENT_TYPE_HEADER = "Oms-Event-Type"
TIMEOUT_S = 10.0
# Retried with back-off for up to three days after the event, then dead (replayable).
RETRY_WINDOW = timedelta(days=3)
BACKOFF = (
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=1),
    timedelta(hours=2),
    timedelta(hours=4),
    timedelta(hours=8),
    timedelta(hours=12),
)


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(24)


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Oms-Signature`` header value for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify(secret: str, body: bytes, header: str, now: int, tolerance_s: int = 300) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` within ``tolerance_s`` of ``now``."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts.get("t", ""))
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(parts.get("v1", ""), _mac(secret, timestamp, body))


def next_attempt(created: datetime, attempts: int, now: datetime) -> datetime | None:
    """When to try again after ``attempts`` failures; None once the three days are over."""
    delay = BACKOFF[min(attempts, len(BACKOFF)) - 1] if attempts else BACKOFF[0]
    at = now + delay
    return at if at <= created + RETRY_WINDOW else None


async def post(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    secret: str,
    event_id: str,
    event_type: str,
    now: datetime,
) -> tuple[int | None, str | None]:
    """One attempt: (status code, None) on a 2xx, else (status code or None, what went wrong)."""
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, body, int(now.timestamp())),
        EVENT_ID_HEADER: event_id,
        EVENT_TYPE_HEADER: event_type,
        "User-Agent": "subscription-oms-webhooks/1",
    }
    try:
        response = await client.post(url, content=body, headers=headers, timeout=TIMEOUT_S)
    except httpx.HTTPError as err:
        return None, f"{type(err).__name__}: {err}"
    if 200 <= response.status_code < 300:
        return response.status_code, None
    return response.status_code, f"HTTP {response.status_code}"
