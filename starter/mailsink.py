"""The dev and test SMTP sink: every message it receives becomes a JSON file in a folder.

``make dev`` runs it (``python -m starter.mailsink --dir .oms/mail --port 8025``); tests start a
:class:`MailSink` on a free port and send to it through the real SMTP path. ``oms dev mail``
lists what it kept (:func:`read_mail`).

Each message is one file ``{sha256(Message-ID)[:32]}.json`` holding ``to``, ``subject``, ``body``
(the text part), ``html``, ``sent_at`` (when the sink received it, ISO 8601 UTC),
``message_id``, ``from``, ``rcpt_tos`` (the envelope recipients) and ``headers``. A message
whose ``Message-ID`` is already stored is accepted and not stored again: the relay derives the id
from the notification key, so a resend after a crash must not show up twice in the mailbox.

Faults for tests: :meth:`MailSink.fail_next` makes the sink answer the next N messages with a
4xx (transient) or 5xx (permanent) reply, at RCPT or at DATA.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import tempfile
import threading
import uuid
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["MailSink", "main", "read_mail"]

log = structlog.get_logger(__name__)

Stage = Literal["rcpt", "data"]
SINK_HOSTNAME = "mailsink.localhost"  # given, so aiosmtpd never waits on a DNS lookup of ours


@dataclass
class _Fault:
    remaining: int
    code: int
    text: str
    stage: Stage


class _Handler:
    """aiosmtpd hooks: faults at RCPT/DATA, one JSON file per stored message."""

    def __init__(self, sink: MailSink) -> None:
        self.sink = sink
        # The RCPT fault taken for each transaction (None: it goes through).
        self._rcpt_faults: weakref.WeakKeyDictionary[Envelope, _Fault | None] = (
            weakref.WeakKeyDictionary()
        )

    async def handle_RCPT(  # aiosmtpd's hook name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if envelope not in self._rcpt_faults:
            # The first recipient of a message decides whether the whole message fails.
            self._rcpt_faults[envelope] = self.sink._take_fault("rcpt")
        fault = self._rcpt_faults[envelope]
        if fault is not None:
            return f"{fault.code} {fault.text}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        fault = self.sink._take_fault("data")
        if fault is not None:
            return f"{fault.code} {fault.text}"
        content = envelope.original_content or envelope.content or b""
        raw = content if isinstance(content, bytes) else content.encode()
        try:
            self.sink._store(raw, envelope)
        except OSError as err:  # the disk, not the client: ask it to come back later
            log.error("mailsink.store_failed", error=str(err))
            return "451 4.3.0 cannot store the message now"
        return "250 OK"


class MailSink:
    """An SMTP server on ``host:port`` that keeps every message as JSON under ``directory``.

    Runs in a thread with its own event loop, so synchronous and asynchronous callers (tests,
    the dev stack) use it alike. ``port=0`` picks a free port; :attr:`port` has it after
    :meth:`start`.

    Example:
        with MailSink(tmp_path) as sink:
            settings = SmtpSettings.from_url(f"smtp://127.0.0.1:{sink.port}", "a@b.test")
    """

    def __init__(self, directory: Path | str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.directory = Path(directory)
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> MailSink:
        """Listen (in a background thread) and return once connections are accepted.

        Raises:
            OSError: When the address cannot be bound (the port is taken).
        """
        if self._thread is not None:
            raise RuntimeError("the mail sink is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="mailsink", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("the mail sink did not start within 10 s")
        if self._error is not None:
            self._thread.join(5)
            self._thread = None
            raise self._error
        return self

    def stop(self) -> None:
        """Stop listening and end the thread (open sessions are dropped)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None

    def __enter__(self) -> MailSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)  # this thread's loop: aiosmtpd and gather() look it up
        self._loop = loop
        handler = _Handler(self)
        try:
            self._server = loop.run_until_complete(
                loop.create_server(
                    lambda: SMTP(
                        handler,
                        hostname=SINK_HOSTNAME,
                        enable_SMTPUTF8=True,
                        timeout=60,
                        loop=loop,
                    ),
                    host=self.host,
                    port=self.port,
                )
            )
        except BaseException as err:  # bind failure: hand it to start()
            self._error = err
            self._ready.set()
            loop.close()
            return
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(self._server.wait_closed())
            loop.close()
            self._loop = None

    # --- faults --------------------------------------------------------------------------

    def fail_next(
        self, count: int = 1, code: int = 451, text: str | None = None, stage: Stage = "data"
    ) -> None:
        """Answer the next ``count`` messages with ``code`` instead of accepting them.

        Args:
            count: How many messages fail (each message counts once, whatever its recipients).
            code: ``451`` (try later), ``550`` (mailbox unknown), any 4xx or 5xx.
            text: The reply text; a sensible one by default.
            stage: ``"rcpt"`` refuses the recipients, ``"data"`` refuses the message body.
        """
        if not 400 <= code < 600:
            raise ValueError("a fault is a 4xx or 5xx reply")
        default = "4.3.0 try again later" if code < 500 else "5.1.1 mailbox unavailable"
        with self._lock:
            self._faults.append(_Fault(count, code, text or default, stage))

    def clear_faults(self) -> None:
        """Accept every message again."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, stage: Stage) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.stage == stage and fault.remaining > 0:
                    fault.remaining -= 1
                    return fault
            self._faults = [f for f in self._faults if f.remaining > 0]
        return None

    # --- storage -------------------------------------------------------------------------

    def _store(self, raw: bytes, envelope: Envelope) -> Path | None:
        """Write the message as JSON; ``None`` when its Message-ID was already stored."""
        parsed = message_from_bytes(raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        message_id = str(parsed.get("Message-ID", "")).strip()
        name = hashlib.sha256((message_id or uuid.uuid4().hex).encode()).hexdigest()[:32]
        target = self.directory / f"{name}.json"
        if target.exists():
            log.info("mailsink.duplicate", message_id=message_id)
            return None
        record = _record(parsed, envelope, message_id)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".incoming-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(record, out, ensure_ascii=False, indent=2)
            # link() refuses an existing name: two copies arriving at once still store one.
            try:
                os.link(tmp, target)
            except FileExistsError:
                log.info("mailsink.duplicate", message_id=message_id)
                return None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        log.info("mailsink.stored", to=record["to"], subject=record["subject"], file=target.name)
        return target


def _part(message: EmailMessage, subtype: str) -> str | None:
    part = message.get_body(preferencelist=(subtype,))
    if part is None or not isinstance(part, EmailMessage):
        return None
    content = part.get_content()
    # SMTP carries CRLF line ends; keep what was written.
    return content.replace("\r\n", "\n") if isinstance(content, str) else None


def _record(message: EmailMessage, envelope: Envelope, message_id: str) -> dict[str, Any]:
    headers: dict[str, str] = {}
    for name, value in message.items():
        if name.lower().startswith("content-") or name.lower() == "mime-version":
            continue
        headers[name] = str(value)
    return {
        "to": str(message.get("To", "")) or ", ".join(envelope.rcpt_tos),
        "subject": str(message.get("Subject", "")),
        "body": _part(message, "plain") or "",
        "html": _part(message, "html"),
        "sent_at": datetime.now(UTC).isoformat(timespec="microseconds"),
        "message_id": message_id,
        "from": str(message.get("From", "")),
        "rcpt_tos": list(envelope.rcpt_tos),
        "headers": headers,
    }


def _addresses(record: dict[str, Any]) -> set[str]:
    found = {a.lower() for _, a in getaddresses([str(record.get("to", ""))]) if a}
    return found | {str(a).lower() for a in record.get("rcpt_tos", [])}


def read_mail(directory: Path | str, to: str | None = None) -> list[dict[str, Any]]:
    """The messages kept under ``directory``, oldest first (newest last).

    Args:
        directory: The sink's folder; a missing folder has no messages.
        to: Only messages to this address (``To`` header or envelope, any case).
    """
    folder = Path(directory)
    if not folder.is_dir():
        return []
    messages: list[tuple[str, str, dict[str, Any]]] = []
    for path in folder.glob("*.json"):
        if path.name.startswith("."):
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not one of ours, or removed while listing
        if not isinstance(record, dict):
            continue
        if to is not None and to.strip().lower() not in _addresses(record):
            continue
        messages.append((str(record.get("sent_at", "")), path.name, record))
    messages.sort(key=lambda item: (item[0], item[1]))
    return [record for _, _, record in messages]


# --- foreground process -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """``python -m starter.mailsink --dir .oms/mail --port 8025``: run until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m starter.mailsink",
        description="Dev SMTP sink: keeps every message as JSON in a folder (oms dev mail).",
    )
    parser.add_argument("--dir", default=".oms/mail", help="where to keep messages")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8025, help="port to listen on (0: any)")
    args = parser.parse_args(argv)

    from workers.logs import configure_logging

    configure_logging()
    # aiosmtpd logs every SMTP command at INFO; the sink's own lines say what arrived.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with MailSink(Path(args.dir), host=args.host, port=args.port) as sink:
        log.info(
            "mailsink.listening",
            address=f"{sink.host}:{sink.port}",
            smtp_url=f"smtp://{sink.host}:{sink.port}",
            directory=str(Path(args.dir).resolve()),
        )
        while not stop.wait(0.5):
            pass
    log.info("mailsink.stopped")


if __name__ == "__main__":
    main()
