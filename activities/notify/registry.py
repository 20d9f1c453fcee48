"""Webhook endpoints and their deliveries, per tenant (``oms webhooks``, ``/webhooks``).

Every function takes the caller's tenant: another tenant's endpoint or delivery is not found.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from activities.notify.outbox import PENDING
from activities.notify.webhooks import new_secret
from activities.tables import WebhookDelivery, WebhookEndpoint, utcnow

MAX_EVENT_TYPES = 50


def endpoint_view(row: WebhookEndpoint, secret: bool = False) -> dict[str, Any]:
    out = {
        "endpoint_id": row.id,
        "url": row.url,
        "event_types": json.loads(row.event_types),
        "enabled": row.enabled,
        "created_at": row.created_at.isoformat(),
    }
    if secret:
        out["secret"] = row.secret
    return out


def delivery_view(row: WebhookDelivery) -> dict[str, Any]:
    return {
        "delivery_id": row.id,
        "endpoint_id": row.endpoint_id,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "status": row.status,
        "attempts": row.attempts,
        "last_status_code": row.last_status_code,
        "last_error": row.last_error,
        "next_attempt_at": row.next_attempt_at.isoformat() if row.next_attempt_at else None,
        "delivered_at": row.delivered_at.isoformat() if row.delivered_at else None,
        "created_at": row.created_at.isoformat(),
    }


class WebhookRegistry:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def add(self, tenant_id: str, url: str, event_types: Sequence[str]) -> dict[str, Any]:
        """A new endpoint; the answer is the only one that shows its signing secret."""
        types = sorted(set(event_types)) or ["*"]
        row = WebhookEndpoint(
            id="we_" + secrets.token_hex(8),
            tenant_id=tenant_id,
            url=url,
            secret=new_secret(),
            event_types=json.dumps(types[:MAX_EVENT_TYPES]),
            enabled=True,
            created_at=utcnow(),
        )
        with self.session() as s:
            s.add(row)
            s.commit()
        return endpoint_view(row, secret=True)

    def endpoints(self, tenant_id: str) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.exec(
                select(WebhookEndpoint)
                .where(WebhookEndpoint.tenant_id == tenant_id)
                .order_by(col(WebhookEndpoint.created_at))
            ).all()
        return [endpoint_view(r) for r in rows]

    def disable(self, tenant_id: str, endpoint_id: str) -> dict[str, Any] | None:
        """Stop sending to an endpoint (its pending deliveries stay, listed, replayable)."""
        with self.session() as s:
            row = s.get(WebhookEndpoint, endpoint_id)
            if row is None or row.tenant_id != tenant_id:
                return None
            row.enabled = False
            s.add(row)
            s.commit()
            return endpoint_view(row)

    def deliveries(
        self,
        tenant_id: str,
        *,
        endpoint_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        q = select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id)
        if endpoint_id is not None:
            q = q.where(WebhookDelivery.endpoint_id == endpoint_id)
        if status is not None:
            q = q.where(WebhookDelivery.status == status)
        with self.session() as s:
            rows = s.exec(q.order_by(col(WebhookDelivery.id).desc()).limit(limit)).all()
        return [delivery_view(r) for r in rows]

    def replay(self, tenant_id: str, delivery_id: int) -> dict[str, Any] | None:
        """Send a delivery again now (a dead one gets one more attempt; a delivered one is
        sent again with the same event id, which receivers use to drop duplicates)."""
        with self.session() as s:
            row = s.get(WebhookDelivery, delivery_id)
            if row is None or row.tenant_id != tenant_id:
                return None
            s.execute(
                sa.update(WebhookDelivery)
                .where(col(WebhookDelivery.id) == delivery_id)
                .values(status=PENDING, next_attempt_at=utcnow(), claimed_until=None)
            )
            s.commit()
            found = s.get(WebhookDelivery, delivery_id)
            assert found is not None
            s.refresh(found)
            return delivery_view(found)
