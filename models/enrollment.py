"""Enrollment: a new customer's way from first visit to first invoice (docs/enrollment.md).

One ``EnrollmentWorkflow`` per sign-up (``enrollment:{id}``). This module is its pure vocabulary:
statuses, the verification rules, the messages that cross the workflow boundary and the
activities' requests and answers. No personal data crosses that boundary: the e-mail, name and
phone live in the ``enrollments`` row (written by the API before the workflow starts) and
activities look them up by enrollment id. One-time codes never cross it either: the activity
that issues a code returns only its keyed hash, and a caller's guess reaches the workflow as the
same keyed hash, computed by the API (:func:`code_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import date, datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from models.calendar import Interval

# --- verification rules (NIST SP 800-63B 5.1.3, and what identity providers do) ---------------

CODE_DIGITS = 6
CODE_TTL = timedelta(minutes=10)  # a code is valid this long after it is sent
MAX_CODE_ATTEMPTS = 5  # wrong guesses that kill a code
RESEND_COOLDOWN = timedelta(seconds=30)  # between two sends to one enrollment
MAX_SENDS_PER_HOUR = 5  # per address, across enrollments
SEND_WINDOW = timedelta(hours=1)
# A killed code locks the address: 15 minutes, doubling with each further kill, at most a day.
LOCK_BASE = timedelta(minutes=15)
LOCK_MAX = timedelta(hours=24)

# --- the enrollment's clock -----------------------------------------------------------------

REMINDER_AFTER = timedelta(hours=1)  # of inactivity: one reminder with a resume link
EXPIRES_AFTER = timedelta(hours=24)  # from the start: the enrollment expires, its PII erased
MAX_PAY_ATTEMPTS = 5  # declined cards per enrollment before it must be started again

ENROLLMENT_ID_PREFIX = "enr_"


class EnrollmentStatus(StrEnum):
    """Where an enrollment stands; the ``EnrollmentStatus`` search attribute shows it."""

    AWAITING_VERIFICATION = "awaiting_verification"  # a code was (or is being) sent
    AWAITING_PAYMENT = "awaiting_payment"  # the address is verified; choose, quote, pay
    ENROLLED = "enrolled"  # customer, owner and subscription exist (active or trialing)
    ALREADY_ENROLLED = "already_enrolled"  # the verified address already has an account
    EXPIRED = "expired"  # not finished within EXPIRES_AFTER; its personal data erased

    @property
    def is_final(self) -> bool:
        return self in (
            EnrollmentStatus.ENROLLED,
            EnrollmentStatus.ALREADY_ENROLLED,
            EnrollmentStatus.EXPIRED,
        )


def new_enrollment_id() -> str:
    """A random, unguessable enrollment id (``enr_`` + 26 hex digits, 104 bits)."""
    return ENROLLMENT_ID_PREFIX + secrets.token_hex(13)


def enrollment_workflow_id(enrollment_id: str) -> str:
    return f"enrollment:{enrollment_id}"


def new_code() -> str:
    """A one-time code: CODE_DIGITS digits from ``secrets`` (leading zeros kept)."""
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def code_digest(key: bytes, enrollment_id: str, code: str) -> str:
    """The keyed hash (HMAC-SHA256) of a code for one enrollment: all that is ever stored or
    sent to the workflow. Without the key, 10^6 codes cannot be tried offline."""
    msg = f"code\x1f{enrollment_id}\x1f{code.strip()}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def address_key(key: bytes, tenant_id: str, email: str) -> str:
    """The keyed hash of a normalized e-mail address within a tenant: the per-address limits
    and the one-account-per-address claim are keyed by it (no address in clear in those rows)."""
    msg = f"address\x1f{tenant_id}\x1f{email.strip().lower()}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def lock_duration(kills: int) -> timedelta:
    """How long an address is locked after its ``kills``-th killed code (1, 2, ...)."""
    if kills < 1:
        return timedelta(0)
    doubled: timedelta = LOCK_BASE * (2 ** min(kills - 1, 16))
    return min(doubled, LOCK_MAX)


# --- what crosses the workflow boundary -----------------------------------------------------


class Origin(BaseModel):
    """Who acted and from where, for the enrollment's audit events.

    ``actor`` is ``enrollee`` for the person enrolling (holding the enrollment's token), a
    principal id for staff acting for them, ``system`` for timers.
    """

    actor: str = Field(default="system", max_length=200)
    channel: str = Field(default="system", max_length=32)
    ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=300)


class Consents(BaseModel):
    """The documents accepted at the start (versions and hashes checked by the API)."""

    terms_version: str = Field(max_length=32)
    terms_hash: str = Field(max_length=64)
    privacy_version: str = Field(max_length=32)
    privacy_hash: str = Field(max_length=64)
    marketing: bool = False  # a separate opt-in, off unless asked for


class PlanChoice(BaseModel):
    """The plan chosen (checked against the catalog by the API before it reaches history)."""

    plan_id: str = Field(max_length=64)
    interval: Interval = Interval.MONTHLY
    currency: str = Field(default="USD", max_length=3)


class EnrollmentInput(BaseModel):
    """The workflow's input: ids and choices, no personal data (the row holds that)."""

    model_config = ConfigDict(extra="forbid")

    enrollment_id: str
    tenant_id: str  # the merchant tenant the customer enrolls with
    choice: PlanChoice
    consents: Consents
    locale: str = "en"
    started_at: datetime
    origin: Origin = Field(default_factory=Origin)
    referral_code: str | None = None
    search_attributes: bool = True  # off on test servers without custom attributes


class VerifyRequest(BaseModel):
    """A guessed code, as its keyed hash (:func:`code_digest`): never the code itself."""

    digest: str = Field(min_length=64, max_length=64)
    origin: Origin = Field(default_factory=Origin)


class ResendRequest(BaseModel):
    origin: Origin = Field(default_factory=Origin)


class ChooseRequest(BaseModel):
    """Change the plan chosen before paying."""

    choice: PlanChoice
    origin: Origin = Field(default_factory=Origin)


class PayRequest(BaseModel):
    """A gateway payment-method token (``pm_...``); card numbers never reach us."""

    payment_method_id: str = Field(max_length=64)
    origin: Origin = Field(default_factory=Origin)


class EnrollmentStep(BaseModel):
    """One line of the enrollment's timeline (also an audit event in the database)."""

    at: datetime
    action: str
    actor: str = "system"
    outcome: str = "ok"  # ok | refused | failed
    code: str | None = None  # the error code of a refused step
    detail: str | None = None


class EnrollmentView(BaseModel):
    """What the ``status`` query and every update answer."""

    enrollment_id: str
    tenant_id: str
    status: EnrollmentStatus
    choice: PlanChoice
    started_at: datetime
    expires_at: datetime
    verified_at: datetime | None = None
    code_sent_at: datetime | None = None
    code_expires_at: datetime | None = None
    code_attempts_left: int = 0
    resend_available_at: datetime | None = None
    locked_until: datetime | None = None
    reminded_at: datetime | None = None
    pay_attempts: int = 0
    customer_id: str | None = None
    account_tenant_id: str | None = None  # the customer's own tenant id, unique
    subscription_id: str | None = None
    subscription_status: str | None = None  # active | trialing, at confirmation
    first_invoice_date: date | None = None
    trial_end: date | None = None
    enrolled_at: datetime | None = None
    tasks: dict[str, str] = Field(default_factory=dict)  # post-signup task -> pending|done|failed
    timeline: list[EnrollmentStep] = Field(default_factory=list)


class EnrollmentResult(BaseModel):
    """The workflow's result once it ends."""

    enrollment_id: str
    status: EnrollmentStatus
    subscription_id: str | None = None


# --- activities' requests and answers (activities/enrollment.py) -----------------------------


class SendCode(BaseModel):
    """Issue code number ``number`` (1, 2, ...) of an enrollment and queue its e-mail.

    Idempotent per (enrollment, number): a retried call returns the digest stored the first
    time and queues nothing new. Refused (non-retryable ``ApplicationError``) with
    ``TOO_MANY_ATTEMPTS`` while the address is locked and ``RESEND_TOO_SOON`` past
    MAX_SENDS_PER_HOUR sends to the address in SEND_WINDOW; details carry ``retry_at``.
    """

    enrollment_id: str
    number: int
    now: datetime


class CodeSent(BaseModel):
    digest: str
    sent_at: datetime


class CodeFailure(BaseModel):
    """A wrong guess; ``killed``: it was the code's last allowed one (locks the address)."""

    enrollment_id: str
    now: datetime
    killed: bool


class AddressLock(BaseModel):
    locked_until: datetime | None = None


class Verified(BaseModel):
    """The address is proven: clears its failures; says whether it already has an account."""

    enrollment_id: str
    now: datetime


class VerifiedFacts(BaseModel):
    already_enrolled: bool


class SetupPayment(BaseModel):
    """Validate and save a card without charging it (a gateway SetupIntent).

    Idempotent per (enrollment, attempt). Refused with ``PAYMENT_METHOD_DECLINED`` (details
    ``decline_code``) or ``PAYMENT_METHOD_INVALID``; transient gateway errors retry.
    """

    enrollment_id: str
    payment_method_id: str
    attempt: int


class PaymentSetUp(BaseModel):
    gateway_customer_id: str
    payment_method_id: str
    brand: str | None = None
    last4: str | None = None


class Provision(BaseModel):
    """Create, once, the customer record (random id), the customer's own tenant id, the owner
    principal (role ``customer``, the owner's default permissions) and the consent records.
    Refused with ``ALREADY_ENROLLED`` when the address was claimed by another account."""

    enrollment_id: str
    now: datetime
    gateway_customer_id: str


class Provisioned(BaseModel):
    customer_id: str
    account_tenant_id: str
    principal_id: str


class StartSubscription(BaseModel):
    """Start the subscription through order intake (the ``web`` channel, intake rules
    included), as the owner principal. ``attempt`` numbers the order id (a new card after a
    declined first charge is a new order). Refused with the intake's or the workflow's code."""

    enrollment_id: str
    attempt: int


class SubscriptionStarted(BaseModel):
    subscription_id: str
    status: str  # active | trialing
    first_invoice_date: date | None = None
    trial_end: date | None = None


class RecordStep(BaseModel):
    """An audit event of the enrollment (``event_key`` makes the write idempotent); also moves
    the row's ``status`` projection (and ``verified_at``/``enrolled_at``) when given."""

    enrollment_id: str
    event_key: str
    action: str
    at: datetime
    origin: Origin = Field(default_factory=Origin)
    status: EnrollmentStatus | None = None
    details: dict[str, str] = Field(default_factory=dict)


class EnrollmentNotice(BaseModel):
    """An e-mail of the enrollment, queued in the outbox (``key`` unique).

    Kinds: ``enrollment_reminder`` (to the enrolling address, with a resume link),
    ``welcome`` (to the new customer, with the first sign-in link).
    """

    enrollment_id: str
    key: str
    kind: str
    now: datetime
    data: dict[str, str] = Field(default_factory=dict)


class Expire(BaseModel):
    """End an abandoned enrollment: erase its personal data (no customer record was made)."""

    enrollment_id: str
    now: datetime
