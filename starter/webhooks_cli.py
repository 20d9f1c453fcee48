"""``oms webhooks ...``: a tenant's webhook endpoints and their deliveries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import typer

from activities.auth_store import AuthStore
from activities.db import create_db_engine
from activities.notify.registry import WebhookRegistry
from models.errors import ErrorCode, OmsError
from models.identity import Permission, Principal, not_found
from starter.output import JsonOpt, cli_principal, emit_json, fail, table
from workers.config import load_config

T = TypeVar("T")

app = typer.Typer(
    help="Webhook endpoints and deliveries of your tenant (docs/notifications.md).",
    no_args_is_help=True,
)


def _run(as_json: bool, action: Callable[[WebhookRegistry, Principal], T]) -> T:
    config = load_config()
    engine = create_db_engine(config.database.url)
    try:
        principal = cli_principal(config, AuthStore(engine))
        principal.require(Permission.WEBHOOKS_MANAGE)
        return action(WebhookRegistry(engine), principal)
    except OmsError as err:
        fail(err, as_json)
    finally:
        engine.dispose()


@app.command("add")
def add(
    url: str,
    events: str = typer.Option("*", help="Notification kinds, comma-separated, or * for all."),
    as_json: bool = JsonOpt,
) -> None:
    """Register an endpoint; prints its signing secret (shown only now)."""
    if not url.startswith(("http://", "https://")) or len(url) > 2000:
        fail(OmsError(ErrorCode.INVALID_REQUEST, f"{url!r} is not an http(s) URL"), as_json)
    types = [e.strip() for e in events.split(",") if e.strip()]
    made = _run(as_json, lambda reg, p: reg.add(p.tenant_id, url, types))
    if as_json:
        emit_json(made)
    else:
        typer.echo(f"{made['endpoint_id']}  {made['url']}\nsigning secret: {made['secret']}")


@app.command("list")
def list_(as_json: bool = JsonOpt) -> None:
    """The tenant's endpoints."""
    rows = _run(as_json, lambda reg, p: reg.endpoints(p.tenant_id))
    if as_json:
        emit_json(rows)
        return
    table(
        [[r["endpoint_id"], r["url"], ",".join(r["event_types"]), r["enabled"]] for r in rows],
        ["endpoint", "url", "events", "enabled"],
    )


@app.command("disable")
def disable(endpoint_id: str, as_json: bool = JsonOpt) -> None:
    """Stop sending to an endpoint."""

    def go(reg: WebhookRegistry, p: Principal) -> dict[str, Any]:
        found = reg.disable(p.tenant_id, endpoint_id)
        if found is None:
            raise not_found("webhook endpoint", endpoint_id)
        return found

    out = _run(as_json, go)
    if as_json:
        emit_json(out)
    else:
        typer.echo(f"{endpoint_id}: disabled")


@app.command("deliveries")
def deliveries(
    endpoint: str = typer.Option(None, help="Only this endpoint's."),
    status: str = typer.Option(None, help="pending, delivered or dead."),
    limit: int = typer.Option(100, help="At most this many, newest first."),
    as_json: bool = JsonOpt,
) -> None:
    """Deliveries with their attempts and last error, newest first."""
    rows = _run(
        as_json,
        lambda reg, p: reg.deliveries(
            p.tenant_id, endpoint_id=endpoint, status=status, limit=limit
        ),
    )
    if as_json:
        emit_json(rows)
        return
    table(
        [
            [
                r["delivery_id"],
                r["event_type"],
                r["status"],
                r["attempts"],
                r["last_status_code"] or "",
                (r["next_attempt_at"] or "")[:19],
                r["endpoint_id"],
            ]
            for r in rows
        ],
        ["delivery", "event", "status", "attempts", "last code", "next attempt", "endpoint"],
    )


@app.command("replay")
def replay(delivery_id: int, as_json: bool = JsonOpt) -> None:
    """Send a delivery again now."""

    def go(reg: WebhookRegistry, p: Principal) -> dict[str, Any]:
        found = reg.replay(p.tenant_id, delivery_id)
        if found is None:
            raise not_found("webhook delivery", str(delivery_id))
        return found

    out = _run(as_json, go)
    if as_json:
        emit_json(out)
    else:
        typer.echo(f"{delivery_id}: {out['status']}, next attempt now")
