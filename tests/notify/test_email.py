"""E-mail over the real SMTP path: aiosmtplib against the aiosmtpd sink, faults included."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from activities.notify.email import SmtpSettings, message_id_for, send_email
from activities.notify.errors import PermanentDeliveryError, TransientDeliveryError
from activities.notify.render import render_email
from starter.mailsink import MailSink, read_mail

FROM = "Subscription OMS <billing@oms.localhost>"
KEY = "sub_1:receipt:in_7f3a"


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[MailSink]:
    with MailSink(tmp_path / "mail") as running:
        yield running


def settings_for(port: int, query: str = "") -> SmtpSettings:
    # local_hostname: EHLO without a DNS lookup of this machine's name.
    sep = "&" if query else ""
    return SmtpSettings.from_url(
        f"smtp://127.0.0.1:{port}?local_hostname=test.localhost{sep}{query}", FROM
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def send(
    sink: MailSink, to: str = "ada@example.test", key: str = KEY, subject: str = "Receipt"
) -> None:
    await send_email(
        settings_for(sink.port),
        to=to,
        subject=subject,
        text=f"Hello,\n\n{subject}: we received $29.00.\n",
        html=f"<p>{subject}: we received <b>$29.00</b>.</p>",
        message_id=message_id_for(key, "oms.localhost"),
        headers={"X-OMS-Notification": key},
    )


async def test_a_rendered_notice_arrives_with_text_and_html_parts(sink: MailSink) -> None:
    mail = render_email(
        "payment_succeeded",
        {"invoice_id": "in_7f3a", "amount_minor": "2900", "currency": "EUR", "plan_id": "pro"},
        locale="de",
    )
    await send_email(
        settings_for(sink.port),
        to="Ada Lovelace <ada@example.test>",
        subject=mail.subject,
        text=mail.text,
        html=mail.html,
        message_id=message_id_for(KEY, "oms.localhost"),
        headers={"X-OMS-Notification": KEY, "X-OMS-Kind": "payment_succeeded"},
    )

    [got] = read_mail(sink.directory)
    assert got["to"] == "Ada Lovelace <ada@example.test>"
    assert got["rcpt_tos"] == ["ada@example.test"]
    assert got["subject"] == mail.subject  # non-ASCII (ä, €) survives the header encoding
    assert got["body"] == mail.text
    assert got["html"] == mail.html
    assert got["from"] == FROM
    assert got["message_id"] == message_id_for(KEY, "oms.localhost")
    assert got["headers"]["X-OMS-Kind"] == "payment_succeeded"
    assert got["headers"]["Auto-Submitted"] == "auto-generated"
    assert got["sent_at"].endswith("+00:00")


def test_the_message_id_is_derived_from_the_key_and_stable() -> None:
    first = message_id_for(KEY, "oms.localhost")

    assert first == message_id_for(KEY, "oms.localhost")
    assert first != message_id_for(KEY + ":x", "oms.localhost")
    assert first.startswith("<") and first.endswith("@oms.localhost>")
    assert len(first.split("@")[0]) == 1 + 32
    with pytest.raises(ValueError):
        message_id_for(KEY, "not a domain")


async def test_a_resent_message_is_stored_once(sink: MailSink) -> None:
    await send(sink)
    await send(sink)  # a relay that crashed after sending, before recording "sent"
    await send(sink, key="sub_1:receipt:in_other")

    assert len(read_mail(sink.directory)) == 2


async def test_451_is_a_transient_failure_and_the_next_try_goes_through(sink: MailSink) -> None:
    sink.fail_next(1, 451)

    with pytest.raises(TransientDeliveryError) as caught:
        await send(sink)
    assert caught.value.code == 451
    assert "451" in caught.value.message
    assert read_mail(sink.directory) == []

    await send(sink)
    assert len(read_mail(sink.directory)) == 1


async def test_550_mailbox_unknown_is_a_permanent_failure(sink: MailSink) -> None:
    sink.fail_next(1, 550, stage="rcpt")

    with pytest.raises(PermanentDeliveryError) as caught:
        await send(sink, to="nobody@example.test")
    assert caught.value.code == 550
    assert "nobody@example.test" in caught.value.message
    assert read_mail(sink.directory) == []


async def test_a_5xx_to_the_message_itself_is_permanent_and_a_4xx_at_rcpt_transient(
    sink: MailSink,
) -> None:
    sink.fail_next(1, 554, "5.7.1 message rejected", stage="data")
    with pytest.raises(PermanentDeliveryError) as permanent:
        await send(sink)
    assert permanent.value.code == 554

    sink.fail_next(1, 450, stage="rcpt")
    with pytest.raises(TransientDeliveryError) as transient:
        await send(sink)
    assert transient.value.code == 450


async def test_connection_refused_is_transient() -> None:
    with pytest.raises(TransientDeliveryError) as caught:
        await send_email(
            settings_for(free_port()),
            to="ada@example.test",
            subject="s",
            text="t",
            html="<p>t</p>",
            message_id=message_id_for(KEY, "oms.localhost"),
        )
    assert caught.value.code is None


async def test_a_server_that_never_answers_is_transient_within_the_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TransientDeliveryError):
            await send_email(
                settings_for(port, "timeout=0.3"),
                to="ada@example.test",
                subject="s",
                text="t",
                html="<p>t</p>",
                message_id=message_id_for(KEY, "oms.localhost"),
            )
        assert loop.time() - started < 3
    finally:
        server.close()


@pytest.mark.parametrize("to", ["", "not-an-address", "ada@", "ada@example.test, bob"])
async def test_an_invalid_recipient_is_permanent_without_connecting(to: str) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        await send_email(
            settings_for(free_port()),  # nothing listens: a connection would be transient
            to=to,
            subject="s",
            text="t",
            html="<p>t</p>",
            message_id=message_id_for(KEY, "oms.localhost"),
        )
    assert "invalid recipient" in caught.value.message


async def test_a_header_with_a_line_break_is_refused_as_permanent(sink: MailSink) -> None:
    with pytest.raises(PermanentDeliveryError):
        await send_email(
            settings_for(sink.port),
            to="ada@example.test",
            subject="s",
            text="t",
            html="<p>t</p>",
            message_id=message_id_for(KEY, "oms.localhost"),
            headers={"X-Note": "x\r\nBcc: victim@example.test"},
        )
    assert read_mail(sink.directory) == []


async def test_read_mail_filters_by_address_and_lists_oldest_first(sink: MailSink) -> None:
    await send(sink, to="ada@example.test", key="k1", subject="first")
    await send(sink, to="Bob <bob@example.test>", key="k2", subject="second")
    await send(sink, to="ops@example.test, ada@example.test", key="k3", subject="third")

    assert [m["subject"] for m in read_mail(sink.directory)] == ["first", "second", "third"]
    assert [m["subject"] for m in read_mail(sink.directory, to="ADA@example.test")] == [
        "first",
        "third",
    ]
    assert [m["subject"] for m in read_mail(sink.directory, to="bob@example.test")] == ["second"]
    assert read_mail(sink.directory, to="eve@example.test") == []
    assert read_mail(sink.directory / "missing") == []


def test_smtp_urls_parse_into_settings() -> None:
    plain = SmtpSettings.from_url("smtp://mail.example.test:2525", FROM)
    assert (plain.host, plain.port, plain.use_tls, plain.start_tls) == (
        "mail.example.test",
        2525,
        False,
        False,
    )
    assert plain.username is None and plain.password is None

    submission = SmtpSettings.from_url(
        "smtp://apikey:s%40cret@smtp.example.test:587?starttls=true", FROM
    )
    assert submission.start_tls and not submission.use_tls
    assert (submission.username, submission.password) == ("apikey", "s@cret")
    assert "s@cret" not in repr(submission)

    implicit = SmtpSettings.from_url("smtps://user:pw@smtp.example.test", FROM)
    assert (implicit.use_tls, implicit.port) == (True, 465)
    assert SmtpSettings.from_url("smtp://localhost", FROM).port == 25


@pytest.mark.parametrize(
    ("url", "from_address", "message"),
    [
        ("http://mail.example.test", FROM, "smtp:// or smtps://"),
        ("smtp://", FROM, "no host"),
        ("smtp://mail.example.test:99999", FROM, "bad port"),
        ("smtp://mail.example.test?starttls=maybe", FROM, "true or false"),
        ("smtp://mail.example.test?tls=1", FROM, "unknown option"),
        ("smtps://mail.example.test?starttls=true", FROM, "already TLS"),
        ("smtp://u:hunter2@mail.example.test:x", FROM, "bad port"),
        ("smtp://mail.example.test", "Billing", "no e-mail address"),
    ],
)
def test_bad_smtp_urls_are_refused_without_showing_the_password(
    url: str, from_address: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        SmtpSettings.from_url(url, from_address)
    assert "hunter2" not in str(caught.value)
