"""The payment gateway port: what the rest of the system asks of a payment gateway.

:class:`PaymentGateway` lists exactly the calls the activities (:mod:`activities.payments`),
reconciliation (:mod:`activities.reconcile`) and the simulator (``starter/simulate.py``,
``starter/sim_messages.py``) make on a gateway. Code that only needs *a* gateway is typed with it.

Implementations satisfy it structurally (no subclassing):

* :class:`activities.gateway.StripeGateway`: the real adapter, Stripe or localstripe through the
  official SDK. The contract of each method (idempotency, what it raises) is documented there.
* The wrappers of :mod:`activities.fault_injection` (``InjectedDeclines``, ``InjectedFaults``):
  they hold another gateway and delegate to it. ``mypy --strict`` checks they implement every
  member; ``tests/unit/test_fault_injection.py`` checks they forward every one of them.

A new member added here must be implemented by ``StripeGateway`` and by ``GatewayWrapper``; mypy
points at both.

Methods are synchronous (activities run them in a thread pool). Answers are the small frozen
models of :mod:`activities.gateway`, never SDK objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Protocol

from activities.gateway import IntentInfo, PaymentMethodInfo, RefundInfo, SetupInfo


class PaymentGateway(Protocol):
    """A payment gateway as the activities and the simulator use it."""

    @property
    def endpoint(self) -> str:
        """Where requests go (for logs and error messages; contains no secret)."""
        ...

    # --- customers and cards ------------------------------------------------------------------

    def create_customer(self, *, email: str, metadata: dict[str, str], idempotency_key: str) -> str:
        """Create a gateway customer once per ``idempotency_key``; its id (``cus_...``)."""
        ...

    def create_test_payment_method(
        self,
        card_number: str,
        exp_month: int = 12,
        exp_year: int | None = None,
        cvc: str = "123",
        *,
        today: date | None = None,
    ) -> str:
        """Tokenize a raw test card (only the local fake gateway takes one); its ``pm_`` id."""
        ...

    def retrieve_payment_method(self, pm_id: str) -> PaymentMethodInfo:
        """The displayable facts of a saved card."""
        ...

    def attach_payment_method(self, pm_id: str, customer_id: str) -> None:
        """Attach a card to a customer (attaching it again to the same customer is fine)."""
        ...

    # --- saving a card without a charge ------------------------------------------------------

    def create_setup_intent(
        self, *, customer_id: str, metadata: dict[str, str], idempotency_key: str
    ) -> str:
        """Create a SetupIntent for a customer's card once per ``idempotency_key``; its id."""
        ...

    def confirm_setup_intent(self, intent_id: str, payment_method_id: str) -> SetupInfo:
        """Validate and save a card (no charge); a decline comes back in ``decline``."""
        ...

    # --- payments -----------------------------------------------------------------------------

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
        """Record a payment attempt (moves no money) once per ``idempotency_key``."""
        ...

    def retrieve_payment_intent(self, intent_id: str) -> IntentInfo:
        """The current state of a payment attempt."""
        ...

    def confirm_payment_intent(
        self, intent_id: str, *, idempotency_key: str, off_session: bool = True
    ) -> IntentInfo:
        """Charge a payment attempt; the only call that moves money. Safe to repeat."""
        ...

    def list_payment_intents(self, *, page_size: int = 100) -> Iterator[IntentInfo]:
        """Every payment attempt, page by page (reconciliation)."""
        ...

    def refund(
        self, *, intent_id: str, amount_minor: int, idempotency_key: str, metadata: dict[str, str]
    ) -> RefundInfo:
        """Refund (part of) a succeeded payment once per ``idempotency_key``."""
        ...
