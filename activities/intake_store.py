"""The intake store: orders received, dead letters, credit accounts and stock, one transaction each.

Every write is idempotent through a business key. :meth:`IntakeStore.claim` is the heart of it:
in one transaction it locks the order's stock and credit rows, reads the facts, asks the (pure)
rules for a decision and either records the rejection or records the order as ``pending`` with its
stock and credit reserved, so two concurrent orders can never both take the last units or the
last of a credit line. On SQLite the first statement is a write, so the transaction holds the
database's write lock from its start (SQLite serialises writers); on PostgreSQL the row locks of
the ``UPDATE`` statements do the same per SKU and account.

Tenancy: every order, dead letter and credit account carries its tenant, and every read takes the
caller's tenant (``tenant_id``, the default tenant when not given): another tenant's rows are
never returned, locked or reserved. Orders are keyed by their ``order_id``, which digests the
tenant and the principal that sent them (``models.orders``). Stock is global, like the catalog.

Text that came from a payload (dead-letter payloads, headers and reasons, an order's ids, plan,
message and answer) is stored with card-like numbers masked (``models.redact``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

import sqlalchemy as sa
import structlog
from sqlalchemy import CursorResult, Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from activities.intake_tables import (
    CreditAccount,
    DeadLetter,
    IntakeOrder,
    InventoryItem,
    InventoryReservation,
)
from activities.tables import utcnow
from models.identity import DEFAULT_TENANT
from models.intake_rules import CreditFacts, Decision, IntakeFacts, StockFacts
from models.orders import CanonicalOrder
from models.redact import redact_cards

log = structlog.get_logger(__name__)


class OrderStatus(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DEAD_LETTERED = "dead_lettered"
    DISCARDED = "discarded"


# An order in one of these states may have started (or be starting) its subscription: sending its
# id again with other terms is refused (CONFLICT). A rejected order started nothing, so a corrected
# copy is judged again.
BOUND_STATUSES = frozenset(
    {OrderStatus.PENDING, OrderStatus.ACCEPTED, OrderStatus.DEAD_LETTERED, OrderStatus.DISCARDED}
)


class DeadLetterStatus(StrEnum):
    OPEN = "open"
    REPLAYED = "replayed"
    DISCARDED = "discarded"


class ClaimOutcome(StrEnum):
    DUPLICATE = "duplicate"  # accepted before: answer with the stored result
    REJECTED = "rejected"  # a rule fired; recorded
    CLAIMED = "claimed"  # recorded as pending with stock and credit reserved: start it
    CONFLICT = "conflict"  # the same order id came before with other terms: nothing changed


@dataclass(frozen=True)
class Claim:
    """What :meth:`IntakeStore.claim` did."""

    outcome: ClaimOutcome
    row: IntakeOrder
    decision: Decision | None = None


@dataclass(frozen=True)
class DeadLetterDraft:
    """A dead letter to record (or to fold into the open one with the same key).

    ``tenant_id`` and ``principal_id`` are the scope of the request that failed (a replay acts for
    that principal); ``order_id`` is the order's when the payload named one (``order_key`` is how
    people name it, ``channel:channel_order_id``).
    """

    channel: str
    payload: str
    reason: str
    error_code: str
    received_at: datetime
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    rule: str | None = None
    attempts: int = 1
    priority: int = 0
    order_key: str | None = None
    tenant_id: str = DEFAULT_TENANT
    principal_id: str | None = None
    order_id: str | None = None

    @property
    def dedupe_key(self) -> str:
        """The order's id, or a digest of the scope and payload when it names no order."""
        if self.order_id:
            return self.order_id
        if self.order_key and self.principal_id is None and self.tenant_id == DEFAULT_TENANT:
            return self.order_key  # a letter from before scopes (spooled then)
        scope = (
            ""
            if self.principal_id is None and self.tenant_id == DEFAULT_TENANT
            else f"{self.tenant_id}\x1f{self.principal_id or ''}\x1f"
        )
        digest = hashlib.sha256(f"{scope}{self.channel}\x1f{self.payload}".encode()).hexdigest()
        return f"sha256:{digest}"

    def redacted(self) -> DeadLetterDraft:
        """This draft with card-like numbers masked in everything that came from the request."""
        return replace(
            self,
            payload=redact_cards(self.payload),
            reason=redact_cards(self.reason),
            headers={k: redact_cards(v) for k, v in self.headers.items()},
            order_key=redact_cards(self.order_key) if self.order_key else self.order_key,
        )


@dataclass(frozen=True)
class CreditAccountSeed:
    """An account to create or overwrite (demo data, tests, finance imports), in ``tenant_id``."""

    account_id: str
    name: str = ""
    currency: str = "USD"
    credit_limit_minor: int = 0
    outstanding_minor: int = 0
    good_standing: bool = True
    trusted_partner: bool = False
    enterprise: bool = False
    paid_invoices: int = 0
    late_payments: int = 0
    billing_email: str | None = None
    payment_method_id: str | None = None
    tenant_id: str = DEFAULT_TENANT


def _account_key(tenant_id: str, account_id: str) -> dict[str, str]:
    return {"tenant_id": tenant_id, "account_id": account_id}


def _stored(text: str, length: int) -> str:
    """Payload text as stored: card-like numbers masked, cut to the column's length."""
    return redact_cards(text)[:length]


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


class IntakeStore:
    """Repository over the intake tables; each method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    # --- orders -------------------------------------------------------------------------

    def get_order(
        self, channel: str, channel_order_id: str, tenant_id: str = DEFAULT_TENANT
    ) -> IntakeOrder | None:
        """The newest order of ``tenant_id`` with this channel order id (any principal's)."""
        with self.session() as s:
            return s.exec(
                select(IntakeOrder)
                .where(
                    IntakeOrder.tenant_id == tenant_id,
                    IntakeOrder.channel == channel,
                    IntakeOrder.channel_order_id == _stored(channel_order_id, 200),
                )
                .order_by(col(IntakeOrder.id).desc())
            ).first()

    def order_by_id(self, order_id: str) -> IntakeOrder | None:
        """The order with this ``order_id`` (a scoped id: it names one tenant's, one sender's)."""
        with self.session() as s:
            return s.exec(select(IntakeOrder).where(IntakeOrder.order_id == order_id)).first()

    def claim(
        self,
        order: CanonicalOrder,
        sku: str | None,
        decide: Callable[[IntakeFacts], Decision],
        *,
        use_account: bool = True,
    ) -> Claim:
        """Judge ``order`` against fresh facts under lock, and record the verdict.

        Args:
            order: The canonical order, in its scope (tenant and principal).
            sku: The stock-keeping unit its plan delivers (physical plans), else None.
            decide: The pure rules, given the facts (this order's own earlier reservations are
                excluded from them, so re-judging a pending order does not count it twice).
            use_account: Whether the rules may see the order's credit account (of the order's
                tenant only): False judges it as a new customer's and never touches the account.

        Returns:
            DUPLICATE with the accepted row; CONFLICT with the row when the same order id came
            before with other terms and may have started a subscription (nothing changes);
            REJECTED with the decision (recorded, reservations of an earlier attempt released);
            CLAIMED with the decision (row ``pending``, stock and credit reserved).
        """
        for _ in range(3):
            try:
                return self._claim(order, sku, decide, use_account)
            except IntegrityError:
                # A concurrent request inserted the same order first: judge again, seeing it.
                continue
        raise RuntimeError(f"could not claim order {order.order_id}: repeated insert conflicts")

    def _claim(
        self,
        order: CanonicalOrder,
        sku: str | None,
        decide: Callable[[IntakeFacts], Decision],
        use_account: bool,
    ) -> Claim:
        order_id = order.order_id
        account_id = order.account_key
        account_key = _account_key(order.tenant_id, account_id)
        with self.session() as s:
            # Lock first (see the module docstring): stock row, then credit row.
            if sku is not None:
                s.execute(
                    sa.update(InventoryItem)
                    .where(col(InventoryItem.sku) == sku)
                    .values(on_hand=col(InventoryItem.on_hand))
                )
            if use_account:
                s.execute(
                    sa.update(CreditAccount)
                    .where(
                        col(CreditAccount.tenant_id) == order.tenant_id,
                        col(CreditAccount.account_id) == account_id,
                    )
                    .values(reserved_minor=col(CreditAccount.reserved_minor))
                )
            row = s.exec(select(IntakeOrder).where(IntakeOrder.order_id == order_id)).first()
            if (
                row is not None
                and row.status in BOUND_STATUSES
                and row.fingerprint is not None
                and row.fingerprint != order.fingerprint
            ):
                return Claim(ClaimOutcome.CONFLICT, row)
            if row is not None and row.status == OrderStatus.ACCEPTED:
                # Leaving the block rolls the lock back without expiring ``row``.
                return Claim(ClaimOutcome.DUPLICATE, row)
            own_credit = row.credit_reserved_minor if row is not None else 0
            own_stock = s.exec(
                select(InventoryReservation).where(InventoryReservation.order_key == order_id)
            ).first()
            account = s.get(CreditAccount, account_key) if use_account else None
            prior = (
                s.get(CreditAccount, _account_key(row.tenant_id, row.account_id))
                if row is not None and own_credit
                else None
            )
            if prior is not None and prior is not account:
                # Held on another account than this order's now: give it back there.
                prior.reserved_minor -= own_credit
                prior.updated_at = utcnow()
                s.add(prior)
                own_credit = 0
            credit = (
                None
                if account is None
                else CreditFacts(
                    account_id=account.account_id,
                    currency=account.currency,
                    credit_limit_minor=account.credit_limit_minor,
                    outstanding_minor=account.outstanding_minor,
                    reserved_minor=account.reserved_minor - own_credit,
                    good_standing=account.good_standing,
                    trusted_partner=account.trusted_partner,
                    enterprise=account.enterprise,
                    paid_invoices=account.paid_invoices,
                    late_payments=account.late_payments,
                    billing_email=account.billing_email,
                    payment_method_id=account.payment_method_id,
                )
            )
            stock = None
            if sku is not None:
                item = s.get(InventoryItem, sku)
                reserved = s.exec(
                    select(sa.func.coalesce(sa.func.sum(InventoryReservation.quantity), 0)).where(
                        InventoryReservation.sku == sku
                    )
                ).one()
                stock = StockFacts(
                    sku=sku,
                    on_hand=item.on_hand if item else 0,
                    reserved=int(reserved) - (own_stock.quantity if own_stock else 0),
                )
            decision = decide(IntakeFacts(credit=credit, stock=stock))
            now = utcnow()
            if row is None:
                row = IntakeOrder(
                    order_id=order_id,
                    tenant_id=order.tenant_id,
                    principal_id=order.principal_id,
                    channel=order.channel.value,
                    channel_order_id=_stored(order.channel_order_id, 200),
                    status=OrderStatus.PENDING.value,
                    customer_id="",
                    account_id="",
                    plan_id="",
                    interval=order.interval.value,
                    currency=order.currency,
                    rule_set=decision.rule_set.value,
                    attempts=1,
                    created_at=now,
                    updated_at=now,
                )
            else:
                row.attempts += 1
                row.updated_at = now
                row.rule_set = decision.rule_set.value
            # The terms judged this time (a rejected order may come back corrected).
            row.customer_id = order.customer_id
            row.account_id = _stored(account_id, 64)
            row.plan_id = _stored(order.plan_id, 64)
            row.interval = order.interval.value
            row.currency = order.currency
            row.quantity = order.quantity
            row.fingerprint = order.fingerprint
            row.term_value_minor = decision.term_value_minor
            if decision.accepted:
                row.status = OrderStatus.PENDING.value
                row.rule = row.error_code = row.message = None
                want_stock = decision.stock_to_reserve if sku is not None else 0
                want_credit = decision.credit_to_reserve_minor if account is not None else 0
            else:
                primary = decision.primary
                assert primary is not None
                row.status = OrderStatus.REJECTED.value
                row.rule, row.error_code = primary.rule, primary.code.value
                row.message = _stored(primary.message, 1000)
                want_stock = want_credit = 0
            self._set_stock_reservation(s, order_id, sku, own_stock, want_stock, now)
            if account is not None and want_credit != own_credit:
                account.reserved_minor += want_credit - own_credit
                account.updated_at = now
                s.add(account)
            row.credit_reserved_minor = want_credit
            s.add(row)
            s.commit()
        outcome = ClaimOutcome.CLAIMED if decision.accepted else ClaimOutcome.REJECTED
        return Claim(outcome, row, decision)

    @staticmethod
    def _set_stock_reservation(
        s: Session,
        key: str,
        sku: str | None,
        own: InventoryReservation | None,
        quantity: int,
        now: datetime,
    ) -> None:
        if quantity <= 0 or sku is None:
            if own is not None:
                s.delete(own)
            return
        if own is None:
            s.add(InventoryReservation(sku=sku, order_key=key, quantity=quantity, created_at=now))
        elif own.quantity != quantity or own.sku != sku:
            own.quantity, own.sku = quantity, sku
            s.add(own)

    def complete(self, order_id: str, subscription_id: str, result: dict[str, Any]) -> bool:
        """Mark a claimed order accepted with the answer repeats get; True the first time.

        Also closes any open dead letter of the same order (it went through after all).
        """
        now = utcnow()
        with self.session() as s:
            first = _rowcount(
                s.execute(
                    sa.update(IntakeOrder)
                    .where(
                        col(IntakeOrder.order_id) == order_id,
                        col(IntakeOrder.status) != OrderStatus.ACCEPTED.value,
                    )
                    .values(
                        status=OrderStatus.ACCEPTED.value,
                        subscription_id=subscription_id,
                        result=redact_cards(json.dumps(result, sort_keys=True)),
                        rule=None,
                        error_code=None,
                        message=None,
                        updated_at=now,
                    )
                )
            )
            s.execute(
                sa.update(DeadLetter)
                .where(
                    col(DeadLetter.order_id) == order_id,
                    col(DeadLetter.status) == DeadLetterStatus.OPEN.value,
                )
                .values(
                    status=DeadLetterStatus.REPLAYED.value,
                    open_key=None,
                    resolution=json.dumps(
                        {"outcome": "accepted", "subscription_id": subscription_id}
                    ),
                    resolved_at=now,
                    updated_at=now,
                )
            )
            s.commit()
        return first == 1

    def release(
        self,
        order_id: str,
        status: OrderStatus,
        *,
        rule: str | None = None,
        error_code: str | None = None,
        message: str | None = None,
    ) -> None:
        """Give back a non-accepted order's stock and credit and set its status."""
        now = utcnow()
        with self.session() as s:
            row = s.exec(select(IntakeOrder).where(IntakeOrder.order_id == order_id)).first()
            if row is None or row.status == OrderStatus.ACCEPTED:
                return
            own = s.exec(
                select(InventoryReservation).where(InventoryReservation.order_key == order_id)
            ).first()
            if own is not None:
                s.delete(own)
            if row.credit_reserved_minor:
                account = s.get(CreditAccount, _account_key(row.tenant_id, row.account_id))
                if account is not None:
                    account.reserved_minor -= row.credit_reserved_minor
                    account.updated_at = now
                    s.add(account)
                row.credit_reserved_minor = 0
            row.status = status.value
            if rule is not None:
                row.rule, row.error_code = rule, error_code
                row.message = _stored(message or "", 1000)
            row.updated_at = now
            s.add(row)
            s.commit()

    def list_orders(
        self,
        *,
        tenant_id: str = DEFAULT_TENANT,
        status: str | None = None,
        rule: str | None = None,
        channel: str | None = None,
        limit: int = 100,
    ) -> Sequence[IntakeOrder]:
        """A tenant's orders, newest first (``status='rejected', rule=...`` finds a rule's false
        positives)."""
        q = select(IntakeOrder).where(IntakeOrder.tenant_id == tenant_id)
        if status:
            q = q.where(IntakeOrder.status == status)
        if rule:
            q = q.where(IntakeOrder.rule == rule)
        if channel:
            q = q.where(IntakeOrder.channel == channel)
        q = q.order_by(col(IntakeOrder.updated_at).desc(), col(IntakeOrder.id).desc()).limit(limit)
        with self.session() as s:
            return s.exec(q).all()

    def rejection_counts(self, tenant_id: str = DEFAULT_TENANT) -> list[dict[str, Any]]:
        """A tenant's rejected orders per (rule, error code, rule set, channel), most frequent
        first."""
        columns = (
            col(IntakeOrder.rule),
            col(IntakeOrder.error_code),
            col(IntakeOrder.rule_set),
            col(IntakeOrder.channel),
        )
        q = (
            sa.select(*columns, sa.func.count())
            .where(
                col(IntakeOrder.tenant_id) == tenant_id,
                col(IntakeOrder.status) == OrderStatus.REJECTED.value,
            )
            .group_by(*columns)
        )
        with self.session() as s:
            rows = s.execute(q).all()
        out = [
            {"rule": r, "error_code": c, "rule_set": rs, "channel": ch, "count": int(n)}
            for r, c, rs, ch, n in rows
        ]
        return sorted(out, key=lambda x: (-x["count"], str(x["rule"]), x["channel"]))

    # --- dead letters ---------------------------------------------------------------------

    def add_dead_letter(self, draft: DeadLetterDraft) -> tuple[DeadLetter, bool]:
        """Record a dead letter, or fold it into the open one with the same key.

        Card-like numbers in its payload, headers and reason are masked first.

        Returns:
            (row, created): ``created`` is False when an open letter absorbed this failure (its
            attempts grow, reason and priority are updated).
        """
        draft = draft.redacted()
        for _ in range(3):
            try:
                return self._add_dead_letter(draft)
            except IntegrityError:
                continue  # a concurrent failure of the same order opened it first: fold in
        raise RuntimeError(f"could not record dead letter {draft.dedupe_key}")

    def _add_dead_letter(self, draft: DeadLetterDraft) -> tuple[DeadLetter, bool]:
        key = draft.dedupe_key
        now = utcnow()
        with self.session() as s:
            row = s.exec(select(DeadLetter).where(DeadLetter.open_key == key)).first()
            created = row is None
            if row is None:
                row = DeadLetter(
                    tenant_id=draft.tenant_id,
                    principal_id=draft.principal_id,
                    channel=draft.channel[:32],
                    order_id=draft.order_id,
                    order_key=draft.order_key[:240] if draft.order_key else None,
                    open_key=key,
                    content_type=draft.content_type[:100],
                    payload=draft.payload,
                    headers=json.dumps(draft.headers, sort_keys=True),
                    reason=draft.reason[:1000],
                    error_code=draft.error_code[:64],
                    rule=draft.rule,
                    attempts=draft.attempts,
                    priority=draft.priority,
                    status=DeadLetterStatus.OPEN.value,
                    received_at=draft.received_at,
                    created_at=now,
                    updated_at=now,
                )
            else:
                self._refail(row, draft, now)
            s.add(row)
            if draft.order_id:
                self._mark_order_dead_lettered(s, draft.order_id, now)
            s.commit()
        return row, created

    @staticmethod
    def _refail(row: DeadLetter, draft: DeadLetterDraft, now: datetime) -> None:
        row.attempts += draft.attempts
        row.reason = draft.reason[:1000]
        row.error_code = draft.error_code[:64]
        row.rule = draft.rule
        row.priority = max(row.priority, draft.priority)
        row.updated_at = now

    @staticmethod
    def _mark_order_dead_lettered(s: Session, order_id: str, now: datetime) -> None:
        s.execute(
            sa.update(IntakeOrder)
            .where(
                col(IntakeOrder.order_id) == order_id,
                col(IntakeOrder.status) == OrderStatus.PENDING.value,
            )
            .values(status=OrderStatus.DEAD_LETTERED.value, updated_at=now)
        )

    def refail_dead_letter(self, dead_letter_id: int, draft: DeadLetterDraft) -> DeadLetter:
        """A replay of an open dead letter failed again: count the attempt, keep it open."""
        draft = draft.redacted()
        now = utcnow()
        with self.session() as s:
            row = s.get(DeadLetter, dead_letter_id)
            if row is None:
                raise LookupError(f"dead letter {dead_letter_id} not found")
            self._refail(row, draft, now)
            s.add(row)
            if draft.order_id:
                self._mark_order_dead_lettered(s, draft.order_id, now)
            s.commit()
            return row

    def get_dead_letter(
        self, dead_letter_id: int, tenant_id: str = DEFAULT_TENANT
    ) -> DeadLetter | None:
        """The dead letter if it is ``tenant_id``'s (None for another tenant's, as for none)."""
        with self.session() as s:
            row = s.get(DeadLetter, dead_letter_id)
        return row if row is not None and row.tenant_id == tenant_id else None

    def list_dead_letters(
        self,
        *,
        tenant_id: str = DEFAULT_TENANT,
        status: str | None = "open",
        channel: str | None = None,
        limit: int = 100,
    ) -> Sequence[DeadLetter]:
        """A tenant's dead letters, highest priority first (then oldest first)."""
        q = select(DeadLetter).where(DeadLetter.tenant_id == tenant_id)
        if status:
            q = q.where(DeadLetter.status == status)
        if channel:
            q = q.where(DeadLetter.channel == channel)
        q = q.order_by(
            col(DeadLetter.priority).desc(), col(DeadLetter.created_at), col(DeadLetter.id)
        ).limit(limit)
        with self.session() as s:
            return s.exec(q).all()

    def resolve_dead_letter(
        self,
        dead_letter_id: int,
        status: DeadLetterStatus,
        resolution: dict[str, Any],
        tenant_id: str = DEFAULT_TENANT,
    ) -> DeadLetter | None:
        """Close an open dead letter of ``tenant_id``; None when it is missing, another tenant's
        or no longer open.

        Discarding also releases the stock and credit its order held.
        """
        now = utcnow()
        with self.session() as s:
            row = s.get(DeadLetter, dead_letter_id)
            if row is None or row.tenant_id != tenant_id or row.status != DeadLetterStatus.OPEN:
                return None
            row.status = status.value
            row.open_key = None
            row.resolution = redact_cards(json.dumps(resolution, sort_keys=True))
            row.resolved_at = row.updated_at = now
            s.add(row)
            s.commit()
        if status == DeadLetterStatus.DISCARDED and row.order_id:
            order = self.order_by_id(row.order_id)
            if order is not None and order.status in (
                OrderStatus.DEAD_LETTERED,
                OrderStatus.PENDING,
            ):
                self.release(row.order_id, OrderStatus.DISCARDED)
        return row

    # --- credit accounts and stock ---------------------------------------------------------

    def upsert_credit_account(self, seed: CreditAccountSeed) -> CreditAccount:
        """Create or overwrite an account's terms in its tenant (its reservations are kept)."""
        now = utcnow()
        with self.session() as s:
            row = s.get(CreditAccount, _account_key(seed.tenant_id, seed.account_id))
            values = {
                k: v for k, v in seed.__dict__.items() if k not in ("account_id", "tenant_id")
            }
            if row is None:
                row = CreditAccount(
                    tenant_id=seed.tenant_id,
                    account_id=seed.account_id,
                    updated_at=now,
                    **values,
                )
            else:
                for name, value in values.items():
                    setattr(row, name, value)
                row.updated_at = now
            s.add(row)
            s.commit()
            return row

    def credit_account(
        self, account_id: str, tenant_id: str = DEFAULT_TENANT
    ) -> CreditAccount | None:
        """The account of ``tenant_id`` (another tenant's account of that id is not it)."""
        with self.session() as s:
            return s.get(CreditAccount, _account_key(tenant_id, account_id))

    def set_stock(self, sku: str, on_hand: int) -> InventoryItem:
        """Set a SKU's stock on hand (reservations are kept)."""
        now = utcnow()
        with self.session() as s:
            row = s.get(InventoryItem, sku)
            if row is None:
                row = InventoryItem(sku=sku, on_hand=on_hand, updated_at=now)
            else:
                row.on_hand, row.updated_at = on_hand, now
            s.add(row)
            s.commit()
            return row

    def stock(self, sku: str) -> tuple[int, int]:
        """(on hand, reserved) for a SKU."""
        with self.session() as s:
            item = s.get(InventoryItem, sku)
            reserved = s.exec(
                select(sa.func.coalesce(sa.func.sum(InventoryReservation.quantity), 0)).where(
                    InventoryReservation.sku == sku
                )
            ).one()
        return (item.on_hand if item else 0), int(reserved)
