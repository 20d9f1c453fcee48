"""E-mail delivery over SMTP (aiosmtplib) to any server given by URL.

One message per call, ``multipart/alternative`` (text, then HTML), with a ``Message-ID`` derived
from the notification's key (:func:`message_id_for`), so a message sent again after a crash is
recognisably the same one (the dev sink stores it once; receiving systems may drop it).

Failures are classified for the relay, which retries transient ones on a back-off and
dead-letters permanent ones:

- :class:`TransientDeliveryError`: no connection, a timeout, TLS or a disconnect, any 4xx reply,
  and replies that say the *server or our configuration* is wrong (greeting, HELO, AUTH, a
  refused sender, STARTTLS not offered): every message would fail the same way, so they wait for
  the fix rather than being thrown away.
- :class:`PermanentDeliveryError`: a 5xx reply to the recipient (``550 mailbox unknown``) or to
  the message itself (DATA, or ``552`` too large at MAIL FROM), an invalid recipient address, or a
  message that cannot be built.

Every network wait is bounded: each connect, command and reply by ``timeout_s``, the whole send by
``total_timeout_s``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, parseaddr
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib
import structlog

from activities.notify.errors import (
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)

__all__ = [
    "PermanentDeliveryError",
    "SmtpSettings",
    "TransientDeliveryError",
    "classify_smtp_error",
    "message_id_for",
    "send_email",
]

log = structlog.get_logger(__name__)

DEFAULT_PORTS = {"smtp": 25, "smtps": 465}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# Headers send_email sets itself (from its arguments) or that describe the MIME structure.
RESERVED_HEADERS = frozenset(
    {"from", "to", "subject", "date", "message-id", "mime-version", "content-type"}
    | {"content-transfer-encoding", "content-disposition"}
)
_MESSAGE_ID = re.compile(r"<[^<>@\s]+@[^<>@\s]+>")
_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
# An addr-spec good enough to refuse obvious garbage before connecting; the server judges the rest.
_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\\]+@[\w](?:[\w-]*[\w])?(?:\.[\w](?:[\w-]*[\w])?)*")


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to send e-mail.

    Attributes:
        host: The SMTP server's host name or address.
        port: Its port.
        from_address: The ``From`` header (``Name <address>`` or a bare address); the envelope
            sender is its address.
        username: For AUTH, with ``password``; ``None``: no AUTH.
        password: Never shown in ``repr``.
        use_tls: Implicit TLS from the first byte (``smtps://``, usually port 465).
        start_tls: Upgrade with STARTTLS and refuse to send if the server does not offer it
            (``smtp://...?starttls=true``, usually port 587).
        timeout_s: Bound of each network wait (connect, each command and reply).
        total_timeout_s: Bound of one whole send.
        local_hostname: The name sent in EHLO; ``None``: this machine's FQDN.
    """

    host: str
    port: int
    from_address: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    use_tls: bool = False
    start_tls: bool = False
    timeout_s: float = 30.0
    total_timeout_s: float = 120.0
    local_hostname: str | None = None

    @classmethod
    def from_url(cls, url: str, from_address: str) -> SmtpSettings:
        """Settings from ``smtp://[user:pass@]host[:port][?starttls=true]`` or ``smtps://...``.

        The port defaults to 25 (``smtp``) or 465 (``smtps``). User and password are
        percent-decoded. Query options: ``starttls`` (``smtp`` only), ``timeout`` (seconds per
        network wait), ``local_hostname``.

        Raises:
            ValueError: For another scheme, no host, a bad port or option, or a ``from_address``
                without an address.
        """
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError(f"SMTP URL must start with smtp:// or smtps://, got {_safe(url)!r}")
        if not parts.hostname:
            raise ValueError(f"SMTP URL has no host: {_safe(url)!r}")
        try:
            port = parts.port or DEFAULT_PORTS[scheme]
        except ValueError as err:
            raise ValueError(f"SMTP URL has a bad port: {_safe(url)!r}") from err
        options = {k.lower(): v[-1] for k, v in parse_qs(parts.query, strict_parsing=False).items()}
        unknown = sorted(set(options) - {"starttls", "timeout", "local_hostname"})
        if unknown:
            raise ValueError(f"SMTP URL has unknown option(s): {', '.join(unknown)}")
        start_tls = _flag(options.get("starttls", "false"), "starttls")
        if start_tls and scheme == "smtps":
            raise ValueError("smtps:// is already TLS: starttls applies to smtp:// only")
        timeout_s = 30.0
        if "timeout" in options:
            try:
                timeout_s = float(options["timeout"])
            except ValueError as err:
                shown = options["timeout"]
                raise ValueError(f"SMTP URL timeout must be seconds, got {shown!r}") from err
            if not 0 < timeout_s <= 600:
                raise ValueError("SMTP URL timeout must be between 0 and 600 seconds")
        if "@" not in parseaddr(from_address)[1]:
            raise ValueError(f"from address {from_address!r} has no e-mail address")
        return cls(
            host=parts.hostname,
            port=port,
            from_address=from_address,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            use_tls=scheme == "smtps",
            start_tls=start_tls,
            timeout_s=timeout_s,
            total_timeout_s=max(120.0, 4 * timeout_s),
            local_hostname=options.get("local_hostname") or None,
        )


def _flag(value: str, name: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"SMTP URL option {name} must be true or false, got {value!r}")


def _safe(url: str) -> str:
    """The URL without its password, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def message_id_for(key: str, domain: str) -> str:
    """The ``Message-ID`` of a notification: ``<first 32 hex of sha256(key)@domain>``.

    The same key always gives the same id, so a message sent again is recognisably the same.

    Raises:
        ValueError: For an empty key or a domain that is not a host name.
    """
    if not key:
        raise ValueError("a Message-ID needs a notification key")
    if not _DOMAIN.fullmatch(domain):
        raise ValueError(f"Message-ID domain must be a host name, got {domain!r}")
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@{domain}>"


def _recipients(to: str | Sequence[str]) -> list[str]:
    """The addr-specs of ``to``; refuses an empty or malformed list (a permanent failure)."""
    fields = [to] if isinstance(to, str) else list(to)
    pairs = getaddresses(fields)
    addresses = [address for _, address in pairs]
    bad = [a for a in addresses if not _ADDRESS.fullmatch(a)]
    if not addresses or bad or any(not f.strip() for f in fields):
        shown = ", ".join(repr(a) for a in bad) or repr(to)
        raise PermanentDeliveryError(f"invalid recipient address: {shown}")
    return addresses


def _build(
    settings: SmtpSettings,
    *,
    to: str,
    subject: str,
    text: str,
    html: str,
    message_id: str,
    headers: Mapping[str, str] | None,
) -> EmailMessage:
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ValueError(f"Message-ID must look like <id@domain>, got {message_id!r}")
    msg = EmailMessage()
    msg["From"] = settings.from_address
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = message_id
    # RFC 3834: tells auto-responders (vacation replies) not to answer a machine.
    msg["Auto-Submitted"] = "auto-generated"
    for name, value in (headers or {}).items():
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"header {name} is set by send_email itself")
        del msg[name]
        msg[name] = value
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return msg


async def send_email(
    settings: SmtpSettings,
    *,
    to: str | Sequence[str],
    subject: str,
    text: str,
    html: str,
    message_id: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Send one e-mail, text and HTML, and classify any failure for the relay.

    Args:
        settings: The server (:meth:`SmtpSettings.from_url`).
        to: One address or several (a comma-separated header value or a list).
        subject: One line.
        text: The plain-text body.
        html: The HTML body.
        message_id: From :func:`message_id_for` (``<id@domain>``).
        headers: Extra headers (``X-...``, ``Reply-To``, ``List-Unsubscribe``); not the ones
            this function sets.

    Raises:
        TransientDeliveryError: Try again later (connection, timeout, 4xx, server or settings).
        PermanentDeliveryError: Never deliverable as it is (5xx to the recipient or the
            message, an invalid address, a message that cannot be built).
    """
    recipients = _recipients(to)
    header_to = to if isinstance(to, str) else ", ".join(to)
    try:
        message = _build(
            settings,
            to=header_to,
            subject=subject,
            text=text,
            html=html,
            message_id=message_id,
            headers=headers,
        )
    except (ValueError, TypeError) as err:
        raise PermanentDeliveryError(f"cannot build the message: {err}") from err
    try:
        async with asyncio.timeout(settings.total_timeout_s):
            refused, _ = await aiosmtplib.send(
                message,
                recipients=recipients,
                hostname=settings.host,
                port=settings.port,
                username=settings.username,
                password=settings.password,
                use_tls=settings.use_tls,
                start_tls=settings.start_tls,
                timeout=settings.timeout_s,
                local_hostname=settings.local_hostname,
            )
    except (aiosmtplib.SMTPException, OSError) as err:
        # TimeoutError (ours, or aiosmtplib's) is an OSError too.
        raise classify_smtp_error(err) from err
    if refused:
        # Delivered to the others: sending again would duplicate it for them.
        log.warning(
            "email.recipients_refused",
            message_id=message_id,
            refused={a: f"{r.code} {r.message}" for a, r in refused.items()},
        )


def classify_smtp_error(err: BaseException) -> DeliveryError:
    """The delivery error an SMTP client failure means (see the module docstring)."""
    if isinstance(err, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in err.recipients]
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in err.recipients)
        if codes and all(500 <= c < 600 for c in codes):
            return PermanentDeliveryError(f"recipient refused: {detail}", codes[0])
        return TransientDeliveryError(f"recipient deferred: {detail}", codes[0] if codes else None)
    if isinstance(err, aiosmtplib.SMTPRecipientRefused):
        kind = PermanentDeliveryError if 500 <= err.code < 600 else TransientDeliveryError
        return kind(f"recipient refused: {err.recipient}: {err.code} {err.message}", err.code)
    if isinstance(err, aiosmtplib.SMTPDataError):
        kind = PermanentDeliveryError if 500 <= err.code < 600 else TransientDeliveryError
        return kind(f"message refused: {err.code} {err.message}", err.code)
    if isinstance(err, aiosmtplib.SMTPSenderRefused) and err.code == 552:
        return PermanentDeliveryError(f"message too large: {err.code} {err.message}", err.code)
    if isinstance(err, aiosmtplib.SMTPResponseException):
        return TransientDeliveryError(
            f"SMTP server refused ({type(err).__name__}): {err.code} {err.message}", err.code
        )
    if isinstance(err, TimeoutError):
        return TransientDeliveryError(f"SMTP timed out: {err or type(err).__name__}")
    return TransientDeliveryError(f"SMTP unavailable: {err or type(err).__name__}")
