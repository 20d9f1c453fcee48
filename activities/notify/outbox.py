"""The outbox's two queues: e-mails (``notifications``) and webhook deliveries.

Rows are written by :meth:`activities.store.Store.enqueue_notification` with the change that
causes them; the relay (``relay.py``) claims what is due with a lease, sends, and records the
outcome here. Claims are leases (``claimed_until``), so a relay killed mid-batch leaves nothing
stuck: its rows are claimed again once the lease lapses. Every query is short and commits at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlmodel import Session, col, or_, select

from activities.enrollment_tables import EnrollmentRow
from activities.tables import (
    Customer,
    NotificationRow,
    PrincipalRow,
    WebhookDelivery,
    WebhookEndpoint,
)
from models.subscription import Notification

PENDING, SENT, DEAD, SKIPPED = "pending", "sent", "dead", "skipped"
DELIVERED = "delivered"
MAX_ERROR = 500


def event_id(key: str) -> str:
    """A webhook event's id, derived from its notification key: the same on every retry."""
    return "evt_" + hashlib.sha256(key.encode()).hexdigest()[:24]


def event_payload(tenant_id: str, n: Notification, created: datetime) -> dict[str, Any]:
    """What a webhook receives: ids and facts, never personal data (no e-mail, no name)."""
    return {
        "id": event_id(n.key),
        "type": n.kind,
        "created": int(created.timestamp()),
        "tenant_id": tenant_id,
        "data": {
            "subscription_id": n.subscription_id,
            "customer_id": n.customer_id,
            **n.data,
        },
    }


# Internal notices (ops attention with raw error text, approvals) are never sent to tenants.
INTERNAL_PREFIXES = ("ops_", "approval_")


def wants(endpoint: WebhookEndpoint, kind: str) -> bool:
    if kind.startswith(INTERNAL_PREFIXES):
        return False
    types = json.loads(endpoint.event_types or "[]")
    return "*" in types or kind in types


def webhook_deliveries(
    s: Session, tenant_id: str, n: Notification, now: datetime
) -> list[WebhookDelivery]:
    """One delivery per enabled endpoint of the tenant that wants this kind (same session)."""
    endpoints = s.exec(
        select(WebhookEndpoint).where(
            WebhookEndpoint.tenant_id == tenant_id, col(WebhookEndpoint.enabled).is_(True)
        )
    ).all()
    body = json.dumps(event_payload(tenant_id, n, now), sort_keys=True)
    return [
        WebhookDelivery(
            tenant_id=tenant_id,
            endpoint_id=e.id,
            event_id=event_id(n.key),
            event_type=n.kind,
            payload=body,
            status=PENDING,
            next_attempt_at=now,
            created_at=now,
        )
        for e in endpoints
        if wants(e, n.kind)
    ]


def clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 1] + "…"


class Outbox:
    """Claims and outcomes for the relay."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # --- e-mails -------------------------------------------------------------------------

    def claim_notifications(
        self, now: datetime, limit: int, lease: timedelta
    ) -> Sequence[NotificationRow]:
        """Due pending rows, oldest first, leased to the caller until ``now + lease``."""
        due = (
            select(NotificationRow.id)
            .where(
                NotificationRow.status == PENDING,
                col(NotificationRow.scheduled_for) <= now,
                or_(
                    col(NotificationRow.next_attempt_at).is_(None),
                    col(NotificationRow.next_attempt_at) <= now,
                ),
                or_(
                    col(NotificationRow.claimed_until).is_(None),
                    col(NotificationRow.claimed_until) < now,
                ),
            )
            .order_by(col(NotificationRow.scheduled_for), col(NotificationRow.id))
            .limit(limit)
        )
        with self.session() as s:
            if s.get_bind().dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True)
            ids = list(s.exec(due).all())
            if not ids:
                return []
            s.execute(
                sa.update(NotificationRow)
                .where(col(NotificationRow.id).in_(ids))
                .values(claimed_until=now + lease)
            )
            s.commit()
            rows = s.exec(
                select(NotificationRow)
                .where(col(NotificationRow.id).in_(ids))
                .order_by(col(NotificationRow.scheduled_for), col(NotificationRow.id))
            ).all()
        return rows

    def _update(self, model: Any, row_id: int, **values: Any) -> None:
        with self.session() as s:
            s.execute(sa.update(model).where(model.id == row_id).values(**values))
            s.commit()

    def notification_sent(
        self, row_id: int, message_id: str, now: datetime, *, data: str | None = None
    ) -> None:
        """Mark a row sent; ``data``: its data with the secrets blanked (one-time codes, links)."""
        extra = {"data": data} if data is not None else {}
        self._update(
            NotificationRow,
            row_id,
            status=SENT,
            sent_at=now,
            message_id=message_id,
            claimed_until=None,
            attempts=NotificationRow.attempts + 1,
            **extra,
        )

    def notification_retry(self, row_id: int, error: str, at: datetime) -> None:
        self._update(
            NotificationRow,
            row_id,
            next_attempt_at=at,
            claimed_until=None,
            last_error=clip(error),
            attempts=NotificationRow.attempts + 1,
        )

    def notification_ended(
        self, row_id: int, status: str, error: str | None, *, data: str | None = None
    ) -> None:
        """``dead`` (gave up) or ``skipped`` (nothing to send); ``data`` as for ``sent``."""
        extra = {"data": data} if data is not None else {}
        self._update(
            NotificationRow,
            row_id,
            status=status,
            claimed_until=None,
            last_error=clip(error) if error else None,
            attempts=NotificationRow.attempts + (1 if status == DEAD else 0),
            **extra,
        )

    def customer_contact(self, customer_id: str) -> tuple[str, str] | None:
        """(e-mail, locale) of a customer, looked up at send time (no PII in the outbox)."""
        with self.session() as s:
            row = s.get(Customer, customer_id)
        return (row.email, row.locale or "en") if row is not None and row.email else None

    def enrollment_contact(self, enrollment_id: str) -> tuple[str, str] | None:
        """(e-mail, locale) of an enrollment's address, looked up at send time; None once the
        enrollment expired (its address is erased)."""
        with self.session() as s:
            row = s.get(EnrollmentRow, enrollment_id)
        return (row.email, row.locale or "en") if row is not None and row.email else None

    def approver_emails(self, tenant_id: str, groups: Sequence[str]) -> list[str]:
        """The e-mails of the tenant's active approvers in any of ``groups``."""
        with self.session() as s:
            rows = s.exec(
                select(PrincipalRow).where(
                    PrincipalRow.tenant_id == tenant_id,
                    PrincipalRow.role == "approver",
                    col(PrincipalRow.disabled_at).is_(None),
                    col(PrincipalRow.email).is_not(None),
                )
            ).all()
        wanted = set(groups)
        return sorted(
            {r.email for r in rows if r.email and wanted & set(json.loads(r.groups or "[]"))}
        )

    def notifications(
        self, *, tenant_id: str | None = None, status: str | None = None, limit: int = 100
    ) -> Sequence[NotificationRow]:
        q = select(NotificationRow)
        if tenant_id is not None:
            q = q.where(NotificationRow.tenant_id == tenant_id)
        if status is not None:
            q = q.where(NotificationRow.status == status)
        with self.session() as s:
            return s.exec(q.order_by(col(NotificationRow.id).desc()).limit(limit)).all()

    # --- webhooks ------------------------------------------------------------------------

    def claim_deliveries(
        self, now: datetime, limit: int, lease: timedelta
    ) -> list[tuple[WebhookDelivery, WebhookEndpoint]]:
        due = (
            select(WebhookDelivery.id)
            .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(WebhookDelivery.endpoint_id))
            .where(
                col(WebhookEndpoint.enabled).is_(True),
                WebhookDelivery.status == PENDING,
                or_(
                    col(WebhookDelivery.next_attempt_at).is_(None),
                    col(WebhookDelivery.next_attempt_at) <= now,
                ),
                or_(
                    col(WebhookDelivery.claimed_until).is_(None),
                    col(WebhookDelivery.claimed_until) < now,
                ),
            )
            .order_by(col(WebhookDelivery.id))
            .limit(limit)
        )
        with self.session() as s:
            if s.get_bind().dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True)
            ids = list(s.exec(due).all())
            if not ids:
                return []
            s.execute(
                sa.update(WebhookDelivery)
                .where(col(WebhookDelivery.id).in_(ids))
                .values(claimed_until=now + lease)
            )
            s.commit()
            pairs = s.exec(
                select(WebhookDelivery, WebhookEndpoint)
                .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(WebhookDelivery.endpoint_id))
                .where(col(WebhookDelivery.id).in_(ids))
                .order_by(col(WebhookDelivery.id))
            ).all()
        return [(d, e) for d, e in pairs]

    def delivery_done(self, row_id: int, status_code: int, now: datetime) -> None:
        self._update(
            WebhookDelivery,
            row_id,
            status=DELIVERED,
            delivered_at=now,
            last_status_code=status_code,
            last_error=None,
            claimed_until=None,
            attempts=WebhookDelivery.attempts + 1,
        )

    def delivery_retry(
        self, row_id: int, status_code: int | None, error: str, at: datetime | None
    ) -> None:
        """Try again at ``at``; ``None``: the retry window is over, the delivery is dead."""
        self._update(
            WebhookDelivery,
            row_id,
            status=PENDING if at is not None else DEAD,
            next_attempt_at=at,
            last_status_code=status_code,
            last_error=clip(error),
            claimed_until=None,
            attempts=WebhookDelivery.attempts + 1,
        )
