"""StripeGateway against a real localstripe process (the same code path as real Stripe).

Charges and refunds are also read straight from localstripe's HTTP API, independently of the
gateway, to prove how many times money moved.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError

from activities.gateway import StripeGateway
from activities.gateway_errors import DeclineCategory, gateway_call
from models.errors import ErrorCode, OmsError
from tests.support.procs import free_port

TEST_KEY = "sk_test_oms_gateway"
VISA = "4242424242424242"
CHARGE_FAILS = "4000000000000341"  # attaches fine, every charge is declined
ATTACH_DECLINED = "4000000000000002"  # localstripe declines it when saved to a customer
NEEDS_3DS = "4000002500003155"


@pytest.fixture
def gateway(localstripe_url: str) -> StripeGateway:
    return StripeGateway(TEST_KEY, api_base=localstripe_url, max_network_retries=1, timeout_s=10)


@pytest.fixture
def fake(localstripe_url: str) -> Iterator[httpx.Client]:
    """Raw HTTP access to localstripe, to observe charges without going through the gateway."""
    with httpx.Client(
        base_url=localstripe_url, headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=10
    ) as client:
        yield client


def _key() -> str:
    return f"test:{uuid.uuid4().hex}"


def _customer(gateway: StripeGateway) -> str:
    return gateway.create_customer(
        email=f"{uuid.uuid4().hex[:10]}@example.com",
        metadata={"oms_customer_id": "c1"},
        idempotency_key=_key(),
    )


def _customer_with_card(gateway: StripeGateway, number: str = VISA) -> tuple[str, str]:
    customer_id = _customer(gateway)
    pm_id = gateway.create_test_payment_method(number)
    gateway.attach_payment_method(pm_id, customer_id)
    return customer_id, pm_id


def _charges(fake: httpx.Client, customer_id: str) -> list[dict[str, Any]]:
    response = fake.get("/v1/charges", params={"customer": customer_id, "limit": 100})
    response.raise_for_status()
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def _refunds(fake: httpx.Client, intent_id: str) -> list[dict[str, Any]]:
    response = fake.get("/v1/refunds", params={"payment_intent": intent_id, "limit": 100})
    response.raise_for_status()
    data: list[dict[str, Any]] = response.json()["data"]
    return data


# --- customers and cards --------------------------------------------------------------------------


def test_create_customer_returns_the_same_customer_for_the_same_key(gateway: StripeGateway) -> None:
    email = f"{uuid.uuid4().hex[:10]}@example.com"
    key = _key()

    first = gateway.create_customer(
        email=email, metadata={"oms_customer_id": "c1"}, idempotency_key=key
    )
    again = gateway.create_customer(
        email=email, metadata={"oms_customer_id": "c1"}, idempotency_key=key
    )
    other = gateway.create_customer(
        email=email, metadata={"oms_customer_id": "c2"}, idempotency_key=_key()
    )

    assert first.startswith("cus_")
    assert again == first
    assert other != first


def test_test_card_is_tokenized_with_default_expiry_three_years_out(gateway: StripeGateway) -> None:
    pm_id = gateway.create_test_payment_method(VISA, today=date(2031, 6, 15))

    info = gateway.retrieve_payment_method(pm_id)

    assert pm_id.startswith("pm_")
    assert info.id == pm_id
    assert (info.brand, info.last4, info.exp_month, info.exp_year) == ("visa", "4242", 12, 2034)
    assert info.customer_id is None


@pytest.mark.parametrize(
    ("api_key", "local"),
    [("sk_live_abcdef", True), ("rk_live_abcdef", True), (TEST_KEY, False)],
    ids=["live-secret-key", "live-restricted-key", "real-stripe-endpoint"],
)
def test_raw_card_numbers_are_refused_for_live_keys_and_the_real_endpoint(
    localstripe_url: str, api_key: str, local: bool
) -> None:
    gateway = StripeGateway(api_key, api_base=localstripe_url if local else None)

    with pytest.raises(OmsError) as info:
        gateway.create_test_payment_method(VISA)

    assert info.value.code == ErrorCode.LIVE_KEY_REFUSED
    assert VISA not in info.value.message


@pytest.mark.parametrize(
    "number",
    [
        "4242424242424241",
        "4242 4242 4242 4242",
        "42424242424",
        "42424242424242424242",
        "4242abcd42424242",
        "",
    ],
    ids=["luhn", "spaces", "too-short", "too-long", "letters", "empty"],
)
def test_invalid_card_numbers_are_refused(gateway: StripeGateway, number: str) -> None:
    with pytest.raises(OmsError) as info:
        gateway.create_test_payment_method(number)

    assert info.value.code == ErrorCode.INVALID_REQUEST


def test_missing_payment_method_is_payment_method_invalid(gateway: StripeGateway) -> None:
    with pytest.raises(OmsError) as info:
        gateway.retrieve_payment_method("pm_doesnotexist123")

    assert info.value.code == ErrorCode.PAYMENT_METHOD_INVALID


def test_attaching_twice_to_the_same_customer_is_fine(gateway: StripeGateway) -> None:
    customer_id, pm_id = _customer_with_card(gateway)

    gateway.attach_payment_method(pm_id, customer_id)

    assert gateway.retrieve_payment_method(pm_id).customer_id == customer_id


def test_attaching_to_another_customer_is_refused(gateway: StripeGateway) -> None:
    _, pm_id = _customer_with_card(gateway)

    with pytest.raises(OmsError) as info:
        gateway.attach_payment_method(pm_id, _customer(gateway))

    assert info.value.code == ErrorCode.PAYMENT_METHOD_INVALID


def test_card_declined_when_saved_maps_to_payment_declined(gateway: StripeGateway) -> None:
    customer_id = _customer(gateway)
    pm_id = gateway.create_test_payment_method(ATTACH_DECLINED)

    with pytest.raises(ApplicationError) as info, gateway_call():
        gateway.attach_payment_method(pm_id, customer_id)

    assert info.value.type == ErrorCode.PAYMENT_DECLINED
    assert info.value.non_retryable is True
    assert info.value.details[0]["category"] == DeclineCategory.SOFT


# --- payments -----------------------------------------------------------------------------------


def test_intent_is_created_unconfirmed_and_confirm_charges_it(
    gateway: StripeGateway, fake: httpx.Client
) -> None:
    customer_id, pm_id = _customer_with_card(gateway)
    key = _key()

    created = gateway.create_payment_intent(
        amount_minor=4_999,
        currency="eur",
        customer_id=customer_id,
        payment_method_id=pm_id,
        idempotency_key=key,
        metadata={"invoice_id": "in_1"},
    )

    assert created.status == "requires_confirmation"
    assert _charges(fake, customer_id) == []  # creating moved no money

    confirmed = gateway.confirm_payment_intent(created.id, idempotency_key=key + ":confirm")

    assert confirmed.id == created.id
    assert confirmed.status == "succeeded"
    assert (confirmed.amount_minor, confirmed.currency) == (4_999, "EUR")
    assert (confirmed.customer_id, confirmed.payment_method_id) == (customer_id, pm_id)
    assert confirmed.metadata == {"invoice_id": "in_1", "idempotency_key": key}
    assert confirmed.decline is None
    assert confirmed.latest_charge_id is not None
    assert gateway.retrieve_payment_intent(created.id) == confirmed


def test_confirming_twice_charges_once(gateway: StripeGateway, fake: httpx.Client) -> None:
    customer_id, pm_id = _customer_with_card(gateway)
    key = _key()
    intent = gateway.create_payment_intent(
        amount_minor=2_500,
        currency="usd",
        customer_id=customer_id,
        payment_method_id=pm_id,
        idempotency_key=key,
        metadata={},
    )

    first = gateway.confirm_payment_intent(intent.id, idempotency_key=key)
    second = gateway.confirm_payment_intent(intent.id, idempotency_key=key)

    assert first.status == second.status == "succeeded"
    charges = _charges(fake, customer_id)
    assert [(c["status"], c["amount"], c["payment_intent"]) for c in charges] == [
        ("succeeded", 2_500, intent.id)
    ]
    listed = [i for i in gateway.list_payment_intents() if i.metadata.get("idempotency_key") == key]
    assert [i.id for i in listed] == [intent.id]


def test_confirm_without_off_session_also_works(gateway: StripeGateway) -> None:
    customer_id, pm_id = _customer_with_card(gateway)
    key = _key()
    intent = gateway.create_payment_intent(
        amount_minor=100,
        currency="gbp",
        customer_id=customer_id,
        payment_method_id=pm_id,
        idempotency_key=key,
        metadata={},
    )

    assert gateway.confirm_payment_intent(
        intent.id, idempotency_key=key, off_session=False
    ).status == ("succeeded")


def test_declined_card_returns_a_soft_decline_and_is_not_charged_again(
    gateway: StripeGateway, fake: httpx.Client
) -> None:
    customer_id, pm_id = _customer_with_card(gateway, CHARGE_FAILS)
    key = _key()
    intent = gateway.create_payment_intent(
        amount_minor=1_000,
        currency="eur",
        customer_id=customer_id,
        payment_method_id=pm_id,
        idempotency_key=key,
        metadata={},
    )

    result = gateway.confirm_payment_intent(intent.id, idempotency_key=key)

    assert result.status == "requires_payment_method"
    assert result.decline is not None
    assert result.decline.code == "card_declined"
    assert result.decline.decline_code is None  # localstripe sends none
    assert result.decline.category == DeclineCategory.SOFT
    assert result.decline.charge_id is not None
    assert result.decline.message

    again = gateway.confirm_payment_intent(intent.id, idempotency_key=key)

    assert again.decline == result.decline
    assert [c["status"] for c in _charges(fake, customer_id)] == ["failed"]


def test_card_requiring_authentication_reports_authentication_required(
    gateway: StripeGateway, fake: httpx.Client
) -> None:
    customer_id, pm_id = _customer_with_card(gateway, NEEDS_3DS)
    key = _key()
    intent = gateway.create_payment_intent(
        amount_minor=1_000,
        currency="eur",
        customer_id=customer_id,
        payment_method_id=pm_id,
        idempotency_key=key,
        metadata={},
    )

    result = gateway.confirm_payment_intent(intent.id, idempotency_key=key)
    again = gateway.confirm_payment_intent(intent.id, idempotency_key=key)

    # localstripe parks it in requires_action; real Stripe off-session declines it instead.
    assert result.status in {"requires_action", "requires_payment_method"}
    assert result.decline is not None
    assert result.decline.category == DeclineCategory.AUTHENTICATION_REQUIRED
    assert again.decline == result.decline
    assert _charges(fake, customer_id) == []


@pytest.mark.parametrize(
    ("currency", "amount_minor"),
    # KWD: real Stripe wants card amounts in three-decimal currencies to end in 0 (rounding is
    # the money module's job); localstripe checks nothing, so only valid amounts are used here.
    [("JPY", 1_500), ("KWD", 12_340), ("kwd", 50)],
    ids=["jpy-zero-decimal", "kwd-three-decimal", "kwd-lower-case"],
)
def test_zero_and_three_decimal_amounts_pass_through_unchanged(
    gateway: StripeGateway, fake: httpx.Client, currency: str, amount_minor: int
) -> None:
    customer_id, pm_id = _customer_with_card(gateway)
    key = _key()
    intent = gateway.create_payment_intent(
        amount_minor=amount_minor,
        currency=currency,
        customer_id=customer_id,
        payment_method_id=pm_id,
        idempotency_key=key,
        metadata={},
    )

    confirmed = gateway.confirm_payment_intent(intent.id, idempotency_key=key)

    assert (confirmed.status, confirmed.amount_minor, confirmed.currency) == (
        "succeeded",
        amount_minor,
        currency.upper(),
    )
    (charge,) = _charges(fake, customer_id)
    assert (charge["amount"], charge["currency"]) == (amount_minor, currency.lower())


def test_description_is_accepted(gateway: StripeGateway) -> None:
    # Sent as real Stripe expects; our localstripe launcher accepts it like Stripe does.
    customer_id, pm_id = _customer_with_card(gateway)
    for _ in range(2):
        key = _key()
        intent = gateway.create_payment_intent(
            amount_minor=700,
            currency="eur",
            customer_id=customer_id,
            payment_method_id=pm_id,
            idempotency_key=key,
            metadata={},
            description="Pro plan, March",
        )
        assert intent.status == "requires_confirmation"


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"amount_minor": 0}, ErrorCode.INVALID_AMOUNT),
        ({"amount_minor": -5}, ErrorCode.INVALID_AMOUNT),
        ({"currency": "euro"}, ErrorCode.INVALID_CURRENCY),
        ({"idempotency_key": ""}, ErrorCode.INVALID_REQUEST),
    ],
    ids=["zero", "negative", "bad-currency", "no-key"],
)
def test_bad_intent_requests_are_refused_before_reaching_the_gateway(
    gateway: StripeGateway, kwargs: dict[str, Any], code: ErrorCode
) -> None:
    args: dict[str, Any] = {
        "amount_minor": 100,
        "currency": "eur",
        "customer_id": "cus_x",
        "payment_method_id": "pm_x",
        "idempotency_key": "k",
        "metadata": {},
    }
    with pytest.raises(OmsError) as info:
        gateway.create_payment_intent(**{**args, **kwargs})

    assert info.value.code == code


# --- refunds ------------------------------------------------------------------------------------


def test_partial_refund_is_recorded_once_with_its_amount(
    gateway: StripeGateway, fake: httpx.Client
) -> None:
    customer_id, pm_id = _customer_with_card(gateway)
    key = _key()
    intent = gateway.create_payment_intent(
        amount_minor=5_000,
        currency="eur",
        customer_id=customer_id,
        payment_method_id=pm_id,
        idempotency_key=key,
        metadata={},
    )
    gateway.confirm_payment_intent(intent.id, idempotency_key=key)
    refund_key = _key()

    refund = gateway.refund(
        intent_id=intent.id,
        amount_minor=1_200,
        idempotency_key=refund_key,
        metadata={"credit": "cn_1"},
    )
    again = gateway.refund(
        intent_id=intent.id,
        amount_minor=1_200,
        idempotency_key=refund_key,
        metadata={"credit": "cn_1"},
    )

    assert refund.id.startswith("re_")
    assert (refund.intent_id, refund.amount_minor, refund.currency, refund.status) == (
        intent.id,
        1_200,
        "EUR",
        "succeeded",
    )
    assert again == refund
    assert [r["amount"] for r in _refunds(fake, intent.id)] == [1_200]

    with pytest.raises(OmsError) as info:
        gateway.refund(intent_id=intent.id, amount_minor=3_801, idempotency_key=_key(), metadata={})
    assert info.value.code == ErrorCode.INVALID_AMOUNT

    rest = gateway.refund(
        intent_id=intent.id, amount_minor=3_800, idempotency_key=_key(), metadata={}
    )
    assert rest.amount_minor == 3_800


def test_refund_of_an_unpaid_intent_is_refused(gateway: StripeGateway) -> None:
    customer_id, pm_id = _customer_with_card(gateway)
    intent = gateway.create_payment_intent(
        amount_minor=900,
        currency="eur",
        customer_id=customer_id,
        payment_method_id=pm_id,
        idempotency_key=_key(),
        metadata={},
    )

    with pytest.raises(OmsError) as info:
        gateway.refund(intent_id=intent.id, amount_minor=100, idempotency_key=_key(), metadata={})

    assert info.value.code == ErrorCode.INVALID_REQUEST


# --- listing and health -------------------------------------------------------------------------


def test_list_payment_intents_pages_through_everything(gateway: StripeGateway) -> None:
    customer_id, pm_id = _customer_with_card(gateway)
    created = {
        gateway.create_payment_intent(
            amount_minor=300 + i,
            currency="eur",
            customer_id=customer_id,
            payment_method_id=pm_id,
            idempotency_key=_key(),
            metadata={"batch": "list"},
        ).id
        for i in range(5)
    }

    listed = list(gateway.list_payment_intents(page_size=2))

    ids = [i.id for i in listed]
    assert created <= set(ids)
    assert len(ids) == len(set(ids))  # no page repeated
    assert {i.amount_minor for i in listed if i.id in created} == {300, 301, 302, 303, 304}


def test_ping_succeeds_against_the_gateway(gateway: StripeGateway) -> None:
    gateway.ping()


def test_ping_fails_clearly_when_nothing_listens() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    gateway = StripeGateway(TEST_KEY, api_base=endpoint, max_network_retries=0, timeout_s=2)

    with pytest.raises(OmsError) as info:
        gateway.ping()

    assert info.value.code == ErrorCode.GATEWAY_UNAVAILABLE
    assert endpoint in info.value.message


def test_ping_reports_a_refused_key_without_revealing_it(localstripe_url: str) -> None:
    gateway = StripeGateway(
        "pk_test_not_a_secret_key", api_base=localstripe_url, max_network_retries=0
    )

    with pytest.raises(OmsError) as info:
        gateway.ping()

    assert info.value.code == ErrorCode.GATEWAY_UNAVAILABLE
    assert "refused" in info.value.message
    assert "pk_test" not in info.value.message
