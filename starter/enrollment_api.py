"""Enrollment over HTTP: ``/enrollments``, ``/plans``, ``/auth/sign-in-link`` (docs/enrollment.md).

The same operations as ``oms enroll``. Who may call:

- **anyone**: the documents to accept (``GET /enrollments/terms``), the plan comparison
  (``GET /plans``), starting a sign-up (``POST /enrollments``) and exchanging the welcome
  e-mail's first sign-in link (``POST /auth/sign-in-link``). The edge's per-IP rate limit
  applies to them as to everything;
- **the person enrolling**, with the token ``POST /enrollments`` answered once
  (``Enrollment-Token: enrtok_...``), on that enrollment only;
- **a principal with** ``enrollments:manage`` (``Authorization: Bearer``), on its own tenant's
  enrollments (assisted sign-up). A wrong token and another tenant's enrollment get
  ``404 NOT_FOUND``, exactly as an unknown id.

Who acted, the channel (``web`` for the enrollee, ``api`` for a principal), the client's IP and
user agent are taken from the request, never from a body.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field

from models.catalog import default_catalog
from models.enrollment import EnrollmentView
from models.errors import ErrorCode, OmsError
from models.identity import Principal
from starter.enrollment.service import (
    EnrollmentCaller,
    EnrollmentService,
    StartEnrollment,
    plan_comparison,
    redeem_sign_in_link,
)
from starter.http import EDGE_ERRORS, ErrorResponse, bearer, current_principal

router = APIRouter(tags=["enrollment"])

enrollment_token = APIKeyHeader(
    name="Enrollment-Token",
    scheme_name="EnrollmentToken",
    auto_error=False,
    description="The token `POST /enrollments` answered (`enrtok_...`): the enrollee's "
    "credential for that one enrollment",
)


def _doc(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


# Every status an enrollment route may answer, besides the edge's.
ERRORS: dict[int | str, dict[str, Any]] = {
    **EDGE_ERRORS,
    401: _doc("UNAUTHENTICATED: neither the enrollment's token nor valid credentials"),
    404: _doc("NOT_FOUND: no such enrollment, a wrong token, or another tenant's"),
    409: _doc("NOT_VERIFIED, ENROLLMENT_CLOSED, ALREADY_ENROLLED"),
    410: _doc("ENROLLMENT_EXPIRED: not finished within 24 hours; start again"),
    422: _doc(
        "INVALID_REQUEST, EMAIL_INVALID, PHONE_INVALID, CONSENT_REQUIRED, PLAN_NOT_OFFERED, "
        "CODE_INVALID, CODE_EXPIRED, CARD_NUMBER_REFUSED and other validation codes"
    ),
    429: _doc("TOO_MANY_ATTEMPTS (address locked), RESEND_TOO_SOON, RATE_LIMITED"),
    503: _doc("TEMPORAL_UNAVAILABLE, GATEWAY_UNAVAILABLE: retry in a moment"),
    504: _doc("TIMEOUT: no answer in time; ask the status, then repeat"),
}
PAY_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    402: _doc("PAYMENT_METHOD_DECLINED: the card was refused; try another"),
}
PUBLIC_ERRORS: dict[int | str, dict[str, Any]] = {
    k: v for k, v in EDGE_ERRORS.items() if k not in (401, 403, 404)
}
# Starting is public; a bearer credential, when sent, makes it an assisted sign-up.
OPTIONAL_BEARER: dict[str, Any] = {"security": [{}]}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CodeBody(_Body):
    code: str = Field(..., min_length=1, max_length=16, description="the 6 digits e-mailed")


class ChoiceBody(_Body):
    plan_id: str = Field(..., max_length=64)
    interval: str = Field("monthly", max_length=16)
    currency: str = Field("USD", max_length=3)


class PaymentMethodBody(_Body):
    payment_method_id: str = Field(
        ...,
        max_length=64,
        description="the gateway's payment-method token (pm_...); card numbers are refused",
    )


class SignInLinkBody(_Body):
    token: str = Field(..., min_length=1, max_length=200, description="from the welcome e-mail")


class Started(BaseModel):
    enrollment_id: str
    status: str
    token: str = Field(description="the enrollee's credential for this enrollment; shown once")
    expires_at: str


class Paid(BaseModel):
    enrollment_id: str
    status: str | None = Field(description="the subscription's: active or trialing")
    tenant_id: str | None = Field(description="the new customer's own tenant id")
    customer_id: str | None
    subscription_id: str | None
    first_invoice_date: str | None
    trial_end: str | None = None


class SignedIn(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    principal_id: str
    tenant_id: str


EnrollmentId = Annotated[str, Path(max_length=64, description="enr_...")]


async def _service(request: Request) -> EnrollmentService:
    service: EnrollmentService = await request.app.state.rt.enrollments()
    return service


async def optional_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
) -> Principal | None:
    """The principal when credentials are sent (then they must be valid), else None."""
    if credentials is None and not request.headers.get("authorization"):
        return None
    return await current_principal(request, credentials)


def _caller(
    request: Request, principal: Principal | None, token: str | None = None
) -> EnrollmentCaller:
    token = token.strip() if token and token.strip() else None
    client = request.client
    return EnrollmentCaller(
        channel="web" if token is not None or principal is None else "api",
        principal=principal,
        token=token,
        ip=client.host if client else None,
        user_agent=(request.headers.get("user-agent") or "")[:300] or None,
    )


async def caller(
    request: Request,
    token: Annotated[str | None, Security(enrollment_token)] = None,
    principal: Annotated[Principal | None, Depends(optional_principal)] = None,
) -> EnrollmentCaller:
    """The enrollee (token) or a principal; ``UNAUTHENTICATED`` with neither."""
    if token is not None and len(token) > 200:
        raise OmsError(ErrorCode.NOT_FOUND, "no such enrollment")
    made = _caller(request, principal, token)
    if made.token is None and made.principal is None:
        raise OmsError(
            ErrorCode.UNAUTHENTICATED,
            "send the enrollment's token (Enrollment-Token: enrtok_...) or credentials",
        )
    return made


Caller = Annotated[EnrollmentCaller, Depends(caller)]
Service = Annotated[EnrollmentService, Depends(_service)]


@router.get(
    "/enrollments/terms",
    responses=PUBLIC_ERRORS,
    summary="The terms of service and privacy notice a sign-up must show and accept (public)",
    description="Versions, SHA-256 hashes and texts. `POST /enrollments` must name the "
    "current versions (`CONSENT_REQUIRED` otherwise); the consent record keeps the hashes.",
)
async def get_terms() -> dict[str, Any]:
    return EnrollmentService.terms()


@router.get(
    "/plans",
    responses=PUBLIC_ERRORS,
    summary="The plan comparison: features, trial, prices per interval and currency (public)",
    description="Every plan of the catalog; `self_serve` plans can be chosen at sign-up "
    "(others: talk to sales). Amounts in minor units and formatted in `locale`.",
)
async def get_plans(
    currency: str | None = Query(None, max_length=3, description="only prices in this currency"),
    locale: str = Query("en", max_length=35, description="format amounts for this locale"),
) -> list[dict[str, Any]]:
    return plan_comparison(default_catalog(), currency, locale)


@router.post(
    "/enrollments",
    status_code=201,
    responses=ERRORS,
    summary="Start a sign-up: the code goes to the address (public)",
    description="Anonymous: the one write anyone may make, under the edge's per-IP rate "
    "limit. Answers at once with the enrollment id and its token (shown only here; send it as "
    "`Enrollment-Token` on every later call); the same answer whether or not the address "
    "already has an account. With a bearer credential of a principal holding "
    "`enrollments:manage`: an assisted sign-up in that principal's tenant.",
    openapi_extra=OPTIONAL_BEARER,
)
async def start_enrollment(
    body: StartEnrollment,
    request: Request,
    principal: Annotated[Principal | None, Depends(optional_principal)] = None,
) -> Started:
    service = await _service(request)
    return Started(**(await service.start(body, _caller(request, principal))))


@router.post(
    "/enrollments/{enrollment_id}/verify",
    responses=ERRORS,
    summary="Verify the address with the e-mailed code",
    description="6 digits, valid 10 minutes, only the latest code; 5 wrong tries kill it "
    "(`TOO_MANY_ATTEMPTS`, the address is locked for a growing time). Answers the enrollment "
    "(`awaiting_payment` once verified).",
)
async def verify_enrollment(
    enrollment_id: EnrollmentId, body: CodeBody, who: Caller, service: Service
) -> EnrollmentView:
    return await service.verify(enrollment_id, body.code, who)


@router.post(
    "/enrollments/{enrollment_id}/resend",
    responses=ERRORS,
    summary="Send a new code (the previous one stops working)",
    description="`RESEND_TOO_SOON` within 30 s of the last one or past 5 sends to the address "
    "in an hour.",
)
async def resend_code(enrollment_id: EnrollmentId, who: Caller, service: Service) -> EnrollmentView:
    return await service.resend(enrollment_id, who)


@router.put(
    "/enrollments/{enrollment_id}/plan",
    responses=ERRORS,
    summary="Choose another plan, interval or currency before paying",
)
async def choose_plan(
    enrollment_id: EnrollmentId, body: ChoiceBody, who: Caller, service: Service
) -> EnrollmentView:
    return await service.choose(
        enrollment_id, who, plan_id=body.plan_id, interval=body.interval, currency=body.currency
    )


@router.get(
    "/enrollments/{enrollment_id}/quote",
    responses=ERRORS,
    summary="What the chosen plan costs: first charge, trial end, renewal",
    description="Computed by the subscription's own billing code, in the enrollment's "
    "currency and locale: the amount due today, the first charge (after any trial, with any "
    "leading proration) and the renewal amount and date.",
)
async def get_quote(enrollment_id: EnrollmentId, who: Caller, service: Service) -> dict[str, Any]:
    return await service.quote(enrollment_id, who)


@router.post(
    "/enrollments/{enrollment_id}/payment-method",
    responses=PAY_ERRORS,
    summary="Pay: save the card, create the account, start the subscription",
    description="Takes the gateway's payment-method token (never a card number: "
    "`CARD_NUMBER_REFUSED`). The card is validated before anything is charged. Answers the "
    "outcome: the subscription's status (active or trialing), the new account's tenant and "
    "customer ids, the subscription id and the first invoice date.",
)
async def pay_enrollment(
    enrollment_id: EnrollmentId, body: PaymentMethodBody, who: Caller, service: Service
) -> Paid:
    return Paid(**(await service.pay(enrollment_id, body.payment_method_id, who)))


@router.get(
    "/enrollments/{enrollment_id}",
    responses=ERRORS,
    summary="Where the enrollment stands, with its timeline (also once it has ended)",
)
async def get_enrollment(
    enrollment_id: EnrollmentId, who: Caller, service: Service
) -> EnrollmentView:
    return await service.status(enrollment_id, who)


@router.post(
    "/auth/sign-in-link",
    responses={**PUBLIC_ERRORS, 401: _doc("UNAUTHENTICATED: unknown, used or expired link")},
    summary="Exchange the welcome e-mail's first sign-in link for a bearer token (public)",
    description="The link's token works once and expires; the answer is a token of the new "
    "account's owner principal.",
)
async def sign_in_link(body: SignInLinkBody, request: Request) -> SignedIn:
    runtime = request.app.state.rt
    found = await asyncio.to_thread(
        redeem_sign_in_link,
        runtime.enrollment_store(),
        runtime.enrollment_key(),
        body.token,
        datetime.now(UTC),
    )
    principal = None
    if found is not None:
        principal_id, tenant_id = found
        principal = runtime.auth_store.principal(principal_id)
        if principal is not None and principal.tenant_id != tenant_id:
            principal = None
    if principal is None:
        raise OmsError(
            ErrorCode.UNAUTHENTICATED,
            "this sign-in link is not valid: it was used already or has expired; sign in another "
            "way or ask for a new link",
        )
    token = runtime.authenticator.issue(principal)
    return SignedIn(
        access_token=token,
        expires_in=runtime.config.auth.token_ttl_s,
        principal_id=principal.id,
        tenant_id=principal.tenant_id,
    )
