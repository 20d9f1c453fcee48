"""SQL tables of enrollment: sign-ups, their codes, per-address limits, audit events, consents and
first sign-in links. Only the enrollment store (``activities/enrollment.py``), the relay's
recipient lookup and migrations import these.

Personal data lives only in ``enrollments`` (e-mail, name, phone), written by the API before the
workflow starts and erased (NULL) when the enrollment expires. Everything else holds ids, keyed
hashes and facts: codes are stored as keyed hashes (``models.enrollment.code_digest``), addresses
as keyed hashes (``models.enrollment.address_key``), bearer tokens and sign-in links as hashes.
Instants are UTC. Writes are idempotent through unique business keys (``event_key``,
``consent_key``, ``(enrollment_id, number)``).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from activities.tables import _ts, tenant_field


class EnrollmentRow(SQLModel, table=True):
    """One sign-up: who enrolls (until it expires), what was chosen, and what it created.

    ``status`` is a projection of the workflow's (``models.enrollment.EnrollmentStatus``), moved
    with each audit event. ``token_hash`` is the keyed hash of the enrollment's bearer token (the
    API checks it); ``address_key`` the keyed hash of the normalized e-mail within the tenant.
    """

    __tablename__ = "enrollments"

    id: str = Field(primary_key=True, max_length=64)
    tenant_id: str = tenant_field()  # type: ignore[assignment]
    status: str = Field(index=True, max_length=32)
    email: str | None = Field(default=None, max_length=320)  # NULL once expired
    name: str | None = Field(default=None, max_length=200)
    phone: str | None = Field(default=None, max_length=32)  # E.164
    country: str | None = Field(default=None, max_length=2)
    locale: str = Field(default="en", max_length=16)
    timezone: str = Field(default="UTC", max_length=64)
    address_key: str = Field(index=True, max_length=64)
    token_hash: str = Field(unique=True, max_length=64)
    channel: str = Field(max_length=32)
    plan_id: str = Field(max_length=64)
    interval: str = Field(max_length=16)
    currency: str = Field(max_length=3)
    referral_code: str | None = Field(default=None, max_length=64)
    terms_version: str = Field(max_length=32)
    terms_hash: str | None = Field(default=None, max_length=64)
    privacy_version: str = Field(max_length=32)
    privacy_hash: str | None = Field(default=None, max_length=64)
    marketing: bool = False
    started_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
    verified_at: datetime | None = _ts(nullable=True)  # type: ignore[assignment]
    enrolled_at: datetime | None = _ts(nullable=True)  # type: ignore[assignment]
    expired_at: datetime | None = _ts(nullable=True)  # type: ignore[assignment]
    customer_id: str | None = Field(default=None, max_length=64)
    account_tenant_id: str | None = Field(default=None, max_length=64)
    principal_id: str | None = Field(default=None, max_length=64)
    gateway_customer_id: str | None = Field(default=None, max_length=64)
    payment_method_id: str | None = Field(default=None, max_length=64)
    subscription_id: str | None = Field(default=None, max_length=64)
    updated_at: datetime = _ts(nullable=False)  # type: ignore[assignment]


class EnrollmentCode(SQLModel, table=True):
    """A one-time code issued to an enrollment: its keyed hash only, never the code."""

    __tablename__ = "enrollment_codes"
    __table_args__ = (sa.UniqueConstraint("enrollment_id", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    enrollment_id: str = Field(index=True, max_length=64)
    number: int
    digest: str = Field(max_length=64)
    sent_at: datetime = _ts(nullable=False)  # type: ignore[assignment]


class EnrollmentAddress(SQLModel, table=True):
    """Per-address state across enrollments, keyed by the address's keyed hash.

    ``sends``: a JSON list of the ISO instants of the codes sent within the last hour (the hourly
    cap); ``failures``: wrong guesses since the last verification; ``kills``: codes killed by
    too many wrong guesses (the lock's back-off doubles with each); ``customer_id``: the account
    that claimed the address (one account per address).
    """

    __tablename__ = "enrollment_addresses"

    address_key: str = Field(primary_key=True, max_length=64)
    tenant_id: str = tenant_field()  # type: ignore[assignment]
    sends: str = Field(default="[]", sa_type=sa.Text)
    failures: int = 0
    kills: int = 0
    locked_until: datetime | None = _ts(nullable=True)  # type: ignore[assignment]
    customer_id: str | None = Field(default=None, max_length=64)
    updated_at: datetime = _ts(nullable=False)  # type: ignore[assignment]


class EnrollmentEvent(SQLModel, table=True):
    """An audit event of an enrollment: who (actor), through what (channel, IP, user agent)."""

    __tablename__ = "enrollment_events"

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: str = tenant_field()  # type: ignore[assignment]
    event_key: str = Field(unique=True, max_length=200)
    enrollment_id: str = Field(index=True, max_length=64)
    action: str = Field(max_length=64)
    actor: str = Field(max_length=200)
    channel: str = Field(max_length=32)
    ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=300)
    details: str = Field(default="{}", sa_type=sa.Text)
    occurred_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
    recorded_at: datetime = _ts(nullable=False)  # type: ignore[assignment]


class ConsentRow(SQLModel, table=True):
    """A consent given (or, for marketing, declined) at enrollment: the document's version and
    the SHA-256 of the exact text, when, through which channel. Kept when an enrollment expires
    (the evidence); ``customer_id`` is set once the customer exists; ``withdrawn_at`` when
    withdrawn."""

    __tablename__ = "consents"

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: str = tenant_field()  # type: ignore[assignment]
    consent_key: str = Field(unique=True, max_length=200)
    enrollment_id: str = Field(index=True, max_length=64)
    customer_id: str | None = Field(default=None, index=True, max_length=64)
    document: str = Field(max_length=16)  # terms | privacy | marketing
    version: str = Field(max_length=32)
    document_hash: str = Field(max_length=64)
    granted: bool
    channel: str = Field(max_length=32)
    ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=300)
    given_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
    withdrawn_at: datetime | None = _ts(nullable=True)  # type: ignore[assignment]


class SignInLink(SQLModel, table=True):
    """A first sign-in link for a new owner: the hash of its token, single use, short-lived."""

    __tablename__ = "sign_in_links"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(unique=True, max_length=64)
    principal_id: str = Field(max_length=64)
    tenant_id: str = tenant_field()  # type: ignore[assignment]
    expires_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
    used_at: datetime | None = _ts(nullable=True)  # type: ignore[assignment]
    created_at: datetime = _ts(nullable=False)  # type: ignore[assignment]
