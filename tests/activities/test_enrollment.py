"""Enrollment's store and activities over a real database (SQLite, or PostgreSQL when
``OMS_TEST_DATABASE_URL`` is set), a real localstripe and the SMTP sink.

Codes exist in clear only in the outbox row of their e-mail (blanked once sent): the activity
returns, stores and logs their keyed hash only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.exceptions import ApplicationError

from activities.auth_store import AuthStore
from activities.enrollment import (
    EnrollmentActivities,
    EnrollmentOrder,
    EnrollmentStore,
    sign_in_token_hash,
)
from activities.enrollment_tables import EnrollmentCode, EnrollmentEvent, SignInLink
from activities.gateway import StripeGateway
from activities.notify.outbox import Outbox
from activities.notify.relay import Relay
from activities.store import Store
from activities.tables import (
    Customer,
    NotificationRow,
    PrincipalRow,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)
from models.enrollment import (
    LOCK_BASE,
    MAX_SENDS_PER_HOUR,
    SEND_WINDOW,
    CodeFailure,
    EnrollmentNotice,
    EnrollmentStatus,
    Expire,
    Origin,
    Provision,
    RecordStep,
    SendCode,
    SetupPayment,
    StartSubscription,
    SubscriptionStarted,
    Verified,
    address_key,
    code_digest,
    new_enrollment_id,
)
from models.errors import ErrorCode, OmsError
from models.identity import Role
from starter.mailsink import MailSink, read_mail
from workers.config import NotificationsConfig

KEY = b"enrollment-test-secret-of-32-bytes!!"
TENANT = "default"
PORTAL = "https://billing.example.test/portal"
RESUME = "https://billing.example.test/portal/enroll"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
TEST_KEY = "sk_test_oms_enrollment"


class FakeOrders:
    """An order port that answers as told (the real one is order intake, wired elsewhere)."""

    def __init__(self) -> None:
        self.orders: list[EnrollmentOrder] = []
        self.error: OmsError | None = None

    async def place(self, order: EnrollmentOrder) -> SubscriptionStarted:
        self.orders.append(order)
        if self.error is not None:
            raise self.error
        return SubscriptionStarted(subscription_id=f"sub_{order.order_id}", status="active")


@pytest.fixture
def store(engine: Engine) -> EnrollmentStore:
    return EnrollmentStore(engine)


@pytest.fixture
def orders() -> FakeOrders:
    return FakeOrders()


@pytest.fixture
def acts(store: EnrollmentStore, orders: FakeOrders) -> EnrollmentActivities:
    # Nothing listens there: the tests using this fixture must not reach the gateway.
    offline = StripeGateway(TEST_KEY, api_base="http://127.0.0.1:9", max_network_retries=0)
    return EnrollmentActivities(store, offline, KEY, orders, portal_url=PORTAL, resume_url=RESUME)


@pytest.fixture
def gateway(localstripe_url: str) -> StripeGateway:
    return StripeGateway(TEST_KEY, api_base=localstripe_url, max_network_retries=0, timeout_s=10)


@pytest.fixture
def paying(
    store: EnrollmentStore, orders: FakeOrders, gateway: StripeGateway
) -> EnrollmentActivities:
    return EnrollmentActivities(store, gateway, KEY, orders, portal_url=PORTAL, resume_url=RESUME)


def enroll(
    store: EnrollmentStore,
    email: str = "ada@example.com",
    *,
    at: datetime = T0,
    marketing: bool = False,
    name: str | None = "Ada Lovelace",
) -> str:
    enrollment_id = new_enrollment_id()
    store.create(
        id=enrollment_id,
        tenant_id=TENANT,
        status=EnrollmentStatus.AWAITING_VERIFICATION.value,
        email=email,
        name=name,
        phone="+14155550123",
        country="US",
        locale="en",
        timezone="America/New_York",
        address_key=address_key(KEY, TENANT, email),
        token_hash=f"{enrollment_id:0<64}"[:64],
        channel="web",
        plan_id="pro",
        interval="monthly",
        currency="USD",
        referral_code=None,
        terms_version="2026-01",
        terms_hash="a" * 64,
        privacy_version="2026-01",
        privacy_hash="b" * 64,
        marketing=marketing,
        started_at=at,
        ip="203.0.113.7",
        user_agent="pytest",
    )
    return enrollment_id


def refusal(info: pytest.ExceptionInfo[ApplicationError]) -> tuple[str | None, dict[str, Any]]:
    err = info.value
    assert err.non_retryable
    details = err.details[0] if err.details else {}
    return err.type, details


def rows_of(engine: Engine, enrollment_id: str) -> list[NotificationRow]:
    with Session(engine) as s:
        return list(
            s.exec(select(NotificationRow).where(NotificationRow.subscription_id == enrollment_id))
        )


def count(engine: Engine, model: type[Any]) -> int:
    with Session(engine) as s:
        return len(list(s.exec(select(model))))


# --- codes ----------------------------------------------------------------------------------


def test_a_code_is_issued_once_per_number_and_only_its_email_holds_it(
    engine: Engine, store: EnrollmentStore, acts: EnrollmentActivities
) -> None:
    enrollment_id = enroll(store)

    configured = structlog.is_configured()
    try:
        with structlog.testing.capture_logs() as logs:
            first = acts.send_code(SendCode(enrollment_id=enrollment_id, number=1, now=T0))
            again = acts.send_code(SendCode(enrollment_id=enrollment_id, number=1, now=T0))
    finally:
        if not configured:  # capture_logs marks structlog configured (see tests/intake/test_cli)
            structlog.reset_defaults()

    assert again == first
    [row] = rows_of(engine, enrollment_id)
    data = json.loads(row.data)
    code = data["code"]
    assert len(code) == 6 and code.isdigit()
    assert row.kind == "enrollment_code" and row.customer_id == "" and row.tenant_id == TENANT
    assert data["valid_minutes"] == "10" and data["name"] == "Ada Lovelace"
    assert first.digest == code_digest(KEY, enrollment_id, code)
    assert code not in first.model_dump_json()
    [stored] = store.codes(enrollment_id)
    assert stored.digest == first.digest and code not in stored.digest
    assert code not in repr(logs)

    second = acts.send_code(SendCode(enrollment_id=enrollment_id, number=2, now=T0))
    assert second.digest != first.digest
    assert len(rows_of(engine, enrollment_id)) == 2


def test_a_sixth_send_to_an_address_within_the_hour_is_refused_with_when_to_retry(
    store: EnrollmentStore, acts: EnrollmentActivities
) -> None:
    # The cap is per address, across enrollments (and whatever the address's case).
    first, second = enroll(store, "ada@example.com"), enroll(store, "ADA@example.com")
    for n in range(MAX_SENDS_PER_HOUR):
        enrollment_id = first if n % 2 == 0 else second
        acts.send_code(
            SendCode(enrollment_id=enrollment_id, number=n + 1, now=T0 + timedelta(minutes=n))
        )

    with pytest.raises(ApplicationError) as info:
        acts.send_code(SendCode(enrollment_id=second, number=10, now=T0 + timedelta(minutes=10)))

    code, details = refusal(info)
    assert code == ErrorCode.RESEND_TOO_SOON
    assert datetime.fromisoformat(details["retry_at"]) == T0 + SEND_WINDOW
    later = acts.send_code(SendCode(enrollment_id=second, number=10, now=T0 + SEND_WINDOW))
    assert later.digest


def test_killed_codes_lock_the_address_for_doubling_durations(
    store: EnrollmentStore, acts: EnrollmentActivities
) -> None:
    enrollment_id = enroll(store)
    acts.send_code(SendCode(enrollment_id=enrollment_id, number=1, now=T0))

    wrong = acts.code_failed(CodeFailure(enrollment_id=enrollment_id, now=T0, killed=False))
    assert wrong.locked_until is None
    killed = CodeFailure(enrollment_id=enrollment_id, now=T0, killed=True)
    lock = acts.code_failed(killed)
    assert lock.locked_until == T0 + LOCK_BASE
    assert acts.code_failed(killed) == lock  # a retried call counts the kill once

    with pytest.raises(ApplicationError) as info:
        acts.send_code(
            SendCode(enrollment_id=enrollment_id, number=2, now=T0 + timedelta(minutes=1))
        )
    code, details = refusal(info)
    assert code == ErrorCode.TOO_MANY_ATTEMPTS
    assert datetime.fromisoformat(details["retry_at"]) == T0 + LOCK_BASE

    t1 = T0 + timedelta(minutes=20)
    acts.send_code(SendCode(enrollment_id=enrollment_id, number=2, now=t1))
    second = acts.code_failed(CodeFailure(enrollment_id=enrollment_id, now=t1, killed=True))
    assert second.locked_until == t1 + 2 * LOCK_BASE
    address = store.address(address_key(KEY, TENANT, "ada@example.com"))
    assert address is not None and address.kills == 2 and address.failures == 3


def test_verification_clears_failures_and_finds_an_address_that_has_an_account(
    engine: Engine, store: EnrollmentStore, acts: EnrollmentActivities
) -> None:
    Store(engine).upsert_customer("cust_known", "Known@Example.com", "UTC", TENANT)
    known, fresh = enroll(store, "known@example.com"), enroll(store, "new@example.com")
    acts.code_failed(CodeFailure(enrollment_id=fresh, now=T0, killed=False))

    assert acts.verified(Verified(enrollment_id=known, now=T0)).already_enrolled
    assert not acts.verified(Verified(enrollment_id=fresh, now=T0)).already_enrolled
    row = store.get(fresh)
    assert row is not None and row.verified_at == T0
    address = store.address(address_key(KEY, TENANT, "new@example.com"))
    assert address is not None and address.failures == 0


# --- payment --------------------------------------------------------------------------------


def test_setup_payment_saves_a_card_for_the_gateway_customer_without_charging_it(
    store: EnrollmentStore, paying: EnrollmentActivities, gateway: StripeGateway
) -> None:
    enrollment_id = enroll(store)

    saved = paying.setup_payment(
        SetupPayment(enrollment_id=enrollment_id, payment_method_id="pm_card_visa", attempt=1)
    )

    assert saved.brand == "visa" and saved.last4 == "4242"
    assert saved.payment_method_id.startswith("pm_")
    card = gateway.retrieve_payment_method(saved.payment_method_id)
    assert card.customer_id == saved.gateway_customer_id
    row = store.get(enrollment_id)
    assert row is not None
    assert row.gateway_customer_id == saved.gateway_customer_id
    assert row.payment_method_id == saved.payment_method_id
    again = paying.setup_payment(
        SetupPayment(enrollment_id=enrollment_id, payment_method_id="pm_card_visa", attempt=2)
    )
    assert again.gateway_customer_id == saved.gateway_customer_id  # one gateway customer


def test_setup_payment_refuses_declined_cards_and_cards_that_need_authentication(
    store: EnrollmentStore, paying: EnrollmentActivities, gateway: StripeGateway
) -> None:
    enrollment_id = enroll(store)

    with pytest.raises(ApplicationError) as declined:
        paying.setup_payment(
            SetupPayment(
                enrollment_id=enrollment_id,
                payment_method_id="pm_card_visa_chargeDeclined",
                attempt=1,
            )
        )
    code, details = refusal(declined)
    assert code == ErrorCode.PAYMENT_METHOD_DECLINED and details["decline_code"] == "card_declined"

    needs_3ds = gateway.create_test_payment_method("4000002500003155")
    with pytest.raises(ApplicationError) as auth:
        paying.setup_payment(
            SetupPayment(enrollment_id=enrollment_id, payment_method_id=needs_3ds, attempt=2)
        )
    code, details = refusal(auth)
    assert code == ErrorCode.PAYMENT_METHOD_DECLINED
    assert details["decline_code"] == "authentication_required"
    assert "authenticat" in auth.value.message

    with pytest.raises(ApplicationError) as missing:
        paying.setup_payment(
            SetupPayment(enrollment_id=enrollment_id, payment_method_id="pm_nope", attempt=3)
        )
    assert refusal(missing)[0] == ErrorCode.PAYMENT_METHOD_INVALID
    row = store.get(enrollment_id)
    assert row is not None and row.payment_method_id is None


@pytest.mark.parametrize("given", ["4242 4242 4242 4242", "4242424242424242", "tok_visa", ""])
def test_setup_payment_refuses_anything_but_a_payment_method_token(
    store: EnrollmentStore, acts: EnrollmentActivities, given: str
) -> None:
    enrollment_id = enroll(store)

    with pytest.raises(ApplicationError) as info:  # refused before any gateway call
        acts.setup_payment(
            SetupPayment(enrollment_id=enrollment_id, payment_method_id=given, attempt=1)
        )

    assert refusal(info)[0] == ErrorCode.PAYMENT_METHOD_INVALID
    if given:
        assert given not in info.value.message


# --- the account ----------------------------------------------------------------------------


def provisioned(store: EnrollmentStore, acts: EnrollmentActivities, email: str) -> tuple[str, Any]:
    enrollment_id = enroll(store, email, marketing=True)
    acts.verified(Verified(enrollment_id=enrollment_id, now=T0))
    done = acts.provision(
        Provision(enrollment_id=enrollment_id, now=T0, gateway_customer_id="cus_gw_1")
    )
    return enrollment_id, done


def test_provision_creates_the_account_once(
    engine: Engine, store: EnrollmentStore, acts: EnrollmentActivities
) -> None:
    enrollment_id, first = provisioned(store, acts, "ada@example.com")
    again = acts.provision(
        Provision(enrollment_id=enrollment_id, now=T0, gateway_customer_id="cus_gw_1")
    )

    assert again == first
    assert first.customer_id.startswith("cus_") and first.account_tenant_id.startswith("tn_")
    assert count(engine, Customer) == 1 and count(engine, PrincipalRow) == 1
    customer = Store(engine).get_customer(first.customer_id)
    assert customer is not None
    assert (customer.email, customer.name, customer.phone, customer.country) == (
        "ada@example.com",
        "Ada Lovelace",
        "+14155550123",
        "US",
    )
    assert customer.account_tenant_id == first.account_tenant_id
    assert customer.gateway_customer_id == "cus_gw_1" and customer.tenant_id == TENANT
    owner = AuthStore(engine).principal(first.principal_id)
    assert owner is not None and owner.role == Role.CUSTOMER
    assert (owner.tenant_id, owner.customer_id) == (TENANT, first.customer_id)
    consents = {c.document: c for c in store.consents(enrollment_id)}
    assert set(consents) == {"terms", "privacy", "marketing"}
    assert all(c.customer_id == first.customer_id for c in consents.values())
    assert consents["marketing"].granted and consents["terms"].document_hash == "a" * 64
    assert consents["terms"].ip == "203.0.113.7"
    address = store.address(address_key(KEY, TENANT, "ada@example.com"))
    assert address is not None and address.customer_id == first.customer_id


def test_an_address_claimed_by_another_account_cannot_be_enrolled_again(
    store: EnrollmentStore, acts: EnrollmentActivities
) -> None:
    provisioned(store, acts, "ada@example.com")
    second = enroll(store, "Ada@Example.com")

    assert acts.verified(Verified(enrollment_id=second, now=T0)).already_enrolled
    with pytest.raises(ApplicationError) as info:
        acts.provision(Provision(enrollment_id=second, now=T0, gateway_customer_id="cus_gw_2"))
    assert refusal(info)[0] == ErrorCode.ALREADY_ENROLLED


async def test_the_first_order_goes_to_the_order_port_and_its_refusals_keep_their_code(
    store: EnrollmentStore, acts: EnrollmentActivities, orders: FakeOrders
) -> None:
    enrollment_id, done = provisioned(store, acts, "ada@example.com")
    store.set_payment_method(enrollment_id, "pm_saved")

    started = await acts.start_subscription(
        StartSubscription(enrollment_id=enrollment_id, attempt=1)
    )

    [order] = orders.orders
    assert order.order_id == f"{enrollment_id}-1"
    assert (order.principal_id, order.customer_id) == (done.principal_id, done.customer_id)
    assert (order.email, order.plan_id, order.payment_method_id) == (
        "ada@example.com",
        "pro",
        "pm_saved",
    )
    row = store.get(enrollment_id)
    assert row is not None and row.subscription_id == started.subscription_id

    orders.error = OmsError(ErrorCode.PAYMENT_DECLINED, "the first payment was declined")
    with pytest.raises(ApplicationError) as refused:
        await acts.start_subscription(StartSubscription(enrollment_id=enrollment_id, attempt=2))
    assert refusal(refused)[0] == ErrorCode.PAYMENT_DECLINED

    orders.error = OmsError(ErrorCode.TEMPORAL_UNAVAILABLE, "no server")
    with pytest.raises(ApplicationError) as outage:
        await acts.start_subscription(StartSubscription(enrollment_id=enrollment_id, attempt=3))
    assert outage.value.type == ErrorCode.TEMPORAL_UNAVAILABLE and not outage.value.non_retryable


# --- audit, e-mails, expiry -----------------------------------------------------------------


def test_record_writes_each_event_once_and_moves_the_status(
    engine: Engine, store: EnrollmentStore, acts: EnrollmentActivities
) -> None:
    enrollment_id = enroll(store)
    step = RecordStep(
        enrollment_id=enrollment_id,
        event_key=f"enrollment:{enrollment_id}:2",
        action="verified",
        at=T0 + timedelta(minutes=2),
        origin=Origin(actor="enrollee", channel="web", ip="203.0.113.7", user_agent="ua"),
        status=EnrollmentStatus.AWAITING_PAYMENT,
        details={"n": "1"},
    )

    acts.record(step)
    acts.record(step)

    [event] = store.events(enrollment_id)
    assert (event.action, event.actor, event.ip, event.user_agent) == (
        "verified",
        "enrollee",
        "203.0.113.7",
        "ua",
    )
    assert json.loads(event.details) == {"n": "1"}
    row = store.get(enrollment_id)
    assert row is not None and row.status == EnrollmentStatus.AWAITING_PAYMENT
    assert row.verified_at == T0 + timedelta(minutes=2)
    acts.record(
        step.model_copy(
            update={"event_key": "k:3", "action": "enrolled", "status": EnrollmentStatus.ENROLLED}
        )
    )
    row = store.get(enrollment_id)
    assert row is not None and row.enrolled_at == T0 + timedelta(minutes=2)
    assert count(engine, EnrollmentEvent) == 2
    [kpi] = store.kpi_rows(TENANT, T0 - timedelta(days=1))
    assert kpi[:3] == ("web", "pro", "enrolled") and kpi[4] == T0 + timedelta(minutes=2)


def test_the_welcome_carries_a_single_use_sign_in_link_and_webhooks_never_see_it(
    engine: Engine, store: EnrollmentStore, acts: EnrollmentActivities
) -> None:
    with Session(engine) as s:
        s.add(
            WebhookEndpoint(
                id="we_1",
                tenant_id=TENANT,
                url="http://127.0.0.1:9/hooks",
                secret="whsec_test",
                created_at=utcnow(),
            )
        )
        s.commit()
    enrollment_id, done = provisioned(store, acts, "ada@example.com")
    store.set_subscription(enrollment_id, "sub_42")
    notice = EnrollmentNotice(
        enrollment_id=enrollment_id,
        key=f"enrollment:{enrollment_id}:welcome",
        kind="welcome",
        now=T0,
        data={"plan_id": "pro"},
    )

    acts.notify(notice)
    acts.notify(notice)

    [row] = rows_of(engine, "sub_42")
    assert (row.kind, row.customer_id, row.tenant_id) == ("welcome", done.customer_id, TENANT)
    url = json.loads(row.data)["sign_in_url"]
    assert url.startswith(f"{PORTAL}/sign-in?token=sil_")
    token = url.split("token=", 1)[1]
    assert count(engine, SignInLink) == 1
    with Session(engine) as s:
        [delivery] = s.exec(select(WebhookDelivery)).all()
    assert token not in delivery.payload and "Ada" not in delivery.payload

    hashed = sign_in_token_hash(KEY, token)
    assert store.redeem_sign_in_link(hashed, T0 + timedelta(hours=1)) == (
        done.principal_id,
        TENANT,
    )
    assert store.redeem_sign_in_link(hashed, T0 + timedelta(hours=1)) is None  # used
    assert store.redeem_sign_in_link(sign_in_token_hash(KEY, "sil_other"), T0) is None


def test_a_sign_in_link_expires_after_a_day(
    store: EnrollmentStore, acts: EnrollmentActivities, engine: Engine
) -> None:
    enrollment_id, _ = provisioned(store, acts, "ada@example.com")
    acts.notify(
        EnrollmentNotice(
            enrollment_id=enrollment_id, key="welcome:1", kind="welcome", now=T0, data={}
        )
    )
    [row] = rows_of(engine, enrollment_id)
    token = json.loads(row.data)["sign_in_url"].split("token=", 1)[1]

    assert store.redeem_sign_in_link(sign_in_token_hash(KEY, token), T0 + timedelta(days=1)) is None


def test_the_reminder_goes_to_the_enrolling_address_with_a_resume_link(
    engine: Engine, store: EnrollmentStore, acts: EnrollmentActivities
) -> None:
    enrollment_id = enroll(store)

    acts.notify(
        EnrollmentNotice(
            enrollment_id=enrollment_id,
            key=f"enrollment:{enrollment_id}:reminder",
            kind="enrollment_reminder",
            now=T0,
            data={"plan_id": "pro", "expires_at": (T0 + timedelta(days=1)).isoformat()},
        )
    )

    [row] = rows_of(engine, enrollment_id)
    assert row.customer_id == "" and row.kind == "enrollment_reminder"
    assert json.loads(row.data)["resume_url"] == f"{RESUME}?enrollment={enrollment_id}"


def test_expiry_erases_personal_data_and_unsent_mail_but_keeps_the_audit_trail(
    engine: Engine, store: EnrollmentStore, acts: EnrollmentActivities
) -> None:
    enrollment_id = enroll(store)
    acts.send_code(SendCode(enrollment_id=enrollment_id, number=1, now=T0))
    acts.record(RecordStep(enrollment_id=enrollment_id, event_key="e:1", action="started", at=T0))

    acts.expire(Expire(enrollment_id=enrollment_id, now=T0 + timedelta(days=1)))

    row = store.get(enrollment_id)
    assert row is not None and row.status == EnrollmentStatus.EXPIRED
    assert (row.email, row.name, row.phone) == (None, None, None)
    assert row.expired_at == T0 + timedelta(days=1)
    assert rows_of(engine, enrollment_id) == []
    assert len(store.events(enrollment_id)) == 1
    consents = store.consents(enrollment_id)
    assert len(consents) == 3 and all(c.customer_id is None for c in consents)
    assert count(engine, Customer) == 0
    with pytest.raises(ApplicationError) as info:
        acts.send_code(SendCode(enrollment_id=enrollment_id, number=2, now=T0))
    assert refusal(info)[0] == ErrorCode.ENROLLMENT_EXPIRED


# --- the relay ------------------------------------------------------------------------------


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[MailSink]:
    with MailSink(tmp_path / "mail") as running:
        yield running


async def test_the_relay_sends_the_code_to_the_enrolling_address_then_blanks_it(
    engine: Engine, store: EnrollmentStore, acts: EnrollmentActivities, sink: MailSink
) -> None:
    now = datetime.now(UTC)
    enrollment_id = enroll(store, "grace@example.com", at=now)
    acts.send_code(SendCode(enrollment_id=enrollment_id, number=1, now=now))
    [queued] = rows_of(engine, enrollment_id)
    code = json.loads(queued.data)["code"]
    relay = Relay(
        engine,
        NotificationsConfig(
            smtp_url=f"smtp://127.0.0.1:{sink.port}?local_hostname=test.localhost&timeout=5"
        ),
        clock=lambda: now + timedelta(seconds=1),
    )

    assert (await relay.run_once()).sent == 1

    [mail] = read_mail(sink.directory, to="grace@example.com")
    assert code in mail["subject"] and code in mail["body"]
    [sent] = rows_of(engine, enrollment_id)
    assert sent.status == "sent"
    assert json.loads(sent.data)["code"] == "" and code not in sent.data
    with Session(engine) as s:
        [stored] = s.exec(select(EnrollmentCode)).all()
    assert stored.digest == code_digest(KEY, enrollment_id, code)
    assert Outbox(engine).enrollment_contact(enrollment_id) == ("grace@example.com", "en")
