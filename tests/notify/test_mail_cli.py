"""``oms dev mail``: the dev mailbox, through the sub-app the lead mounts under ``oms dev``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from activities.notify.email import SmtpSettings, message_id_for, send_email
from starter import mail_cli
from starter.mailsink import MailSink


def oms() -> typer.Typer:
    """``oms`` with ``dev`` as cli.py builds it, the mail sub-app mounted without a name."""
    root = typer.Typer()
    dev = typer.Typer()

    @dev.command("card")
    def card() -> None:  # another dev command, as in cli.py
        """A sibling command."""

    dev.add_typer(mail_cli.app)
    root.add_typer(dev, name="dev")
    return root


@pytest.fixture
async def mailbox(tmp_path: Path) -> Path:
    """Three messages sent through the real SMTP path, to two addresses."""
    directory = tmp_path / "mail"
    with MailSink(directory) as sink:
        settings = SmtpSettings.from_url(
            f"smtp://127.0.0.1:{sink.port}?local_hostname=test.localhost",
            "billing@oms.localhost",
        )
        for n, (to, subject) in enumerate(
            [
                ("ada@example.test", "Upcoming charge of $29.00 on April 1, 2026"),
                ("bob@example.test", "Welcome to Pro"),
                ("ada@example.test", "Receipt: $29.00 paid for Pro (invoice in_1)"),
            ]
        ):
            await send_email(
                settings,
                to=to,
                subject=subject,
                text=f"Hello,\n\n{subject}.\n",
                html=f"<p>{subject}.</p>",
                message_id=message_id_for(f"k{n}", "oms.localhost"),
            )
    return directory


def test_json_lists_to_subject_body_sent_at_newest_last(mailbox: Path) -> None:
    result = CliRunner().invoke(
        oms(), ["dev", "mail", "--json"], env={"OMS_MAIL_DIR": str(mailbox)}
    )

    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [sorted(m) for m in listed] == [["body", "sent_at", "subject", "to"]] * 3
    assert [m["subject"] for m in listed] == [
        "Upcoming charge of $29.00 on April 1, 2026",
        "Welcome to Pro",
        "Receipt: $29.00 paid for Pro (invoice in_1)",
    ]
    assert listed[0]["to"] == "ada@example.test"
    assert listed[0]["body"] == "Hello,\n\nUpcoming charge of $29.00 on April 1, 2026.\n"
    assert listed[0]["sent_at"] <= listed[1]["sent_at"] <= listed[2]["sent_at"]


def test_to_filters_by_address(mailbox: Path) -> None:
    result = CliRunner().invoke(
        oms(),
        ["dev", "mail", "--to", "ada@example.test", "--json"],
        env={"OMS_MAIL_DIR": str(mailbox)},
    )

    assert result.exit_code == 0, result.output
    assert [m["subject"][:7] for m in json.loads(result.output)] == ["Upcomin", "Receipt"]


def test_without_json_a_table_is_printed(mailbox: Path) -> None:
    result = CliRunner().invoke(oms(), ["dev", "mail"], env={"OMS_MAIL_DIR": str(mailbox)})

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["SENT", "(UTC)", "TO", "SUBJECT"]
    assert "bob@example.test" in lines[2] and "Welcome to Pro" in lines[2]
    assert f"3 message(s) in {mailbox}" in result.output


def test_an_empty_or_missing_mailbox_is_an_empty_list(tmp_path: Path) -> None:
    env = {"OMS_MAIL_DIR": str(tmp_path / "none")}
    as_json = CliRunner().invoke(oms(), ["dev", "mail", "--json"], env=env)
    as_table = CliRunner().invoke(oms(), ["dev", "mail"], env=env)

    assert as_json.exit_code == 0 and json.loads(as_json.output) == []
    assert as_table.exit_code == 0 and "no messages in" in as_table.output


def test_mail_dir_reads_the_notifications_config() -> None:
    from workers.config import Config

    config = Config.model_validate({"notifications": {"mail_dir": "/srv/oms/mail"}})
    assert mail_cli.mail_dir(config) == Path("/srv/oms/mail")
    assert mail_cli.mail_dir(Config()) == Path(".oms/mail")
