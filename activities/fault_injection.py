"""Gateway faults injected on top of the real gateway path, for simulations and tests.

Two wrappers compose around a :class:`~activities.gateway.StripeGateway` (or around each other):
each implements :class:`~activities.gateway_port.PaymentGateway` by delegating every call to the
gateway it holds, so the real request still goes to Stripe or localstripe unless the wrapper
decides to answer instead. Neither is a ``StripeGateway``: they stand wherever the port is expected.

* :class:`InjectedDeclines` answers a share ``decline_rate`` of confirmations with a card decline
  (``hard_share`` of them hard) instead of sending them. The injected decline is remembered, so
  reading the intent again reports the same decline.
* :class:`InjectedFaults` makes a share ``rate`` of gateway calls fail the way networks and Stripe
  fail, each fault a real ``stripe`` exception object of the class the SDK would raise.

``InjectedFaults(InjectedDeclines(StripeGateway(...)))`` is what ``oms simulate --faults`` runs.

Every decision is a pure function of the seed, the call (method name), its key (the idempotency
key, or the object id for calls without one) and the try number of that call and key, counted in
the wrapper. A run with the same seed and the same sequence of calls sees the same faults, and a
retry of the same attempt is decided again as that try. A declined confirmation is decided by key
alone: a transport retry of the attempt gets the same answer, a new dunning attempt (a new key) is
decided afresh. Faults are transient: only the first :attr:`InjectedFaults.max_faulty_tries` tries
of a call and key can fail (2 by default), so a retry with the same key always gets through. (Tries
are counted in memory: a new process counts from 0 again.) ``oms simulate --faults RATE`` passes
``RATE`` as :attr:`InjectedFaults.rate`, the chance that one of those tries fails.

Fault classes and their share of the injected faults (:data:`FAULT_WEIGHTS`, in parts of 100; a
class that does not apply to a call is left out and the others share its weight):

* ``connection_before`` (20): ``APIConnectionError``; the request never left.
* ``connection_after`` (20): the real call succeeded (the money moved, the customer exists), then
  ``APIConnectionError``: the response was lost. Only calls that create or move something.
* ``server_error`` (15): ``APIError`` 500, 502 or 503, before the call.
* ``rate_limited`` (8): ``RateLimitError`` 429 without ``Retry-After``.
* ``rate_limited_retry_after`` (7): ``RateLimitError`` 429 with ``Retry-After: 1``.
* ``authentication`` (10): ``AuthenticationError`` 401, a rotated key: an outage of ours that heals,
  never the customer's decline.
* ``invalid_request`` (10): ``InvalidRequestError`` 400 ``payment_method_unexpected_state`` (the
  card was detached from the customer): on the first confirmation try of a key only, before the
  call.
* ``processing`` (10): the confirmation goes through, but the intent reads ``processing`` (confirm
  or retrieve) for 1 to 3 more reads before its real outcome shows: on the first confirmation try
  of a key only.

Calls faulted (:data:`FAULTED_CALLS`): the ones activities make: ``create_customer``,
``retrieve_payment_method``, ``attach_payment_method``, ``create_setup_intent``,
``confirm_setup_intent`` (enrollment saving a card), ``create_payment_intent``,
``retrieve_payment_intent``, ``confirm_payment_intent``, ``refund``. Never faulted:
``create_test_payment_method`` (the customer's browser tokenizing a card, not our server) and
``list_payment_intents`` (reconciliation reads the truth).
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import TYPE_CHECKING, Final

import stripe
import structlog

from activities.gateway import (
    Decline,
    IntentInfo,
    PaymentMethodInfo,
    RefundInfo,
    SetupInfo,
    StripeGateway,
)
from activities.gateway_errors import DeclineCategory
from activities.gateway_port import PaymentGateway

log = structlog.get_logger(__name__)

SOFT = ("insufficient_funds", "Your card has insufficient funds.")
HARD = ("stolen_card", "Your card was declined.")


def _draw(seed: int, *parts: object) -> float:
    """A uniform number in [0, 1) that depends only on ``seed`` and ``parts``."""
    text = ":".join(str(p) for p in (seed, *parts))
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class GatewayWrapper:
    """A gateway that delegates every call to the gateway it wraps (``inner``).

    It implements :class:`~activities.gateway_port.PaymentGateway` by delegation: it holds another
    gateway (a :class:`StripeGateway` or another wrapper) and forwards each member of the port to
    it. ``mypy --strict`` proves no member is missing (``_implements_the_port``, at the end of this
    module) and ``tests/unit/test_fault_injection.py`` checks each is defined here. Subclasses
    override the calls they interfere with.

    Args:
        inner: The gateway (or another wrapper) the calls go to.
    """

    def __init__(self, inner: PaymentGateway) -> None:
        self.inner = inner

    @property
    def base(self) -> PaymentGateway:
        """The gateway under every wrapper (for reads that must see the truth)."""
        inner = self.inner
        return inner.base if isinstance(inner, GatewayWrapper) else inner

    @property
    def endpoint(self) -> str:
        return self.inner.endpoint

    def create_customer(self, *, email: str, metadata: dict[str, str], idempotency_key: str) -> str:
        return self.inner.create_customer(
            email=email, metadata=metadata, idempotency_key=idempotency_key
        )

    def create_test_payment_method(
        self,
        card_number: str,
        exp_month: int = 12,
        exp_year: int | None = None,
        cvc: str = "123",
        *,
        today: date | None = None,
    ) -> str:
        return self.inner.create_test_payment_method(
            card_number, exp_month, exp_year, cvc, today=today
        )

    def retrieve_payment_method(self, pm_id: str) -> PaymentMethodInfo:
        return self.inner.retrieve_payment_method(pm_id)

    def attach_payment_method(self, pm_id: str, customer_id: str) -> None:
        self.inner.attach_payment_method(pm_id, customer_id)

    def create_setup_intent(
        self, *, customer_id: str, metadata: dict[str, str], idempotency_key: str
    ) -> str:
        return self.inner.create_setup_intent(
            customer_id=customer_id, metadata=metadata, idempotency_key=idempotency_key
        )

    def confirm_setup_intent(self, intent_id: str, payment_method_id: str) -> SetupInfo:
        return self.inner.confirm_setup_intent(intent_id, payment_method_id)

    def create_payment_intent(
        self,
        *,
        amount_minor: int,
        currency: str,
        customer_id: str,
        payment_method_id: str,
        idempotency_key: str,
        metadata: dict[str, str],
        description: str | None = None,
    ) -> IntentInfo:
        return self.inner.create_payment_intent(
            amount_minor=amount_minor,
            currency=currency,
            customer_id=customer_id,
            payment_method_id=payment_method_id,
            idempotency_key=idempotency_key,
            metadata=metadata,
            description=description,
        )

    def retrieve_payment_intent(self, intent_id: str) -> IntentInfo:
        return self.inner.retrieve_payment_intent(intent_id)

    def confirm_payment_intent(
        self, intent_id: str, *, idempotency_key: str, off_session: bool = True
    ) -> IntentInfo:
        return self.inner.confirm_payment_intent(
            intent_id, idempotency_key=idempotency_key, off_session=off_session
        )

    def list_payment_intents(self, *, page_size: int = 100) -> Iterator[IntentInfo]:
        return self.inner.list_payment_intents(page_size=page_size)

    def refund(
        self, *, intent_id: str, amount_minor: int, idempotency_key: str, metadata: dict[str, str]
    ) -> RefundInfo:
        return self.inner.refund(
            intent_id=intent_id,
            amount_minor=amount_minor,
            idempotency_key=idempotency_key,
            metadata=metadata,
        )


# --- declines --------------------------------------------------------------------------------


class InjectedDeclines(GatewayWrapper):
    """Declines ``decline_rate`` of confirmations (``hard_share`` of those are hard declines).

    Args:
        gateway: The gateway to wrap; or, as before this became a wrapper, the API key of a
            :class:`StripeGateway` built here with ``api_base``, ``max_network_retries`` and
            ``timeout_s``.
        decline_rate: Share of confirmations declined, each attempt (idempotency key) drawn afresh.
        hard_share: Share of the declines that are hard (``stolen_card``); the rest are soft
            (``insufficient_funds``).
        seed: Seed of the draws.
    """

    def __init__(
        self,
        gateway: PaymentGateway | str,
        *,
        decline_rate: float,
        hard_share: float = 0.1,
        seed: int = 0,
        api_base: str | None = None,
        max_network_retries: int = 2,
        timeout_s: float = 20,
    ) -> None:
        if not 0 <= decline_rate <= 1 or not 0 <= hard_share <= 1:
            raise ValueError("decline_rate and hard_share must be between 0 and 1")
        if isinstance(gateway, str):
            gateway = StripeGateway(
                gateway,
                api_base=api_base,
                max_network_retries=max_network_retries,
                timeout_s=timeout_s,
            )
        super().__init__(gateway)
        self.decline_rate = decline_rate
        self.hard_share = hard_share
        self.seed = seed
        self._lock = threading.Lock()
        self._declined: dict[str, IntentInfo] = {}

    def confirm_payment_intent(
        self, intent_id: str, *, idempotency_key: str, off_session: bool = True
    ) -> IntentInfo:
        with self._lock:
            declined = self._declined.get(intent_id)
        if declined is not None:
            return declined  # the decline stands: a failed intent is never confirmed again
        if _draw(self.seed, "decline", idempotency_key) >= self.decline_rate:
            return self.inner.confirm_payment_intent(
                intent_id, idempotency_key=idempotency_key, off_session=off_session
            )
        intent = self.inner.retrieve_payment_intent(intent_id)
        if intent.status != "requires_confirmation":
            return intent  # already settled by an earlier call: report it unchanged
        hard = _draw(self.seed, "hard", idempotency_key) < self.hard_share
        code, message = HARD if hard else SOFT
        declined = intent.model_copy(
            update={
                "status": "requires_payment_method",
                "decline": Decline(
                    code="card_declined",
                    decline_code=code,
                    message=message,
                    category=DeclineCategory.HARD if hard else DeclineCategory.SOFT,
                    charge_id=None,
                ),
            }
        )
        with self._lock:
            self._declined[intent_id] = declined
        log.info("gateway_decline_injected", intent_id=intent_id, decline_code=code)
        return declined

    def retrieve_payment_intent(self, intent_id: str) -> IntentInfo:
        with self._lock:
            declined = self._declined.get(intent_id)
        return declined if declined is not None else self.inner.retrieve_payment_intent(intent_id)


# --- faults ----------------------------------------------------------------------------------


class FaultKind(StrEnum):
    """A way a gateway call fails (see the module docstring for what each looks like)."""

    CONNECTION_BEFORE = "connection_before"
    CONNECTION_AFTER = "connection_after"
    SERVER_ERROR = "server_error"
    RATE_LIMITED = "rate_limited"
    RATE_LIMITED_RETRY_AFTER = "rate_limited_retry_after"
    AUTHENTICATION = "authentication"
    INVALID_REQUEST = "invalid_request"
    PROCESSING = "processing"


FAULT_WEIGHTS: Final[Mapping[FaultKind, int]] = {
    FaultKind.CONNECTION_BEFORE: 20,
    FaultKind.CONNECTION_AFTER: 20,
    FaultKind.SERVER_ERROR: 15,
    FaultKind.RATE_LIMITED: 8,
    FaultKind.RATE_LIMITED_RETRY_AFTER: 7,
    FaultKind.AUTHENTICATION: 10,
    FaultKind.INVALID_REQUEST: 10,
    FaultKind.PROCESSING: 10,
}

CONFIRM: Final = "confirm_payment_intent"
# Calls that create or move something: a lost response leaves the effect behind.
MUTATING_CALLS: Final = frozenset(
    {
        "create_customer",
        "attach_payment_method",
        "create_setup_intent",
        "confirm_setup_intent",
        "create_payment_intent",
        CONFIRM,
        "refund",
    }
)
FAULTED_CALLS: Final = MUTATING_CALLS | {"retrieve_payment_method", "retrieve_payment_intent"}
# Faults that only make sense on the first confirmation of an attempt, while the intent still
# waits for it: later tries may find the money already moved.
FIRST_CONFIRM_ONLY: Final = frozenset({FaultKind.INVALID_REQUEST, FaultKind.PROCESSING})
RETRY_AFTER_S: Final = "1"
SERVER_STATUSES: Final = (500, 502, 503)


def applicable_kinds(call: str, try_no: int) -> list[FaultKind]:
    """The fault classes that can hit try ``try_no`` (0 = first) of ``call``."""
    kinds = [k for k in FaultKind if k not in FIRST_CONFIRM_ONLY]
    if call not in MUTATING_CALLS:
        kinds.remove(FaultKind.CONNECTION_AFTER)
    if call == CONFIRM and try_no == 0:
        kinds += sorted(FIRST_CONFIRM_ONLY)
    return kinds


def _request_id(seed: int, call: str, key: str, try_no: int) -> str:
    digest = hashlib.sha256(f"{seed}:{call}:{key}:{try_no}".encode()).hexdigest()
    return f"req_injected_{digest[:14]}"


def build_fault_error(kind: FaultKind, *, request_id: str, draw: float = 0.0) -> stripe.StripeError:
    """The ``stripe`` exception a fault of ``kind`` raises, shaped like the SDK builds it.

    Args:
        kind: Any kind but ``processing`` (which is an answer, not an exception).
        request_id: Stripe's ``request-id`` header value.
        draw: A number in [0, 1) choosing among the variants of a kind (the 5xx status).

    Raises:
        ValueError: For ``processing``.
    """
    headers = {"request-id": request_id}
    if kind in (FaultKind.CONNECTION_BEFORE, FaultKind.CONNECTION_AFTER):
        what = (
            "ConnectionResetError: the connection was reset before the request was sent"
            if kind == FaultKind.CONNECTION_BEFORE
            else "ReadTimeout: the request was processed but the response was lost"
        )
        # The SDK leaves these two constructors unannotated.
        return stripe.APIConnectionError(  # type: ignore[no-untyped-call]
            "Unexpected error communicating with Stripe. If this problem persists, let us know "
            f"at support@stripe.com.\n\n(Network error: {what}; injected fault)",
            should_retry=True,
        )
    if kind == FaultKind.SERVER_ERROR:
        status = SERVER_STATUSES[int(draw * len(SERVER_STATUSES)) % len(SERVER_STATUSES)]
        message = "An unknown error occurred (injected fault)."
        body = {"error": {"type": "api_error", "message": message}}
        return stripe.APIError(message, None, status, body, headers)
    if kind in (FaultKind.RATE_LIMITED, FaultKind.RATE_LIMITED_RETRY_AFTER):
        message = "Too many requests hit the API too quickly (injected fault)."
        body = {
            "error": {"type": "invalid_request_error", "code": "rate_limit", "message": message}
        }
        if kind == FaultKind.RATE_LIMITED_RETRY_AFTER:
            headers["Retry-After"] = RETRY_AFTER_S
        return stripe.RateLimitError(message, None, 429, body, headers)
    if kind == FaultKind.AUTHENTICATION:
        message = "Invalid API Key provided: sk_test_********ated (injected fault: a rotated key)"
        body = {"error": {"type": "invalid_request_error", "message": message}}
        return stripe.AuthenticationError(message, None, 401, body, headers)
    if kind == FaultKind.INVALID_REQUEST:
        code = "payment_method_unexpected_state"
        message = (
            "The PaymentMethod was detached from its Customer and cannot be used for this "
            "payment (injected fault)."
        )
        body = {
            "error": {
                "type": "invalid_request_error",
                "code": code,
                "param": "payment_method",
                "message": message,
            }
        }
        return stripe.InvalidRequestError(  # type: ignore[no-untyped-call]
            message, "payment_method", code, http_status=400, json_body=body, headers=headers
        )
    raise ValueError(f"{kind.value} is answered, not raised")


@dataclass
class _Held:
    """A confirmed intent still reported as ``processing`` for ``reads`` more reads."""

    outcome: IntentInfo
    reads: int


class InjectedFaults(GatewayWrapper):
    """Fails a share ``rate`` of gateway calls with the faults of :data:`FAULT_WEIGHTS`.

    Args:
        inner: The gateway to wrap.
        rate: Chance that one try of a faulted call fails (0..1), for the first
            ``max_faulty_tries`` tries of each call and key.
        seed: Seed of the draws.
        max_faulty_tries: Tries of a call and key that may fail; later tries always get through.
        max_processing_reads: A ``processing`` fault reports ``processing`` for 1 to this many
            reads after the confirmation.
        weights: Share of each fault class among the faults (defaults to :data:`FAULT_WEIGHTS`).
    """

    def __init__(
        self,
        inner: PaymentGateway,
        *,
        rate: float,
        seed: int = 0,
        max_faulty_tries: int = 2,
        max_processing_reads: int = 3,
        weights: Mapping[FaultKind, int] = FAULT_WEIGHTS,
    ) -> None:
        if not 0 <= rate <= 1:
            raise ValueError("the fault rate must be between 0 and 1")
        if max_faulty_tries < 0 or max_processing_reads < 1:
            raise ValueError("max_faulty_tries must be >= 0 and max_processing_reads >= 1")
        super().__init__(inner)
        self.rate = rate
        self.seed = seed
        self.max_faulty_tries = max_faulty_tries
        self.max_processing_reads = max_processing_reads
        self.weights = dict(weights)
        self._lock = threading.Lock()
        self._tries: Counter[tuple[str, str]] = Counter()
        self._held: dict[str, _Held] = {}
        self.injected: Counter[FaultKind] = Counter()

    # --- decisions ----------------------------------------------------------------------------

    def decide(self, call: str, key: str, try_no: int) -> FaultKind | None:
        """The fault for try ``try_no`` of ``call`` with ``key``, or None: a pure function."""
        if call not in FAULTED_CALLS or try_no >= self.max_faulty_tries:
            return None
        if _draw(self.seed, "fault", call, key, try_no) >= self.rate:
            return None
        kinds = [k for k in applicable_kinds(call, try_no) if self.weights.get(k, 0) > 0]
        total = sum(self.weights[k] for k in kinds)
        if total <= 0:
            return None
        point = _draw(self.seed, "kind", call, key, try_no) * total
        for kind in kinds:
            point -= self.weights[kind]
            if point < 0:
                return kind
        return kinds[-1]

    def _before(self, call: str, key: str) -> FaultKind | None:
        """Count a try; raise a fault due before the call, return one due after it (or None)."""
        with self._lock:
            try_no = self._tries[(call, key)]
            self._tries[(call, key)] += 1
            kind = self.decide(call, key, try_no)
            if kind is not None:
                self.injected[kind] += 1
        if kind is None:
            return None
        log.info("gateway_fault_injected", call=call, key=key, try_no=try_no, kind=kind.value)
        if kind in (FaultKind.CONNECTION_AFTER, FaultKind.PROCESSING):
            return kind
        raise build_fault_error(
            kind,
            request_id=_request_id(self.seed, call, key, try_no),
            draw=_draw(self.seed, "variant", call, key, try_no),
        )

    def _after(self, kind: FaultKind | None, call: str, key: str) -> None:
        if kind == FaultKind.CONNECTION_AFTER:
            raise build_fault_error(kind, request_id=_request_id(self.seed, call, key, -1))

    def _hold(self, info: IntentInfo, key: str) -> IntentInfo:
        """Report a confirmed intent as processing now and for a few more reads."""
        reads = 1 + int(_draw(self.seed, "reads", key) * self.max_processing_reads)
        with self._lock:
            self._held[info.id] = _Held(outcome=info, reads=reads)
        return _processing(info)

    def _held_answer(self, intent_id: str) -> IntentInfo | None:
        with self._lock:
            held = self._held.get(intent_id)
            if held is None:
                return None
            held.reads -= 1
            if held.reads <= 0:
                del self._held[intent_id]
        return _processing(held.outcome)

    @property
    def injected_counts(self) -> dict[str, int]:
        """Faults injected so far, by kind (for reports)."""
        with self._lock:
            return {k.value: n for k, n in sorted(self.injected.items())}

    # --- calls -------------------------------------------------------------------------------

    def create_customer(self, *, email: str, metadata: dict[str, str], idempotency_key: str) -> str:
        fault = self._before("create_customer", idempotency_key)
        result = self.inner.create_customer(
            email=email, metadata=metadata, idempotency_key=idempotency_key
        )
        self._after(fault, "create_customer", idempotency_key)
        return result

    def retrieve_payment_method(self, pm_id: str) -> PaymentMethodInfo:
        self._before("retrieve_payment_method", pm_id)
        return self.inner.retrieve_payment_method(pm_id)

    def attach_payment_method(self, pm_id: str, customer_id: str) -> None:
        key = f"{pm_id}:{customer_id}"
        fault = self._before("attach_payment_method", key)
        self.inner.attach_payment_method(pm_id, customer_id)
        self._after(fault, "attach_payment_method", key)

    def create_setup_intent(
        self, *, customer_id: str, metadata: dict[str, str], idempotency_key: str
    ) -> str:
        fault = self._before("create_setup_intent", idempotency_key)
        result = self.inner.create_setup_intent(
            customer_id=customer_id, metadata=metadata, idempotency_key=idempotency_key
        )
        self._after(fault, "create_setup_intent", idempotency_key)
        return result

    def confirm_setup_intent(self, intent_id: str, payment_method_id: str) -> SetupInfo:
        key = f"{intent_id}:{payment_method_id}"
        fault = self._before("confirm_setup_intent", key)
        info = self.inner.confirm_setup_intent(intent_id, payment_method_id)
        self._after(fault, "confirm_setup_intent", key)
        return info

    def create_payment_intent(
        self,
        *,
        amount_minor: int,
        currency: str,
        customer_id: str,
        payment_method_id: str,
        idempotency_key: str,
        metadata: dict[str, str],
        description: str | None = None,
    ) -> IntentInfo:
        fault = self._before("create_payment_intent", idempotency_key)
        info = self.inner.create_payment_intent(
            amount_minor=amount_minor,
            currency=currency,
            customer_id=customer_id,
            payment_method_id=payment_method_id,
            idempotency_key=idempotency_key,
            metadata=metadata,
            description=description,
        )
        self._after(fault, "create_payment_intent", idempotency_key)
        return info

    def retrieve_payment_intent(self, intent_id: str) -> IntentInfo:
        self._before("retrieve_payment_intent", intent_id)
        held = self._held_answer(intent_id)
        return held if held is not None else self.inner.retrieve_payment_intent(intent_id)

    def confirm_payment_intent(
        self, intent_id: str, *, idempotency_key: str, off_session: bool = True
    ) -> IntentInfo:
        fault = self._before(CONFIRM, idempotency_key)
        held = self._held_answer(intent_id)
        if held is not None:
            return held
        info = self.inner.confirm_payment_intent(
            intent_id, idempotency_key=idempotency_key, off_session=off_session
        )
        if fault == FaultKind.PROCESSING and info.status != "processing":
            return self._hold(info, idempotency_key)
        self._after(fault, CONFIRM, idempotency_key)
        return info

    def refund(
        self, *, intent_id: str, amount_minor: int, idempotency_key: str, metadata: dict[str, str]
    ) -> RefundInfo:
        fault = self._before("refund", idempotency_key)
        info = self.inner.refund(
            intent_id=intent_id,
            amount_minor=amount_minor,
            idempotency_key=idempotency_key,
            metadata=metadata,
        )
        self._after(fault, "refund", idempotency_key)
        return info


def _processing(info: IntentInfo) -> IntentInfo:
    return info.model_copy(update={"status": "processing", "decline": None})


if TYPE_CHECKING:

    def _implements_the_port(
        real: StripeGateway, wrapper: GatewayWrapper, d: InjectedDeclines, f: InjectedFaults
    ) -> None:
        """Never called: mypy proves here that each gateway implements the whole port.

        A member added to ``PaymentGateway`` and not forwarded by ``GatewayWrapper`` fails type
        checking on these lines, naming the missing member.
        """
        gateway: PaymentGateway = real
        gateway = wrapper
        gateway = d
        gateway = f
        del gateway
