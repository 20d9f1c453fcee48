"""``oms dev mail``: the messages the dev SMTP sink kept (starter/mailsink.py).

Mounted under ``oms dev`` by ``dev_app.add_typer(app)`` (no name: its one command joins
``dev``). Output contract, kept stable for scripts and the e2e tests: ``--json`` prints a JSON
list of objects with ``to``, ``subject``, ``body`` and ``sent_at``, newest last.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from starter.mailsink import read_mail
from workers.config import Config, load_config

app = typer.Typer(help="The dev mailbox: what the local SMTP sink received.")

FIELDS = ("to", "subject", "body", "sent_at")
SUBJECT_WIDTH = 70


def mail_dir(config: Config | None = None) -> Path:
    """The folder the dev SMTP sink keeps messages in: ``notifications.mail_dir``.

    ``.oms/mail`` by default; ``OMS_MAIL_DIR`` or the config file change it.
    """
    cfg = config if config is not None else load_config()
    return Path(cfg.notifications.mail_dir)


def messages(directory: Path, to: str | None = None) -> list[dict[str, Any]]:
    """The kept messages as the contract shows them, newest last."""
    return [{k: m.get(k, "") for k in FIELDS} for m in read_mail(directory, to=to)]


@app.command("mail")
def mail(
    to: str = typer.Option(None, "--to", help="Only messages to this address."),
    as_json: bool = typer.Option(
        False, "--json", help="Print a JSON list (to, subject, body, sent_at), newest last."
    ),
) -> None:
    """List the e-mails the dev SMTP sink received, newest last."""
    directory = mail_dir()
    found = messages(directory, to)
    if as_json:
        typer.echo(json.dumps(found, indent=2, ensure_ascii=False))
        return
    if not found:
        where = f" to {to}" if to else ""
        typer.echo(f"no messages{where} in {directory}")
        return
    rows = [
        [m["sent_at"][:19].replace("T", " "), m["to"], _clip(m["subject"], SUBJECT_WIDTH)]
        for m in found
    ]
    headers = ["sent (UTC)", "to", "subject"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    typer.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    typer.echo(f"\n{len(found)} message(s) in {directory}")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
