"""The outbox relay: sends what is due, once per key, and records every outcome.

A plain loop (``workers/relay.py`` runs it as its own process; tests call :meth:`Relay.run_once`)
rather than a Temporal workflow per batch: the outbox table already is the durable queue, the
claim is a lease in the same table, and sending needs no orchestration beyond "try, record,
retry later". A workflow per batch would put every e-mail's address and rendered body in a
history, which the privacy issue forbids.

- **E-mail**: the recipient is looked up at send time (the customer's address and locale; the
  enrolling address for ``enrollment_*`` notices; the approvers of the request's groups; the ops
  address for ``ops_*`` notices), the message rendered
  from the kind's template, and sent over SMTP with a ``Message-ID`` derived from the key, so a
  resend after a crash between "sent" and "recorded" is recognisable as the same message.
  Transient failures (connection, 4xx) retry on a back-off; a permanent one (5xx) or the last
  attempt ends the row ``dead`` with its error; no address ends it ``skipped``. Once a row is
  final, the secrets in its data (one-time codes, sign-in and resume links) are blanked.
- **Webhooks**: each delivery is POSTed signed (``webhooks.py``); non-2xx and network errors retry
  on a back-off for three days, then the delivery is ``dead`` (``oms webhooks replay`` resends it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import httpx
import structlog
from sqlalchemy import Engine

from activities.notify import webhooks
from activities.notify.email import SmtpSettings, message_id_for, send_email
from activities.notify.errors import PermanentDeliveryError, TransientDeliveryError
from activities.notify.outbox import DEAD, SKIPPED, Outbox
from activities.notify.render import render_email
from activities.tables import NotificationRow, WebhookDelivery, WebhookEndpoint, utcnow
from workers.config import NotificationsConfig

log = structlog.get_logger(__name__)

EMAIL_BACKOFF = (
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=15),
    timedelta(hours=1),
    timedelta(hours=3),
    timedelta(hours=6),
    timedelta(hours=12),
)
CLAIM = 5  # rows claimed at a time (each claim's lease covers sending all of them)
APPROVER_KINDS_PREFIX = "approval_"
OPS_KINDS_PREFIX = "ops_"
ENROLLMENT_KINDS_PREFIX = "enrollment_"
# Data that must not outlive the e-mail carrying it: one-time codes (enrollment kinds only; an
# ops notice's ``code`` is an error code) and bearer links. Blanked once a row is final.
SECRET_KEYS = ("sign_in_url", "resume_url")
ENROLLMENT_SECRET_KEYS = ("code",)


def scrubbed(kind: str, data: dict[str, str]) -> str | None:
    """The row's data with its secrets blanked, as JSON; None when it holds none."""
    keys = SECRET_KEYS + (
        ENROLLMENT_SECRET_KEYS if kind.startswith(ENROLLMENT_KINDS_PREFIX) else ()
    )
    if not any(data.get(k) for k in keys):
        return None
    return json.dumps({k: ("" if k in keys else v) for k, v in data.items()}, sort_keys=True)


@dataclass
class RelayStats:
    sent: int = 0
    retried: int = 0
    dead: int = 0
    skipped: int = 0
    delivered: int = 0
    delivery_retries: int = 0
    deliveries_dead: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def touched(self) -> int:
        return (
            self.sent
            + self.retried
            + self.dead
            + self.skipped
            + self.delivered
            + self.delivery_retries
            + self.deliveries_dead
        )


class Relay:
    def __init__(
        self,
        engine: Engine,
        config: NotificationsConfig,
        *,
        clock: Callable[[], datetime] = utcnow,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.outbox = Outbox(engine)
        self.config = config
        self.smtp = SmtpSettings.from_url(config.smtp_url, config.from_address)
        self.clock = clock
        self._http = http

    async def run_once(self) -> RelayStats:
        """One pass: up to a batch of due e-mails, then of due webhook deliveries.

        Rows are claimed a few at a time with a lease longer than sending them can take (every
        send bounded by its time-out), so no other relay takes a row this one still sends, and a
        killed relay's rows wait at most one lease.
        """
        stats = RelayStats()
        cfg = self.config
        mail_lease = timedelta(seconds=cfg.lease_s + CLAIM * self.smtp.total_timeout_s)
        hook_lease = timedelta(seconds=cfg.lease_s + CLAIM * webhooks.TIMEOUT_S)
        for _ in range(0, cfg.batch, CLAIM):
            rows = await asyncio.to_thread(
                self.outbox.claim_notifications, self.clock(), CLAIM, mail_lease
            )
            for row in rows:
                await self._email(row, stats)
            if len(rows) < CLAIM:
                break
        for _ in range(0, cfg.batch, CLAIM):
            pairs = await asyncio.to_thread(
                self.outbox.claim_deliveries, self.clock(), CLAIM, hook_lease
            )
            if pairs and self._http is None:
                self._http = httpx.AsyncClient(trust_env=False)
            for delivery, endpoint in pairs:
                await self._deliver(delivery, endpoint, stats)
            if len(pairs) < CLAIM:
                break
        return stats

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until ``stop`` is set; a full batch goes again at once."""
        log.info("relay.started", batch=self.config.batch, poll_s=self.config.poll_s)
        try:
            while not stop.is_set():
                try:
                    stats = await self.run_once()
                except Exception as err:  # the DB is down: say so, wait, go on
                    log.warning("relay.pass_failed", error=str(err) or type(err).__name__)
                    stats = RelayStats()
                if stats.touched:
                    log.info("relay.pass", **{k: v for k, v in vars(stats).items() if v})
                if stats.touched < self.config.batch:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.config.poll_s)
        finally:
            if self._http is not None:
                await self._http.aclose()

    # --- e-mail --------------------------------------------------------------------------

    def _recipients(self, row: NotificationRow, data: dict[str, str]) -> tuple[list[str], str]:
        if row.kind.startswith(OPS_KINDS_PREFIX):
            return [self.config.ops_address], "en"
        if row.kind.startswith(APPROVER_KINDS_PREFIX):
            groups = [g for g in data.get("groups", "").split(",") if g]
            return self.outbox.approver_emails(row.tenant_id, groups), "en"
        if row.kind.startswith(ENROLLMENT_KINDS_PREFIX):
            # Sent before any customer exists: to the enrolling address (its row's id is the
            # notice's subscription_id), erased when the enrollment expires.
            enrolling = self.outbox.enrollment_contact(row.subscription_id)
            return ([enrolling[0]], enrolling[1]) if enrolling else ([], "en")
        contact = self.outbox.customer_contact(row.customer_id)
        return ([contact[0]], contact[1]) if contact else ([], "en")

    async def _email(self, row: NotificationRow, stats: RelayStats) -> None:
        assert row.id is not None
        data: dict[str, str] = json.loads(row.data or "{}")
        to, locale = await asyncio.to_thread(self._recipients, row, data)
        # Blank the secrets with the final outcome (only when there are any).
        blanked = scrubbed(row.kind, data)
        final_data = {"data": blanked} if blanked is not None else {}
        if not to:
            await asyncio.to_thread(
                functools.partial(
                    self.outbox.notification_ended,
                    row.id,
                    SKIPPED,
                    "no address to send to",
                    **final_data,
                )
            )
            stats.skipped += 1
            return
        links = {
            "portal": self.config.portal_url,
            "update_payment_method": (
                f"{self.config.portal_url}/payment-method?subscription={row.subscription_id}"
            ),
        }
        message_id = message_id_for(row.key, self.config.message_id_domain)
        try:
            mail = render_email(row.kind, data, locale=locale, links=links)
        except (KeyError, ValueError) as err:  # a notice the templates cannot render: a bug
            await asyncio.to_thread(
                functools.partial(
                    self.outbox.notification_ended,
                    row.id,
                    DEAD,
                    f"cannot render: {err}",
                    **final_data,
                )
            )
            stats.dead += 1
            stats.errors.append(f"{row.key}: {err}")
            log.error("relay.render_failed", key=row.key, kind=row.kind, error=str(err))
            return
        try:
            await send_email(
                self.smtp,
                to=", ".join(to),
                subject=mail.subject,
                text=mail.text,
                html=mail.html,
                message_id=message_id,
                headers={"X-OMS-Notification": row.key, "X-OMS-Kind": row.kind},
            )
        except PermanentDeliveryError as err:
            await asyncio.to_thread(
                functools.partial(
                    self.outbox.notification_ended, row.id, DEAD, err.message, **final_data
                )
            )
            stats.dead += 1
            log.warning("relay.email_dead", key=row.key, error=err.message)
            return
        except TransientDeliveryError as err:
            attempts = row.attempts + 1
            if attempts >= self.config.max_email_attempts:
                await asyncio.to_thread(
                    functools.partial(
                        self.outbox.notification_ended, row.id, DEAD, err.message, **final_data
                    )
                )
                stats.dead += 1
                log.warning("relay.email_dead", key=row.key, attempts=attempts, error=err.message)
                return
            delay = EMAIL_BACKOFF[min(attempts, len(EMAIL_BACKOFF)) - 1]
            await asyncio.to_thread(
                self.outbox.notification_retry, row.id, err.message, self.clock() + delay
            )
            stats.retried += 1
            return
        await asyncio.to_thread(
            functools.partial(
                self.outbox.notification_sent, row.id, message_id, self.clock(), **final_data
            )
        )
        stats.sent += 1

    # --- webhooks ------------------------------------------------------------------------

    async def _deliver(
        self, delivery: WebhookDelivery, endpoint: WebhookEndpoint, stats: RelayStats
    ) -> None:
        assert delivery.id is not None and self._http is not None
        now = self.clock()
        status, error = await webhooks.post(
            self._http,
            endpoint.url,
            delivery.payload.encode(),
            endpoint.secret,
            delivery.event_id,
            delivery.event_type,
            now,
        )
        if error is None and status is not None:
            await asyncio.to_thread(self.outbox.delivery_done, delivery.id, status, now)
            stats.delivered += 1
            return
        at = webhooks.next_attempt(delivery.created_at, delivery.attempts + 1, now)
        await asyncio.to_thread(
            self.outbox.delivery_retry, delivery.id, status, error or "failed", at
        )
        if at is None:
            stats.deliveries_dead += 1
            log.warning("relay.webhook_dead", delivery=delivery.id, error=error)
        else:
            stats.delivery_retries += 1
