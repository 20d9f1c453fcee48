"""The fault-injecting wrappers on a real localstripe: the real call happens, or visibly does not.

Each test forces one fault class (``weights`` with a single class, ``rate=1``) and reads the
intent straight from the unwrapped gateway to see whether money moved.
"""

from __future__ import annotations

import uuid

import pytest
import stripe

from activities.fault_injection import FaultKind, InjectedDeclines, InjectedFaults
from activities.gateway import IntentInfo, StripeGateway

TEST_KEY = "sk_test_oms_faults"
VISA = "4242424242424242"


@pytest.fixture
def gateway(localstripe_url: str) -> StripeGateway:
    return StripeGateway(TEST_KEY, api_base=localstripe_url, max_network_retries=0, timeout_s=10)


def only(kind: FaultKind, inner: StripeGateway, **kw: int) -> InjectedFaults:
    return InjectedFaults(inner, rate=1.0, seed=1, weights={kind: 1}, **kw)


def new_intent(gateway: StripeGateway) -> tuple[IntentInfo, str]:
    key = f"test:{uuid.uuid4().hex}"
    customer = gateway.create_customer(
        email=f"{uuid.uuid4().hex[:10]}@example.com", metadata={}, idempotency_key=f"c:{key}"
    )
    pm = gateway.create_test_payment_method(VISA)
    gateway.attach_payment_method(pm, customer)
    intent = gateway.create_payment_intent(
        amount_minor=1500,
        currency="USD",
        customer_id=customer,
        payment_method_id=pm,
        idempotency_key=key,
        metadata={"subscription_id": "sub_faults", "invoice_id": "in_faults"},
    )
    return intent, key


def test_a_lost_response_after_a_confirmation_moved_the_money_once(
    gateway: StripeGateway,
) -> None:
    intent, key = new_intent(gateway)
    faulty = only(FaultKind.CONNECTION_AFTER, gateway, max_faulty_tries=1)

    with pytest.raises(stripe.APIConnectionError):
        faulty.confirm_payment_intent(intent.id, idempotency_key=key)
    assert gateway.retrieve_payment_intent(intent.id).status == "succeeded"  # the money moved

    retried = faulty.confirm_payment_intent(intent.id, idempotency_key=key)
    assert retried.status == "succeeded"
    assert faulty.injected_counts == {"connection_after": 1}


def test_a_fault_before_the_call_leaves_the_intent_untouched_and_stops_recurring(
    gateway: StripeGateway,
) -> None:
    intent, key = new_intent(gateway)
    faulty = only(FaultKind.CONNECTION_BEFORE, gateway, max_faulty_tries=2)

    for _ in range(2):
        with pytest.raises(stripe.APIConnectionError):
            faulty.confirm_payment_intent(intent.id, idempotency_key=key)
        assert gateway.retrieve_payment_intent(intent.id).status == "requires_confirmation"
    assert faulty.confirm_payment_intent(intent.id, idempotency_key=key).status == "succeeded"


def test_a_detached_card_is_refused_on_the_first_confirmation_only(
    gateway: StripeGateway,
) -> None:
    intent, key = new_intent(gateway)
    faulty = only(FaultKind.INVALID_REQUEST, gateway)

    with pytest.raises(stripe.InvalidRequestError) as info:
        faulty.confirm_payment_intent(intent.id, idempotency_key=key)
    assert info.value.code == "payment_method_unexpected_state"
    assert gateway.retrieve_payment_intent(intent.id).status == "requires_confirmation"
    # A second try of the same key is not a first confirmation: nothing applies, it goes through.
    assert faulty.confirm_payment_intent(intent.id, idempotency_key=key).status == "succeeded"


def test_a_processing_payment_reads_processing_for_a_while_then_its_real_outcome(
    gateway: StripeGateway,
) -> None:
    intent, key = new_intent(gateway)
    faulty = only(FaultKind.PROCESSING, gateway, max_processing_reads=3)

    first = faulty.confirm_payment_intent(intent.id, idempotency_key=key)
    assert first.status == "processing" and first.decline is None
    assert gateway.retrieve_payment_intent(intent.id).status == "succeeded"  # confirmed for real
    reads = [faulty.retrieve_payment_intent(intent.id).status for _ in range(5)]
    assert reads[-1] == "succeeded"
    assert 2 <= reads.index("succeeded") + 1 <= 4  # 1-3 more "processing" reads, then the truth
    assert set(reads[: reads.index("succeeded")]) <= {"processing"}


def test_injected_declines_compose_under_faults_and_read_back_declined(
    gateway: StripeGateway,
) -> None:
    intent, key = new_intent(gateway)
    declines = InjectedDeclines(gateway, decline_rate=1.0, hard_share=0.0)
    faulty = only(FaultKind.PROCESSING, declines, max_processing_reads=1)

    first = faulty.confirm_payment_intent(intent.id, idempotency_key=key)
    after = faulty.retrieve_payment_intent(intent.id)  # the one "processing" read
    final = faulty.retrieve_payment_intent(intent.id)

    assert first.status == after.status == "processing"
    assert final.status == "requires_payment_method"
    assert final.decline is not None and final.decline.decline_code == "insufficient_funds"
    assert gateway.retrieve_payment_intent(intent.id).status == "requires_confirmation"  # no money
    assert faulty.base is gateway


def test_injected_declines_still_accept_an_api_key_as_before(localstripe_url: str) -> None:
    declines = InjectedDeclines(
        TEST_KEY, api_base=localstripe_url, decline_rate=0.0, max_network_retries=0
    )
    intent, key = new_intent(declines)

    assert declines.confirm_payment_intent(intent.id, idempotency_key=key).status == "succeeded"
    assert declines.endpoint == localstripe_url


def test_a_lost_refund_response_is_not_refunded_twice(gateway: StripeGateway) -> None:
    intent, key = new_intent(gateway)
    gateway.confirm_payment_intent(intent.id, idempotency_key=key)
    faulty = only(FaultKind.CONNECTION_AFTER, gateway, max_faulty_tries=1)

    def refund() -> int:
        return faulty.refund(
            intent_id=intent.id, amount_minor=1000, idempotency_key=f"{key}:rf", metadata={}
        ).amount_minor

    with pytest.raises(stripe.APIConnectionError):
        refund()
    assert refund() == 1000  # the retry finds the refund the lost response made
    with pytest.raises(Exception, match="only 500"):  # 1000 of 1500 refunded once, not twice
        gateway.refund(
            intent_id=intent.id, amount_minor=600, idempotency_key=f"{key}:r2", metadata={}
        )
