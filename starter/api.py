"""The HTTP API (FastAPI): the same operations as the CLI. OpenAPI docs at ``/docs``.

Usage: ``python -m starter.api`` (host and port: temporal-dev.yaml, OMS_API_HOST, OMS_API_PORT).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date
from typing import Annotated, Any, Literal

import structlog
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from activities.auth_store import AuthStore
from activities.db import create_db_engine
from activities.store import Store
from models.catalog import default_catalog
from models.errors import ErrorCode, OmsError
from models.identity import Permission, Principal
from models.subscription import (
    ApprovalResult,
    CancelResult,
    ChangeResult,
    PauseResult,
    PaymentMethodResult,
    PendingView,
    StartResult,
    Timeline,
)
from starter.access import Access
from starter.admin_api import router as admin_router
from starter.auth import Authenticator, check_config, dev_credentials_allowed
from starter.context import connect_temporal, make_service
from starter.enrollment import EnrollmentService
from starter.enrollment_api import router as enrollment_router
from starter.http import (
    EDGE_ERRORS,
    EdgeMiddleware,
    ErrorResponse,
    RateLimits,
    current_principal,
    install_error_handlers,
    probe_dependencies,
)
from starter.intake_api import router as intake_router
from starter.kpis_api import router as kpis_router
from starter.service import OmsService, SubscribeRequest
from starter.webhooks_api import router as webhooks_router
from workers.config import Config, enrollment_secret, load_config
from workers.logs import configure_logging

log = structlog.get_logger(__name__)

CONNECT_S = 5.0


class _Body(BaseModel):
    """Request bodies refuse unknown fields: identity is never taken from a body."""

    model_config = ConfigDict(extra="forbid")


class CancelBody(_Body):
    at_period_end: bool | None = Field(
        None, description="true: at period end; false: now; omitted: as the policy says"
    )
    reason: str | None = Field(None, max_length=500)


class ChangeBody(_Body):
    plan_id: str | None = Field(None, max_length=64)
    quantity: int | None = Field(None, ge=1, le=100_000)
    interval: str | None = Field(None, max_length=16)
    when: str | None = Field(
        None, max_length=16, description="now | period_end (default: the policy's)"
    )
    request_id: str | None = Field(None, max_length=64, description="idempotency key")


class PauseBody(_Body):
    resume_on: date | None = None
    request_id: str | None = Field(None, max_length=64, description="idempotency key")


class PaymentMethodBody(_Body):
    payment_method_id: str = Field(..., max_length=64)


class DecisionBody(_Body):
    reason: str = Field(..., min_length=1, max_length=500)


class ReasonBody(_Body):
    reason: str | None = Field(None, max_length=500)


class ClockBody(_Body):
    at: str | None = Field(
        None,
        max_length=40,
        description="start time, ISO date or date-time (UTC); now or later (default: now)",
    )


class AdvanceBody(_Body):
    duration: str = Field(
        ..., max_length=16, description="Nh, Nd or Nmo (calendar months), e.g. 1mo"
    )


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    out = dict(EDGE_ERRORS)
    for code in codes:
        out.setdefault(code, {"model": ErrorResponse})
    return out


ERRORS = _responses(402, 409, 503, 504)
READ_ERRORS = _responses(503)  # lists: TEMPORAL_UNAVAILABLE while the service cannot connect
CLOCK_ERRORS = _responses(503, 504)
IDEMPOTENCY_KEY = Header(
    default=None,
    max_length=255,
    description="a retry with the same key and body returns the first result; another body: 409",
)


class Runtime:
    """What the API holds for its lifetime; the Temporal client connects lazily."""

    def __init__(self, config: Config, service: OmsService | None = None) -> None:
        self.config = config
        self.engine = create_db_engine(config.database.url)
        self.store = service.store if service else Store(self.engine)
        self.auth_store = AuthStore(self.store.engine)
        self.authenticator = Authenticator.from_config(config, self.auth_store)
        self.rate_limits = RateLimits(config.auth)
        self._service = service
        self._enrollments: EnrollmentService | None = None
        self._enrollment_store: Any = None
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

    async def access(self, principal: Principal, channel: str = "api") -> Access:
        return Access(await self.service(), self.auth_store, principal, channel)

    def enrollment_key(self) -> bytes:
        """The key of enrollment's keyed hashes (``enrollment.secret``); CONFIG_INVALID without
        a usable one (``main`` refuses to start then; this covers apps built by tests)."""
        try:
            return enrollment_secret(self.config)
        except SystemExit as err:
            raise OmsError(ErrorCode.CONFIG_INVALID, str(err.code).removeprefix("error ")) from None

    def enrollment_store(self) -> Any:
        if self._enrollment_store is None:
            from activities.enrollment import EnrollmentStore

            self._enrollment_store = EnrollmentStore(self.engine)
        return self._enrollment_store

    async def enrollments(self) -> EnrollmentService:
        """Sign-ups (docs/enrollment.md), on the same Temporal client and task queue; public
        sign-ups enroll with the tenant ``enrollment.tenant_id``."""
        service = await self.service()
        if self._enrollments is None:
            self._enrollments = EnrollmentService(
                service.client,
                self.enrollment_store(),
                service.catalog,
                self.enrollment_key(),
                task_queue=service.task_queue,
                tenant_id=self.config.enrollment.tenant_id,
                search_attributes=service.search_attributes,
                default_timezone=service.default_timezone,
            )
        return self._enrollments


Caller = Annotated[Principal, Depends(current_principal)]
SubscriptionId = Annotated[str, Path(max_length=64, description="sub_...")]


def create_app(config: Config | None = None, service: OmsService | None = None) -> FastAPI:
    """The API application.

    Args:
        config: defaults to temporal-dev.yaml + environment. Refused (``CONFIG_INVALID``) without
            a usable signing key: production never starts with the dev key or none.
        service: an already connected service (tests); by default one is built from ``config``
            when the first request needs Temporal.
    """
    cfg = config or load_config()
    check_config(cfg.auth)
    rate_limits = RateLimits(cfg.auth)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.rt = Runtime(cfg, service)
        app.state.rt.rate_limits = rate_limits
        yield
        app.state.rt.engine.dispose()

    app = FastAPI(
        title="Subscription OMS",
        version="0.2.0",
        description="Subscriptions as long-lived Temporal workflows. Every route but "
        "`/health/live` and the public sign-up routes (`GET /enrollments/terms`, `GET /plans`, "
        "`POST /enrollments`, `POST /auth/sign-in-link`) needs `Authorization: Bearer <token or "
        "API key>` (docs/access.md); the other enrollment routes also take the enrollment's "
        "`Enrollment-Token` (docs/enrollment.md). "
        'Errors are `{"error": {"code": ..., "message": ...}}` with a stable code.',
        lifespan=lifespan,
    )
    app.add_middleware(EdgeMiddleware, max_body_bytes=cfg.auth.max_body_bytes, limits=rate_limits)
    install_error_handlers(app)

    async def acc(request: Request, principal: Principal) -> Access:
        runtime: Runtime = request.app.state.rt
        return await runtime.access(principal)

    @app.get(
        "/catalog",
        responses=EDGE_ERRORS,
        summary="Plans with their prices per currency and interval",
    )
    async def get_catalog(principal: Caller) -> list[dict[str, Any]]:
        principal.require(Permission.CATALOG_READ)
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
        principal: Caller,
        idempotency_key: str | None = IDEMPOTENCY_KEY,
    ) -> StartResult:
        result = await (await acc(request, principal)).subscribe(body, idempotency_key)
        log.info(
            "api.subscription_created",
            subscription_id=result.subscription_id,
            status=result.status.value,
            principal=principal.id,
        )
        return result

    @app.get(
        "/subscriptions",
        responses=READ_ERRORS,
        summary="List the subscriptions the caller may see (filters: status, customer, plan)",
    )
    async def list_subscriptions(
        request: Request,
        principal: Caller,
        status: str | None = Query(None, max_length=32),
        customer_id: str | None = Query(None, max_length=64),
        plan_id: str | None = Query(None, max_length=64),
        limit: int = Query(100, ge=1, le=1000),
    ) -> list[dict[str, Any]]:
        return (await acc(request, principal)).list_subscriptions(
            status=status, customer_id=customer_id, plan_id=plan_id, limit=limit
        )

    @app.get("/subscriptions/{subscription_id}", responses=ERRORS, summary="Live state")
    async def get_subscription(
        subscription_id: SubscriptionId, request: Request, principal: Caller
    ) -> dict[str, Any]:
        view = await (await acc(request, principal)).status(subscription_id)
        return view if isinstance(view, dict) else view.model_dump(mode="json")

    @app.get("/subscriptions/{subscription_id}/timeline", responses=ERRORS)
    async def get_timeline(
        subscription_id: SubscriptionId, request: Request, principal: Caller
    ) -> Timeline:
        return await (await acc(request, principal)).timeline(subscription_id)

    @app.get("/subscriptions/{subscription_id}/invoices", responses=ERRORS)
    async def get_invoices(
        subscription_id: SubscriptionId, request: Request, principal: Caller
    ) -> list[dict[str, Any]]:
        return (await acc(request, principal)).invoices(subscription_id)

    @app.get(
        "/subscriptions/{subscription_id}/audit",
        responses=ERRORS,
        summary="The audit trail: who did what, through which channel, when (oldest first)",
    )
    async def get_audit(
        subscription_id: SubscriptionId,
        request: Request,
        principal: Caller,
        limit: int = Query(1000, ge=1, le=10_000),
    ) -> list[dict[str, Any]]:
        return (await acc(request, principal)).audit(subscription_id, limit=limit)

    @app.post("/subscriptions/{subscription_id}/cancel", responses=ERRORS)
    async def cancel_subscription(
        subscription_id: SubscriptionId,
        body: CancelBody,
        request: Request,
        principal: Caller,
        idempotency_key: str | None = IDEMPOTENCY_KEY,
    ) -> CancelResult:
        access = await acc(request, principal)
        return await access.cancel(
            subscription_id, body.at_period_end, body.reason, idempotency_key
        )

    @app.post("/subscriptions/{subscription_id}/uncancel", responses=ERRORS)
    async def uncancel_subscription(
        subscription_id: SubscriptionId,
        request: Request,
        principal: Caller,
        body: ReasonBody | None = None,
        idempotency_key: str | None = IDEMPOTENCY_KEY,
    ) -> CancelResult:
        access = await acc(request, principal)
        return await access.uncancel(
            subscription_id, body.reason if body else None, idempotency_key
        )

    @app.post("/subscriptions/{subscription_id}/retry", responses=ERRORS)
    async def retry_subscription(
        subscription_id: SubscriptionId,
        request: Request,
        principal: Caller,
        body: ReasonBody | None = None,
    ) -> Any:
        """Retry a step that needs attention now (operators, after fixing its cause)."""
        access = await acc(request, principal)
        return await access.retry(subscription_id, body.reason if body else None)

    @app.post("/subscriptions/{subscription_id}/changes", responses=ERRORS)
    async def change_subscription(
        subscription_id: SubscriptionId,
        body: ChangeBody,
        request: Request,
        principal: Caller,
        idempotency_key: str | None = IDEMPOTENCY_KEY,
    ) -> ChangeResult:
        """Change plan, quantity or interval: applied, scheduled or pending approval."""
        return await (await acc(request, principal)).change(
            subscription_id,
            plan_id=body.plan_id,
            quantity=body.quantity,
            interval=body.interval,
            when=body.when,
            request_id=body.request_id or idempotency_key,
        )

    @app.get("/subscriptions/{subscription_id}/pending", responses=ERRORS)
    async def get_pending(
        subscription_id: SubscriptionId, request: Request, principal: Caller
    ) -> PendingView:
        return await (await acc(request, principal)).pending(subscription_id)

    @app.delete("/subscriptions/{subscription_id}/pending/{request_id}", responses=ERRORS)
    async def withdraw_request(
        subscription_id: SubscriptionId,
        request_id: Annotated[str, Path(max_length=200)],
        request: Request,
        principal: Caller,
    ) -> PendingView:
        return await (await acc(request, principal)).withdraw(subscription_id, request_id)

    @app.post("/subscriptions/{subscription_id}/pause", responses=ERRORS)
    async def pause_subscription(
        subscription_id: SubscriptionId, body: PauseBody, request: Request, principal: Caller
    ) -> PauseResult:
        access = await acc(request, principal)
        return await access.pause(subscription_id, body.resume_on, body.request_id)

    @app.post("/subscriptions/{subscription_id}/resume", responses=ERRORS)
    async def resume_subscription(
        subscription_id: SubscriptionId,
        request: Request,
        principal: Caller,
        body: ReasonBody | None = None,
        idempotency_key: str | None = IDEMPOTENCY_KEY,
    ) -> PauseResult:
        access = await acc(request, principal)
        return await access.resume(subscription_id, body.reason if body else None, idempotency_key)

    @app.post("/subscriptions/{subscription_id}/payment-method", responses=ERRORS)
    async def update_payment_method(
        subscription_id: SubscriptionId,
        body: PaymentMethodBody,
        request: Request,
        principal: Caller,
    ) -> PaymentMethodResult:
        """Replace the card; anything unpaid is retried with it at once."""
        access = await acc(request, principal)
        return await access.update_payment_method(subscription_id, body.payment_method_id)

    @app.post(
        "/clocks",
        status_code=201,
        responses=CLOCK_ERRORS,
        summary="Create a test clock (dev and test deployments only; 403 elsewhere)",
    )
    async def create_clock(
        request: Request, principal: Caller, body: ClockBody | None = None
    ) -> dict[str, Any]:
        from starter.clock import parse_at

        principal.require(Permission.CLOCKS_MANAGE)
        service = await request.app.state.rt.service()
        service.clocks()  # refused first where clocks are off
        at = parse_at(body.at) if body is not None and body.at is not None else None
        view = (await service.create_clock(at)).to_json()
        return {"clock_id": view["clock_id"], "now": view["now"]}

    @app.get("/clocks/{clock_id}", responses=CLOCK_ERRORS, summary="A test clock and its time")
    async def get_clock(
        clock_id: Annotated[str, Path(max_length=64)], request: Request, principal: Caller
    ) -> dict[str, Any]:
        principal.require(Permission.CLOCKS_MANAGE)
        service = await request.app.state.rt.service()
        return (await service.clock(clock_id)).to_json()

    @app.post(
        "/clocks/{clock_id}/advance",
        responses=CLOCK_ERRORS,
        summary="Advance a test clock; answers once its subscriptions have caught up",
    )
    async def advance_clock(
        clock_id: Annotated[str, Path(max_length=64)],
        body: AdvanceBody,
        request: Request,
        principal: Caller,
    ) -> dict[str, Any]:
        principal.require(Permission.CLOCKS_MANAGE)
        service = await request.app.state.rt.service()
        return (await service.advance_clock(clock_id, body.duration)).to_json()

    @app.get(
        "/approvals",
        responses=READ_ERRORS,
        summary="Approval requests (for an approver: those of its groups)",
    )
    async def list_approvals(
        request: Request,
        principal: Caller,
        status: str | None = Query("pending", max_length=16),
    ) -> list[dict[str, Any]]:
        return (await acc(request, principal)).approvals(status=status)

    @app.get("/approvals/{request_id}", responses=ERRORS)
    async def get_approval(
        request_id: Annotated[str, Path(max_length=200)], request: Request, principal: Caller
    ) -> dict[str, Any]:
        return (await acc(request, principal)).approval(request_id)

    @app.post("/approvals/{request_id}/{verdict}", responses=ERRORS)
    async def decide_approval(
        request_id: Annotated[str, Path(max_length=200)],
        verdict: Literal["approve", "reject"],
        body: DecisionBody,
        request: Request,
        principal: Caller,
    ) -> ApprovalResult:
        """Approve or reject as the authenticated approver (self-approval is refused)."""
        access = await acc(request, principal)
        return await access.decide(request_id, approve=verdict == "approve", reason=body.reason)

    @app.get(
        "/health",
        responses={
            **EDGE_ERRORS,
            503: {"description": "a dependency is down: `{ok: false, checks}` names it"},
        },
        summary="Reachability of Temporal, the database and the gateway",
    )
    async def health(request: Request, principal: Caller) -> JSONResponse:
        principal.require(Permission.HEALTH_READ)
        runtime: Runtime = request.app.state.rt
        checks = await probe_dependencies(runtime, timeout_s=3.0)
        ok = all(c["ok"] for c in checks.values())
        return JSONResponse({"ok": ok, "checks": checks}, status_code=200 if ok else 503)

    if dev_credentials_allowed(cfg.auth):
        mount_dev_mailbox(app, cfg)
    app.include_router(intake_router)
    app.include_router(kpis_router)
    app.include_router(admin_router)
    app.include_router(webhooks_router)
    app.include_router(enrollment_router)
    return app


def mount_dev_mailbox(app: FastAPI, cfg: Config) -> None:
    """``GET /dev/mail``: the dev SMTP sink's messages as a page (dev stacks only).

    A browser cannot send a bearer header, so this page also takes ``?token=`` (an operator's
    dev token); it exists only where dev credentials are allowed.
    """
    from html import escape

    from starter.mail_cli import mail_dir
    from starter.mailsink import read_mail

    @app.get("/dev/mail", include_in_schema=False)
    async def dev_mailbox(
        request: Request,
        to: str | None = Query(None, max_length=320),
        token: str | None = Query(None, max_length=4096),
    ) -> HTMLResponse:
        header = request.headers.get("authorization") or (f"Bearer {token}" if token else None)
        runtime: Runtime = request.app.state.rt
        principal = await asyncio.to_thread(runtime.authenticator.authenticate, header)
        principal.require(Permission.HEALTH_READ)
        mails = list(reversed(read_mail(mail_dir(cfg), to)))  # newest first
        items = "".join(
            "<article><h2>{subject}</h2><p><small>to {to} at {sent_at}</small></p>"
            "<pre>{body}</pre></article>".format(
                **{k: escape(str(m.get(k) or "")) for k in ("subject", "to", "sent_at", "body")}
            )
            for m in mails
        )
        page = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            "<title>Dev mailbox</title><style>body{font-family:sans-serif;max-width:50rem;"
            "margin:2rem auto}pre{white-space:pre-wrap;background:#f4f4f4;padding:1rem}"
            "</style></head><body><h1>Dev mailbox</h1>"
            f"<p>{len(mails)} message(s){' to ' + escape(to) if to else ''}, newest first.</p>"
            f"{items or '<p>No mail yet.</p>'}</body></html>"
        )
        return HTMLResponse(page)


def main() -> None:
    import uvicorn

    configure_logging()
    config = load_config()
    enrollment_secret(config)  # refuse to start without the key the worker shares
    try:
        app = create_app(config)
    except OmsError as err:  # production without its own signing key: refuse to start
        raise SystemExit(f"error {err.code.value}: {err.message}") from None
    uvicorn.run(app, host=config.api.host, port=config.api.port, log_config=None)


if __name__ == "__main__":
    main()
