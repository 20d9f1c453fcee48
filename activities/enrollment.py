"""Enrollment's side effects: the store of sign-ups and the ``enrollment.*`` activities.

``EnrollmentStore`` is the repository of the enrollment tables (``enrollment_tables.py``): one
transaction per method, every write idempotent through a unique key, and the rows two workers
could race for (an address's counters, an enrollment being provisioned) read ``FOR UPDATE`` on
PostgreSQL (SQLite serializes writers anyway). The API uses it too: :meth:`EnrollmentStore.create`
writes the row before the workflow starts, and the reads (``get``, ``by_token_hash``, ``events``,
``consents``, ``kpi_rows``) and :meth:`EnrollmentStore.redeem_sign_in_link` serve its pages.

``EnrollmentActivities`` are the workflow's steps (docs/enrollment.md). What crosses the workflow
boundary is ids, choices and keyed hashes (``models/enrollment.py``): a code is generated here,
written into the outbox row of its e-mail (blanked by the relay once sent) and returned only as
its keyed hash; the address, name and phone are read from the row here. Refusals are
non-retryable ``ApplicationError`` s whose type is the ``ErrorCode``; infrastructure failures
retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
import structlog
from pydantic import BaseModel, Field
from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col, func, select
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.enrollment_tables import (
    ConsentRow,
    EnrollmentAddress,
    EnrollmentCode,
    EnrollmentEvent,
    EnrollmentRow,
    SignInLink,
)
from activities.gateway_errors import gateway_call
from activities.gateway_port import PaymentGateway
from activities.notify.outbox import webhook_deliveries
from activities.tables import (
    Customer,
    NotificationRow,
    PrincipalRow,
    Subscription,
    Tenant,
    utcnow,
)
from models.enrollment import (
    MAX_SENDS_PER_HOUR,
    SEND_WINDOW,
    AddressLock,
    CodeFailure,
    CodeSent,
    EnrollmentNotice,
    EnrollmentStatus,
    Expire,
    PaymentSetUp,
    Provision,
    Provisioned,
    RecordStep,
    SendCode,
    SetupPayment,
    StartSubscription,
    SubscriptionStarted,
    Verified,
    VerifiedFacts,
    code_digest,
    lock_duration,
    new_code,
)
from models.errors import ErrorCode, OmsError
from models.identity import Role
from models.subscription import Notification

log = structlog.get_logger(__name__)

T = TypeVar("T", bound=SQLModel)

CODE_KIND = "enrollment_code"
REMINDER_KIND = "enrollment_reminder"
WELCOME_KIND = "welcome"
# The enrollment's own e-mails: to the enrolling address, looked up in its row at send time.
ENROLLMENT_KINDS = (CODE_KIND, REMINDER_KIND)
CODE_VALID_MINUTES = "10"
SIGN_IN_TTL = timedelta(hours=24)
SIGN_IN_PREFIX = "sil_"
CUSTOMER_PREFIX = "cus_"
ACCOUNT_TENANT_PREFIX = "tn_"
PRINCIPAL_PREFIX = "usr_"
# Data keys the webhooks of a welcome notice never carry (a bearer link, personal data).
_WEBHOOK_HIDDEN = frozenset({"sign_in_url", "resume_url", "code", "name"})
# The order port's codes that mean "try again later", not "no".
INFRASTRUCTURE_CODES = frozenset(
    {
        ErrorCode.TEMPORAL_UNAVAILABLE,
        ErrorCode.DATABASE_UNAVAILABLE,
        ErrorCode.GATEWAY_UNAVAILABLE,
        ErrorCode.TIMEOUT,
    }
)
_CARD_LIKE = re.compile(r"^[\d\s-]{12,}$")
_PM_ID = re.compile(r"^pm_[A-Za-z0-9_]{1,60}$")
DOCUMENTS = ("terms", "privacy", "marketing")


def sign_in_token_hash(key: bytes, token: str) -> str:
    """The keyed hash (HMAC-SHA256) a first sign-in link's token is stored under."""
    msg = f"sign-in\x1f{token.strip()}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def refused(code: ErrorCode, message: str, **details: Any) -> ApplicationError:
    """A refusal of the activity: non-retryable, typed with its code, details in one dict."""
    args: list[Any] = [details] if details else []
    return ApplicationError(
        message,
        *args,
        type=code.value,
        non_retryable=True,
        # A refusal is a business outcome (a wrong card, a locked address), not a fault.
        category=ApplicationErrorCategory.BENIGN,
    )


def _insert_ignore(s: Session, model: type[SQLModel], values: dict[str, Any]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING, inside the caller's transaction."""
    dialect = s.get_bind().dialect.name
    table = model.__table__  # type: ignore[attr-defined]
    if dialect == "postgresql":
        s.execute(postgresql.insert(table).values(**values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        s.execute(sqlite.insert(table).values(**values).on_conflict_do_nothing())
    else:  # pragma: no cover - only PostgreSQL and SQLite are supported
        raise NotImplementedError(dialect)


def _sends(raw: str, now: datetime) -> list[datetime]:
    """The address's sends still inside the hourly window at ``now``, oldest first."""
    out: list[datetime] = []
    for item in json.loads(raw or "[]"):
        try:
            at = datetime.fromisoformat(str(item))
        except ValueError:
            continue
        if now - at < SEND_WINDOW:
            out.append(at)
    return sorted(out)


class EnrollmentStore:
    """Repository over the enrollment tables; each method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    @staticmethod
    def _locked(s: Session, model: type[T], *where: Any) -> T | None:
        """The row matching ``where``, locked for this transaction (PostgreSQL)."""
        return s.exec(select(model).where(*where).with_for_update()).first()

    def _row(self, s: Session, enrollment_id: str, *, lock: bool = False) -> EnrollmentRow:
        q = select(EnrollmentRow).where(EnrollmentRow.id == enrollment_id)
        row = s.exec(q.with_for_update() if lock else q).first()
        if row is None:
            raise refused(ErrorCode.NOT_FOUND, f"enrollment {enrollment_id} not found")
        return row

    def _address(self, s: Session, row: EnrollmentRow, now: datetime) -> EnrollmentAddress:
        """The enrollment's address row (created when new), locked for this transaction."""
        _insert_ignore(
            s,
            EnrollmentAddress,
            {
                "address_key": row.address_key,
                "tenant_id": row.tenant_id,
                "sends": "[]",
                "failures": 0,
                "kills": 0,
                "updated_at": now,
            },
        )
        found = self._locked(s, EnrollmentAddress, EnrollmentAddress.address_key == row.address_key)
        assert found is not None
        return found

    # --- the API's writes and reads --------------------------------------------------------

    def create(self, **fields: Any) -> EnrollmentRow:
        """Insert an enrollment's row (the API, before it starts the workflow) and the consents
        given with it; a repeat with the same id returns the row already there.

        ``fields`` are the row's columns (``id``, ``tenant_id``, ``status``, ``email``, ...,
        ``started_at``); optional extras for the consent records: ``ip``, ``user_agent`` (and
        ``terms_hash``/``privacy_hash``, which are columns too).
        """
        ip = fields.pop("ip", None)
        user_agent = fields.pop("user_agent", None)
        fields.setdefault("updated_at", fields.get("started_at") or utcnow())
        if fields.get("timezone") is None:
            fields["timezone"] = "UTC"
        if fields.get("locale") is None:
            fields["locale"] = "en"
        row = EnrollmentRow(**fields)
        with self.session() as s:
            found = s.get(EnrollmentRow, row.id)
            if found is not None:
                return found
            s.add(row)
            for consent in _consent_rows(row, None, ip, user_agent):
                s.add(consent)
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                found = s.get(EnrollmentRow, row.id)
                if found is None:
                    raise
                return found
        return row

    def discard(self, enrollment_id: str) -> None:
        """Delete an enrollment whose workflow could not be started, with its consent rows
        (the API's clean-up: the person was told it failed and starts again)."""
        with self.session() as s:
            s.execute(sa.delete(ConsentRow).where(col(ConsentRow.enrollment_id) == enrollment_id))
            s.execute(sa.delete(EnrollmentRow).where(col(EnrollmentRow.id) == enrollment_id))
            s.commit()

    def get(self, enrollment_id: str) -> EnrollmentRow | None:
        with self.session() as s:
            return s.get(EnrollmentRow, enrollment_id)

    def by_token_hash(self, token_hash: str) -> EnrollmentRow | None:
        with self.session() as s:
            return s.exec(
                select(EnrollmentRow).where(EnrollmentRow.token_hash == token_hash)
            ).first()

    def events(self, enrollment_id: str) -> Sequence[EnrollmentEvent]:
        with self.session() as s:
            return s.exec(
                select(EnrollmentEvent)
                .where(EnrollmentEvent.enrollment_id == enrollment_id)
                .order_by(col(EnrollmentEvent.occurred_at), col(EnrollmentEvent.id))
            ).all()

    def consents(self, enrollment_id: str) -> Sequence[ConsentRow]:
        with self.session() as s:
            return s.exec(
                select(ConsentRow)
                .where(ConsentRow.enrollment_id == enrollment_id)
                .order_by(col(ConsentRow.id))
            ).all()

    def withdraw_consent(self, consent_key: str, now: datetime) -> bool:
        """Withdraw a consent (as easily as it was given); False when unknown or withdrawn."""
        with self.session() as s:
            result = s.execute(
                sa.update(ConsentRow)
                .where(
                    col(ConsentRow.consent_key) == consent_key,
                    col(ConsentRow.withdrawn_at).is_(None),
                )
                .values(withdrawn_at=now)
            )
            s.commit()
        return bool(getattr(result, "rowcount", 0) == 1)

    def redeem_sign_in_link(self, token_hash: str, now: datetime) -> tuple[str, str] | None:
        """Use a first sign-in link: (principal id, tenant id) once, before it expires; None for
        an unknown, used or expired link. Single use even under concurrent redemptions (the
        conditional update is the claim)."""
        with self.session() as s:
            result = s.execute(
                sa.update(SignInLink)
                .where(
                    col(SignInLink.token_hash) == token_hash,
                    col(SignInLink.used_at).is_(None),
                    col(SignInLink.expires_at) > now,
                )
                .values(used_at=now)
            )
            if getattr(result, "rowcount", 0) != 1:
                s.rollback()
                return None
            link = s.exec(select(SignInLink).where(SignInLink.token_hash == token_hash)).one()
            s.commit()
            return link.principal_id, link.tenant_id

    def kpi_rows(
        self, tenant_id: str, since: datetime
    ) -> list[tuple[str, str, str, datetime, datetime | None]]:
        """(channel, plan_id, status, started_at, enrolled_at) of the tenant's enrollments
        started at or after ``since`` (conversion and time to first value)."""
        q = sa.select(
            col(EnrollmentRow.channel),
            col(EnrollmentRow.plan_id),
            col(EnrollmentRow.status),
            col(EnrollmentRow.started_at),
            col(EnrollmentRow.enrolled_at),
        ).where(col(EnrollmentRow.tenant_id) == tenant_id, col(EnrollmentRow.started_at) >= since)
        with self.session() as s:
            rows = s.execute(q).all()
        return [(a, b, c, d, e) for a, b, c, d, e in rows]

    def codes(self, enrollment_id: str) -> Sequence[EnrollmentCode]:
        with self.session() as s:
            return s.exec(
                select(EnrollmentCode)
                .where(EnrollmentCode.enrollment_id == enrollment_id)
                .order_by(col(EnrollmentCode.number))
            ).all()

    def address(self, address_key: str) -> EnrollmentAddress | None:
        with self.session() as s:
            return s.get(EnrollmentAddress, address_key)

    # --- the activities' writes -------------------------------------------------------------

    def send_code(self, req: SendCode, key: bytes) -> CodeSent:
        """Issue code ``req.number`` and queue its e-mail, in one transaction (see SendCode)."""
        with self.session() as s:
            row = self._row(s, req.enrollment_id)
            if row.email is None:
                raise refused(ErrorCode.ENROLLMENT_EXPIRED, "the enrollment has expired")
            address = self._address(s, row, req.now)
            issued = s.exec(
                select(EnrollmentCode).where(
                    EnrollmentCode.enrollment_id == row.id, EnrollmentCode.number == req.number
                )
            ).first()
            if issued is not None:  # a retry: the code and its e-mail exist
                s.rollback()
                return CodeSent(digest=issued.digest, sent_at=issued.sent_at)
            if address.locked_until is not None and address.locked_until > req.now:
                s.rollback()
                raise refused(
                    ErrorCode.TOO_MANY_ATTEMPTS,
                    "too many wrong codes for this address; try again later",
                    retry_at=address.locked_until.isoformat(),
                )
            sends = _sends(address.sends, req.now)
            if len(sends) >= MAX_SENDS_PER_HOUR:
                s.rollback()
                raise refused(
                    ErrorCode.RESEND_TOO_SOON,
                    f"at most {MAX_SENDS_PER_HOUR} codes an hour go to one address",
                    retry_at=(sends[0] + SEND_WINDOW).isoformat(),
                )
            code = new_code()
            digest = code_digest(key, row.id, code)
            s.add(
                EnrollmentCode(
                    enrollment_id=row.id, number=req.number, digest=digest, sent_at=req.now
                )
            )
            address.sends = json.dumps([at.isoformat() for at in [*sends, req.now]])
            address.updated_at = req.now
            s.add(address)
            s.add(
                NotificationRow(
                    key=f"enrollment:{row.id}:code:{req.number}",
                    tenant_id=row.tenant_id,
                    subscription_id=row.id,
                    customer_id="",
                    kind=CODE_KIND,
                    data=json.dumps(
                        {"code": code, "valid_minutes": CODE_VALID_MINUTES, "name": row.name or ""},
                        sort_keys=True,
                    ),
                    scheduled_for=req.now,
                    created_at=utcnow(),
                )
            )
            try:
                s.commit()
            except IntegrityError:  # a concurrent retry issued this number first
                s.rollback()
                issued = s.exec(
                    select(EnrollmentCode).where(
                        EnrollmentCode.enrollment_id == row.id,
                        EnrollmentCode.number == req.number,
                    )
                ).first()
                if issued is None:
                    raise
                return CodeSent(digest=issued.digest, sent_at=issued.sent_at)
        return CodeSent(digest=digest, sent_at=req.now)

    def code_failed(self, req: CodeFailure) -> AddressLock:
        """Count a wrong guess; a killed code locks the address, doubling with each kill."""
        with self.session() as s:
            row = self._row(s, req.enrollment_id)
            address = self._address(s, row, req.now)
            if (
                req.killed
                and address.locked_until is not None
                and address.locked_until == req.now + lock_duration(address.kills)
            ):
                # This kill was counted already (a retry of the same call): the same lock.
                s.rollback()
                return AddressLock(locked_until=address.locked_until)
            address.failures += 1
            if req.killed:
                address.kills += 1
                address.locked_until = req.now + lock_duration(address.kills)
            address.updated_at = req.now
            s.add(address)
            until = address.locked_until
            s.commit()
        return AddressLock(locked_until=until if until is not None and until > req.now else None)

    def verified(self, req: Verified) -> VerifiedFacts:
        """Mark the address proven (failures cleared, kills kept for the back-off); say whether
        it already has an account in the tenant."""
        with self.session() as s:
            row = self._row(s, req.enrollment_id, lock=True)
            address = self._address(s, row, req.now)
            address.failures = 0
            address.updated_at = req.now
            s.add(address)
            if row.verified_at is None:
                row.verified_at = req.now
            row.updated_at = req.now
            s.add(row)
            claimed = address.customer_id is not None and address.customer_id != row.customer_id
            known = row.email is not None and _customer_with_email(s, row) is not None
            s.commit()
        return VerifiedFacts(already_enrolled=claimed or known)

    def set_gateway_customer(self, enrollment_id: str, gateway_customer_id: str) -> str:
        """Store the gateway customer unless one is stored already; the one kept."""
        with self.session() as s:
            row = self._row(s, enrollment_id, lock=True)
            if row.gateway_customer_id is None:
                row.gateway_customer_id = gateway_customer_id
                row.updated_at = utcnow()
                s.add(row)
                s.commit()
            return row.gateway_customer_id

    def set_payment_method(self, enrollment_id: str, payment_method_id: str) -> None:
        with self.session() as s:
            row = self._row(s, enrollment_id, lock=True)
            row.payment_method_id = payment_method_id
            row.updated_at = utcnow()
            s.add(row)
            s.commit()

    def set_subscription(self, enrollment_id: str, subscription_id: str) -> None:
        with self.session() as s:
            row = self._row(s, enrollment_id, lock=True)
            row.subscription_id = subscription_id
            row.updated_at = utcnow()
            s.add(row)
            s.commit()

    def provision(self, req: Provision) -> Provisioned:
        """Create, once, the customer, its own tenant id, the owner principal, the address claim
        and the consent records' link to the customer: one transaction."""
        try:
            return self._provision(req)
        except IntegrityError:
            # A concurrent run won (or, astronomically unlikely, a random id collided): the
            # next attempt finds what the winner wrote, or draws new ids.
            row = self.get(req.enrollment_id)
            if row is not None and row.customer_id and row.principal_id and row.account_tenant_id:
                return Provisioned(
                    customer_id=row.customer_id,
                    account_tenant_id=row.account_tenant_id,
                    principal_id=row.principal_id,
                )
            raise

    def _provision(self, req: Provision) -> Provisioned:
        with self.session() as s:
            row = self._row(s, req.enrollment_id, lock=True)
            if row.customer_id and row.principal_id and row.account_tenant_id:
                s.rollback()
                return Provisioned(
                    customer_id=row.customer_id,
                    account_tenant_id=row.account_tenant_id,
                    principal_id=row.principal_id,
                )
            if row.email is None:
                raise refused(ErrorCode.ENROLLMENT_EXPIRED, "the enrollment has expired")
            if row.verified_at is None:
                raise refused(ErrorCode.NOT_VERIFIED, "the address is not verified yet")
            address = self._address(s, row, req.now)
            if address.customer_id is not None or _customer_with_email(s, row) is not None:
                s.rollback()
                raise refused(
                    ErrorCode.ALREADY_ENROLLED,
                    "this address already has an account; sign in instead",
                )
            customer_id = CUSTOMER_PREFIX + secrets.token_hex(12)
            account_tenant_id = ACCOUNT_TENANT_PREFIX + secrets.token_hex(12)
            principal_id = PRINCIPAL_PREFIX + secrets.token_hex(12)
            now = utcnow()
            s.add(
                Customer(
                    id=customer_id,
                    tenant_id=row.tenant_id,
                    email=row.email,
                    name=row.name,
                    phone=row.phone,
                    country=row.country,
                    locale=row.locale,
                    timezone=row.timezone,
                    gateway_customer_id=req.gateway_customer_id,
                    account_tenant_id=account_tenant_id,
                    created_at=now,
                )
            )
            if s.get(Tenant, row.tenant_id) is None:
                s.add(Tenant(id=row.tenant_id, name=row.tenant_id, created_at=now))
            # The owner principal, as AuthStore.put_principal writes one (in this transaction).
            s.add(
                PrincipalRow(
                    id=principal_id,
                    tenant_id=row.tenant_id,
                    role=Role.CUSTOMER.value,
                    name=row.name,
                    email=row.email,
                    customer_id=customer_id,
                    groups="[]",
                    partner_id=None,
                    accounts="[]",
                    created_at=now,
                    disabled_at=None,
                )
            )
            address.customer_id = customer_id
            address.updated_at = req.now
            s.add(address)
            existing = {
                c.document: c
                for c in s.exec(select(ConsentRow).where(ConsentRow.enrollment_id == row.id)).all()
            }
            for consent in _consent_rows(row, customer_id, None, None):
                found = existing.get(consent.document)
                if found is None:
                    s.add(consent)
                else:
                    found.customer_id = customer_id
                    s.add(found)
            row.customer_id = customer_id
            row.account_tenant_id = account_tenant_id
            row.principal_id = principal_id
            row.gateway_customer_id = req.gateway_customer_id
            row.updated_at = req.now
            s.add(row)
            s.commit()
        return Provisioned(
            customer_id=customer_id, account_tenant_id=account_tenant_id, principal_id=principal_id
        )

    def record(self, req: RecordStep) -> bool:
        """Write an audit event (once per key) and move the row's status projection with it."""
        with self.session() as s:
            if s.exec(
                select(EnrollmentEvent.id).where(EnrollmentEvent.event_key == req.event_key)
            ).first():
                return False
            row = s.exec(
                select(EnrollmentRow).where(EnrollmentRow.id == req.enrollment_id).with_for_update()
            ).first()
            s.add(
                EnrollmentEvent(
                    tenant_id=row.tenant_id if row is not None else "default",
                    event_key=req.event_key,
                    enrollment_id=req.enrollment_id,
                    action=req.action,
                    actor=req.origin.actor,
                    channel=req.origin.channel,
                    ip=req.origin.ip,
                    user_agent=req.origin.user_agent,
                    details=json.dumps(req.details, sort_keys=True),
                    occurred_at=req.at,
                    recorded_at=utcnow(),
                )
            )
            if row is not None:
                if req.status is not None:
                    row.status = req.status.value
                    if req.status == EnrollmentStatus.AWAITING_PAYMENT and row.verified_at is None:
                        row.verified_at = req.at
                    if req.status == EnrollmentStatus.ENROLLED and row.enrolled_at is None:
                        row.enrolled_at = req.at
                    if req.status == EnrollmentStatus.EXPIRED and row.expired_at is None:
                        row.expired_at = req.at
                row.updated_at = req.at
                s.add(row)
            try:
                s.commit()
            except IntegrityError:  # the same event, written concurrently by a retry
                s.rollback()
                return False
        return True

    def notify(
        self, req: EnrollmentNotice, key: bytes, *, portal_url: str, resume_url: str
    ) -> bool:
        """Queue an enrollment e-mail once per key (see EnrollmentActivities.notify)."""
        with self.session() as s:
            if s.exec(select(NotificationRow.id).where(NotificationRow.key == req.key)).first():
                return False
            row = self._row(s, req.enrollment_id)
            now = utcnow()
            data = dict(req.data)
            if req.kind == REMINDER_KIND:
                if row.email is None:  # expired meanwhile: nobody to remind
                    return False
                data.setdefault("name", row.name or "")
                data.setdefault("timezone", row.timezone)
                data["resume_url"] = f"{resume_url}?enrollment={row.id}"
                s.add(
                    NotificationRow(
                        key=req.key,
                        tenant_id=row.tenant_id,
                        subscription_id=row.id,
                        customer_id="",
                        kind=req.kind,
                        data=json.dumps(data, sort_keys=True),
                        scheduled_for=req.now,
                        created_at=now,
                    )
                )
            elif req.kind == WELCOME_KIND:
                if row.customer_id is None or row.principal_id is None:
                    raise refused(
                        ErrorCode.INVALID_REQUEST, "the enrollment has no customer to welcome yet"
                    )
                token = SIGN_IN_PREFIX + secrets.token_urlsafe(24)
                s.add(
                    SignInLink(
                        token_hash=sign_in_token_hash(key, token),
                        principal_id=row.principal_id,
                        tenant_id=row.tenant_id,
                        expires_at=req.now + SIGN_IN_TTL,
                        created_at=now,
                    )
                )
                data.setdefault("name", row.name or "")
                data.setdefault("timezone", row.timezone)
                if row.subscription_id:
                    data.setdefault("subscription_id", row.subscription_id)
                data["sign_in_url"] = f"{portal_url.rstrip('/')}/sign-in?token={token}"
                notice = Notification(
                    key=req.key,
                    subscription_id=row.subscription_id or row.id,
                    customer_id=row.customer_id,
                    kind=req.kind,
                    scheduled_for=req.now,
                    data=data,
                )
                s.add(
                    NotificationRow(
                        key=notice.key,
                        tenant_id=row.tenant_id,
                        subscription_id=notice.subscription_id,
                        customer_id=notice.customer_id,
                        kind=notice.kind,
                        data=json.dumps(data, sort_keys=True),
                        scheduled_for=notice.scheduled_for,
                        created_at=now,
                    )
                )
                public = notice.model_copy(
                    update={"data": {k: v for k, v in data.items() if k not in _WEBHOOK_HIDDEN}}
                )
                for delivery in webhook_deliveries(s, row.tenant_id, public, now):
                    s.add(delivery)
            else:
                raise refused(ErrorCode.INVALID_REQUEST, f"unknown enrollment notice {req.kind!r}")
            try:
                s.commit()
            except IntegrityError:  # queued concurrently by a retry
                s.rollback()
                return False
        return True

    def expire(self, req: Expire) -> bool:
        """End an abandoned enrollment: erase its personal data and its unsent e-mails, and undo
        an account it provisioned without a subscription (the customer record, the owner
        principal, the address claim), so that it leaves no customer record; keep its audit
        events and consent evidence. An enrollment whose customer has a subscription is left
        alone (False)."""
        with self.session() as s:
            row = self._row(s, req.enrollment_id, lock=True)
            if row.status == EnrollmentStatus.ENROLLED or row.subscription_id is not None:
                s.rollback()
                return False
            if row.customer_id is not None:
                has_subscription = s.exec(
                    select(Subscription.id).where(Subscription.customer_id == row.customer_id)
                ).first()
                if has_subscription is not None:
                    s.rollback()
                    return False
                self._unprovision(s, row)
            row.status = EnrollmentStatus.EXPIRED.value
            if row.expired_at is None:
                row.expired_at = req.now
            row.email = None
            row.name = None
            row.phone = None
            row.updated_at = req.now
            s.add(row)
            own = (
                col(NotificationRow.subscription_id) == row.id,
                col(NotificationRow.kind).in_(ENROLLMENT_KINDS),
            )
            s.execute(
                sa.delete(NotificationRow).where(*own, col(NotificationRow.status) == "pending")
            )
            s.execute(sa.update(NotificationRow).where(*own).values(data="{}"))
            s.commit()
        return True

    @staticmethod
    def _unprovision(s: Session, row: EnrollmentRow) -> None:
        """Remove what ``provision`` made for ``row`` (in the caller's transaction)."""
        customer_id = row.customer_id
        s.execute(sa.delete(Customer).where(col(Customer.id) == customer_id))
        if row.principal_id is not None:
            s.execute(sa.delete(PrincipalRow).where(col(PrincipalRow.id) == row.principal_id))
        s.execute(
            sa.update(EnrollmentAddress)
            .where(col(EnrollmentAddress.customer_id) == customer_id)
            .values(customer_id=None)
        )
        s.execute(
            sa.update(ConsentRow)
            .where(col(ConsentRow.enrollment_id) == row.id)
            .values(customer_id=None)
        )
        row.customer_id = None
        row.principal_id = None
        row.account_tenant_id = None


def _customer_with_email(s: Session, row: EnrollmentRow) -> str | None:
    """The id of another customer of the row's tenant with the row's address (any case)."""
    if row.email is None:
        return None
    q = select(Customer.id).where(
        Customer.tenant_id == row.tenant_id,
        func.lower(Customer.email) == row.email.strip().lower(),
    )
    if row.customer_id is not None:
        q = q.where(Customer.id != row.customer_id)
    return s.exec(q).first()


def _consent_rows(
    row: EnrollmentRow, customer_id: str | None, ip: str | None, user_agent: str | None
) -> list[ConsentRow]:
    """The consent records of an enrollment: terms and privacy (granted, or the enrollment
    would not exist) and the separate marketing opt-in (granted or not)."""
    docs = {
        "terms": (row.terms_version, row.terms_hash or "", True),
        "privacy": (row.privacy_version, row.privacy_hash or "", True),
        # Marketing e-mail is described by the privacy notice: its version is what was shown.
        "marketing": (row.privacy_version, row.privacy_hash or "", bool(row.marketing)),
    }
    return [
        ConsentRow(
            tenant_id=row.tenant_id,
            consent_key=f"enrollment:{row.id}:{document}",
            enrollment_id=row.id,
            customer_id=customer_id,
            document=document,
            version=version,
            document_hash=digest,
            granted=granted,
            channel=row.channel,
            ip=ip,
            user_agent=user_agent,
            given_at=row.started_at,
        )
        for document, (version, digest, granted) in docs.items()
    ]


# --- the order port -------------------------------------------------------------------------


class EnrollmentOrder(BaseModel):
    """The enrollment's first order, as the order port submits it (as the owner principal)."""

    order_id: str = Field(max_length=64)  # ``{enrollment_id}-{attempt}``
    tenant_id: str
    principal_id: str
    customer_id: str
    email: str
    name: str | None = None
    timezone: str | None = None
    plan_id: str
    interval: str
    currency: str
    payment_method_id: str
    referral_code: str | None = None


class OrderPort(Protocol):
    """Where the enrollment's order goes (order intake, wired by the worker).

    Raises ``models.errors.OmsError`` for a refusal; infrastructure codes
    (:data:`INFRASTRUCTURE_CODES`) mean "try again".
    """

    async def place(self, order: EnrollmentOrder) -> SubscriptionStarted: ...


# --- activities -----------------------------------------------------------------------------


def _card_like(value: str) -> bool:
    digits = re.sub(r"\D", "", value)
    return bool(_CARD_LIKE.match(value)) and 12 <= len(digits) <= 19


class EnrollmentActivities:
    """The enrollment workflow's activities (sync ones run in the worker's thread pool).

    Args:
        store_or_engine: The enrollment store, or an engine to build one on.
        gateway: The payment gateway (SetupIntents, customers, cards).
        key: The enrollment secret: keys the codes' and sign-in links' hashes.
        orders: Where the first order goes.
        portal_url: The customer portal (the welcome's sign-in link points at ``/sign-in``).
        resume_url: The page a reminder's link resumes an enrollment on.
    """

    def __init__(
        self,
        store_or_engine: EnrollmentStore | Engine,
        gateway: PaymentGateway,
        key: bytes,
        orders: OrderPort,
        *,
        portal_url: str,
        resume_url: str,
    ) -> None:
        self.store = (
            store_or_engine
            if isinstance(store_or_engine, EnrollmentStore)
            else EnrollmentStore(store_or_engine)
        )
        self.gateway = gateway
        self.key = key
        self.orders = orders
        self.portal_url = portal_url
        self.resume_url = resume_url

    @activity.defn(name="enrollment.send_code")
    def send_code(self, req: SendCode) -> CodeSent:
        """Issue code number ``req.number`` and queue its e-mail (once per number)."""
        sent = self.store.send_code(req, self.key)
        log.info("enrollment.code_issued", enrollment_id=req.enrollment_id, number=req.number)
        return sent

    @activity.defn(name="enrollment.code_failed")
    def code_failed(self, req: CodeFailure) -> AddressLock:
        lock = self.store.code_failed(req)
        if lock.locked_until is not None:
            log.info(
                "enrollment.address_locked",
                enrollment_id=req.enrollment_id,
                locked_until=lock.locked_until.isoformat(),
            )
        return lock

    @activity.defn(name="enrollment.verified")
    def verified(self, req: Verified) -> VerifiedFacts:
        return self.store.verified(req)

    @activity.defn(name="enrollment.setup_payment")
    def setup_payment(self, req: SetupPayment) -> PaymentSetUp:
        """Save and validate a card with a SetupIntent (nothing charged); see SetupPayment."""
        pm_id = req.payment_method_id.strip()
        if _card_like(pm_id):
            raise refused(
                ErrorCode.PAYMENT_METHOD_INVALID,
                "send the payment-method token (pm_...) from the gateway's card element; card "
                "numbers are never accepted",
            )
        if not _PM_ID.match(pm_id):
            raise refused(
                ErrorCode.PAYMENT_METHOD_INVALID, "a payment method is a gateway token (pm_...)"
            )
        row = self.store.get(req.enrollment_id)
        if row is None:
            raise refused(ErrorCode.NOT_FOUND, f"enrollment {req.enrollment_id} not found")
        if row.email is None:
            raise refused(ErrorCode.ENROLLMENT_EXPIRED, "the enrollment has expired")
        try:
            with gateway_call():
                gateway_customer = row.gateway_customer_id
                if gateway_customer is None:
                    created = self.gateway.create_customer(
                        email=row.email,
                        metadata={"enrollment_id": row.id},
                        idempotency_key=f"enrollment:{row.id}:customer",
                    )
                    gateway_customer = self.store.set_gateway_customer(row.id, created)
                intent = self.gateway.create_setup_intent(
                    customer_id=gateway_customer,
                    metadata={"enrollment_id": row.id, "attempt": str(req.attempt)},
                    idempotency_key=f"enrollment:{row.id}:setup:{req.attempt}",
                )
                info = self.gateway.confirm_setup_intent(intent, pm_id)
                if info.status == "requires_action":
                    raise refused(
                        ErrorCode.PAYMENT_METHOD_DECLINED,
                        "this card needs the cardholder to authenticate it (3-D Secure), which "
                        "sign-up cannot do yet; use another card",
                        decline_code="authentication_required",
                    )
                if info.status != "succeeded":
                    decline = info.decline
                    raise refused(
                        ErrorCode.PAYMENT_METHOD_DECLINED,
                        decline.message if decline else "the card was declined",
                        decline_code=(decline.decline_code or decline.code)
                        if decline
                        else "card_declined",
                        category=decline.category.value if decline else "soft",
                    )
                saved = info.payment_method_id or pm_id
                card = self.gateway.retrieve_payment_method(saved)
                if card.customer_id != gateway_customer:
                    self.gateway.attach_payment_method(saved, gateway_customer)
        except ApplicationError as err:
            if err.type == ErrorCode.PAYMENT_DECLINED:  # a decline while attaching the card
                details = err.details[0] if err.details and isinstance(err.details[0], dict) else {}
                code = details.get("decline_code") or details.get("code")
                raise refused(
                    ErrorCode.PAYMENT_METHOD_DECLINED,
                    err.message,
                    decline_code=code or "card_declined",
                ) from err
            raise
        self.store.set_payment_method(row.id, saved)
        log.info(
            "enrollment.card_saved",
            enrollment_id=row.id,
            attempt=req.attempt,
            payment_method_id=saved,
        )
        return PaymentSetUp(
            gateway_customer_id=gateway_customer,
            payment_method_id=saved,
            brand=card.brand,
            last4=card.last4,
        )

    @activity.defn(name="enrollment.provision")
    def provision(self, req: Provision) -> Provisioned:
        done = self.store.provision(req)
        log.info(
            "enrollment.provisioned",
            enrollment_id=req.enrollment_id,
            customer_id=done.customer_id,
            principal_id=done.principal_id,
        )
        return done

    @activity.defn(name="enrollment.start_subscription")
    async def start_subscription(self, req: StartSubscription) -> SubscriptionStarted:
        """Place the first order through the order port, as the owner principal."""
        row = await asyncio.to_thread(self.store.get, req.enrollment_id)
        if row is None:
            raise refused(ErrorCode.NOT_FOUND, f"enrollment {req.enrollment_id} not found")
        if row.email is None:
            raise refused(ErrorCode.ENROLLMENT_EXPIRED, "the enrollment has expired")
        if not (row.customer_id and row.principal_id):
            raise refused(ErrorCode.INVALID_REQUEST, "the enrollment has no customer yet")
        if not row.payment_method_id:
            raise refused(ErrorCode.PAYMENT_METHOD_REQUIRED, "no card was saved for the order")
        order = EnrollmentOrder(
            order_id=f"{row.id}-{req.attempt}",
            tenant_id=row.tenant_id,
            principal_id=row.principal_id,
            customer_id=row.customer_id,
            email=row.email,
            name=row.name,
            timezone=row.timezone,
            plan_id=row.plan_id,
            interval=row.interval,
            currency=row.currency,
            payment_method_id=row.payment_method_id,
            referral_code=row.referral_code,
        )
        try:
            started = await self.orders.place(order)
        except OmsError as err:
            if err.code in INFRASTRUCTURE_CODES:
                raise ApplicationError(
                    err.message, type=err.code.value, non_retryable=False
                ) from err
            raise refused(err.code, err.message) from err
        await asyncio.to_thread(self.store.set_subscription, row.id, started.subscription_id)
        log.info(
            "enrollment.subscription_started",
            enrollment_id=row.id,
            subscription_id=started.subscription_id,
            status=started.status,
        )
        return started

    @activity.defn(name="enrollment.record")
    def record(self, req: RecordStep) -> None:
        self.store.record(req)

    @activity.defn(name="enrollment.notify")
    def notify(self, req: EnrollmentNotice) -> None:
        """Queue an enrollment e-mail (once per key).

        ``enrollment_reminder`` goes to the enrolling address with a resume link; ``welcome``
        goes to the new customer with a first sign-in link for the owner (valid 24 hours, single
        use), and to the tenant's webhooks without the link or the name.
        """
        queued = self.store.notify(
            req, self.key, portal_url=self.portal_url, resume_url=self.resume_url
        )
        log.info(
            "enrollment.notice_queued",
            enrollment_id=req.enrollment_id,
            kind=req.kind,
            duplicate=not queued,
        )

    @activity.defn(name="enrollment.expire")
    def expire(self, req: Expire) -> None:
        erased = self.store.expire(req)
        log.info("enrollment.expired", enrollment_id=req.enrollment_id, erased=erased)


__all__ = [
    "EnrollmentActivities",
    "EnrollmentOrder",
    "EnrollmentStore",
    "OrderPort",
    "refused",
    "sign_in_token_hash",
]
