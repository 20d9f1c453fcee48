"""``oms admin ...``: tenants, principals, API keys and tokens (docs/access.md).

Every command but ``bootstrap`` acts as the CLI's authenticated principal and needs the admin
role's permissions. ``bootstrap`` creates the first admin of a deployment: it needs no token, only
what running migrations needs (the database URL and the signing key), so it is as trusted as
the person deploying.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import typer

from activities.auth_store import AuthStore
from activities.db import create_db_engine
from models.errors import ErrorCode, OmsError
from models.identity import DEFAULT_TENANT, Permission, Principal, Role, not_found
from starter.auth import Authenticator
from starter.output import JsonOpt, cli_principal, emit_json, fail, table
from workers.config import Config, load_config

T = TypeVar("T")

app = typer.Typer(
    help="Tenants, principals, API keys and tokens (the admin role; docs/access.md).",
    no_args_is_help=True,
)


def _run(
    as_json: bool,
    permission: Permission | None,
    action: Callable[[Authenticator, AuthStore], T],
) -> T:
    """Run ``action`` with the principal store, as an authenticated admin (``permission``)."""
    config: Config = load_config()
    engine = create_db_engine(config.database.url)
    try:
        store = AuthStore(engine)
        authenticator = Authenticator(config.auth, store)
        if permission is not None:
            cli_principal(config, store).require(permission)
        return action(authenticator, store)
    except OmsError as err:
        fail(err, as_json)
    finally:
        engine.dispose()


def _split(values: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (values or "").split(",") if v.strip())


def _role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise OmsError(
            ErrorCode.INVALID_REQUEST, f"unknown role {value!r}; use one of {', '.join(Role)}"
        ) from None


def _show(p: Principal, as_json: bool) -> None:
    data = p.model_dump(mode="json", exclude={"credential"})
    if as_json:
        emit_json(data)
    else:
        table([[k, v] for k, v in data.items()], ["field", "value"])


@app.command("bootstrap")
def bootstrap(
    principal: str = typer.Option("admin", help="The admin principal's id."),
    tenant: str = typer.Option(DEFAULT_TENANT, help="Its tenant."),
) -> None:
    """Create (or re-enable) an admin principal and print a token for it; only the token."""

    def go(auth: Authenticator, store: AuthStore) -> str:
        admin = Principal(id=principal, tenant_id=tenant, role=Role.ADMIN, name=principal)
        return auth.issue(store.put_principal(admin))

    typer.echo(_run(False, None, go))


@app.command("principal")
def put_principal(
    principal_id: str,
    role: str = typer.Option(..., help="customer, operator, approver, partner, service, admin."),
    tenant: str = typer.Option(DEFAULT_TENANT, help="Its tenant (created when new)."),
    customer: str = typer.Option(None, help="A customer's own customer id."),
    groups: str = typer.Option(None, help="An approver's groups, comma-separated."),
    partner: str = typer.Option(None, help="A partner's id."),
    accounts: str = typer.Option(None, help="Accounts it may bill, comma-separated."),
    name: str = typer.Option(None, help="A display name."),
    email: str = typer.Option(None, help="Where notices to it go (approval requests)."),
    as_json: bool = JsonOpt,
) -> None:
    """Create or replace a principal (role, groups and accounts take effect at once)."""

    def go(_: Authenticator, store: AuthStore) -> Principal:
        return store.put_principal(
            Principal(
                id=principal_id,
                tenant_id=tenant,
                role=_role(role),
                name=name,
                email=email,
                customer_id=customer,
                groups=_split(groups),
                partner_id=partner,
                accounts=_split(accounts),
            )
        )

    _show(_run(as_json, Permission.PRINCIPALS_MANAGE, go), as_json)


@app.command("principals")
def list_principals(
    tenant: str = typer.Option(None, help="Only this tenant's."), as_json: bool = JsonOpt
) -> None:
    """List active principals."""

    def go(_: Authenticator, store: AuthStore) -> list[Principal]:
        return store.principals(tenant)

    rows = _run(as_json, Permission.PRINCIPALS_MANAGE, go)
    data = [p.model_dump(mode="json", exclude={"credential"}) for p in rows]
    if as_json:
        emit_json(data)
        return
    table(
        [[p.id, p.tenant_id, p.role.value, ",".join(p.groups), ",".join(p.accounts)] for p in rows],
        ["principal", "tenant", "role", "groups", "accounts"],
    )


@app.command("disable")
def disable(principal_id: str, as_json: bool = JsonOpt) -> None:
    """Disable a principal: its tokens and keys stop working at once."""

    def go(_: Authenticator, store: AuthStore) -> dict[str, Any]:
        if not store.disable_principal(principal_id):
            raise not_found("principal", principal_id)
        return {"id": principal_id, "disabled": True}

    result = _run(as_json, Permission.PRINCIPALS_MANAGE, go)
    if as_json:
        emit_json(result)
    else:
        typer.echo(f"{principal_id}: disabled")


@app.command("key")
def create_key(
    principal_id: str,
    expires: str = typer.Option(None, help="Expiry, ISO date-time with zone (default: none)."),
) -> None:
    """Create an API key for a principal and print it; the only time it is shown."""
    expires_at = None
    if expires:
        try:
            expires_at = datetime.fromisoformat(expires)
        except ValueError:
            fail(OmsError(ErrorCode.INVALID_REQUEST, f"--expires {expires!r} is not ISO"), False)
        if expires_at.tzinfo is None:
            fail(OmsError(ErrorCode.INVALID_REQUEST, "--expires needs a time zone"), False)
    key = _run(
        False, Permission.KEYS_MANAGE, lambda auth, _: auth.create_api_key(principal_id, expires_at)
    )
    typer.echo(key)


@app.command("revoke")
def revoke(key_id: str, as_json: bool = JsonOpt) -> None:
    """Revoke an API key (its id is the part after ``omsk_``, before the next ``_``)."""

    def go(_: Authenticator, store: AuthStore) -> dict[str, Any]:
        if not store.revoke_key(key_id):
            raise not_found("API key", key_id)
        return {"key_id": key_id, "revoked": True}

    result = _run(as_json, Permission.KEYS_MANAGE, go)
    if as_json:
        emit_json(result)
    else:
        typer.echo(f"{key_id}: revoked")


@app.command("token")
def token(principal_id: str) -> None:
    """Print a signed token for a principal (its role and groups stay in the store)."""

    def go(auth: Authenticator, store: AuthStore) -> str:
        target = store.principal(principal_id)
        if target is None:
            raise not_found("principal", principal_id)
        return auth.issue(target)

    typer.echo(_run(False, Permission.KEYS_MANAGE, go))


def whoami(as_json: bool = JsonOpt) -> None:
    """Who the CLI acts as (--token / OMS_TOKEN, or the dev operator on a dev stack)."""
    config = load_config()
    _show(_run(as_json, None, lambda _, store: cli_principal(config, store)), as_json)
