"""``oms intake``: the dead-letter queue and demo data through the CLI (CliRunner, real DB), and
``oms intake file`` / ``dlq replay`` as real processes against a dev server and a real worker.

The intake app is mounted in a test-local Typer the way the lead mounts it in ``oms``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
import typer
from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from activities.auth_store import AuthStore
from activities.gateway import StripeGateway
from activities.intake_store import CreditAccountSeed, DeadLetterDraft, IntakeStore
from models import search_attributes
from models.identity import Principal, Role
from starter.auth import Authenticator
from starter.intake_cli import app as intake_app
from starter.output import set_token
from tests.intake import SAMPLES, VISA
from tests.support.procs import ROOT
from workers.config import load_config
from workers.main import Dependencies, build_worker
from workers.servers import start_dev_server

oms = typer.Typer()
oms.add_typer(intake_app, name="intake")
runner = CliRunner()
API_KEY = "sk_test_intake_cli"


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, db_url: str, engine: Engine) -> str:
    """The CLI's configuration points at this test's database."""
    monkeypatch.setenv("OMS_DATABASE_URL", db_url)
    monkeypatch.setenv("OMS_CONFIG", str(ROOT / "temporal-dev.yaml"))
    return db_url


def run(*args: str) -> Any:
    # ``oms`` routes logs to stderr (starter.cli.main); here structlog's default would print them
    # on stdout, so they are captured instead.
    configured = structlog.is_configured()
    try:
        with structlog.testing.capture_logs():
            return runner.invoke(oms, ["intake", *args])
    finally:
        if not configured:
            # capture_logs restores the old settings with structlog.configure(), which marks
            # structlog configured: commands that configure logging only when it is not (oms
            # kpis) would then log to stdout in later tests.
            structlog.reset_defaults()


def letters(engine: Engine) -> list[int]:
    store = IntakeStore(engine)
    ids = []
    for key, priority in [("web:low", 10), ("web:high", 36_000), ("mobile:mid", 360)]:
        row, _ = store.add_dead_letter(
            DeadLetterDraft(
                channel=key.split(":")[0],
                payload=json.dumps({"order": key}),
                reason=f"{key} failed",
                error_code="TEMPORAL_UNAVAILABLE",
                rule="dependency.temporal",
                received_at=datetime.now(UTC),
                order_key=key,
                priority=priority,
                attempts=3,
            )
        )
        ids.append(row.id or 0)
    return ids


def test_dlq_list_json_gives_objects_sorted_by_priority(cli_env: str, engine: Engine) -> None:
    low, high, mid = letters(engine)
    result = run("dlq", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["id"] for r in rows] == [high, mid, low]
    assert {k: rows[0][k] for k in ("channel", "reason", "priority", "attempts")} == {
        "channel": "web",
        "reason": "web:high failed",
        "priority": 36_000,
        "attempts": 3,
    }
    table = run("dlq", "list")
    assert table.exit_code == 0 and table.stdout.splitlines()[0].split()[:3] == [
        "ID",
        "PRIORITY",
        "CHANNEL",
    ]
    assert "3 dead letter(s)" in table.stdout


def test_dlq_show_and_discard_then_errors_exit_2_with_the_code(
    cli_env: str, engine: Engine
) -> None:
    low, _, _ = letters(engine)
    shown = run("dlq", "show", str(low), "--json")
    assert shown.exit_code == 0 and json.loads(json.loads(shown.stdout)["payload"]) == {
        "order": "web:low"
    }
    gone = run("dlq", "discard", str(low), "--reason", "test data", "--json")
    assert gone.exit_code == 0 and json.loads(gone.stdout)["status"] == "discarded"

    again = run("dlq", "discard", str(low), "--json")
    assert again.exit_code == 2
    assert json.loads(again.stdout)["error"]["code"] == "INVALID_REQUEST"
    missing = run("dlq", "show", "424242")
    assert missing.exit_code == 2
    assert missing.stderr.startswith("error NOT_FOUND:")


def test_seed_loads_demo_accounts_and_stock_idempotently(cli_env: str, engine: Engine) -> None:
    for _ in range(2):
        result = run("seed", "--no-cards", "--json")
        assert result.exit_code == 0, result.output
    loaded = json.loads(result.stdout)
    assert {a["account_id"] for a in loaded["accounts"]} >= {"acme", "globex", "initech", "hooli"}
    assert loaded["stock"] == {"BEANS-1KG": 500}
    store = IntakeStore(engine)
    acme = store.credit_account("acme")
    assert acme is not None and acme.trusted_partner and acme.billing_email
    assert store.stock("BEANS-1KG") == (500, 0)


def test_seed_takes_a_file_of_accounts_and_stock(
    cli_env: str, engine: Engine, tmp_path: Path
) -> None:
    f = tmp_path / "seed.yaml"
    f.write_text(
        "accounts:\n"
        "  - {email: vip@example.com, paid_invoices: 9, credit_limit_minor: 100}\n"
        "stock: {BEANS-1KG: 7}\n"
    )
    result = run("seed", "--file", str(f), "--no-cards")
    assert result.exit_code == 0, result.output
    assert IntakeStore(engine).stock("BEANS-1KG") == (7, 0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("accounts:\n  - {account_id: x, colour: red}\n")
    refused = run("seed", "--file", str(bad), "--no-cards")
    assert refused.exit_code == 2 and "unknown field(s) colour" in refused.stderr


@pytest.fixture
def as_principal(cli_env: str, engine: Engine) -> Iterator[Callable[[Principal], None]]:
    """Run the next commands with a token for a principal (``--token``/``OMS_TOKEN``)."""

    def use(p: Principal) -> None:
        store = AuthStore(engine)
        set_token(Authenticator(load_config().auth, store).issue(store.put_principal(p)))

    yield use
    set_token(None)


def test_commands_need_the_permissions_the_api_routes_need(
    as_principal: Callable[[Principal], None], engine: Engine
) -> None:
    low, _, _ = letters(engine)
    as_principal(Principal(id="c-1", tenant_id="default", role=Role.CUSTOMER, customer_id="c1"))
    for args in (
        ("dlq", "list"),
        ("dlq", "show", str(low)),
        ("dlq", "discard", str(low)),
        ("orders",),
        ("rejections",),
        ("seed", "--no-cards"),
    ):
        result = run(*args, "--json")
        assert result.exit_code == 2, (args, result.output)
        assert json.loads(result.stdout)["error"]["code"] == "FORBIDDEN", args
    assert IntakeStore(engine).get_dead_letter(low) is not None  # still open, untouched
    assert IntakeStore(engine).credit_account("acme") is None


def test_an_operator_of_another_tenant_sees_and_seeds_only_its_own(
    as_principal: Callable[[Principal], None], engine: Engine
) -> None:
    low, _, _ = letters(engine)  # the default tenant's
    as_principal(Principal(id="t2-operator", tenant_id="t2", role=Role.OPERATOR))
    listed = run("dlq", "list", "--json")
    assert listed.exit_code == 0 and json.loads(listed.stdout) == []
    shown = run("dlq", "show", str(low), "--json")
    assert shown.exit_code == 2 and json.loads(shown.stdout)["error"]["code"] == "NOT_FOUND"
    seeded = run("seed", "--no-cards", "--json")
    assert seeded.exit_code == 0, seeded.output
    store = IntakeStore(engine)
    assert store.credit_account("acme", "t2") is not None
    assert store.credit_account("acme") is None  # not the default tenant's


def test_an_unreachable_database_exits_3_with_its_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMS_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    result = run("dlq", "list", "--json")
    assert result.exit_code == 3
    assert json.loads(result.stdout)["error"]["code"] == "DATABASE_UNAVAILABLE"


# --- against Temporal -----------------------------------------------------------------------


@pytest.fixture(scope="module")
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    """A real ``temporal server start-dev`` with our search attributes (what ``oms`` expects)."""
    env = await start_dev_server(search_attributes=search_attributes.ALL)
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
async def worker_env(
    dev_server: WorkflowEnvironment, engine: Engine, localstripe_url: str, db_url: str
) -> AsyncIterator[dict[str, str]]:
    """A real worker on a fresh task queue; the environment a CLI process needs to reach it."""
    task_queue = f"intake-cli-{uuid.uuid4().hex[:8]}"
    gateway = StripeGateway(API_KEY, api_base=localstripe_url, max_network_retries=0)
    store = IntakeStore(engine)
    store.upsert_credit_account(
        CreditAccountSeed(
            account_id="acme",
            credit_limit_minor=50_000_000,
            trusted_partner=True,
            paid_invoices=48,
            billing_email="ap@acme.example",
            payment_method_id=gateway.create_test_payment_method(VISA),
        )
    )
    with ThreadPoolExecutor(max_workers=8) as executor:
        worker = build_worker(
            dev_server.client, task_queue, Dependencies(engine, gateway), executor
        )
        async with worker:
            yield {
                **os.environ,
                "OMS_CONFIG": str(ROOT / "temporal-dev.yaml"),
                "OMS_TEMPORAL_ADDRESS": dev_server.client.service_client.config.target_host,
                "OMS_TASK_QUEUE": task_queue,
                "OMS_DATABASE_URL": db_url,
                "OMS_STRIPE_API_BASE": localstripe_url,
                "OMS_STRIPE_API_KEY": API_KEY,
                "OMS_INTAKE_ATTEMPT_TIMEOUT_MS": "15000",
            }


async def oms_process(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    boot = (
        "from workers.logs import configure_logging; configure_logging('WARNING', json=False); "
        "from tests.intake.test_cli import oms; oms()"
    )  # what starter.cli.main does before running ``oms``
    argv = [sys.executable, "-c", boot, "intake", *args]

    def go() -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=90)

    return await asyncio.to_thread(go)


async def test_intake_file_submits_a_partner_csv_and_dlq_replay_fixes_a_bad_line(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    done = await oms_process(worker_env, "file", str(SAMPLES / "partner_orders.csv"), "--json")
    assert done.returncode == 2, done.stderr  # two lines could not be used
    out = json.loads(done.stdout)
    assert out["summary"] == {
        "received": 4,
        "accepted": 2,
        "duplicate": 0,
        "rejected": 0,
        "dead_lettered": 2,
    }
    bad = next(r for r in out["results"] if r["index"] == 4)
    dl_id = bad["error"]["dead_letter_id"]

    text = await oms_process(worker_env, "file", str(SAMPLES / "partner_orders.csv"))
    assert text.returncode == 2
    assert "duplicate" in text.stderr and "UNKNOWN_SKU" in text.stderr  # progress per line
    assert "duplicate" in text.stdout and "OMS-GOLD-M" in text.stdout  # summary and problems

    fixed = tmp_path / "fixed.csv"
    shown = await oms_process(worker_env, "dlq", "show", str(dl_id), "--json")
    fixed.write_text(json.loads(shown.stdout)["payload"].replace("OMS-GOLD-M", "OMS-STARTER-M"))
    replayed = await oms_process(
        worker_env, "dlq", "replay", str(dl_id), "--payload-file", str(fixed), "--json"
    )
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    result = json.loads(replayed.stdout)
    assert result["dead_letter"]["status"] == "replayed"
    assert result["result"]["summary"]["accepted"] == 1


@pytest.fixture(autouse=True)
def _no_stray_spool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("OMS_INTAKE_SPOOL", str(tmp_path / "spool.jsonl"))
    yield
