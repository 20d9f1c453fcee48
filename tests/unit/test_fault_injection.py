"""Fault injection decisions and the exceptions they raise (no gateway needed: pure functions)."""

from __future__ import annotations

from collections import Counter

import pytest
import stripe

from activities.fault_injection import (
    CONFIRM,
    FAULT_WEIGHTS,
    FAULTED_CALLS,
    FIRST_CONFIRM_ONLY,
    MUTATING_CALLS,
    FaultKind,
    GatewayWrapper,
    InjectedFaults,
    applicable_kinds,
    build_fault_error,
)
from activities.gateway import StripeGateway
from activities.gateway_errors import retry_after
from activities.gateway_port import PaymentGateway

KEY = "sub_1:period-3:attempt-0"


def faults(rate: float = 0.3, seed: int = 7, max_faulty_tries: int = 2) -> InjectedFaults:
    # Decisions never touch the wrapped gateway: any StripeGateway will do (no request is sent).
    inner = StripeGateway("sk_test_unit", api_base="http://127.0.0.1:9")
    return InjectedFaults(inner, rate=rate, seed=seed, max_faulty_tries=max_faulty_tries)


PORT_MEMBERS = {name for name in vars(PaymentGateway) if not name.startswith("_")}


def test_the_wrapper_forwards_every_member_of_the_gateway_port() -> None:
    missing = {name for name in PORT_MEMBERS if name not in vars(GatewayWrapper)}

    assert PORT_MEMBERS, "PaymentGateway lists the gateway calls"
    assert missing == set(), f"GatewayWrapper does not forward {missing}"


def test_wrappers_hold_a_gateway_instead_of_being_one() -> None:
    assert not issubclass(GatewayWrapper, StripeGateway)
    assert all(hasattr(StripeGateway, name) for name in PORT_MEMBERS)


def test_decisions_are_a_pure_function_of_seed_call_key_and_try() -> None:
    a, b = faults(), faults()
    calls = [
        (call, f"key-{i}", t) for call in sorted(FAULTED_CALLS) for i in range(50) for t in (0, 1)
    ]

    assert [a.decide(*c) for c in calls] == [b.decide(*c) for c in calls]
    assert any(a.decide(*c) for c in calls) and not all(a.decide(*c) for c in calls)
    other_seed = faults(seed=8)
    assert [a.decide(*c) for c in calls] != [other_seed.decide(*c) for c in calls]


def test_only_the_first_tries_of_a_key_can_fail() -> None:
    always = faults(rate=1.0, max_faulty_tries=2)

    assert always.decide(CONFIRM, KEY, 0) is not None
    assert always.decide(CONFIRM, KEY, 1) is not None
    assert always.decide(CONFIRM, KEY, 2) is None  # a retry with the same key gets through
    assert faults(rate=0.0).decide(CONFIRM, KEY, 0) is None
    assert always.decide("list_payment_intents", KEY, 0) is None  # reconciliation reads the truth
    assert always.decide("create_test_payment_method", KEY, 0) is None


def test_each_fault_class_goes_only_where_it_makes_sense() -> None:
    for call in FAULTED_CALLS:
        for try_no in (0, 1):
            kinds = set(applicable_kinds(call, try_no))
            assert (FaultKind.CONNECTION_AFTER in kinds) == (call in MUTATING_CALLS)
            first_confirm = call == CONFIRM and try_no == 0
            assert (kinds >= FIRST_CONFIRM_ONLY) == first_confirm
            assert not (FIRST_CONFIRM_ONLY & kinds) or first_confirm


def test_fault_classes_follow_the_documented_weights() -> None:
    always = faults(rate=1.0)
    seen = Counter(always.decide(CONFIRM, f"k{i}", 0) for i in range(20_000))
    total = sum(FAULT_WEIGHTS.values())

    for kind, weight in FAULT_WEIGHTS.items():
        assert seen[kind] / 20_000 == pytest.approx(weight / total, abs=0.015), kind


@pytest.mark.parametrize(
    ("kind", "cls", "status"),
    [
        (FaultKind.CONNECTION_BEFORE, stripe.APIConnectionError, None),
        (FaultKind.CONNECTION_AFTER, stripe.APIConnectionError, None),
        (FaultKind.SERVER_ERROR, stripe.APIError, 500),
        (FaultKind.RATE_LIMITED, stripe.RateLimitError, 429),
        (FaultKind.RATE_LIMITED_RETRY_AFTER, stripe.RateLimitError, 429),
        (FaultKind.AUTHENTICATION, stripe.AuthenticationError, 401),
        (FaultKind.INVALID_REQUEST, stripe.InvalidRequestError, 400),
    ],
)
def test_every_fault_raises_a_real_stripe_exception_of_its_class(
    kind: FaultKind, cls: type[stripe.StripeError], status: int | None
) -> None:
    err = build_fault_error(kind, request_id="req_x")

    assert type(err) is cls
    assert err.http_status == status
    if kind in (FaultKind.CONNECTION_BEFORE, FaultKind.CONNECTION_AFTER):
        assert isinstance(err, stripe.APIConnectionError) and err.should_retry
    else:
        assert err.request_id == "req_x"
        assert err.error is not None  # the JSON body is parsed as the SDK does
    if kind == FaultKind.INVALID_REQUEST:
        assert err.code == "payment_method_unexpected_state"
        assert isinstance(err, stripe.InvalidRequestError) and err.param == "payment_method"


def test_rate_limits_come_with_and_without_retry_after() -> None:
    with_header = build_fault_error(FaultKind.RATE_LIMITED_RETRY_AFTER, request_id="r")
    without = build_fault_error(FaultKind.RATE_LIMITED, request_id="r")

    assert retry_after(with_header.headers) is not None
    assert retry_after(without.headers) is None


def test_server_errors_vary_among_5xx_statuses() -> None:
    statuses = {
        build_fault_error(FaultKind.SERVER_ERROR, request_id="r", draw=d / 10).http_status
        for d in range(10)
    }

    assert statuses == {500, 502, 503}


def test_processing_is_an_answer_not_an_exception() -> None:
    with pytest.raises(ValueError):
        build_fault_error(FaultKind.PROCESSING, request_id="r")


def test_bad_rates_are_refused() -> None:
    with pytest.raises(ValueError):
        faults(rate=1.5)
