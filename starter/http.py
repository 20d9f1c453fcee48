"""The API's edge: who is calling, how much they may send and how often, and the one error shape.

Used by every router (``starter.api``, ``starter.intake_api``, ``starter.kpis_api``):

- :func:`current_principal`, a dependency: ``Authorization: Bearer`` (token or API key) to a
  :class:`~models.identity.Principal`, then the per-principal rate limit;
- :class:`EdgeMiddleware`: bodies over ``auth.max_body_bytes`` get 413 before they are read, and
  the per-IP rate limit applies to every request, authenticated or not;
- :func:`install_error_handlers`: every error, including unparseable JSON, unknown routes,
  wrong methods and unexpected exceptions, is ``{"error": {"code", "message"}}`` with a
  documented status; internal error text is logged with a reference, never sent.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from typing import TYPE_CHECKING, Annotated, Any

import structlog
from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from activities.db import ping
from activities.gateway import StripeGateway
from models.errors import ErrorCode, OmsError, http_status
from models.identity import Principal
from workers.config import AuthConfig

if TYPE_CHECKING:
    from starter.auth import Authenticator

log = structlog.get_logger(__name__)

bearer = HTTPBearer(
    auto_error=False,
    description="A token (`oms dev token` locally) or an API key (`omsk_...`)",
)


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


def _doc(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


# The statuses any authenticated route may answer (OpenAPI), besides its own.
EDGE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _doc("MALFORMED_PAYLOAD and other unreadable input"),
    401: _doc("UNAUTHENTICATED: no, invalid or expired credentials"),
    403: _doc("FORBIDDEN: the principal's role does not grant this"),
    404: _doc("NOT_FOUND: no such object, or one the principal may not see"),
    413: _doc("PAYLOAD_TOO_LARGE: the body is over the documented limit"),
    422: _doc("INVALID_REQUEST and other validation codes"),
    429: _doc("RATE_LIMITED: too many requests; see Retry-After"),
    500: _doc("INTERNAL: an unexpected error (a reference is logged)"),
}


def error_response(
    code: ErrorCode, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code.value, "message": message}},
        status_code=http_status(code),
        headers=headers,
    )


class RateLimits:
    """Per-principal and per-IP limits (the ``limits`` library; memory or Redis storage)."""

    def __init__(self, auth: AuthConfig) -> None:
        uri = auth.rate_limit_storage
        self.storage: Storage = storage_from_string(
            uri if uri.startswith("async+") else f"async+{uri}"
        )
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.per_principal: RateLimitItem = parse(auth.rate_limit_principal)
        self.per_ip: RateLimitItem = parse(auth.rate_limit_ip)

    async def hit(self, item: RateLimitItem, *key: str) -> None:
        """Count one request; ``RATE_LIMITED`` (with the seconds to wait) when over the limit."""
        if await self.limiter.hit(item, *key):
            return
        stats = await self.limiter.get_window_stats(item, *key)
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimited(wait)


class RateLimited(OmsError):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            ErrorCode.RATE_LIMITED,
            f"too many requests; retry in {retry_after_s} s",
        )
        self.retry_after_s = retry_after_s


def client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
) -> Principal:
    """The authenticated principal (FastAPI dependency), after its rate limit.

    ``bearer`` is a security dependency so that OpenAPI documents the scheme on every route
    that needs credentials.
    """
    header = f"Bearer {credentials.credentials}" if credentials else None
    if header is None and request.headers.get("authorization"):
        header = request.headers["authorization"]  # a scheme HTTPBearer did not take
    authenticator: Authenticator = request.app.state.rt.authenticator
    principal = await asyncio.to_thread(authenticator.authenticate, header)
    limits: RateLimits = request.app.state.rt.rate_limits
    await limits.hit(limits.per_principal, "principal", principal.tenant_id, principal.id)
    request.state.principal = principal
    return principal


class EdgeMiddleware:
    """Body-size limit and per-IP rate limit, before any route runs (pure ASGI)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, limits: RateLimits) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("path") != "/health/live":
            try:
                await self.limits.hit(self.limits.per_ip, "ip", client_ip(scope))
            except RateLimited as err:
                await _send(scope, receive, send, err)
                return
        limit = self.max_body_bytes
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send(scope, receive, send, too_large(limit))
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _send(scope, receive, send, too_large(limit))


class BodyTooLarge(StarletteHTTPException):
    """A body found over the limit while it is read (no or a false ``Content-Length``).

    An ``HTTPException``: FastAPI passes those on from its body parsing (it turns any other
    exception there into a 400), so the error handler answers 413.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large(limit).message)


def too_large(limit: int) -> OmsError:
    return OmsError(
        ErrorCode.PAYLOAD_TOO_LARGE,
        f"the request body is larger than {limit} bytes; send less (batches: split them)",
    )


async def _send(scope: Scope, receive: Receive, send: Send, err: OmsError) -> None:
    headers = {"Retry-After": str(err.retry_after_s)} if isinstance(err, RateLimited) else None
    await error_response(err.code, err.message, headers)(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """The one error shape for everything the API answers."""

    @app.exception_handler(OmsError)
    async def _oms_error(_: Request, err: OmsError) -> JSONResponse:
        headers = {"Retry-After": str(err.retry_after_s)} if isinstance(err, RateLimited) else None
        if err.code == ErrorCode.UNAUTHENTICATED:
            headers = {"WWW-Authenticate": "Bearer"}
        return error_response(err.code, err.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"] if p != "body")
            if e.get("type") == "json_invalid":
                return error_response(
                    ErrorCode.MALFORMED_PAYLOAD, "the body is not valid JSON; send a JSON object"
                )
            if tuple(e["loc"]) == ("body",) and e.get("type") == "model_attributes_type":
                # Not an object, or not sent as JSON (another or no Content-Type).
                return error_response(
                    ErrorCode.INVALID_REQUEST,
                    "the body must be a JSON object, sent with Content-Type: application/json",
                )
            problems.append(f"{where}: {e['msg']}" if where else str(e["msg"]))
        return error_response(ErrorCode.INVALID_REQUEST, "; ".join(problems)[:1000])

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        if isinstance(err, BodyTooLarge):
            return error_response(ErrorCode.PAYLOAD_TOO_LARGE, str(err.detail))
        if err.status_code == 400:  # FastAPI could not read the body (not UTF-8, say)
            return error_response(
                ErrorCode.MALFORMED_PAYLOAD, "the body cannot be read; send a JSON object in UTF-8"
            )
        if err.status_code == 404:
            return error_response(ErrorCode.NOT_FOUND, "no such route; see /docs")
        if err.status_code == 405:
            return error_response(
                ErrorCode.METHOD_NOT_ALLOWED, "this route does not take that method; see /docs"
            )
        if err.status_code == 401:
            return error_response(ErrorCode.UNAUTHENTICATED, "send credentials")
        code = ErrorCode.INVALID_REQUEST if err.status_code < 500 else ErrorCode.INTERNAL
        return JSONResponse(
            {"error": {"code": code.value, "message": str(err.detail)[:500]}},
            status_code=err.status_code,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        reference = uuid.uuid4().hex[:12]
        log.error(
            "api.unexpected_error",
            reference=reference,
            path=request.url.path,
            error=type(err).__name__,
            exc_info=err,
        )
        return error_response(
            ErrorCode.INTERNAL,
            f"something went wrong on our side (reference {reference}); retry, and if it "
            "persists tell an operator the reference",
        )


async def probe_dependencies(runtime: Any, timeout_s: float) -> dict[str, dict[str, Any]]:
    """Temporal, the database and the gateway, each ``{"ok": bool, "error"?: str}``, for
    ``/health`` and ``/health/ready`` (``runtime``: the API's ``starter.api.Runtime``).

    The error says which dependency failed in plain words; the exception text is logged only.
    """
    checks: dict[str, dict[str, Any]] = {}

    async def check(name: str, probe: Any) -> None:
        try:
            await asyncio.wait_for(probe(), timeout=timeout_s)
            checks[name] = {"ok": True}
        except Exception as err:
            log.warning(
                "api.dependency_down", dependency=name, error=str(err) or type(err).__name__
            )
            checks[name] = {"ok": False, "error": f"{name} is not reachable or not configured"}

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
            key,
            api_base=runtime.config.gateway.api_base,
            max_network_retries=0,
            timeout_s=timeout_s,
        )
        await asyncio.to_thread(gw.ping)

    await asyncio.gather(
        check("temporal", temporal), check("database", database), check("gateway", gateway)
    )
    return checks
