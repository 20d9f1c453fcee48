"""Output and error conventions shared by every ``oms`` command (tables, ``--json``, exit codes).

Errors exit non-zero with ``error CODE: message`` on stderr; with ``--json`` the error is
``{"error": {...}}`` on stdout. Exit code 2 is a bad request or a conflict, 3 an unavailable
dependency.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import date, datetime
from enum import Enum
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel

from activities.auth_store import AuthStore
from models.errors import ErrorCode, OmsError
from models.identity import Principal, Role
from models.subscription import Actor
from starter.access import Access
from starter.auth import Authenticator, dev_credentials_allowed, dev_principal
from starter.context import open_service
from starter.service import OmsService
from workers.config import Config, load_config

T = TypeVar("T")

JsonOpt = typer.Option(False, "--json", help="Print one JSON document instead of a table.")
UNAVAILABLE = {
    ErrorCode.TEMPORAL_UNAVAILABLE,
    ErrorCode.GATEWAY_UNAVAILABLE,
    ErrorCode.DATABASE_UNAVAILABLE,
    ErrorCode.TIMEOUT,
}


def plain(value: Any) -> Any:
    """JSON-ready plain data from models, dates and enums."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value


def emit_json(value: Any) -> None:
    typer.echo(json.dumps(plain(value), indent=2, sort_keys=False))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    typer.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def fail(err: OmsError, as_json: bool) -> NoReturn:
    if as_json:
        emit_json({"error": {"code": err.code.value, "message": err.message}})
    else:
        typer.echo(f"error {err.code.value}: {err.message}", err=True)
    raise typer.Exit(3 if err.code in UNAVAILABLE else 2)


def run_service(
    as_json: bool, action: Callable[[OmsService], Awaitable[T]], config: Config | None = None
) -> T:
    """Run one async operation with a connected service, turning errors into exit codes."""

    async def go() -> T:
        async with open_service(config or load_config()) as service:
            return await action(service)

    try:
        return asyncio.run(go())
    except OmsError as err:
        fail(err, as_json)


def actor(as_: str | None, reason: str | None = None, request_id: str | None = None) -> Actor:
    return Actor(actor=as_ or "cli", channel="cli", reason=reason, request_id=request_id)


# --token / OMS_TOKEN, set by the `oms` callback before a command runs.
_credentials: dict[str, str | None] = {"token": None}


def set_token(token: str | None) -> None:
    _credentials["token"] = token


def cli_principal(config: Config, auth_store: AuthStore) -> Principal:
    """Who the CLI acts for: ``--token``/``OMS_TOKEN``; on a dev stack without one, the dev
    operator (``auth.dev_principal``), so the README flow needs no token.

    Raises:
        OmsError: ``UNAUTHENTICATED`` without a usable credential; ``CONFIG_INVALID`` when the
            signing configuration cannot be used.
    """
    authenticator = Authenticator(config.auth, auth_store)
    token = _credentials["token"]
    if token:
        return authenticator.authenticate(f"Bearer {token}").model_copy(
            update={"credential": "token"}
        )
    if dev_credentials_allowed(config.auth):
        dev = dev_principal(Role.OPERATOR, principal_id=config.auth.dev_principal)
        return auth_store.put_principal(dev).model_copy(update={"credential": "local"})
    raise OmsError(
        ErrorCode.UNAUTHENTICATED,
        "set OMS_TOKEN or pass --token (a token from your administrator, or an API key)",
    )


def run_access(
    as_json: bool, action: Callable[[Access], Awaitable[T]], config: Config | None = None
) -> T:
    """Run one operation as the CLI's authenticated principal (starter.access decides)."""
    cfg = config or load_config()

    async def go() -> T:
        async with open_service(cfg) as service:
            store = AuthStore(service.store.engine)
            principal = cli_principal(cfg, store)
            return await action(Access(service, store, principal, "cli"))

    try:
        return asyncio.run(go())
    except OmsError as err:
        fail(err, as_json)
