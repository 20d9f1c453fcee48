"""A subscription's first year of e-mail: the workflow writes the outbox, the relay sends every
message through SMTP to the sink, in order, with the amounts that were then charged."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from activities.notify.relay import Relay
from starter.mailsink import MailSink, read_mail
from tests.workflows.conftest import Stack
from tests.workflows.test_changes import change, start_april
from tests.workflows.test_subscription_lifecycle import skip_to
from workers.config import NotificationsConfig

EMAIL = "year@example.com"


async def test_the_first_year_sends_each_receipt_and_notice_in_order_at_the_price_charged(
    stack: Stack, tmp_path: Path
) -> None:
    sub = await start_april(stack, email=EMAIL)  # Pro, $30.00 a month, billed on the 1st
    await skip_to(stack, datetime(2027, 6, 10, 9, tzinfo=UTC))
    down = await change(stack, sub, "down-1", plan_id="starter")  # $9.00 from July 1st
    assert down.outcome == "scheduled"
    await skip_to(stack, datetime(2028, 4, 1, 12, tzinfo=UTC))

    with MailSink(tmp_path / "mail") as sink:
        config = NotificationsConfig(
            smtp_url=f"smtp://127.0.0.1:{sink.port}?local_hostname=test.localhost"
        )
        relay = Relay(
            stack.store.engine, config, clock=lambda: datetime.now(UTC) + timedelta(days=800)
        )
        while (await relay.run_once()).touched:
            pass
        mails = read_mail(sink.directory, to=EMAIL)

    kinds = [m["headers"]["X-OMS-Kind"] for m in mails]
    cycle = ["upcoming_charge", "payment_succeeded"]
    assert kinds == ["payment_succeeded", *cycle * 2, "change_scheduled", *cycle * 10]
    amounts = [re.findall(r"\$\d+\.\d\d", m["subject"] + " " + m["body"])[0] for m in mails]
    # Apr, May and June at Pro; the change notice and the notice before July show the new price.
    assert amounts[:5] == ["$30.00"] * 5
    assert amounts[5:] == ["$9.00"] * 21
    assert "July 1, 2027" in mails[5]["body"]
    # Every notice names the date of the charge it announces.
    notices = [m for m in mails if m["headers"]["X-OMS-Kind"] == "upcoming_charge"]
    assert "July 1, 2027" in notices[2]["body"]
    assert len({m["headers"].get("Message-ID") or m["message_id"] for m in mails}) == len(mails)
