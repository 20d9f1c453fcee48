"""Order intake over HTTP: ``POST /orders/{channel}``, the dead-letter queue, health, metrics.

Mount it with ``app.include_router(router)`` in ``create_app`` (or ``mount(app)``). It takes its
dependencies from ``request.app.state.rt`` (``starter.api.Runtime``): the lazily connected
``OmsService``, the DB engine and the config. The :class:`~starter.intake.IntakeService` is built
on first use and kept on ``app.state.intake``; ``app.state.intake_settings`` overrides the
settings read from the environment (tests).

Every error answers ``{"error": {"code", "message", "rule"}}`` (plus ``dead_letter_id`` when the
payload was recorded in the dead-letter table) with the status of ``models.errors.http_status``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from activities.gateway import StripeGateway
from activities.intake_store import IntakeStore
from models.catalog import default_catalog
from models.channels import schema
from models.errors import ErrorCode, OmsError, http_status
from models.orders import Channel, parse_channel
from starter.intake import IntakeService, IntakeSettings, load_intake_settings

log = structlog.get_logger(__name__)

router = APIRouter()

HEALTH_TIMEOUT_S = 3.0
_ERROR = {"model": dict[str, Any]}


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
        service = IntakeService(rt.service, IntakeStore(rt.engine), default_catalog(), settings)
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


@router.post(
    "/orders/{channel}",
    tags=["intake"],
    summary="Submit an order in a channel's own format",
    responses={
        201: {"description": "accepted: order_id, subscription_id, first_invoice_date, ..."},
        200: {"description": "a repeat of an accepted order (same body), or a batch summary"},
        400: _ERROR,
        401: _ERROR,
        404: _ERROR,
        422: _ERROR,
        503: _ERROR,
    },
    description="Channels: `web`, `mobile`, `stripe-checkout` (one order each, JSON; "
    "`stripe-checkout` needs a valid `Stripe-Signature`), `partner` (CSV, one order per line) "
    "and `referral` (JSON batch): the batch channels answer 200 with per-item results. "
    "Formats: docs/intake.md and `GET /orders/{channel}/schema`.",
)
async def post_order(channel: str, request: Request) -> JSONResponse:
    body = await request.body()
    response = await intake_service(request).handle(channel, body, dict(request.headers))
    return JSONResponse(response.body(), status_code=response.status_code)


@router.get("/orders/{channel}/schema", tags=["intake"], summary="A JSON channel's JSON Schema")
async def order_schema(channel: str) -> JSONResponse:
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


@router.get("/intake/orders", tags=["intake"], summary="Orders received (filter to tune rules)")
async def list_orders(
    request: Request,
    status: str | None = None,
    rule: str | None = None,
    channel: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> JSONResponse:
    try:
        rows = await intake_service(request).orders(
            status=status, rule=rule, channel=channel, limit=limit
        )
    except OmsError as err:
        return _error(err)
    return JSONResponse(rows)


@router.get("/intake/rejections", tags=["intake"], summary="Rejections per rule (tuning)")
async def rejections(request: Request) -> JSONResponse:
    try:
        return JSONResponse(await intake_service(request).rejections())
    except OmsError as err:
        return _error(err)


# --- dead letters ---------------------------------------------------------------------------


@router.get("/intake/dlq", tags=["intake"], summary="Dead letters, highest priority first")
async def dlq_list(
    request: Request,
    status: str = Query("open", description="open, replayed, discarded or all"),
    channel: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> JSONResponse:
    try:
        rows = await intake_service(request).dead_letters(
            status=None if status == "all" else status, channel=channel, limit=limit
        )
    except OmsError as err:
        return _error(err)
    return JSONResponse(rows)


@router.get("/intake/dlq/{dead_letter_id}", tags=["intake"], summary="One dead letter")
async def dlq_show(dead_letter_id: int, request: Request) -> JSONResponse:
    try:
        return JSONResponse(await intake_service(request).dead_letter(dead_letter_id))
    except OmsError as err:
        return _error(err)


@router.post(
    "/intake/dlq/{dead_letter_id}/replay",
    tags=["intake"],
    summary="Process a dead letter again (an optional body replaces its payload)",
)
async def dlq_replay(dead_letter_id: int, request: Request) -> JSONResponse:
    corrected = await request.body()
    try:
        letter, response = await intake_service(request).replay(dead_letter_id, corrected or None)
    except OmsError as err:
        return _error(err)
    return JSONResponse(
        {"dead_letter": letter, "status": response.status_code, "result": response.body()}
    )


@router.post(
    "/intake/dlq/{dead_letter_id}/discard",
    tags=["intake"],
    summary="Give up on a dead letter (its reservations are released)",
)
async def dlq_discard(
    dead_letter_id: int, request: Request, body: DiscardBody | None = None
) -> JSONResponse:
    try:
        letter = await intake_service(request).discard(
            dead_letter_id, body.reason if body else None
        )
    except OmsError as err:
        return _error(err)
    return JSONResponse(letter)


# --- health and metrics -----------------------------------------------------------------


@router.get("/health/live", tags=["health"], summary="The process is up and serving")
async def live() -> dict[str, bool]:
    return {"ok": True}


@router.get("/health/ready", tags=["health"], summary="Temporal, the database and the gateway")
async def ready(request: Request) -> JSONResponse:
    rt = request.app.state.rt
    intake = intake_service(request)
    checks: dict[str, dict[str, Any]] = {}

    async def check(name: str, probe: Any) -> None:
        try:
            await asyncio.wait_for(probe(), timeout=HEALTH_TIMEOUT_S)
            checks[name] = {"ok": True}
        except Exception as err:
            message = err.message if isinstance(err, OmsError) else str(err)
            checks[name] = {"ok": False, "error": message or type(err).__name__}

    async def temporal() -> None:
        service = await rt.service()
        await service.client.service_client.check_health()

    async def database() -> None:
        await asyncio.to_thread(intake.store.ping)

    async def gateway() -> None:
        key = rt.config.gateway.api_key
        if not key:
            raise OmsError(ErrorCode.GATEWAY_UNAVAILABLE, "OMS_STRIPE_API_KEY is not set")
        gw = StripeGateway(
            key, api_base=rt.config.gateway.api_base, max_network_retries=0, timeout_s=2
        )
        await asyncio.to_thread(gw.ping)

    await asyncio.gather(
        check("temporal", temporal), check("database", database), check("gateway", gateway)
    )
    ok = all(c["ok"] for c in checks.values())
    if not ok:
        log.warning("intake.not_ready", checks=checks)
    return JSONResponse({"ok": ok, "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics", tags=["health"], summary="Intake counters (Prometheus text format)")
async def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(intake_service(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
