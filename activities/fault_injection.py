"""Declines injected on top of the real gateway path, for simulations and tests.

``InjectedDeclines`` is a ``StripeGateway``: every call goes to the real (or local) gateway, except
that a chosen share of confirmations is answered with a decline instead of being sent. The decision
is a pure function of the seed and the attempt's idempotency key, so a transport retry of the same
attempt gets the same answer, while a new dunning attempt (a new key) is decided afresh.
"""

from __future__ import annotations

import hashlib

from activities.gateway import Decline, IntentInfo, StripeGateway
from activities.gateway_errors import DeclineCategory

SOFT = ("insufficient_funds", "Your card has insufficient funds.")
HARD = ("stolen_card", "Your card was declined.")


class InjectedDeclines(StripeGateway):
    """Declines ``decline_rate`` of confirmations (``hard_share`` of those are hard declines)."""

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str | None,
        decline_rate: float,
        hard_share: float = 0.1,
        seed: int = 0,
        **kwargs: object,
    ) -> None:
        if not 0 <= decline_rate <= 1 or not 0 <= hard_share <= 1:
            raise ValueError("decline_rate and hard_share must be between 0 and 1")
        super().__init__(api_key, api_base=api_base, **kwargs)  # type: ignore[arg-type]
        self.decline_rate = decline_rate
        self.hard_share = hard_share
        self.seed = seed

    def _draw(self, key: str, salt: str) -> float:
        digest = hashlib.sha256(f"{self.seed}:{salt}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def confirm_payment_intent(
        self, intent_id: str, *, idempotency_key: str, off_session: bool = True
    ) -> IntentInfo:
        if self._draw(idempotency_key, "decline") >= self.decline_rate:
            return super().confirm_payment_intent(
                intent_id, idempotency_key=idempotency_key, off_session=off_session
            )
        intent = self.retrieve_payment_intent(intent_id)
        if intent.status != "requires_confirmation":
            return intent  # already settled by an earlier call: report it unchanged
        hard = self._draw(idempotency_key, "hard") < self.hard_share
        code, message = HARD if hard else SOFT
        return intent.model_copy(
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
