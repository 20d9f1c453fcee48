"""Who a payload is from: the :class:`Submission` every step of one request shares.

An order acts for one principal, authenticated at the edge (a token or API key; for
``stripe-checkout`` the Stripe signature, which stands for the :func:`stripe_checkout_principal`).
That principal decides the order's scope (tenant, and the principal id its order ids are scoped
to), which accounts it may bill, and the subscription's audit actor. A replayed dead letter acts for
the principal that sent it; the operator who replays it is recorded beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from models.identity import DEFAULT_TENANT, Principal, Role
from models.orders import Channel, order_id_for

STRIPE_CHECKOUT_PRINCIPAL_ID = "stripe-checkout"


@dataclass
class _Replay:
    """A dead letter being replayed: failures of its payload fold into it."""

    dead_letter_id: int
    used: bool = False


def stripe_checkout_principal() -> Principal:
    """The service principal ``stripe-checkout`` events act as (their signature is the
    credential; it is not in the principal store)."""
    return Principal(
        id=STRIPE_CHECKOUT_PRINCIPAL_ID,
        tenant_id=DEFAULT_TENANT,
        role=Role.SERVICE,
        name="Stripe Checkout webhook",
        credential="signature",
    )


@dataclass(frozen=True)
class Submission:
    """One payload's request: its channel, for whom it acts and how it arrived.

    Attributes:
        channel: The channel.
        principal: Whose orders these are: authority for accounts, the subscriptions' actor.
        scope_id: The principal id order ids are scoped to (``principal.id``; None when replaying
            a dead letter received before intake authenticated its callers).
        hdrs: Request headers, names lower-cased.
        received: When the payload was received (the original time for a replay).
        replay: The dead letter being replayed, if any.
        replayed_by: The operator replaying it, if any.
    """

    channel: Channel
    principal: Principal
    scope_id: str | None
    hdrs: dict[str, str]
    received: datetime
    replay: _Replay | None = None
    replayed_by: Principal | None = None

    @property
    def tenant_id(self) -> str:
        return self.principal.tenant_id

    def order_id(self, channel_order_id: str) -> str:
        """The id of this channel order id in this submission's scope."""
        return order_id_for(self.channel, channel_order_id, self.tenant_id, self.scope_id)
