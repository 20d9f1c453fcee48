"""Webhook endpoints and deliveries over HTTP (``/webhooks/...``), for the caller's tenant.

The same operations as ``oms webhooks``. The signing secret is in the answer that creates an
endpoint and nowhere else. Deliveries are signed (docs/notifications.md#webhooks).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from activities.notify.registry import MAX_EVENT_TYPES, WebhookRegistry
from models.errors import ErrorCode, OmsError
from models.identity import Permission, Principal, not_found
from starter.http import EDGE_ERRORS, current_principal

router = APIRouter(prefix="/webhooks", tags=["webhooks"])
Caller = Annotated[Principal, Depends(current_principal)]


class EndpointBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: HttpUrl = Field(..., description="where events are POSTed (https in production)")
    event_types: list[Annotated[str, Field(max_length=32)]] = Field(
        default_factory=lambda: ["*"],
        max_length=MAX_EVENT_TYPES,
        description="notification kinds (docs/notifications.md), or * for all",
    )


def _registry(request: Request, principal: Principal) -> WebhookRegistry:
    principal.require(Permission.WEBHOOKS_MANAGE)
    return WebhookRegistry(request.app.state.rt.engine)


@router.post("/endpoints", status_code=201, responses=EDGE_ERRORS, summary="Register an endpoint")
async def add_endpoint(body: EndpointBody, request: Request, principal: Caller) -> dict[str, Any]:
    url = str(body.url)
    if len(url) > 2000:
        raise OmsError(ErrorCode.INVALID_REQUEST, "the URL is longer than 2000 characters")
    return _registry(request, principal).add(principal.tenant_id, url, body.event_types)


@router.get("/endpoints", responses=EDGE_ERRORS, summary="The tenant's endpoints")
async def list_endpoints(request: Request, principal: Caller) -> list[dict[str, Any]]:
    return _registry(request, principal).endpoints(principal.tenant_id)


@router.delete("/endpoints/{endpoint_id}", responses=EDGE_ERRORS, summary="Disable an endpoint")
async def disable_endpoint(
    endpoint_id: Annotated[str, Path(max_length=32)], request: Request, principal: Caller
) -> dict[str, Any]:
    found = _registry(request, principal).disable(principal.tenant_id, endpoint_id)
    if found is None:
        raise not_found("webhook endpoint", endpoint_id)
    return found


@router.get("/deliveries", responses=EDGE_ERRORS, summary="Deliveries, newest first")
async def list_deliveries(
    request: Request,
    principal: Caller,
    endpoint_id: str | None = Query(None, max_length=32),
    status: str | None = Query(None, max_length=16, description="pending, delivered or dead"),
    limit: int = Query(100, ge=1, le=1000),
) -> list[dict[str, Any]]:
    return _registry(request, principal).deliveries(
        principal.tenant_id, endpoint_id=endpoint_id, status=status, limit=limit
    )


@router.post(
    "/deliveries/{delivery_id}/replay", responses=EDGE_ERRORS, summary="Send a delivery again now"
)
async def replay_delivery(
    delivery_id: Annotated[int, Path(ge=1, le=2**31 - 1)], request: Request, principal: Caller
) -> dict[str, Any]:
    found = _registry(request, principal).replay(principal.tenant_id, delivery_id)
    if found is None:
        raise not_found("webhook delivery", str(delivery_id))
    return found
