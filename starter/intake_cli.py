"""``oms intake``: submit order files, work the dead-letter queue, load demo data.

Mounted by the lead with ``app.add_typer(intake_app, name="intake")`` in ``starter/cli.py``.
Conventions follow ``oms``: a table by default, one JSON document with ``--json``; errors print
``error CODE: message`` on stderr (``{"error": {...}}`` on stdout with ``--json``) and exit 2 for
bad input, 3 when Temporal, the database or the gateway is unavailable.

``oms intake file`` exits 0 when every order was accepted (or was a repeat), 2 when any was
rejected or malformed, 3 when any had to be dead-lettered because something was unavailable.

Every command acts as the CLI's authenticated principal (``--token``/``OMS_TOKEN``; on a dev stack
without one, the dev operator: ``starter.output.cli_principal``) and needs the permission the API
route needs: ``orders:submit`` for ``file``, ``intake:read`` for ``orders``, ``rejections``,
``dlq list`` and ``dlq show``, ``intake:manage`` for ``dlq replay``, ``dlq discard`` and ``seed``.
Everything is the principal's tenant's only. ``file`` and ``dlq replay`` run through
``starter.output.run_access`` (they start subscriptions, so they connect to Temporal); the others
need only the database and authenticate the same way without connecting to Temporal.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
import yaml

from activities.auth_store import AuthStore
from activities.db import create_db_engine
from activities.intake_store import IntakeStore
from models.catalog import default_catalog
from models.errors import ErrorCode, OmsError
from models.identity import Permission, Principal
from starter import output as oms_cli  # the helpers `oms` uses (errors, tables, JSON)
from starter.access import Access
from starter.intake import (
    INTERNAL,
    IntakeResponse,
    IntakeService,
    ItemResult,
    Outcome,
    load_intake_settings,
)
from starter.intake import (
    seed as seed_data,
)
from starter.service import OmsService
from workers.config import Config, load_config

T = TypeVar("T")

app = typer.Typer(
    help="Order intake: submit order files, work the dead-letter queue, load demo data.",
    no_args_is_help=True,
)
dlq_app = typer.Typer(help="The dead-letter queue (highest priority first).", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")

JsonOpt = typer.Option(False, "--json", help="Print one JSON document instead of a table.")


# --- running ------------------------------------------------------------------------------


def _intake(
    config: Config, store: IntakeStore, auth_store: AuthStore, service: OmsService | None
) -> IntakeService:
    async def get_service() -> OmsService:
        if service is None:
            raise OmsError(
                ErrorCode.TEMPORAL_UNAVAILABLE, "this command does not connect to Temporal"
            )
        return service

    return IntakeService(
        get_service,
        store,
        default_catalog(),
        load_intake_settings(config),
        principals=auth_store,
    )


IntakeAction = Callable[[IntakeService, Principal], Awaitable[T]]


def run_with_temporal(
    as_json: bool,
    permission: Permission,
    action: IntakeAction[T],
    config: Config | None = None,
) -> T:
    """Run ``action`` as the CLI's principal (``run_access``) with an intake service on a
    connected ``OmsService``; ``FORBIDDEN`` without ``permission``."""
    cfg = config or load_config()

    async def go(access: Access) -> T:
        access.principal.require(permission)
        service = access.service
        intake = _intake(cfg, IntakeStore(service.store.engine), access.auth_store, service)
        return await action(intake, access.principal)

    return oms_cli.run_access(as_json, go, cfg)


def run_db(
    as_json: bool,
    permission: Permission,
    action: IntakeAction[T],
    config: Config | None = None,
) -> T:
    """Run ``action`` as the CLI's principal with an intake service that needs only the database
    (authenticated as ``run_access`` does: ``starter.output.cli_principal``)."""
    cfg = config or load_config()

    async def go() -> T:
        engine = create_db_engine(cfg.database.url)
        try:
            auth_store = AuthStore(engine)
            principal = await asyncio.to_thread(oms_cli.cli_principal, cfg, auth_store)
            principal.require(permission)
            return await action(_intake(cfg, IntakeStore(engine), auth_store, None), principal)
        finally:
            engine.dispose()

    try:
        return asyncio.run(go())
    except OmsError as err:
        oms_cli.fail(err, as_json)
    except Exception as err:  # the database is down or unreachable: say so, no traceback
        oms_cli.fail(OmsError(ErrorCode.DATABASE_UNAVAILABLE, f"database error: {err}"), as_json)


def _refused(response: IntakeResponse, as_json: bool) -> NoReturn:
    """The payload as a whole was refused: print its error (with the dead letter) and exit."""
    err = response.error
    assert err is not None
    if as_json:
        oms_cli.emit_json({"error": err.model_dump(exclude_none=True)})
    else:
        where = f" (dead letter {err.dead_letter_id})" if err.dead_letter_id is not None else ""
        typer.echo(f"error {err.code}: {err.message}{where}", err=True)
    unavailable = err.code in {c.value for c in oms_cli.UNAVAILABLE}
    raise typer.Exit(3 if unavailable else 2)


def _progress(result: ItemResult) -> None:
    detail = (
        result.order.get("subscription_id", "")
        if result.order is not None
        else f"{result.error.code}: {result.error.message}"
        if result.error is not None
        else ""
    )
    where = f"#{result.index}" if result.index is not None else ""
    typer.echo(
        f"  {where:>6}  {result.outcome.value:<13}  {result.channel_order_id or '-'}  {detail}",
        err=True,
    )


def _exit_code(response: IntakeResponse) -> int:
    codes = {i.error.code for i in response.items if i.error is not None}
    if codes & ({c.value for c in oms_cli.UNAVAILABLE} | {INTERNAL}):
        return 3
    if any(i.outcome in (Outcome.REJECTED, Outcome.DEAD_LETTERED) for i in response.items):
        return 2
    return 0


def _print_response(response: IntakeResponse, as_json: bool) -> None:
    if as_json:
        out: dict[str, Any] = {"channel": response.channel, "summary": response.summary()}
        if response.ignored is not None:
            out["ignored"] = response.ignored
        out["results"] = [i.entry() for i in response.items]
        oms_cli.emit_json(out)
        return
    if response.ignored is not None:
        typer.echo(f"ignored: {response.ignored}")
        return
    summary = response.summary()
    oms_cli.table([[k, v] for k, v in summary.items()], ["outcome", "orders"])
    problems = [i for i in response.items if i.error is not None]
    if problems:
        typer.echo("")
        oms_cli.table(
            [
                [
                    i.index,
                    i.channel_order_id or "-",
                    i.outcome.value,
                    i.error.code if i.error else "",
                    (i.error.rule or "") if i.error else "",
                    i.error.dead_letter_id if i.error and i.error.dead_letter_id else "",
                    (i.error.message[:80] if i.error else ""),
                ]
                for i in problems
            ],
            ["#", "order", "outcome", "code", "rule", "dead letter", "message"],
        )


# --- commands -----------------------------------------------------------------------------


@app.command("file")
def file_(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="The payload file."),
    channel: str = typer.Option("partner", help="web, mobile, partner, stripe-checkout, referral"),
    header: list[str] = typer.Option(
        [], "--header", help="A request header 'Name: value' (e.g. Stripe-Signature); repeatable."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Submit a file of orders (a partner CSV, a referral batch, one JSON order)."""
    body = path.read_bytes()
    headers: dict[str, str] = {}
    for h in header:
        name, sep, value = h.partition(":")
        if not sep:
            oms_cli.fail(
                OmsError(ErrorCode.INVALID_REQUEST, f"--header {h!r} is not 'Name: value'"), as_json
            )
        headers[name.strip()] = value.strip()
    if not as_json:
        typer.echo(f"submitting {path} as {channel} orders ...", err=True)
    response = run_with_temporal(
        as_json,
        Permission.ORDERS_SUBMIT,
        lambda intake, principal: intake.handle(
            channel,
            body,
            headers,
            principal=principal,
            on_item=None if as_json else _progress,
        ),
    )
    if response.error is not None:
        _refused(response, as_json)
    _print_response(response, as_json)
    raise typer.Exit(_exit_code(response))


@app.command()
def seed(
    file: Path = typer.Option(
        None,
        "--file",
        exists=True,
        dir_okay=False,
        help="YAML/JSON {accounts: [...], stock: {sku: n}}; default: the demo data.",
    ),
    cards: bool = typer.Option(
        True,
        "--cards/--no-cards",
        help="Tokenize 'card:NUMBER' payment methods at the local gateway.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Load credit accounts (in your tenant) and stock so intake has facts to judge (demo data by
    default; needs intake:manage)."""
    config = load_config()
    data: dict[str, Any] | None = None
    if file is not None:
        loaded = yaml.safe_load(file.read_text())
        if not isinstance(loaded, dict):
            oms_cli.fail(
                OmsError(ErrorCode.INVALID_REQUEST, f"{file} must hold a mapping"), as_json
            )
        data = loaded
    tokenize = _tokenizer(config) if cards else None

    async def go(intake: IntakeService, principal: Principal) -> dict[str, Any]:
        return await seed_data(intake.store, data, tokenize, tenant_id=principal.tenant_id)

    result = run_db(as_json, Permission.INTAKE_MANAGE, go, config)
    if as_json:
        oms_cli.emit_json(result)
        return
    oms_cli.table(
        [[a["account_id"], a["name"], a["payment_method_id"] or "-"] for a in result["accounts"]],
        ["account", "name", "payment method on file"],
    )
    typer.echo("")
    oms_cli.table([[sku, n] for sku, n in result["stock"].items()], ["sku", "on hand"])


def _tokenizer(config: Config) -> Callable[[str], str] | None:
    key = config.gateway.api_key
    if not key:
        typer.echo("note: no gateway key configured; payment methods on file left unset", err=True)
        return None
    from activities.gateway import StripeGateway

    gateway = StripeGateway(key, api_base=config.gateway.api_base, max_network_retries=0)

    def tokenize(number: str) -> str:
        try:
            return gateway.create_test_payment_method(number)
        except OmsError:
            raise
        except Exception as err:
            raise OmsError(
                ErrorCode.GATEWAY_UNAVAILABLE,
                f"cannot tokenize test cards at {gateway.endpoint} ({err}); is the stack running? "
                "(or use --no-cards)",
            ) from err

    return tokenize


@app.command()
def orders(
    status: str = typer.Option(None, help="pending, accepted, rejected, dead_lettered, discarded"),
    rule: str = typer.Option(None, help="Only orders rejected by this rule (e.g. credit.limit)."),
    channel: str = typer.Option(None, help="Only this channel."),
    limit: int = typer.Option(50, help="At most this many, newest first."),
    as_json: bool = JsonOpt,
) -> None:
    """Orders received, e.g. the rejections of one rule, to look for false positives."""
    rows = run_db(
        as_json,
        Permission.INTAKE_READ,
        lambda i, p: i.orders(p, status=status, rule=rule, channel=channel, limit=limit),
    )
    if as_json:
        oms_cli.emit_json(rows)
        return
    oms_cli.table(
        [
            [
                r["order_id"],
                r["channel"],
                r["channel_order_id"][:30],
                r["status"],
                r["rule_set"],
                r["rule"] or "",
                r["subscription_id"] or "",
                (r["message"] or "")[:60],
            ]
            for r in rows
        ],
        ["order", "channel", "channel order", "status", "rules", "rule", "subscription", "why"],
    )


@app.command()
def rejections(as_json: bool = JsonOpt) -> None:
    """How often each rule rejected orders, per rule set and channel (tuning)."""
    rows = run_db(as_json, Permission.INTAKE_READ, lambda i, p: i.rejections(p))
    if as_json:
        oms_cli.emit_json(rows)
        return
    oms_cli.table(
        [[r["rule"], r["error_code"], r["rule_set"], r["channel"], r["count"]] for r in rows],
        ["rule", "code", "rule set", "channel", "rejected"],
    )


# --- dead letters -------------------------------------------------------------------------


@dlq_app.command("list")
def dlq_list(
    status: str = typer.Option("open", help="open, replayed, discarded or all"),
    channel: str = typer.Option(None, help="Only this channel."),
    limit: int = typer.Option(100, help="At most this many."),
    as_json: bool = JsonOpt,
) -> None:
    """Dead letters, highest priority first: fix the most valuable failures first."""
    rows = run_db(
        as_json,
        Permission.INTAKE_READ,
        lambda i, p: i.dead_letters(
            p, status=None if status == "all" else status, channel=channel, limit=limit
        ),
    )
    if as_json:
        oms_cli.emit_json(rows)
        return
    oms_cli.table(
        [
            [
                r["id"],
                r["priority"],
                r["channel"],
                r["attempts"],
                r["error_code"],
                r["rule"] or "",
                r["status"],
                r["received_at"][:19],
                r["reason"][:70],
            ]
            for r in rows
        ],
        ["id", "priority", "channel", "attempts", "code", "rule", "status", "received", "reason"],
    )
    typer.echo(f"{len(rows)} dead letter(s)")


@dlq_app.command("show")
def dlq_show(dead_letter_id: int, as_json: bool = JsonOpt) -> None:
    """One dead letter with its raw payload."""
    row = run_db(as_json, Permission.INTAKE_READ, lambda i, p: i.dead_letter(p, dead_letter_id))
    if as_json:
        oms_cli.emit_json(row)
        return
    payload = row.pop("payload")
    oms_cli.table(
        [[k, json.dumps(v) if isinstance(v, dict) else v] for k, v in row.items()],
        ["field", "value"],
    )
    typer.echo("\npayload:")
    typer.echo(payload)


@dlq_app.command("replay")
def dlq_replay(
    dead_letter_id: int,
    payload_file: Path = typer.Option(
        None,
        "--payload-file",
        exists=True,
        dir_okay=False,
        help="Replay this corrected payload instead of the stored one.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Process a dead letter again; it closes when the order gets through."""
    corrected = payload_file.read_bytes() if payload_file is not None else None
    letter, response = run_with_temporal(
        as_json,
        Permission.INTAKE_MANAGE,
        lambda i, p: i.replay(dead_letter_id, corrected, principal=p),
    )
    if as_json:
        oms_cli.emit_json(
            {"dead_letter": letter, "status": response.status_code, "result": response.body()}
        )
    else:
        typer.echo(
            f"dead letter {dead_letter_id}: {letter['status']} (attempts {letter['attempts']})"
        )
        if response.error is not None:
            typer.echo(f"error {response.error.code}: {response.error.message}", err=True)
        else:
            _print_response(response, as_json=False)
    if letter["status"] == "open":
        raise typer.Exit(3 if letter["error_code"] in {c.value for c in oms_cli.UNAVAILABLE} else 2)


@dlq_app.command("discard")
def dlq_discard(
    dead_letter_id: int,
    reason: str = typer.Option(None, help="Why (kept with the dead letter)."),
    as_json: bool = JsonOpt,
) -> None:
    """Give up on a dead letter; stock and credit its order held are released."""
    letter = run_db(
        as_json, Permission.INTAKE_MANAGE, lambda i, p: i.discard(p, dead_letter_id, reason)
    )
    if as_json:
        oms_cli.emit_json(letter)
        return
    typer.echo(f"dead letter {dead_letter_id}: discarded")
