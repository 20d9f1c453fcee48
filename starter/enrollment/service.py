"""Enrollment's operations, shared by the API (``/enrollments``) and the CLI (``oms enroll``).

Validate, write the enrollment's row, then talk to its ``EnrollmentWorkflow`` (docs/enrollment.md).
Nothing personal crosses into Temporal: the e-mail, name and phone go to the ``enrollments``
row only; a guessed code reaches the workflow as its keyed hash (:func:`code_digest`).

Who may act on an enrollment (:class:`EnrollmentCaller`): the person enrolling holds the
enrollment's token (``enrtok_...``, returned once by :meth:`EnrollmentService.start`; only its
keyed hash is stored); a principal with ``enrollments:manage`` may act on its own tenant's
enrollments without it (assisted sign-up, the CLI). A wrong token and another tenant's
enrollment answer ``NOT_FOUND`` exactly as an unknown id does.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any

import phonenumbers
import structlog
from babel import Locale, UnknownLocaleError
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field
from temporalio.client import (
    Client,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.enrollment import EnrollmentStore, sign_in_token_hash
from activities.notify.render import format_amount
from activities.store import Store
from models import search_attributes as sa
from models.billing import billed_span, period_lines
from models.calendar import Interval, validate_timezone
from models.catalog import Catalog, Plan
from models.enrollment import (
    CODE_DIGITS,
    EXPIRES_AFTER,
    ChooseRequest,
    Consents,
    EnrollmentInput,
    EnrollmentStatus,
    EnrollmentView,
    Origin,
    PayRequest,
    PlanChoice,
    ResendRequest,
    VerifyRequest,
    address_key,
    code_digest,
    enrollment_workflow_id,
    new_enrollment_id,
)
from models.errors import ErrorCode, OmsError
from models.identity import Permission, Principal, not_found
from models.ids import is_valid_id
from models.intake_rules import SEGMENT_INTERVALS
from models.money import BillingInputError, normalize_currency
from models.subscription import Actor, SubscriptionState
from starter.enrollment.legal import current_privacy, current_terms
from starter.service import CARD_LIKE_RE, OmsService, SubscribeRequest
from workflows.enrollment import EnrollmentWorkflow

log = structlog.get_logger(__name__)

TOKEN_PREFIX = "enrtok_"
MAX_TOKEN_LENGTH = 128
UPDATE_TIMEOUT = timedelta(seconds=30)
PAY_TIMEOUT = timedelta(seconds=90)  # a SetupIntent, the account and the first charge
MAX_USER_AGENT = 300
CHANNELS = frozenset({"web", "cli", "api"})
_CODE_RE = re.compile(rf"^[0-9]{{{CODE_DIGITS}}}$")
_COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
# Amounts of the quote are computed on a state built by the subscription's own code; the
# address in it is a placeholder (the enrollee's stays in the enrollment's row).
_QUOTE_EMAIL = "quote@example.com"
_QUOTE_PAYMENT_METHOD = "pm_enrollment_quote"


class StartEnrollment(BaseModel):
    """A sign-up (API body, CLI options). Identity and channel come from the request, never
    from here."""

    model_config = ConfigDict(extra="forbid")

    email: str = Field(..., max_length=254, description="the address to verify")
    name: str | None = Field(None, max_length=200)
    phone: str | None = Field(
        None, max_length=32, description="optional; international (+...) or national to country"
    )
    country: str | None = Field(None, max_length=2, description="ISO 3166-1 alpha-2, e.g. DE")
    locale: str = Field("en", max_length=16, description="BCP 47 / CLDR, e.g. en, de-CH")
    timezone: str | None = Field(
        None, max_length=64, description="IANA zone the bills are dated in (default: UTC)"
    )
    plan_id: str = Field(..., max_length=64)
    interval: str = Field("monthly", max_length=16)
    currency: str = Field("USD", max_length=3)
    terms_version: str = Field(
        ..., max_length=32, description="the terms version shown (GET /enrollments/terms)"
    )
    privacy_version: str = Field(..., max_length=32, description="the privacy notice version shown")
    marketing: bool = Field(False, description="a separate opt-in to marketing e-mail")
    referral_code: str | None = Field(None, max_length=64)


@dataclass(frozen=True)
class EnrollmentCaller:
    """Who calls and from where, built from the request (credentials, socket, headers).

    ``token``: the enrollment token (the person enrolling); ``principal``: an authenticated
    principal (needs ``enrollments:manage`` to act without the token). With both, the token
    decides: the call is the enrollee's.
    """

    channel: str
    principal: Principal | None = None
    token: str | None = None
    ip: str | None = None
    user_agent: str | None = None

    @property
    def enrollee(self) -> bool:
        return self.token is not None or self.principal is None

    def origin(self) -> Origin:
        actor = "enrollee" if self.enrollee or self.principal is None else self.principal.id
        return Origin(
            actor=actor[:200],
            channel=self.channel if self.channel in CHANNELS else "api",
            ip=(self.ip or None) and str(self.ip)[:64],
            user_agent=(self.user_agent or None) and str(self.user_agent)[:MAX_USER_AGENT],
        )


def token_hash(key: bytes, token: str) -> str:
    """The keyed hash (HMAC-SHA256) of an enrollment token: all the row keeps of it."""
    msg = f"token\x1f{token.strip()}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(24)


# --- validation (pure) --------------------------------------------------------------------


def normalize_email(email: str) -> str:
    """The address as email-validator normalizes it (syntax only, no DNS); ``EMAIL_INVALID``."""
    try:
        info = validate_email(email.strip(), check_deliverability=False)
    except EmailNotValidError as err:
        raise OmsError(ErrorCode.EMAIL_INVALID, f"not a usable e-mail address: {err}") from None
    return str(info.normalized)


@cache
def _territories() -> frozenset[str]:
    names = Locale.parse("en").territories
    return frozenset(t for t in names if isinstance(t, str) and _COUNTRY_RE.match(t))


def normalize_country(country: str | None) -> str | None:
    """An ISO 3166-1 alpha-2 code, upper case; ``INVALID_REQUEST`` for anything else."""
    if country is None or not country.strip():
        return None
    code = country.strip().upper()
    if not _COUNTRY_RE.match(code) or code not in _territories():
        raise OmsError(
            ErrorCode.INVALID_REQUEST,
            f"country {country!r} is not an ISO 3166-1 alpha-2 code (e.g. US, DE, JP)",
        )
    return code


def normalize_phone(phone: str | None, country: str | None) -> str | None:
    """The number in E.164 (``+4930123456``); ``PHONE_INVALID`` when it is not a valid one.

    A national number needs ``country`` to be read; an international one (``+...``) does not.
    """
    if phone is None or not phone.strip():
        return None
    try:
        number = phonenumbers.parse(phone.strip(), country)
    except phonenumbers.NumberParseException:
        hint = "" if country else " (without a country, write it with +country code)"
        raise OmsError(ErrorCode.PHONE_INVALID, f"the phone number cannot be read{hint}") from None
    if not phonenumbers.is_valid_number(number):
        raise OmsError(ErrorCode.PHONE_INVALID, "the phone number is not a valid number")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def normalize_locale(locale: str | None) -> str:
    """A locale Babel knows, as a BCP 47 tag (``de-CH``); ``INVALID_REQUEST`` otherwise."""
    text = (locale or "en").strip() or "en"
    try:
        loc = Locale.parse(text.replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        raise OmsError(
            ErrorCode.INVALID_REQUEST, f"locale {locale!r} is not known (e.g. en, de, fr-CA)"
        ) from None
    return str(loc).replace("_", "-")


def normalize_timezone(tz: str | None) -> str:
    zone = (tz or "UTC").strip() or "UTC"
    try:
        validate_timezone(zone)
    except ValueError as err:
        raise OmsError(ErrorCode.INVALID_TIMEZONE, str(err)) from None
    return zone


def offered(plan: Plan) -> list[tuple[str, Interval]]:
    """The (currency, interval) pairs a sign-up may choose for ``plan``: the catalog's prices,
    within what the plan's segment may buy (order intake applies the same rule)."""
    allowed = SEGMENT_INTERVALS.get(plan.segment, frozenset(Interval))
    return [(p.currency, p.interval) for p in plan.prices if p.interval in allowed]


def check_choice(catalog: Catalog, plan_id: str, interval: str, currency: str) -> PlanChoice:
    """The choice if the catalog offers it to sign-ups, else ``PLAN_NOT_OFFERED`` naming what
    is offered."""
    plans = {p.plan_id: p for p in catalog.plans if offered(p)}
    plan = plans.get(plan_id.strip())
    if plan is None:
        raise OmsError(
            ErrorCode.PLAN_NOT_OFFERED,
            f"plan {plan_id!r} is not offered; choose one of {', '.join(plans)} "
            "(compare them: oms enroll plans)",
        )
    try:
        code = normalize_currency(currency)
    except BillingInputError:
        code = currency.strip().upper()
    pairs = offered(plan)
    for cur, ivl in pairs:
        if cur == code and ivl.value == interval.strip().lower():
            return PlanChoice(plan_id=plan.plan_id, interval=ivl, currency=cur)
    listing = ", ".join(f"{ivl.value} in {cur}" for cur, ivl in pairs)
    raise OmsError(
        ErrorCode.PLAN_NOT_OFFERED,
        f"plan {plan.plan_id} is not offered {interval} in {code}; it is offered {listing}",
    )


def check_consents(terms_version: str, privacy_version: str, marketing: bool) -> Consents:
    """The consent record if the versions accepted are the current ones; ``CONSENT_REQUIRED``
    naming the documents to show otherwise."""
    terms, privacy = current_terms(), current_privacy()
    stale = [
        f"{name} {doc.version}"
        for name, doc, given in (
            ("terms of service", terms, terms_version),
            ("privacy notice", privacy, privacy_version),
        )
        if given.strip() != doc.version
    ]
    if stale:
        raise OmsError(
            ErrorCode.CONSENT_REQUIRED,
            f"accept the current {' and '.join(stale)} first (show them: GET /enrollments/terms "
            "or oms enroll terms)",
        )
    return Consents(
        terms_version=terms.version,
        terms_hash=terms.sha256,
        privacy_version=privacy.version,
        privacy_hash=privacy.sha256,
        marketing=bool(marketing),
    )


def check_code(code: str) -> str:
    text = (code or "").strip()
    if not _CODE_RE.match(text):
        raise OmsError(
            ErrorCode.CODE_INVALID, f"a code is {CODE_DIGITS} digits, as in the e-mail we sent"
        )
    return text


def check_payment_method(payment_method_id: str) -> str:
    """A gateway token (``pm_...``); card numbers are refused before anything else sees them."""
    pm = (payment_method_id or "").strip()
    if not pm:
        raise OmsError(
            ErrorCode.PAYMENT_METHOD_REQUIRED,
            "a payment method token (pm_...) is required; get one with `oms dev card` locally",
        )
    if CARD_LIKE_RE.match(pm):
        raise OmsError(
            ErrorCode.CARD_NUMBER_REFUSED,
            "card numbers are never accepted; send the gateway's payment method token (pm_...)",
        )
    if not pm.startswith("pm_") or not is_valid_id(pm):
        raise OmsError(
            ErrorCode.PAYMENT_METHOD_INVALID, "that is not a payment method token (pm_...)"
        )
    return pm


def check_enrollment_id(enrollment_id: str) -> str:
    text = (enrollment_id or "").strip()
    if not text.startswith("enr_") or not is_valid_id(text):
        raise not_found("enrollment", text[:64])
    return text


def validate_start(
    catalog: Catalog, req: StartEnrollment, default_timezone: str = "UTC"
) -> dict[str, Any]:
    """A sign-up's row fields, normalized, or the first problem's ``OmsError`` (no I/O):
    ``EMAIL_INVALID``, ``INVALID_REQUEST`` (country, locale, referral code),
    ``PHONE_INVALID``, ``INVALID_TIMEZONE``, ``PLAN_NOT_OFFERED``, ``CONSENT_REQUIRED``."""
    email = normalize_email(req.email)
    country = normalize_country(req.country)
    phone = normalize_phone(req.phone, country)
    locale = normalize_locale(req.locale)
    timezone = normalize_timezone(req.timezone or default_timezone)
    choice = check_choice(catalog, req.plan_id, req.interval, req.currency)
    consents = check_consents(req.terms_version, req.privacy_version, req.marketing)
    name = (req.name or "").strip() or None
    referral = (req.referral_code or "").strip() or None
    if referral is not None and not is_valid_id(referral):
        raise OmsError(
            ErrorCode.INVALID_REQUEST, "a referral code is 3-64 letters, digits, '-' or '_'"
        )
    return {
        "email": email,
        "name": name,
        "phone": phone,
        "country": country,
        "locale": locale,
        "timezone": timezone,
        "choice": choice,
        "consents": consents,
        "referral_code": referral,
    }


# --- the service --------------------------------------------------------------------------


class EnrollmentService:
    """Sign-ups, from the first visit to the first invoice (docs/enrollment.md)."""

    def __init__(
        self,
        client: Client,
        store: EnrollmentStore,
        catalog: Catalog,
        key: bytes,
        *,
        task_queue: str,
        tenant_id: str,
        search_attributes: bool = True,
        default_timezone: str = "UTC",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.client = client
        self.store = store
        self.catalog = catalog
        self.key = key
        self.task_queue = task_queue
        self.tenant_id = tenant_id
        self.search_attributes = search_attributes
        self.default_timezone = default_timezone
        self.clock = clock
        # The subscription's own validation and schedule (build_state) price the quote.
        self._pricing = OmsService(
            client,
            Store(store.engine),
            catalog,
            task_queue=task_queue,
            default_timezone=default_timezone,
            search_attributes=False,
        )

    # --- public reads ----------------------------------------------------------------------

    @staticmethod
    def terms() -> dict[str, Any]:
        """The documents a sign-up must show and accept: versions, hashes, texts."""
        terms, privacy = current_terms(), current_privacy()
        return {
            "terms_version": terms.version,
            "privacy_version": privacy.version,
            "terms_hash": terms.sha256,
            "privacy_hash": privacy.sha256,
            "terms_title": terms.title,
            "privacy_title": privacy.title,
            "terms_text": terms.text,
            "privacy_text": privacy.text,
        }

    def plans(self, currency: str | None = None, locale: str = "en") -> list[dict[str, Any]]:
        """The plan comparison (:func:`plan_comparison`) of this service's catalog."""
        return plan_comparison(self.catalog, currency, locale)

    # --- start -----------------------------------------------------------------------------

    def prepare(self, req: StartEnrollment) -> dict[str, Any]:
        """Validate a sign-up (no I/O): :func:`validate_start` with this service's catalog."""
        return validate_start(self.catalog, req, self.default_timezone)

    async def start(self, req: StartEnrollment, caller: EnrollmentCaller) -> dict[str, Any]:
        """Start a sign-up: validate, write the row, start its workflow (which sends the code).

        The answer is the same whether or not the address already has an account (that is
        found out after verification). The token in it is shown only here.
        """
        tenant_id = self.tenant_id
        if caller.principal is not None and caller.token is None:
            caller.principal.require(Permission.ENROLLMENTS_MANAGE)
            tenant_id = caller.principal.tenant_id  # assisted sign-up: the staff's tenant
        fields = self.prepare(req)
        origin = caller.origin()
        now = self.clock()
        enrollment_id = new_enrollment_id()
        token = new_token()
        choice: PlanChoice = fields["choice"]
        consents: Consents = fields["consents"]
        await asyncio.to_thread(
            self.store.create,
            id=enrollment_id,
            tenant_id=tenant_id,
            status=EnrollmentStatus.AWAITING_VERIFICATION.value,
            email=fields["email"],
            name=fields["name"],
            phone=fields["phone"],
            country=fields["country"],
            locale=fields["locale"],
            timezone=fields["timezone"],
            address_key=address_key(self.key, tenant_id, fields["email"]),
            token_hash=token_hash(self.key, token),
            channel=origin.channel,
            plan_id=choice.plan_id,
            interval=choice.interval.value,
            currency=choice.currency,
            referral_code=fields["referral_code"],
            terms_version=consents.terms_version,
            terms_hash=consents.terms_hash,
            privacy_version=consents.privacy_version,
            privacy_hash=consents.privacy_hash,
            marketing=consents.marketing,
            started_at=now,
            ip=origin.ip,  # for the consent records
            user_agent=origin.user_agent,
        )
        inp = EnrollmentInput(
            enrollment_id=enrollment_id,
            tenant_id=tenant_id,
            choice=choice,
            consents=consents,
            locale=fields["locale"],
            started_at=now,
            origin=origin,
            referral_code=fields["referral_code"],
            search_attributes=self.search_attributes,
        )
        attributes = [
            SearchAttributePair(sa.ENROLLMENT_STATUS, EnrollmentStatus.AWAITING_VERIFICATION.value),
            SearchAttributePair(sa.TENANT_ID, tenant_id),
        ]
        try:
            async with _temporal_errors(self, enrollment_id):
                await self.client.start_workflow(
                    EnrollmentWorkflow.run,
                    inp,
                    id=enrollment_workflow_id(enrollment_id),
                    task_queue=self.task_queue,
                    search_attributes=TypedSearchAttributes(
                        attributes if self.search_attributes else []
                    ),
                )
        except OmsError:
            # No workflow, no enrollment: nothing half-written stays behind (the person starts
            # again once Temporal is back).
            await asyncio.to_thread(self.store.discard, enrollment_id)
            raise
        log.info(
            "enrollment.started",
            enrollment_id=enrollment_id,
            tenant_id=tenant_id,
            channel=origin.channel,
            plan_id=choice.plan_id,
        )
        return {
            "enrollment_id": enrollment_id,
            "status": EnrollmentStatus.AWAITING_VERIFICATION.value,
            "token": token,
            "expires_at": (now + EXPIRES_AFTER).isoformat(),
        }

    # --- who may act on an enrollment ------------------------------------------------------

    def authorize(self, enrollment_id: str, caller: EnrollmentCaller) -> Any:
        """The enrollment's row if ``caller`` may act on it.

        Raises:
            OmsError: ``UNAUTHENTICATED`` with neither a token nor a principal; ``FORBIDDEN``
                for a principal without ``enrollments:manage``; ``NOT_FOUND`` for an unknown
                id, a wrong token, or another tenant's enrollment (the same answer).
        """
        if caller.token is None and caller.principal is None:
            raise OmsError(
                ErrorCode.UNAUTHENTICATED,
                "send the enrollment's token (Enrollment-Token: enrtok_...) or credentials",
            )
        if caller.token is None and caller.principal is not None:
            caller.principal.require(Permission.ENROLLMENTS_MANAGE)
        enrollment_id = check_enrollment_id(enrollment_id)
        row = self.store.get(enrollment_id)
        # Hash even when there is no row, so timing does not tell an unknown id from a wrong token.
        given = token_hash(self.key, caller.token or "")
        if row is None:
            raise not_found("enrollment", enrollment_id)
        if caller.token is not None:
            token = caller.token.strip()
            if (
                not token.startswith(TOKEN_PREFIX)
                or len(token) > MAX_TOKEN_LENGTH
                or not hmac.compare_digest(str(row.token_hash or ""), given)
            ):
                raise not_found("enrollment", enrollment_id)
        elif caller.principal is not None and row.tenant_id != caller.principal.tenant_id:
            raise not_found("enrollment", enrollment_id)
        return row

    # --- the workflow's steps --------------------------------------------------------------

    def _handle(self, enrollment_id: str) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(enrollment_workflow_id(enrollment_id))

    async def verify(
        self, enrollment_id: str, code: str, caller: EnrollmentCaller
    ) -> EnrollmentView:
        """Check the code sent to the address. Only its keyed hash goes to the workflow."""
        row = await asyncio.to_thread(self.authorize, enrollment_id, caller)
        digest = code_digest(self.key, row.id, check_code(code))
        req = VerifyRequest(digest=digest, origin=caller.origin())
        async with _temporal_errors(self, row.id):
            return await self._handle(row.id).execute_update(
                EnrollmentWorkflow.verify, req, rpc_timeout=UPDATE_TIMEOUT
            )

    async def resend(self, enrollment_id: str, caller: EnrollmentCaller) -> EnrollmentView:
        """Send a new code (the old one stops working); ``RESEND_TOO_SOON`` within 30 s."""
        row = await asyncio.to_thread(self.authorize, enrollment_id, caller)
        req = ResendRequest(origin=caller.origin())
        async with _temporal_errors(self, row.id):
            return await self._handle(row.id).execute_update(
                EnrollmentWorkflow.resend, req, rpc_timeout=UPDATE_TIMEOUT
            )

    async def choose(
        self,
        enrollment_id: str,
        caller: EnrollmentCaller,
        *,
        plan_id: str,
        interval: str = "monthly",
        currency: str = "USD",
    ) -> EnrollmentView:
        """Change the plan, interval or currency before paying (checked against the catalog)."""
        row = await asyncio.to_thread(self.authorize, enrollment_id, caller)
        choice = check_choice(self.catalog, plan_id, interval, currency)
        req = ChooseRequest(choice=choice, origin=caller.origin())
        async with _temporal_errors(self, row.id):
            return await self._handle(row.id).execute_update(
                EnrollmentWorkflow.choose, req, rpc_timeout=UPDATE_TIMEOUT
            )

    async def pay(
        self, enrollment_id: str, payment_method_id: str, caller: EnrollmentCaller
    ) -> dict[str, Any]:
        """Save the card (validated, not charged), create the account and start the
        subscription. The answer is the outcome: active or trialing, with its ids."""
        pm = check_payment_method(payment_method_id)
        row = await asyncio.to_thread(self.authorize, enrollment_id, caller)
        req = PayRequest(payment_method_id=pm, origin=caller.origin())
        async with _temporal_errors(self, row.id):
            view: EnrollmentView = await self._handle(row.id).execute_update(
                EnrollmentWorkflow.pay, req, rpc_timeout=PAY_TIMEOUT
            )
        if view.status == EnrollmentStatus.ALREADY_ENROLLED:
            raise OmsError(
                ErrorCode.ALREADY_ENROLLED, "this address already has an account: sign in instead"
            )
        return paid(view)

    async def status(self, enrollment_id: str, caller: EnrollmentCaller) -> EnrollmentView:
        """Where the enrollment stands (also once it has ended)."""
        row = await asyncio.to_thread(self.authorize, enrollment_id, caller)
        return await self._view(row)

    async def _view(self, row: Any) -> EnrollmentView:
        try:
            return await self._handle(row.id).query(EnrollmentWorkflow.status)
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise _unavailable(err) from err
        return view_from_row(row)  # the workflow's history is gone (retention): the row's view

    async def quote(self, enrollment_id: str, caller: EnrollmentCaller) -> dict[str, Any]:
        """What the chosen plan costs: the first charge (after any trial, with any leading
        proration), the trial's end, the renewal amount and date, in the enrollment's currency
        and locale. Priced by the subscription's own code (``OmsService.build_state`` and
        ``models.billing``), as the subscription will bill it."""
        row = await asyncio.to_thread(self.authorize, enrollment_id, caller)
        view = await self._view(row)
        if view.status == EnrollmentStatus.EXPIRED:
            raise OmsError(
                ErrorCode.ENROLLMENT_EXPIRED,
                "this enrollment expired after 24 hours; start a new one",
            )
        return self.price(
            view.choice,
            timezone=str(getattr(row, "timezone", None) or self.default_timezone),
            locale=str(getattr(row, "locale", None) or "en"),
            now=self.clock(),
            enrollment_id=row.id,
        )

    def price(
        self,
        choice: PlanChoice,
        *,
        timezone: str,
        locale: str,
        now: datetime,
        enrollment_id: str | None = None,
    ) -> dict[str, Any]:
        """The quote of ``choice`` for a subscription starting ``now`` (pure; see :meth:`quote`)."""
        state = self._pricing.build_state(
            SubscribeRequest(
                email=_QUOTE_EMAIL,
                plan_id=choice.plan_id,
                interval=choice.interval.value,
                currency=choice.currency,
                payment_method_id=_QUOTE_PAYMENT_METHOD,
                timezone=timezone,
            ),
            Actor(actor="enrollment-quote", channel="quote"),
            now,
        )
        return quote_from_state(state, locale, enrollment_id)


def plan_comparison(
    catalog: Catalog, currency: str | None = None, locale: str = "en"
) -> list[dict[str, Any]]:
    """Every plan with its features, trial and prices (minor units, and formatted in
    ``locale``), only ``currency``'s when given. ``self_serve``: a sign-up may choose it
    (others: talk to sales); a price's ``offered``: a sign-up may choose that one."""
    code = None
    if currency:
        try:
            code = normalize_currency(currency)
        except BillingInputError as err:
            raise OmsError(ErrorCode.INVALID_CURRENCY, str(err)) from None
    loc = normalize_locale(locale)
    out = []
    for plan in catalog.plans:
        can = set(offered(plan))
        prices = [
            {
                "currency": p.currency,
                "interval": p.interval.value,
                "amount_minor": p.amount_minor,
                "amount": format_amount(p.amount_minor, p.currency, loc),
                "offered": (p.currency, p.interval) in can,
            }
            for p in plan.prices
            if code is None or p.currency == code
        ]
        out.append(
            {
                "plan_id": plan.plan_id,
                "name": plan.name,
                "tier": plan.tier,
                "description": plan.description,
                "segment": plan.segment,
                "self_serve": bool(can),
                "trial_days": plan.trial_days,
                "features": list(plan.features),
                "currencies": plan.currencies,
                "prices": prices,
            }
        )
    return out


def redeem_sign_in_link(
    store: Any, key: bytes, token: str, now: datetime
) -> tuple[str, str] | None:
    """Use up a first sign-in link: ``(principal_id, tenant_id)`` of the owner it was made for,
    or None when it is unknown, used or expired (one answer for all three)."""
    text = token.strip()
    if not text or len(text) > 200:
        return None
    found: tuple[str, str] | None = store.redeem_sign_in_link(sign_in_token_hash(key, text), now)
    return found


def quote_from_state(
    state: SubscriptionState, locale: str, enrollment_id: str | None = None
) -> dict[str, Any]:
    """The first two charges of a new subscription's state, as its workflow will bill them
    (``models.billing.period_lines`` / ``billed_span``, the functions the workflow calls)."""
    terms = state.terms
    billing_start = state.billing_start or state.anchor
    currency = terms.currency

    def money(amount: int) -> dict[str, Any]:
        return {"amount_minor": amount, "amount": format_amount(amount, currency, locale)}

    def charge(n: int) -> dict[str, Any]:
        span, period = billed_span(state.anchor, terms.interval, n, billing_start)
        lines = period_lines(
            anchor=state.anchor,
            interval=terms.interval,
            n=n,
            billing_start=billing_start,
            currency=currency,
            unit_amount_minor=terms.unit_amount_minor,
            quantity=terms.quantity,
            description=f"{terms.plan_name} ({terms.interval.value})",
        )
        total = sum(line.amount_minor for line in lines)
        return {
            "date": span[0].isoformat(),
            **money(total),
            "prorated": span != period,
            "lines": [
                {
                    "description": line.description,
                    **money(line.amount_minor),
                    "period_start": line.period_start.isoformat() if line.period_start else None,
                    "period_end": line.period_end.isoformat() if line.period_end else None,
                }
                for line in lines
            ],
        }

    first = charge(state.first_period_index)
    renewal = charge(state.first_period_index + 1)
    due_today = first["amount_minor"] if state.trial_end is None else 0
    return {
        "enrollment_id": enrollment_id,
        "plan_id": terms.plan_id,
        "plan_name": terms.plan_name,
        "interval": terms.interval.value,
        "currency": currency,
        "locale": locale,
        "timezone": state.timezone,
        "trial_end": state.trial_end.isoformat() if state.trial_end else None,
        "due_today": money(due_today),
        "first_charge": first,
        "renewal": {k: renewal[k] for k in ("date", "amount_minor", "amount")},
    }


def paid(view: EnrollmentView) -> dict[str, Any]:
    """The answer to a payment: the subscription's status and the new account's ids."""
    first: date | None = view.first_invoice_date
    return {
        "enrollment_id": view.enrollment_id,
        "status": view.subscription_status,
        "tenant_id": view.account_tenant_id,
        "customer_id": view.customer_id,
        "subscription_id": view.subscription_id,
        "first_invoice_date": first.isoformat() if first else None,
        "trial_end": view.trial_end.isoformat() if view.trial_end else None,
    }


def view_from_row(row: Any) -> EnrollmentView:
    """The view the row still gives once the workflow's history is gone."""
    started: datetime = row.started_at
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    try:
        status = EnrollmentStatus(row.status)
    except ValueError:
        status = EnrollmentStatus.EXPIRED
    return EnrollmentView(
        enrollment_id=row.id,
        tenant_id=row.tenant_id,
        status=status,
        choice=PlanChoice(
            plan_id=row.plan_id, interval=Interval(row.interval), currency=row.currency
        ),
        started_at=started,
        expires_at=started + EXPIRES_AFTER,
        verified_at=getattr(row, "verified_at", None),
        enrolled_at=getattr(row, "enrolled_at", None),
    )


class _temporal_errors:
    """Map Temporal client failures of an enrollment's workflow to OmsError codes."""

    def __init__(self, service: EnrollmentService, enrollment_id: str) -> None:
        self.service = service
        self.enrollment_id = enrollment_id

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            return
        if isinstance(exc, WorkflowUpdateFailedError):
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.type:
                try:
                    code = ErrorCode(cause.type)
                except ValueError:
                    code = ErrorCode.INVALID_REQUEST
                raise OmsError(code, cause.message) from exc
            raise OmsError(ErrorCode.INVALID_REQUEST, "the enrollment refused the request") from exc
        if isinstance(exc, WorkflowUpdateRPCTimeoutOrCancelledError):
            raise OmsError(
                ErrorCode.TIMEOUT,
                "the enrollment did not answer in time; it may still complete: ask its status "
                "and repeat the request if nothing changed",
            ) from exc
        if isinstance(exc, RPCError):
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise await self._ended_or_unknown() from exc
            if exc.status in (RPCStatusCode.INVALID_ARGUMENT, RPCStatusCode.FAILED_PRECONDITION):
                log.warning("temporal.request_refused", status=exc.status.name, error=exc.message)
                raise OmsError(
                    ErrorCode.INVALID_REQUEST,
                    f"the request for enrollment {self.enrollment_id} was refused as invalid",
                ) from exc
            raise _unavailable(exc) from exc

    async def _ended_or_unknown(self) -> OmsError:
        """An update to a workflow that has completed is refused NOT_FOUND by the server:
        say why (expired, or finished), or NOT_FOUND when there is no such workflow."""
        handle = self.service._handle(self.enrollment_id)
        try:
            await handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                row = self.service.store.get(self.enrollment_id)
                if row is None:
                    return not_found("enrollment", self.enrollment_id)
                return closed_error(str(row.status))
            return _unavailable(err)
        try:
            view: EnrollmentView = await handle.query(EnrollmentWorkflow.status)
            status = view.status.value
        except RPCError:
            row = self.service.store.get(self.enrollment_id)
            status = str(row.status) if row is not None else EnrollmentStatus.EXPIRED.value
        return closed_error(status)


def closed_error(status: str) -> OmsError:
    if status == EnrollmentStatus.EXPIRED.value:
        return OmsError(
            ErrorCode.ENROLLMENT_EXPIRED, "this enrollment expired after 24 hours; start a new one"
        )
    return OmsError(ErrorCode.ENROLLMENT_CLOSED, f"this enrollment is finished ({status})")


def _unavailable(err: RPCError) -> OmsError:
    log.warning("temporal.unavailable", status=err.status.name, error=err.message)
    return OmsError(ErrorCode.TEMPORAL_UNAVAILABLE, "Temporal is not reachable; retry in a moment")
