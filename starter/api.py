"""The HTTP API (FastAPI): the same operations as the CLI. OpenAPI docs at ``/docs``.

Usage: ``python -m starter.api`` (host and port: temporal-dev.yaml, OMS_API_HOST, OMS_API_PORT).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date
from typing import Any

import structlog
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from activities.db import create_db_engine, ping
from activities.gateway import StripeGateway
from activities.store import Store
from models.catalog import default_catalog
from models.errors import ErrorCode, OmsError, http_status
from models.subscription import (
    Actor,
    ApprovalResult,
    CancelResult,
    ChangeResult,
    PauseResult,
    PaymentMethodResult,
    PendingView,
    StartResult,
    Timeline,
)
from starter.context import connect_temporal, make_service
from starter.intake_api import router as intake_router
from starter.kpis_api import router as kpis_router
from starter.service import OmsService, SubscribeRequest
from workers.config import Config, load_config
from workers.logs import configure_logging

log = structlog.get_logger(__name__)

CONNECT_S = 5.0


class CancelBody(BaseModel):
    at_period_end: bool | None = Field(
        None, description="true: at period end; false: now; omitted: as the policy says"
    )
    reason: str | None = Field(None, max_length=500)
    actor: str | None = Field(None, max_length=64)


class ChangeBody(BaseModel):
    plan_id: str | None = Field(None, max_length=64)
    quantity: int | None = Field(None, le=100_000)
    interval: str | None = Field(None, max_length=16)
    when: str | None = Field(
        None, max_length=16, description="now | period_end (default: the policy's)"
    )
    actor: str | None = Field(None, max_length=64)
    request_id: str | None = Field(None, max_length=64)


class PauseBody(BaseModel):
    resume_on: date | None = None
    actor: str | None = Field(None, max_length=64)
    request_id: str | None = Field(None, max_length=64)


class PaymentMethodBody(BaseModel):
    payment_method_id: str = Field(..., max_length=64)
    actor: str | None = Field(None, max_length=64)


class DecisionBody(BaseModel):
    approver: str = Field(..., max_length=64)
    reason: str = Field(..., max_length=500)


class ActorBody(BaseModel):
    actor: str | None = Field(None, max_length=64)
    reason: str | None = Field(None, max_length=500)


class ClockBody(BaseModel):
    at: str | None = Field(
        None, description="start time, ISO date or date-time (UTC); now or later (default: now)"
    )


class AdvanceBody(BaseModel):
    duration: str = Field(..., description="Nh, Nd or Nmo (calendar months), e.g. 1mo")


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (402, 404, 409, 422, 503, 504)
}
CLOCK_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (403, 404, 422, 503, 504)
}


class Runtime:
    """What the API holds for its lifetime; the Temporal client connects lazily."""

    def __init__(self, config: Config, service: OmsService | None = None) -> None:
        self.config = config
        self.engine = create_db_engine(config.database.url)
        self.store = service.store if service else Store(self.engine)
        self._service = service
        self._lock = asyncio.Lock()

    async def service(self) -> OmsService:
        async with self._lock:
            if self._service is None:
                try:
                    # Bounded: while Temporal is down, requests fail fast instead of queueing
                    # behind one another's connection attempts.
                    client = await asyncio.wait_for(connect_temporal(self.config), CONNECT_S)
                except TimeoutError:
                    raise OmsError(
                        ErrorCode.TEMPORAL_UNAVAILABLE,
                        f"Temporal at {self.config.temporal.address} did not answer "
                        f"within {CONNECT_S:g} s",
                    ) from None
                self._service = make_service(self.config, client, self.store)
                self._service.test_clocks = self.config.temporal.test_clocks
            return self._service


def _actor(
    request: Request, who: str | None, reason: str | None = None, request_id: str | None = None
) -> Actor:
    return Actor(
        actor=who or request.headers.get("x-actor", "api"),
        channel="api",
        reason=reason,
        request_id=request_id,
    )


def create_app(config: Config | None = None, service: OmsService | None = None) -> FastAPI:
    """The API application.

    Args:
        config: defaults to temporal-dev.yaml + environment.
        service: an already connected service (tests); by default one is built from ``config``
            when the first request needs Temporal.
    """
    cfg = config or load_config()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.rt = Runtime(cfg, service)
        yield
        app.state.rt.engine.dispose()

    app = FastAPI(
        title="Subscription OMS",
        version="0.1.0",
        description="Subscriptions as long-lived Temporal workflows. Errors are "
        '`{"error": {"code": ..., "message": ...}}` with a stable code.',
        lifespan=lifespan,
    )

    def rt(request: Request) -> Runtime:
        runtime: Runtime = request.app.state.rt
        return runtime

    @app.exception_handler(OmsError)
    async def _oms_error(_: Request, err: OmsError) -> JSONResponse:
        return JSONResponse(
            {"error": {"code": err.code.value, "message": err.message}},
            status_code=http_status(err.code),
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in err.errors()
        )
        return JSONResponse(
            {"error": {"code": ErrorCode.INVALID_REQUEST.value, "message": problems}},
            status_code=422,
        )

    @app.get("/catalog", summary="Plans with their prices per currency and interval")
    async def get_catalog() -> list[dict[str, Any]]:
        return [
            {**p.model_dump(mode="json"), "intervals": [i.value for i in p.intervals]}
            for p in default_catalog().plans
        ]

    @app.post(
        "/subscriptions",
        status_code=201,
        responses=ERRORS,
        summary="Create a subscription (answers once the workflow accepted or refused it)",
    )
    async def create_subscription(
        body: SubscribeRequest,
        request: Request,
        idempotency_key: str | None = Header(default=None),
    ) -> StartResult:
        if idempotency_key and not body.request_id:
            body = body.model_copy(update={"request_id": idempotency_key})
        service = await rt(request).service()
        result = await service.subscribe(body, _actor(request, None))
        log.info(
            "api.subscription_created",
            subscription_id=result.subscription_id,
            status=result.status.value,
        )
        return result

    @app.get("/subscriptions", summary="List subscriptions (filters: status, customer, plan)")
    async def list_subscriptions(
        request: Request,
        status: str | None = None,
        customer_id: str | None = None,
        plan_id: str | None = None,
        limit: int = Query(100, ge=1, le=1000),
    ) -> list[dict[str, Any]]:
        service = await rt(request).service()
        return service.list_subscriptions(
            status=status, customer_id=customer_id, plan_id=plan_id, limit=limit
        )

    @app.get("/subscriptions/{subscription_id}", responses=ERRORS, summary="Live state")
    async def get_subscription(subscription_id: str, request: Request) -> dict[str, Any]:
        service = await rt(request).service()
        view = await service.status(subscription_id)
        return view if isinstance(view, dict) else view.model_dump(mode="json")

    @app.get("/subscriptions/{subscription_id}/timeline", responses=ERRORS)
    async def get_timeline(subscription_id: str, request: Request) -> Timeline:
        service = await rt(request).service()
        return await service.timeline(subscription_id)

    @app.get("/subscriptions/{subscription_id}/invoices", responses=ERRORS)
    async def get_invoices(subscription_id: str, request: Request) -> list[dict[str, Any]]:
        service = await rt(request).service()
        return service.invoices(subscription_id)

    @app.post("/subscriptions/{subscription_id}/cancel", responses=ERRORS)
    async def cancel_subscription(
        subscription_id: str,
        body: CancelBody,
        request: Request,
        idempotency_key: str | None = Header(default=None),
    ) -> CancelResult:
        service = await rt(request).service()
        by = _actor(request, body.actor, body.reason, idempotency_key)
        return await service.cancel(subscription_id, body.at_period_end, by)

    @app.post("/subscriptions/{subscription_id}/uncancel", responses=ERRORS)
    async def uncancel_subscription(
        subscription_id: str,
        request: Request,
        body: ActorBody | None = None,
        idempotency_key: str | None = Header(default=None),
    ) -> CancelResult:
        service = await rt(request).service()
        by = _actor(
            request, body.actor if body else None, body.reason if body else None, idempotency_key
        )
        return await service.uncancel(subscription_id, by)

    @app.post("/subscriptions/{subscription_id}/retry", responses=ERRORS)
    async def retry_subscription(
        subscription_id: str, request: Request, body: ActorBody | None = None
    ) -> Any:
        """Retry a step that needs attention now (operators, after fixing its cause)."""
        service = await rt(request).service()
        by = _actor(request, body.actor if body else None, body.reason if body else None, None)
        return await service.retry(subscription_id, by)

    @app.post("/subscriptions/{subscription_id}/changes", responses=ERRORS)
    async def change_subscription(
        subscription_id: str,
        body: ChangeBody,
        request: Request,
        idempotency_key: str | None = Header(default=None),
    ) -> ChangeResult:
        """Change plan, quantity or interval: applied, scheduled or pending approval."""
        service = await rt(request).service()
        return await service.change(
            subscription_id,
            plan_id=body.plan_id,
            quantity=body.quantity,
            interval=body.interval,
            when=body.when,
            by=_actor(request, body.actor),
            request_id=body.request_id or idempotency_key,
        )

    @app.get("/subscriptions/{subscription_id}/pending", responses=ERRORS)
    async def get_pending(subscription_id: str, request: Request) -> PendingView:
        service = await rt(request).service()
        return await service.pending(subscription_id)

    @app.delete("/subscriptions/{subscription_id}/pending/{request_id}", responses=ERRORS)
    async def withdraw_request(
        subscription_id: str, request_id: str, request: Request
    ) -> PendingView:
        service = await rt(request).service()
        return await service.withdraw(subscription_id, request_id, _actor(request, None))

    @app.post("/subscriptions/{subscription_id}/pause", responses=ERRORS)
    async def pause_subscription(
        subscription_id: str, body: PauseBody, request: Request
    ) -> PauseResult:
        service = await rt(request).service()
        return await service.pause(
            subscription_id, body.resume_on, _actor(request, body.actor), body.request_id
        )

    @app.post("/subscriptions/{subscription_id}/resume", responses=ERRORS)
    async def resume_subscription(
        subscription_id: str, request: Request, body: ActorBody | None = None
    ) -> PauseResult:
        service = await rt(request).service()
        return await service.resume(subscription_id, _actor(request, body.actor if body else None))

    @app.post("/subscriptions/{subscription_id}/payment-method", responses=ERRORS)
    async def update_payment_method(
        subscription_id: str, body: PaymentMethodBody, request: Request
    ) -> PaymentMethodResult:
        """Replace the card; anything unpaid is retried with it at once."""
        service = await rt(request).service()
        return await service.update_payment_method(
            subscription_id, body.payment_method_id, _actor(request, body.actor)
        )

    @app.post(
        "/clocks",
        status_code=201,
        responses=CLOCK_ERRORS,
        summary="Create a test clock (dev and test deployments only; 403 elsewhere)",
    )
    async def create_clock(request: Request, body: ClockBody | None = None) -> dict[str, Any]:
        from starter.clock import parse_at

        service = await rt(request).service()
        service.clocks()  # refused first where clocks are off
        at = parse_at(body.at) if body is not None and body.at is not None else None
        view = (await service.create_clock(at)).to_json()
        return {"clock_id": view["clock_id"], "now": view["now"]}

    @app.get("/clocks/{clock_id}", responses=CLOCK_ERRORS, summary="A test clock and its time")
    async def get_clock(clock_id: str, request: Request) -> dict[str, Any]:
        service = await rt(request).service()
        return (await service.clock(clock_id)).to_json()

    @app.post(
        "/clocks/{clock_id}/advance",
        responses=CLOCK_ERRORS,
        summary="Advance a test clock; answers once its subscriptions have caught up",
    )
    async def advance_clock(clock_id: str, body: AdvanceBody, request: Request) -> dict[str, Any]:
        service = await rt(request).service()
        return (await service.advance_clock(clock_id, body.duration)).to_json()

    @app.get("/approvals", summary="Approval requests (for an approver: the ones they may decide)")
    async def list_approvals(
        request: Request, approver: str | None = None, status: str | None = "pending"
    ) -> list[dict[str, Any]]:
        service = await rt(request).service()
        return service.approvals(approver=approver, status=status)

    @app.get("/approvals/{request_id}", responses=ERRORS)
    async def get_approval(request_id: str, request: Request) -> dict[str, Any]:
        service = await rt(request).service()
        return service.approval(request_id)

    @app.post("/approvals/{request_id}/{verdict}", responses=ERRORS)
    async def decide_approval(
        request_id: str, verdict: str, body: DecisionBody, request: Request
    ) -> ApprovalResult:
        """``verdict`` is ``approve`` or ``reject``."""
        if verdict not in ("approve", "reject"):
            raise OmsError(ErrorCode.INVALID_REQUEST, "use /approve or /reject")
        service = await rt(request).service()
        return await service.decide(
            request_id,
            approve=verdict == "approve",
            approver=body.approver,
            reason=body.reason,
            channel="api",
        )

    @app.get("/health", summary="Reachability of Temporal, the database and the gateway")
    async def health(request: Request) -> JSONResponse:
        runtime = rt(request)
        checks: dict[str, dict[str, Any]] = {}

        async def check(name: str, probe: Any) -> None:
            try:
                await asyncio.wait_for(probe(), timeout=3)
                checks[name] = {"ok": True}
            except Exception as err:
                checks[name] = {"ok": False, "error": str(err) or type(err).__name__}

        async def temporal() -> None:
            service = await runtime.service()
            await service.client.service_client.check_health()

        async def database() -> None:
            await asyncio.to_thread(ping, runtime.engine)

        async def gateway() -> None:
            key = runtime.config.gateway.api_key
            if not key:
                raise RuntimeError("OMS_STRIPE_API_KEY is not set")
            gw = StripeGateway(
                key, api_base=runtime.config.gateway.api_base, max_network_retries=0, timeout_s=3
            )
            await asyncio.to_thread(gw.ping)

        await asyncio.gather(
            check("temporal", temporal), check("database", database), check("gateway", gateway)
        )
        ok = all(c["ok"] for c in checks.values())
        return JSONResponse({"ok": ok, "checks": checks}, status_code=200 if ok else 503)

    app.include_router(intake_router)
    app.include_router(kpis_router)
    return app


def main() -> None:
    import uvicorn

    configure_logging()
    config = load_config()
    uvicorn.run(create_app(config), host=config.api.host, port=config.api.port, log_config=None)


if __name__ == "__main__":
    main()
