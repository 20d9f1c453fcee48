"""Order intake over HTTP: ``POST /orders/{channel}``, the dead-letter queue, health, metrics.

Mount it with ``app.include_router(router)`` in ``create_app`` (or ``mount(app)``). It takes its
dependencies from ``request.app.state.rt`` (``starter.api.Runtime``): the lazily connected
``OmsService``, the DB engine, the principal store and the config. The
:class:`~starter.intake.IntakeService` is built on first use and kept on ``app.state.intake``;
``app.state.intake_settings`` overrides the settings read from the environment (tests).

Who may call what (docs/intake.md, "Authentication"): every route authenticates with
``Authorization: Bearer`` (``starter.http.current_principal``) except ``GET /health/live`` and
``POST /orders/stripe-checkout``, which Stripe signs (``Stripe-Signature``) and which acts as the
``stripe-checkout`` service principal of the default tenant. Permissions: ``orders:submit`` to
send orders, ``catalog:read`` for the schemas, ``intake:read`` for orders, rejections and dead
letters, ``intake:manage`` to replay or discard, ``health:read`` for readiness and metrics.
Everything is the caller's tenant's only.

Every error answers ``{"error": {"code", "message", "rule"}}`` (plus ``dead_letter_id`` when the
payload was recorded in the dead-letter table) with the status of ``models.errors.http_status``.
"""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from activities.intake_store import IntakeStore
from models.catalog import default_catalog
from models.channels import schema
from models.errors import OmsError, http_status
from models.identity import Permission, Principal
from models.orders import Channel, parse_channel
from starter.http import EDGE_ERRORS, ErrorResponse, current_principal, probe_dependencies
from starter.intake import IntakeService, IntakeSettings, load_intake_settings
from starter.intake.submission import stripe_checkout_principal

log = structlog.get_logger(__name__)

router = APIRouter()

HEALTH_TIMEOUT_S = 3.0


def allowed(permission: Permission) -> Any:
    """A dependency: the authenticated principal, ``FORBIDDEN`` without ``permission``.

    Dependencies are resolved before the body is validated, so a caller without the permission
    hears 403, never a 422 about a body it may not send.
    """

    async def dependency(
        principal: Annotated[Principal, Depends(current_principal)],
    ) -> Principal:
        principal.require(permission)
        return principal

    return Depends(dependency)


Submitter = Annotated[Principal, allowed(Permission.ORDERS_SUBMIT)]
CatalogReader = Annotated[Principal, allowed(Permission.CATALOG_READ)]
Reader = Annotated[Principal, allowed(Permission.INTAKE_READ)]
Manager = Annotated[Principal, allowed(Permission.INTAKE_MANAGE)]
HealthReader = Annotated[Principal, allowed(Permission.HEALTH_READ)]
# Dead-letter ids are 32-bit integers (PostgreSQL ``integer``): larger ones are refused (422).
DeadLetterId = Annotated[int, Path(ge=1, le=2**31 - 1, description="a dead letter's id")]


def _doc(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


def _responses(own: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """The edge's statuses (401, 403, 404, 413, 422, 429, 500, ...) plus a route's own."""
    out = dict(EDGE_ERRORS)
    for status, description in (own or {}).items():
        out[status] = _doc(description)
    return out


# What an order may be answered, besides the edge's statuses (docs/intake.md, "The contract").
ORDER_ERRORS = {
    400: "MALFORMED_PAYLOAD: the payload (or an order of it) cannot be read; dead-lettered",
    402: "a payment refusal reported by the subscription's start",
    403: "FORBIDDEN (the role may not send orders through this channel) or "
    "ACCOUNT_NOT_AUTHORIZED (the principal may not bill the order's account)",
    404: "UNKNOWN_CHANNEL",
    409: "IDEMPOTENCY_KEY_REUSED (the order id was sent before with other terms) or "
    "SUBSCRIPTION_EXISTS (the workflow refused the start)",
    422: "a rule fired: the code and the rule say which (docs/intake.md, the rules table)",
    500: "INTERNAL: a bug; the order was dead-lettered",
    503: "TEMPORAL_UNAVAILABLE, DATABASE_UNAVAILABLE or GATEWAY_UNAVAILABLE after retries; "
    "dead-lettered",
    504: "TIMEOUT after retries; dead-lettered",
}
ORDER_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"description": "accepted: order_id, subscription_id, first_invoice_date, ..."},
    200: {
        "description": "a repeat of an accepted order (same terms): the first body; a batch "
        "channel's summary and per-order results; or a Stripe event of another type "
        "(`{ignored}`)"
    },
    **_responses(ORDER_ERRORS),
}
STRIPE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ORDER_RESPONSES,
    401: _doc("SIGNATURE_INVALID: no, a wrong or an expired Stripe-Signature; dead-lettered"),
}
STRIPE_RESPONSES.pop(404)  # no channel to get wrong
QUERY_ERRORS = _responses({503: "DATABASE_UNAVAILABLE"})
MANAGE_ERRORS = _responses(
    {
        422: "INVALID_REQUEST: the dead letter is not open (or a bad id)",
        503: "DATABASE_UNAVAILABLE",
    }
)
ORDER_BODY = {
    "requestBody": {
        "required": True,
        "description": "the channel's own payload, as sent (docs/intake.md, `GET "
        "/orders/{channel}/schema`)",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}
REPLAY_BODY = {
    "requestBody": {
        "required": False,
        "description": "a corrected payload to replay instead of the stored one",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}


class DiscardBody(BaseModel):
    reason: str | None = Field(default=None, max_length=500)


def intake_service(request: Request) -> IntakeService:
    """The app's intake service, built on first use from ``app.state.rt``."""
    state = request.app.state
    service: IntakeService | None = getattr(state, "intake", None)
    if service is None:
        rt = state.rt
        settings: IntakeSettings = getattr(state, "intake_settings", None) or (
            load_intake_settings(rt.config)
        )
        service = IntakeService(
            rt.service,
            IntakeStore(rt.engine),
            default_catalog(),
            settings,
            principals=rt.auth_store,
        )
        state.intake = service
    return service


def mount(app: FastAPI, settings: IntakeSettings | None = None) -> FastAPI:
    """Include :data:`router` unless ``create_app`` already did; ``settings`` override the
    environment's."""
    if settings is not None:
        app.state.intake_settings = settings
    if not any(getattr(r, "path", None) == "/orders/{channel}" for r in app.routes):
        app.include_router(router)
    return app


def _error(err: OmsError, rule: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": err.code.value, "message": err.message, "rule": rule}
    return JSONResponse({"error": body}, status_code=http_status(err.code))


# --- orders -------------------------------------------------------------------------------


async def _submit(request: Request, channel: str, principal: Principal) -> JSONResponse:
    body = await request.body()
    response = await intake_service(request).handle(
        channel, body, dict(request.headers), principal=principal
    )
    return JSONResponse(response.body(), status_code=response.status_code)


# Declared before ``/orders/{channel}`` so that it matches first.
@router.post(
    "/orders/stripe-checkout",
    tags=["intake"],
    summary="Stripe's checkout.session.completed webhook (authenticated by Stripe-Signature)",
    responses=STRIPE_RESPONSES,
    openapi_extra={
        **ORDER_BODY,
        "parameters": [
            {
                "name": "Stripe-Signature",
                "in": "header",
                "required": True,
                "schema": {"type": "string", "maxLength": 4096},
                "description": "t=...,v1=... (Stripe's v1 scheme with the endpoint secret)",
            }
        ],
    },
    description="No bearer credentials: the `Stripe-Signature` header is the credential. The "
    "event acts as the `stripe-checkout` service principal of the default tenant; an unsigned "
    "or wrongly signed event is refused (401 `SIGNATURE_INVALID`) and recorded as a dead letter.",
)
async def post_stripe_checkout(request: Request) -> JSONResponse:
    return await _submit(request, Channel.STRIPE_CHECKOUT.value, stripe_checkout_principal())


@router.post(
    "/orders/{channel}",
    tags=["intake"],
    summary="Submit an order in a channel's own format",
    responses=ORDER_RESPONSES,
    openapi_extra=ORDER_BODY,
    description="Needs `orders:submit`. Channels: `web` and `mobile` (customers, operators, "
    "services; one order each, JSON), `partner` (partner keys and operators; CSV, one order per "
    "line), `referral` (operators and services; JSON batch): the batch channels answer 200 with "
    "per-order results. An order may bill only an account the principal is authorized for "
    "(403 `ACCOUNT_NOT_AUTHORIZED`). Formats: docs/intake.md and `GET /orders/{channel}/schema`.",
)
async def post_order(
    principal: Submitter,
    request: Request,
    channel: Annotated[str, Path(max_length=40)],
) -> JSONResponse:
    return await _submit(request, channel, principal)


@router.get(
    "/orders/{channel}/schema",
    tags=["intake"],
    summary="A JSON channel's JSON Schema",
    responses=_responses({404: "UNKNOWN_CHANNEL"}),
)
async def order_schema(
    principal: CatalogReader, channel: Annotated[str, Path(max_length=40)]
) -> JSONResponse:
    try:
        ch = parse_channel(channel)
    except OmsError as err:
        return _error(err, "channel.known")
    found = schema(ch)
    if found is None:
        return JSONResponse(
            {"format": "text/csv", "documentation": "docs/intake.md#partner"}
            if ch == Channel.PARTNER
            else {}
        )
    return JSONResponse(found)


@router.get(
    "/intake/orders",
    tags=["intake"],
    summary="Orders received (filter to tune rules)",
    responses=QUERY_ERRORS,
)
async def list_orders(
    principal: Reader,
    request: Request,
    status: str | None = Query(None, max_length=16),
    rule: str | None = Query(None, max_length=64),
    channel: str | None = Query(None, max_length=32),
    limit: int = Query(100, ge=1, le=1000),
) -> JSONResponse:
    try:
        rows = await intake_service(request).orders(
            principal, status=status, rule=rule, channel=channel, limit=limit
        )
    except OmsError as err:
        return _error(err)
    return JSONResponse(rows)


@router.get(
    "/intake/rejections",
    tags=["intake"],
    summary="Rejections per rule (tuning)",
    responses=QUERY_ERRORS,
)
async def rejections(principal: Reader, request: Request) -> JSONResponse:
    try:
        return JSONResponse(await intake_service(request).rejections(principal))
    except OmsError as err:
        return _error(err)


# --- dead letters ---------------------------------------------------------------------------


@router.get(
    "/intake/dlq",
    tags=["intake"],
    summary="Dead letters, highest priority first",
    responses=QUERY_ERRORS,
)
async def dlq_list(
    principal: Reader,
    request: Request,
    status: str = Query("open", max_length=16, description="open, replayed, discarded or all"),
    channel: str | None = Query(None, max_length=32),
    limit: int = Query(100, ge=1, le=1000),
) -> JSONResponse:
    try:
        rows = await intake_service(request).dead_letters(
            principal, status=None if status == "all" else status, channel=channel, limit=limit
        )
    except OmsError as err:
        return _error(err)
    return JSONResponse(rows)


@router.get(
    "/intake/dlq/{dead_letter_id}",
    tags=["intake"],
    summary="One dead letter",
    responses=QUERY_ERRORS,
)
async def dlq_show(
    principal: Reader, dead_letter_id: DeadLetterId, request: Request
) -> JSONResponse:
    try:
        return JSONResponse(await intake_service(request).dead_letter(principal, dead_letter_id))
    except OmsError as err:
        return _error(err)


@router.post(
    "/intake/dlq/{dead_letter_id}/replay",
    tags=["intake"],
    summary="Process a dead letter again (an optional body replaces its payload)",
    responses=MANAGE_ERRORS,
    openapi_extra=REPLAY_BODY,
    description="Needs `intake:manage`. The payload acts for the principal that sent it (its "
    "accounts, its order ids); 403 when that principal is no longer active.",
)
async def dlq_replay(
    principal: Manager, dead_letter_id: DeadLetterId, request: Request
) -> JSONResponse:
    corrected = await request.body()
    try:
        letter, response = await intake_service(request).replay(
            dead_letter_id, corrected or None, principal=principal
        )
    except OmsError as err:
        return _error(err)
    return JSONResponse(
        {"dead_letter": letter, "status": response.status_code, "result": response.body()}
    )


@router.post(
    "/intake/dlq/{dead_letter_id}/discard",
    tags=["intake"],
    summary="Give up on a dead letter (its reservations are released)",
    responses=MANAGE_ERRORS,
)
async def dlq_discard(
    principal: Manager,
    dead_letter_id: DeadLetterId,
    request: Request,
    body: DiscardBody | None = None,
) -> JSONResponse:
    try:
        letter = await intake_service(request).discard(
            principal, dead_letter_id, body.reason if body else None
        )
    except OmsError as err:
        return _error(err)
    return JSONResponse(letter)


# --- health and metrics -----------------------------------------------------------------


@router.get("/health/live", tags=["health"], summary="The process is up and serving (no auth)")
async def live() -> dict[str, bool]:
    return {"ok": True}


@router.get(
    "/health/ready",
    tags=["health"],
    summary="Temporal, the database and the gateway",
    responses=_responses({503: "a dependency is down: `{ok: false, checks}` names it"}),
)
async def ready(principal: HealthReader, request: Request) -> JSONResponse:
    checks = await probe_dependencies(request.app.state.rt, HEALTH_TIMEOUT_S)
    ok = all(c["ok"] for c in checks.values())
    if not ok:
        log.warning("intake.not_ready", checks=checks)
    return JSONResponse({"ok": ok, "checks": checks}, status_code=200 if ok else 503)


@router.get(
    "/metrics",
    tags=["health"],
    summary="Intake counters (Prometheus text format)",
    responses={
        200: {"description": "Prometheus text", "content": {"text/plain": {}}},
        **_responses(),
    },
)
async def metrics(principal: HealthReader, request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(intake_service(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
