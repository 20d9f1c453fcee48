"""Tenants, principals and API keys over HTTP (``/admin/...``): for principals with the admin role.

The same operations as ``oms admin ...``. An API key's secret is in the answer that creates it and
nowhere else (only its hash is stored).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from models.errors import ErrorCode, OmsError
from models.identity import MAX_ACCOUNTS, MAX_GROUPS, Permission, Principal, Role, not_found
from starter.http import EDGE_ERRORS, current_principal

router = APIRouter(prefix="/admin", tags=["admin"])
Caller = Annotated[Principal, Depends(current_principal)]
Id = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
ID_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"


class PrincipalBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., pattern=ID_PATTERN)
    tenant_id: str = Field(..., pattern=ID_PATTERN)
    role: Role
    name: str | None = Field(None, max_length=200)
    email: str | None = Field(None, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    customer_id: str | None = Field(None, pattern=ID_PATTERN)
    groups: list[str] = Field(default_factory=list, max_length=MAX_GROUPS)
    partner_id: str | None = Field(None, pattern=ID_PATTERN)
    accounts: list[str] = Field(default_factory=list, max_length=MAX_ACCOUNTS)


class KeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_at: AwareDatetime | None = None


def _view(p: Principal) -> dict[str, Any]:
    return p.model_dump(mode="json", exclude={"credential"})


@router.get("/principals", responses=EDGE_ERRORS, summary="Principals (of one tenant)")
async def list_principals(
    request: Request, principal: Caller, tenant_id: str | None = None
) -> list[dict[str, Any]]:
    principal.require(Permission.PRINCIPALS_MANAGE)
    return [_view(p) for p in request.app.state.rt.auth_store.principals(tenant_id)]


@router.put(
    "/principals/{principal_id}",
    responses=EDGE_ERRORS,
    summary="Create or replace a principal (its tenant is created when new)",
)
async def put_principal(
    principal_id: Id, body: PrincipalBody, request: Request, principal: Caller
) -> dict[str, Any]:
    principal.require(Permission.PRINCIPALS_MANAGE)
    if body.id != principal_id:
        raise OmsError(ErrorCode.INVALID_REQUEST, "the body's id must be the path's")
    new = Principal(**body.model_dump(), credential="token")
    return _view(request.app.state.rt.auth_store.put_principal(new))


@router.delete("/principals/{principal_id}", responses=EDGE_ERRORS, summary="Disable a principal")
async def disable_principal(
    principal_id: Id, request: Request, principal: Caller
) -> dict[str, Any]:
    principal.require(Permission.PRINCIPALS_MANAGE)
    if not request.app.state.rt.auth_store.disable_principal(principal_id):
        raise not_found("principal", principal_id)
    return {"id": principal_id, "disabled": True}


@router.post(
    "/principals/{principal_id}/keys",
    status_code=201,
    responses=EDGE_ERRORS,
    summary="A new API key for the principal; its secret is shown only here",
)
async def create_key(
    principal_id: Id, request: Request, principal: Caller, body: KeyBody | None = None
) -> dict[str, Any]:
    principal.require(Permission.KEYS_MANAGE)
    authenticator = request.app.state.rt.authenticator
    key = authenticator.create_api_key(principal_id, body.expires_at if body else None)
    return {"principal_id": principal_id, "key_id": key.split("_")[1], "api_key": key}


@router.delete("/keys/{key_id}", responses=EDGE_ERRORS, summary="Revoke an API key")
async def revoke_key(key_id: Id, request: Request, principal: Caller) -> dict[str, Any]:
    principal.require(Permission.KEYS_MANAGE)
    if not request.app.state.rt.auth_store.revoke_key(key_id):
        raise not_found("API key", key_id)
    return {"key_id": key_id, "revoked": True}


@router.post(
    "/principals/{principal_id}/tokens",
    status_code=201,
    responses=EDGE_ERRORS,
    summary="A signed token for the principal (its role and groups stay in the store)",
)
async def issue_token(principal_id: Id, request: Request, principal: Caller) -> dict[str, Any]:
    principal.require(Permission.KEYS_MANAGE)
    rt = request.app.state.rt
    target = rt.auth_store.principal(principal_id)
    if target is None:
        raise not_found("principal", principal_id)
    return {"principal_id": principal_id, "token": rt.authenticator.issue(target)}


@router.get("/tenants", responses=EDGE_ERRORS, summary="Tenants")
async def list_tenants(request: Request, principal: Caller) -> list[dict[str, Any]]:
    principal.require(Permission.TENANTS_MANAGE)
    return [t.model_dump(mode="json") for t in request.app.state.rt.auth_store.tenants()]
