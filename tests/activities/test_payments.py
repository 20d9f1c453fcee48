"""PaymentActivities against a real localstripe and a real database: money moves exactly once.

The activities are plain synchronous methods, called directly here. Crashes are simulated with
gateway subclasses that fail at one precise instant *around* the real gateway calls (before the
confirm, or after it but before the result reaches the database); the retry is a second call with
the same request, as Temporal would make after the worker died.

The gateway's view is read back through ``list_payment_intents`` (every intent, matched on the
``idempotency_key`` metadata the gateway stamps) and through localstripe's charge list, so "no new
PaymentIntent" and "one charge" are checked where the money is, not only in our table.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import activities.payments as payments_module
from activities.gateway import METADATA_IDEMPOTENCY_KEY, IntentInfo, StripeGateway
from activities.gateway_errors import DeclineCategory
from activities.payments import PaymentActivities
from activities.store import Store
from activities.tables import Customer, Payment
from models.errors import ErrorCode
from models.subscription import ChargeRequest, ProvisionCustomer

TEST_KEY = "sk_test_oms_payments"
VISA = "4242424242424242"
CHARGE_FAILS = "4000000000000341"  # attaches fine, every charge is declined
NEEDS_3DS = "4000002500003155"  # the issuer asks for authentication
ATTACH_DECLINED = "4000000000000002"  # declined when saved to a customer


class SimulatedCrash(Exception):
    """The worker died here: nothing after this point ran."""


class CrashBeforeConfirm(StripeGateway):
    """The first confirm never reaches the gateway (the worker died after storing the intent)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crashes_left = 1

    def confirm_payment_intent(
        self, intent_id: str, *, idempotency_key: str, off_session: bool = True
    ) -> IntentInfo:
        if self.crashes_left:
            self.crashes_left -= 1
            raise SimulatedCrash(f"worker died before confirming {intent_id}")
        return super().confirm_payment_intent(
            intent_id, idempotency_key=idempotency_key, off_session=off_session
        )


class CrashAfterConfirm(StripeGateway):
    """The first confirm moves the money, then the worker dies before recording the outcome."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crashes_left = 1
        self.confirmed: list[IntentInfo] = []

    def confirm_payment_intent(
        self, intent_id: str, *, idempotency_key: str, off_session: bool = True
    ) -> IntentInfo:
        info = super().confirm_payment_intent(
            intent_id, idempotency_key=idempotency_key, off_session=off_session
        )
        if self.crashes_left:
            self.crashes_left -= 1
            self.confirmed.append(info)
            raise SimulatedCrash(f"worker died after confirming {intent_id} ({info.status})")
        return info


class CrashAfterCreate(StripeGateway):
    """The first intent is created, then the worker dies before its id reaches the database."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crashes_left = 1

    def create_payment_intent(self, **kwargs: Any) -> IntentInfo:
        info = super().create_payment_intent(**kwargs)
        if self.crashes_left:
            self.crashes_left -= 1
            raise SimulatedCrash(f"worker died after creating {info.id}")
        return info


def make_gateway(url: str, cls: type[StripeGateway] = StripeGateway) -> StripeGateway:
    """A gateway (or a crashing subclass) on localstripe, without SDK-level retries."""
    return cls(TEST_KEY, api_base=url, max_network_retries=0, timeout_s=10)


@pytest.fixture
def store(engine: Engine) -> Store:
    return Store(engine)


@pytest.fixture
def gateway(localstripe_url: str) -> StripeGateway:
    return make_gateway(localstripe_url)


@pytest.fixture
def fake(localstripe_url: str) -> Iterator[httpx.Client]:
    """Raw HTTP access to localstripe, to observe it without going through the gateway."""
    with httpx.Client(
        base_url=localstripe_url, headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=10
    ) as client:
        yield client


def customer_with_card(gateway: StripeGateway, card: str = VISA) -> tuple[str, str]:
    """A fresh gateway customer with ``card`` attached: (customer id, payment method id)."""
    customer_id = gateway.create_customer(
        email=f"{uuid.uuid4().hex[:10]}@example.com",
        metadata={},
        idempotency_key=f"customer:{uuid.uuid4().hex}",
    )
    pm_id = gateway.create_test_payment_method(card)
    gateway.attach_payment_method(pm_id, customer_id)
    return customer_id, pm_id


def charge_request(
    gateway: StripeGateway, card: str = VISA, amount_minor: int = 3000
) -> ChargeRequest:
    """Period 0, attempt 0 of a fresh subscription whose customer pays with ``card``."""
    customer_id, pm_id = customer_with_card(gateway, card)
    sub = f"sub_{uuid.uuid4().hex[:16]}"
    return ChargeRequest(
        idempotency_key=f"{sub}:period-0:attempt-0",
        invoice_id=f"in_{sub}_p0",
        subscription_id=sub,
        customer_id="cust_1",
        gateway_customer_id=customer_id,
        payment_method_id=pm_id,
        amount_minor=amount_minor,
        currency="USD",
        attempt=0,
        description="Pro 2027-01-01",
    )


def intents_for(gateway: StripeGateway, key: str) -> list[IntentInfo]:
    """Every PaymentIntent at the gateway stamped with idempotency key ``key``."""
    return [
        i for i in gateway.list_payment_intents() if i.metadata.get(METADATA_IDEMPOTENCY_KEY) == key
    ]


def charges_for(fake: httpx.Client, gateway_customer_id: str) -> list[dict[str, Any]]:
    """Every charge (money movement attempt) localstripe holds for a customer."""
    response = fake.get("/v1/charges", params={"customer": gateway_customer_id, "limit": 100})
    response.raise_for_status()
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def only_payment(store: Store, req: ChargeRequest) -> Payment:
    """The single payments row of the request's subscription."""
    [row] = store.payments(req.subscription_id)
    return row


# --- charges ------------------------------------------------------------------------------------


def test_successful_charge_records_one_succeeded_payment_with_the_intent_id(
    store: Store, gateway: StripeGateway, fake: httpx.Client
) -> None:
    req = charge_request(gateway)

    result = PaymentActivities(gateway, store).charge(req)

    assert result.succeeded
    assert (result.idempotency_key, result.amount_minor, result.currency) == (
        req.idempotency_key,
        3000,
        "USD",
    )
    assert result.decline_code is None and result.decline_category is None
    row = only_payment(store, req)
    assert (row.status, row.gateway_intent_id) == ("succeeded", result.intent_id)
    assert (row.invoice_id, row.attempt, row.amount_minor) == (req.invoice_id, 0, 3000)
    [intent] = intents_for(gateway, req.idempotency_key)
    assert (intent.id, intent.status, intent.amount_minor) == (result.intent_id, "succeeded", 3000)
    assert intent.metadata["subscription_id"] == req.subscription_id
    assert intent.metadata["invoice_id"] == req.invoice_id
    raw = fake.get(f"/v1/payment_intents/{intent.id}").json()
    assert raw["description"] == "Pro 2027-01-01"
    assert [c["status"] for c in charges_for(fake, req.gateway_customer_id)] == ["succeeded"]


def test_charging_again_with_the_same_key_returns_the_same_result_without_a_new_intent(
    store: Store, gateway: StripeGateway, fake: httpx.Client
) -> None:
    req = charge_request(gateway)
    payments = PaymentActivities(gateway, store)

    first = payments.charge(req)
    again = payments.charge(req)

    assert again == first
    assert len(intents_for(gateway, req.idempotency_key)) == 1
    assert len(charges_for(fake, req.gateway_customer_id)) == 1
    assert store.count(Payment) == 1


@pytest.mark.parametrize(
    ("card", "category", "code"),
    [
        (CHARGE_FAILS, DeclineCategory.SOFT, "card_declined"),
        (NEEDS_3DS, DeclineCategory.AUTHENTICATION_REQUIRED, "authentication_required"),
    ],
    ids=["card-declined", "authentication-required"],
)
def test_declined_card_records_declined_with_a_category_and_is_not_charged_again(
    store: Store,
    gateway: StripeGateway,
    fake: httpx.Client,
    card: str,
    category: DeclineCategory,
    code: str,
) -> None:
    req = charge_request(gateway, card)
    payments = PaymentActivities(gateway, store)

    result = payments.charge(req)

    assert result.status == "declined"
    assert (result.decline_code, result.decline_category) == (code, category.value)
    assert result.message
    row = only_payment(store, req)
    assert (row.status, row.decline_code, row.decline_category) == ("declined", code, category)
    assert row.gateway_intent_id == result.intent_id is not None

    assert payments.charge(req) == result  # a retry of the same attempt replays the outcome
    assert len(intents_for(gateway, req.idempotency_key)) == 1
    assert len(charges_for(fake, req.gateway_customer_id)) <= 1


def test_same_key_with_another_amount_is_refused(store: Store, gateway: StripeGateway) -> None:
    req = charge_request(gateway)
    payments = PaymentActivities(gateway, store)
    payments.charge(req)

    with pytest.raises(ApplicationError) as info:
        payments.charge(req.model_copy(update={"amount_minor": 3100}))

    assert info.value.type == "IDEMPOTENCY_MISMATCH"
    assert info.value.non_retryable
    assert len(intents_for(gateway, req.idempotency_key)) == 1


# --- crashes and retries -------------------------------------------------------------------------


def test_retry_after_a_crash_before_confirm_confirms_the_stored_intent_once(
    store: Store, localstripe_url: str, fake: httpx.Client
) -> None:
    gateway = make_gateway(localstripe_url, CrashBeforeConfirm)
    req = charge_request(gateway)
    payments = PaymentActivities(gateway, store)

    with pytest.raises(SimulatedCrash):
        payments.charge(req)

    row = only_payment(store, req)
    assert row.status == "pending" and row.gateway_intent_id is not None
    [pending] = intents_for(gateway, req.idempotency_key)
    assert (pending.id, pending.status) == (row.gateway_intent_id, "requires_confirmation")
    assert charges_for(fake, req.gateway_customer_id) == []  # no money moved yet

    result = payments.charge(req)

    assert result.succeeded and result.intent_id == row.gateway_intent_id
    [intent] = intents_for(gateway, req.idempotency_key)
    assert (intent.id, intent.status) == (row.gateway_intent_id, "succeeded")
    assert [c["status"] for c in charges_for(fake, req.gateway_customer_id)] == ["succeeded"]
    assert only_payment(store, req).status == "succeeded"


def test_retry_after_a_crash_after_confirm_records_the_payment_without_charging_again(
    store: Store, localstripe_url: str, fake: httpx.Client
) -> None:
    gateway = make_gateway(localstripe_url, CrashAfterConfirm)
    assert isinstance(gateway, CrashAfterConfirm)
    req = charge_request(gateway)
    payments = PaymentActivities(gateway, store)

    with pytest.raises(SimulatedCrash):
        payments.charge(req)

    [confirmed] = gateway.confirmed
    assert confirmed.status == "succeeded"  # the money moved ...
    row = only_payment(store, req)
    assert (row.status, row.gateway_intent_id) == ("pending", confirmed.id)  # ... unrecorded

    result = payments.charge(req)

    assert result.succeeded and result.intent_id == confirmed.id
    [intent] = intents_for(gateway, req.idempotency_key)
    assert (intent.id, intent.status) == (confirmed.id, "succeeded")
    assert [c["status"] for c in charges_for(fake, req.gateway_customer_id)] == ["succeeded"]
    assert only_payment(store, req).status == "succeeded"


def test_retry_after_a_crash_before_the_intent_id_is_stored_moves_money_once(
    store: Store, localstripe_url: str, fake: httpx.Client
) -> None:
    gateway = make_gateway(localstripe_url, CrashAfterCreate)
    req = charge_request(gateway)
    payments = PaymentActivities(gateway, store)

    with pytest.raises(SimulatedCrash):
        payments.charge(req)
    assert only_payment(store, req).gateway_intent_id is None

    result = payments.charge(req)

    assert result.succeeded
    succeeded = [i for i in intents_for(gateway, req.idempotency_key) if i.status == "succeeded"]
    assert [i.id for i in succeeded] == [result.intent_id]
    assert [c["status"] for c in charges_for(fake, req.gateway_customer_id)] == ["succeeded"]
    # localstripe ignores idempotency keys, so the first (never confirmed) intent stays behind;
    # real Stripe would hand the same intent back within 24 hours. It can never be charged: its
    # id was never recorded, and only recorded intents are confirmed.
    leftovers = [i for i in intents_for(gateway, req.idempotency_key) if i.id != result.intent_id]
    assert all(i.status == "requires_confirmation" for i in leftovers)


# --- customers -----------------------------------------------------------------------------------


def test_provision_customer_twice_creates_one_gateway_customer_and_attaches_the_card(
    store: Store, gateway: StripeGateway, fake: httpx.Client
) -> None:
    email = f"{uuid.uuid4().hex[:10]}@example.com"
    customer_id = f"cust_{uuid.uuid4().hex[:16]}"
    pm_id = gateway.create_test_payment_method(VISA)
    req = ProvisionCustomer(
        customer_id=customer_id, email=email, timezone="Europe/Paris", payment_method_id=pm_id
    )
    payments = PaymentActivities(gateway, store)

    first = payments.provision_customer(req)
    again = payments.provision_customer(req)

    assert again == first
    assert (first.card_brand, first.card_last4) == ("visa", "4242")
    listed = fake.get("/v1/customers", params={"email": email, "limit": 100}).json()["data"]
    assert [c["id"] for c in listed] == [first.gateway_customer_id]
    assert gateway.retrieve_payment_method(pm_id).customer_id == first.gateway_customer_id
    row = store.get_customer(customer_id)
    assert row is not None
    assert (row.email, row.timezone, row.gateway_customer_id) == (
        email,
        "Europe/Paris",
        first.gateway_customer_id,
    )
    assert store.count(Customer) == 1


def test_provision_customer_with_a_card_declined_when_saved_is_a_non_retryable_decline(
    store: Store, gateway: StripeGateway
) -> None:
    pm_id = gateway.create_test_payment_method(ATTACH_DECLINED)
    req = ProvisionCustomer(
        customer_id=f"cust_{uuid.uuid4().hex[:16]}",
        email=f"{uuid.uuid4().hex[:10]}@example.com",
        timezone="UTC",
        payment_method_id=pm_id,
    )

    with pytest.raises(ApplicationError) as info:
        PaymentActivities(gateway, store).provision_customer(req)

    assert info.value.type == ErrorCode.PAYMENT_DECLINED
    assert info.value.non_retryable
    assert gateway.retrieve_payment_method(pm_id).customer_id is None


class SlowConfirm(StripeGateway):
    """The real gateway, with a confirm that takes a while (a slow issuer)."""

    def confirm_payment_intent(
        self, intent_id: str, *, idempotency_key: str, off_session: bool = True
    ) -> IntentInfo:
        time.sleep(0.5)
        return super().confirm_payment_intent(
            intent_id, idempotency_key=idempotency_key, off_session=off_session
        )


def test_a_slow_charge_keeps_heartbeating_from_its_side_thread(
    store: Store, localstripe_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(payments_module, "HEARTBEAT_INTERVAL_S", 0.05)
    gateway = make_gateway(localstripe_url, SlowConfirm)
    beats: list[tuple[Any, ...]] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)
    result = env.run(PaymentActivities(gateway, store).charge, charge_request(gateway))
    assert result.status == "succeeded"
    assert len(beats) >= 5  # ~0.5 s of confirm at one beat per 50 ms


def test_a_concurrent_execution_of_the_same_attempt_confirms_only_the_stored_intent(
    store: Store, gateway: StripeGateway
) -> None:
    req = charge_request(gateway)
    activities = PaymentActivities(gateway, store)
    # A timed-out execution created and stored its intent but has not confirmed it yet...
    store.begin_payment(
        Payment(
            idempotency_key=req.idempotency_key,
            invoice_id=req.invoice_id,
            subscription_id=req.subscription_id,
            amount_minor=req.amount_minor,
            currency=req.currency,
            status="pending",
            created_at=datetime.now(UTC),
            updated_at=datetime.now(UTC),
        )
    )
    first = gateway.create_payment_intent(
        amount_minor=req.amount_minor,
        currency=req.currency,
        customer_id=req.gateway_customer_id,
        payment_method_id=req.payment_method_id,
        idempotency_key=req.idempotency_key,
        metadata={"subscription_id": req.subscription_id},
    )
    assert store.claim_intent(req.idempotency_key, first.id) == first.id
    # ...a late claim by another execution is refused: the stored intent wins.
    assert store.claim_intent(req.idempotency_key, "pi_other") == first.id
    result = activities.charge(req)
    assert result.intent_id == first.id and result.status == "succeeded"
    succeeded = [i for i in intents_for(gateway, req.idempotency_key) if i.status == "succeeded"]
    assert [i.id for i in succeeded] == [first.id]
