"""The outbox relay over real parts: the DB outbox, SMTP to the aiosmtpd sink, webhooks to a local
HTTP receiver that checks signatures. Time is a clock the test moves (back-offs of hours and days).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from activities.auth_store import AuthStore
from activities.notify.outbox import Outbox, event_id
from activities.notify.registry import WebhookRegistry
from activities.notify.relay import Relay
from activities.notify.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, verify
from activities.store import Store
from activities.tables import NotificationRow
from models.identity import Principal, Role
from models.subscription import Notification
from starter.mailsink import MailSink, read_mail
from workers.config import NotificationsConfig

# The store stamps rows with the wall clock; the test clock starts there and moves ahead.
T0 = datetime.now(UTC).replace(microsecond=0)
EMAIL = "ada@example.com"


class Clock:
    """Starts just after the wall clock (rows are stamped with it), then moves as told."""

    def __init__(self) -> None:
        self.start = datetime.now(UTC) + timedelta(seconds=1)
        self.now = self.start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class Receiver:
    """A webhook endpoint: answers the planned statuses in turn (then 200), records requests."""

    plan: list[int] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            rec.requests.append((dict(self.headers.items()), body))
            status = rec.plan.pop(0) if rec.plan else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[MailSink]:
    with MailSink(tmp_path / "mail") as running:
        yield running


def relay_for(engine: Engine, port: int, clock: Clock, **overrides: Any) -> Relay:
    config = NotificationsConfig(
        smtp_url=f"smtp://127.0.0.1:{port}?local_hostname=test.localhost&timeout=5",
        ops_address="ops@example.com",
        **overrides,
    )
    return Relay(engine, config, clock=clock)


def enqueue(store: Store, kind: str, key: str, data: dict[str, str], at: datetime = T0) -> None:
    store.enqueue_notification(
        Notification(
            key=f"sub_1:{key}",
            subscription_id="sub_1",
            customer_id="cust_1",
            kind=kind,
            scheduled_for=at,
            data=data,
        )
    )


RECEIPT = {
    "invoice_id": "in_sub_1_p0",
    "plan_id": "pro",
    "amount_minor": "3000",
    "currency": "USD",
    "amount": "$30.00",
}


def rows(engine: Engine) -> dict[str, NotificationRow]:
    return {r.key: r for r in Outbox(engine).notifications(limit=1000)}


@pytest.fixture
def store(engine: Engine) -> Store:
    s = Store(engine)
    s.upsert_customer("cust_1", EMAIL, "UTC")
    return s


async def test_a_due_notice_is_sent_once_and_a_future_one_waits(
    engine: Engine, store: Store, sink: MailSink
) -> None:
    clock = Clock()
    enqueue(store, "payment_succeeded", "receipt:p0", RECEIPT)
    enqueue(
        store,
        "upcoming_charge",
        "notice:p1",
        {**RECEIPT, "charge_date": "2027-04-01"},
        at=T0 + timedelta(days=1),
    )
    relay = relay_for(engine, sink.port, clock)

    assert (await relay.run_once()).sent == 1
    assert (await relay.run_once()).touched == 0
    [mail] = read_mail(sink.directory, to=EMAIL)
    assert "$30.00" in mail["subject"] + mail["body"]
    sent = rows(engine)["sub_1:receipt:p0"]
    assert sent.status == "sent" and sent.message_id and sent.sent_at == clock.start

    clock.advance(timedelta(days=1))
    assert (await relay.run_once()).sent == 1
    assert len(read_mail(sink.directory, to=EMAIL)) == 2


async def test_an_smtp_outage_delays_messages_which_then_go_once(
    engine: Engine, store: Store, tmp_path: Path
) -> None:
    clock = Clock()
    enqueue(store, "payment_succeeded", "receipt:p0", RECEIPT)
    sink = MailSink(tmp_path / "mail")
    sink.start()
    port = sink.port
    sink.stop()  # the server is down: connection refused
    relay = relay_for(engine, port, clock)

    for _ in range(3):
        stats = await relay.run_once()
        assert stats.retried == 1 and stats.sent == 0
        row = rows(engine)["sub_1:receipt:p0"]
        assert row.status == "pending" and row.next_attempt_at is not None
        assert row.last_error
        assert (await relay.run_once()).touched == 0  # waits for its back-off
        clock.now = row.next_attempt_at

    back = MailSink(tmp_path / "mail", port=port)
    with back:
        assert (await relay.run_once()).sent == 1
        assert len(read_mail(back.directory)) == 1
    row = rows(engine)["sub_1:receipt:p0"]
    assert row.status == "sent" and row.attempts == 4


async def test_a_relay_killed_after_sending_resends_under_the_same_message_id(
    engine: Engine, store: Store, sink: MailSink
) -> None:
    clock = Clock()
    enqueue(store, "payment_succeeded", "receipt:p0", RECEIPT)
    relay = relay_for(engine, sink.port, clock)

    class Killed(BaseException):
        pass

    def die(*_: Any) -> None:
        raise Killed  # the process dies between the SMTP answer and recording it

    relay.outbox.notification_sent = die  # type: ignore[method-assign]
    with pytest.raises(Killed):
        await relay.run_once()
    assert rows(engine)["sub_1:receipt:p0"].status == "pending"

    fresh = relay_for(engine, sink.port, clock)
    assert (await fresh.run_once()).touched == 0  # the dead relay's lease still holds
    clock.advance(timedelta(hours=1))  # past the dead relay's lease
    assert (await fresh.run_once()).sent == 1
    # Sent twice, kept once: the Message-ID derives from the notification key.
    assert len(read_mail(sink.directory)) == 1
    assert rows(engine)["sub_1:receipt:p0"].status == "sent"


async def test_a_refused_recipient_is_dead_and_a_missing_customer_is_skipped(
    engine: Engine, store: Store, sink: MailSink
) -> None:
    clock = Clock()
    enqueue(store, "payment_succeeded", "receipt:p0", RECEIPT)
    store.enqueue_notification(
        Notification(
            key="sub_2:receipt:p0",
            subscription_id="sub_2",
            customer_id="cust_nobody",
            kind="payment_succeeded",
            scheduled_for=T0,
            data=RECEIPT,
        )
    )
    sink.fail_next(1, code=550, stage="rcpt")
    stats = await relay_for(engine, sink.port, clock).run_once()
    assert (stats.dead, stats.skipped) == (1, 1)
    found = rows(engine)
    assert found["sub_1:receipt:p0"].status == "dead" and found["sub_1:receipt:p0"].last_error
    assert found["sub_2:receipt:p0"].status == "skipped"
    assert read_mail(sink.directory) == []


async def test_approval_notices_go_to_the_approvers_of_the_groups_and_ops_notices_to_ops(
    engine: Engine, store: Store, sink: MailSink
) -> None:
    auth = AuthStore(engine)
    for pid, groups in (("carol", ("finance-directors",)), ("bob", ("billing-approvers",))):
        auth.put_principal(
            Principal(
                id=pid,
                tenant_id="default",
                role=Role.APPROVER,
                groups=groups,
                email=f"{pid}@example.com",
            )
        )
    approval = {
        "request_id": "req_1",
        "summary": "quantity 20 -> 5",
        "deadline": "2027-03-06T09:00:00+00:00",
        "groups": "finance-directors",
    }
    enqueue(store, "approval_requested", "req_1:approval_requested", approval)
    enqueue(
        store,
        "ops_attention",
        "attention:7",
        {"code": "DATA_ERROR", "step": "renewal", "message": "refused", "retry_at": T0.isoformat()},
    )
    stats = await relay_for(engine, sink.port, Clock()).run_once()
    assert stats.sent == 2
    assert len(read_mail(sink.directory, to="carol@example.com")) == 1
    assert read_mail(sink.directory, to="bob@example.com") == []
    assert len(read_mail(sink.directory, to="ops@example.com")) == 1


async def test_a_webhook_that_fails_for_hours_is_retried_then_delivered_once_and_signed(
    engine: Engine, store: Store, sink: MailSink, receiver: Receiver
) -> None:
    clock = Clock()
    endpoint = WebhookRegistry(engine).add("default", receiver.url, ["payment_succeeded"])
    other = WebhookRegistry(engine).add("tenant-b", receiver.url, ["*"])  # another tenant's
    receiver.plan = [500, 503, 500, 502, 500]  # about four hours of failures
    enqueue(store, "payment_succeeded", "receipt:p0", RECEIPT)
    enqueue(store, "upcoming_charge", "notice:p1", {**RECEIPT, "charge_date": "2027-04-01"})
    relay = relay_for(engine, sink.port, clock)

    for _ in range(5):
        stats = await relay.run_once()
        assert stats.delivery_retries == 1
        [pending] = WebhookRegistry(engine).deliveries("default")
        assert pending["status"] == "pending" and pending["last_status_code"] >= 500
        clock.now = datetime.fromisoformat(pending["next_attempt_at"])
    assert clock.now - clock.start > timedelta(hours=3)
    assert (await relay.run_once()).delivered == 1
    assert (await relay.run_once()).touched == 0

    [delivered] = WebhookRegistry(engine).deliveries("default")
    assert delivered["status"] == "delivered" and delivered["attempts"] == 6
    assert WebhookRegistry(engine).deliveries(other["endpoint_id"]) == []
    assert len(receiver.requests) == 6
    headers, body = receiver.requests[-1]
    sent_at = int(headers[SIGNATURE_HEADER].split(",")[0].split("=")[1])
    assert verify(endpoint["secret"], body, headers[SIGNATURE_HEADER], now=sent_at)
    assert not verify("whsec_wrong", body, headers[SIGNATURE_HEADER], now=sent_at)
    assert {h[EVENT_ID_HEADER] for h, _ in receiver.requests} == {event_id("sub_1:receipt:p0")}
    event = json.loads(body)
    assert event["type"] == "payment_succeeded" and event["data"]["amount_minor"] == "3000"
    assert EMAIL not in body.decode()  # no personal data in webhooks


async def test_a_webhook_failing_for_three_days_is_dead_and_can_be_replayed(
    engine: Engine, store: Store, sink: MailSink, receiver: Receiver
) -> None:
    clock = Clock()
    WebhookRegistry(engine).add("default", receiver.url, ["*"])
    receiver.plan = [500] * 100
    enqueue(store, "payment_succeeded", "receipt:p0", RECEIPT)
    relay = relay_for(engine, sink.port, clock)
    for _ in range(40):
        await relay.run_once()
        [row] = WebhookRegistry(engine).deliveries("default")
        if row["status"] == "dead":
            break
        clock.now = datetime.fromisoformat(row["next_attempt_at"])
    assert row["status"] == "dead"
    assert clock.now - clock.start <= timedelta(days=3)

    receiver.plan = []
    replayed = WebhookRegistry(engine).replay("default", row["delivery_id"])
    assert replayed is not None and replayed["status"] == "pending"
    assert WebhookRegistry(engine).replay("tenant-b", row["delivery_id"]) is None
    clock.advance(timedelta(seconds=1))
    assert (await relay.run_once()).delivered == 1
    [done] = WebhookRegistry(engine).deliveries("default")
    assert done["status"] == "delivered"
