"""The intake service: its entry point ``handle`` (one payload) and dead-letter replays.

The order path, dead-letter recording, the spool and the operations are mixins from the sibling
modules; see the package docstring for the flow.

Every call names the authenticated principal it acts for. ``handle`` checks that it may submit
orders through the channel (``models.intake_rules.check_channel_access``) before reading the
payload; each order is then checked against the accounts the principal may bill. A replay needs
``intake:manage`` and acts for the principal that sent the dead letter.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from activities.auth_store import AuthStore
from activities.intake_store import DeadLetterDraft, DeadLetterStatus, IntakeStore
from activities.intake_tables import DeadLetter
from models.catalog import Catalog
from models.channels import parse_payload
from models.errors import ErrorCode, OmsError
from models.identity import Permission, Principal
from models.intake_rules import check_channel_access
from models.orders import (
    BATCH_CHANNELS,
    AdapterContext,
    Channel,
    ParsedItem,
    ParsedPayload,
    parse_channel,
)
from models.redact import redact_cards
from starter.intake.dead_letters import BASE64_SUFFIX, _kept, _payload_text
from starter.intake.metrics import IntakeMetrics
from starter.intake.operations import DeadLetterOperations, _dl_not_found, dead_letter_view
from starter.intake.order_path import OrderPath
from starter.intake.results import IntakeError, IntakeResponse, ItemResult
from starter.intake.settings import IntakeSettings
from starter.intake.submission import (
    STRIPE_CHECKOUT_PRINCIPAL_ID,
    Submission,
    _Replay,
    stripe_checkout_principal,
)
from starter.service import OmsService

log = structlog.get_logger("starter.intake")  # the package's one logger name


def _wall_clock() -> datetime:
    return datetime.now(UTC)


class IntakeService(DeadLetterOperations, OrderPath):
    """The intake flow over an :class:`OmsService` (obtained lazily) and the intake store."""

    def __init__(
        self,
        service: Callable[[], Awaitable[OmsService]],
        store: IntakeStore,
        catalog: Catalog,
        settings: IntakeSettings | None = None,
        *,
        metrics: IntakeMetrics | None = None,
        clock: Callable[[], datetime] = _wall_clock,
        principals: AuthStore | None = None,
    ) -> None:
        """Args:
        service: Returns the connected service (raises ``OmsError(TEMPORAL_UNAVAILABLE)``
            when Temporal cannot be reached); called per order, so it may connect lazily.
        store: The intake repository.
        catalog: Plans (adapters and rules read it).
        settings: Budgets, secret, spool; defaults for local development.
        metrics: Where the counters go (a fresh registry by default).
        clock: The wall clock (signature tolerance, dead-letter receipt times).
        principals: The principal store (a replay acts for the letter's sender, read from it);
            by default the one in the intake store's database.
        """
        self.service = service
        self.store = store
        self.catalog = catalog
        self.settings = settings or IntakeSettings()
        self.metrics = metrics or IntakeMetrics()
        self.clock = clock
        self.principals = principals or AuthStore(store.engine)
        self._spool_lock = threading.Lock()

    # --- entry point --------------------------------------------------------------------

    async def handle(
        self,
        channel: str,
        body: bytes | str,
        headers: Mapping[str, str] | None = None,
        *,
        principal: Principal,
        received_at: datetime | None = None,
        on_item: Callable[[ItemResult], None] | None = None,
    ) -> IntakeResponse:
        """Process one payload of ``channel`` sent by ``principal``; never raises for bad input,
        refusals or outages.

        Args:
            channel: The channel name (URL segment).
            body: The payload exactly as received.
            headers: Request headers (any case).
            principal: Who sent it (authenticated by the caller). ``stripe-checkout`` payloads
                act as the ``stripe-checkout`` service principal whoever submits them (their
                signature is their credential).
            received_at: When it was received; default now.
            on_item: Called as each order of the payload is finished (CLI progress).
        """
        return await self._receive(
            channel, body, headers, principal, principal.id, received_at, None, None, on_item
        )

    async def _receive(
        self,
        channel: str,
        body: bytes | str,
        headers: Mapping[str, str] | None,
        principal: Principal,
        scope_id: str | None,
        received_at: datetime | None,
        replay: _Replay | None,
        replayed_by: Principal | None,
        on_item: Callable[[ItemResult], None] | None,
    ) -> IntakeResponse:
        started = time.monotonic()
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        received = received_at or self.clock()
        if not principal.can(Permission.ORDERS_SUBMIT):  # before anything else is said
            return self._denied(
                channel,
                principal,
                ErrorCode.FORBIDDEN,
                f"a {principal.role.value} may not submit orders (needs "
                f"{Permission.ORDERS_SUBMIT.value}); ask an operator of your tenant",
                "access.permission",
            )
        try:
            ch = parse_channel(channel)
        except OmsError as err:
            log.info("intake.unknown_channel", channel=channel[:40])
            self.metrics.received.labels("unknown").inc()
            return IntakeResponse(
                channel=channel[:40],
                error=IntakeError(code=err.code, message=err.message, rule="channel.known"),
            )
        denied = check_channel_access(principal, ch)
        if denied is not None:
            return self._denied(ch.value, principal, denied.code, denied.message, denied.rule)
        if ch == Channel.STRIPE_CHECKOUT:
            principal, scope_id = stripe_checkout_principal(), STRIPE_CHECKOUT_PRINCIPAL_ID
        sub = Submission(
            channel=ch,
            principal=principal,
            scope_id=scope_id,
            hdrs=hdrs,
            received=received,
            replay=replay,
            replayed_by=replayed_by,
        )
        response = await self._handle(sub, body, on_item)
        if replay is not None and not replay.used:
            assert replayed_by is not None
            if response.judged:
                await self._resolve_replay(replay.dead_letter_id, response, replayed_by)
            else:  # refused for who sent it, or as another copy: nothing was decided
                log.info(
                    "intake.replay_refused",
                    dead_letter_id=replay.dead_letter_id,
                    sender=principal.id,
                    by=replayed_by.id,
                )
        if response.error is not None:
            outcome = "refused"
        elif len(response.items) == 1:
            outcome = response.items[0].outcome.value
        else:
            outcome = "batch" if response.items else "ignored"
        self.metrics.latency.labels(ch.value, outcome).observe(time.monotonic() - started)
        return response

    def _denied(
        self, channel: str, principal: Principal, code: ErrorCode, message: str, rule: str
    ) -> IntakeResponse:
        """A principal that may not send this payload at all: refused before it is read."""
        log.warning(
            "intake.denied",
            channel=channel[:40],
            principal=principal.id,
            role=principal.role.value,
            tenant=principal.tenant_id,
            rule=rule,
        )
        return IntakeResponse(
            channel=channel[:40], error=IntakeError(code=code, message=message, rule=rule)
        )

    async def _handle(
        self,
        sub: Submission,
        body: bytes | str,
        on_item: Callable[[ItemResult], None] | None,
    ) -> IntakeResponse:
        ch, replay = sub.channel, sub.replay
        batch = ch in BATCH_CHANNELS
        ctx = AdapterContext(
            catalog=self.catalog,
            now=sub.received,
            headers=sub.hdrs,
            webhook_secret=self.settings.webhook_secret,
            signature_tolerance_s=self.settings.signature_tolerance_s,
            max_items=self.settings.max_batch_items,
        )
        try:
            if batch:  # a big file takes a while to parse: keep the event loop serving
                parsed: ParsedPayload = await asyncio.to_thread(parse_payload, ch, body, ctx)
            else:
                parsed = parse_payload(ch, body, ctx)
        except OmsError as err:
            self.metrics.received.labels(ch.value).inc()
            rule = (
                "payload.signature" if err.code == ErrorCode.SIGNATURE_INVALID else "payload.schema"
            )
            text, media = _payload_text(body, ch)
            dl_id = await self._dead_letter(
                DeadLetterDraft(
                    channel=ch.value,
                    payload=text,
                    content_type=media,
                    headers=_kept(sub.hdrs),
                    reason=err.message,
                    error_code=err.code.value,
                    rule=rule,
                    received_at=sub.received,
                    tenant_id=sub.tenant_id,
                    principal_id=sub.scope_id,
                ),
                replay,
            )
            log.warning(
                "intake.payload_refused",
                channel=ch.value,
                code=err.code.value,
                reason=redact_cards(err.message),
                dead_letter_id=dl_id,
            )
            return IntakeResponse(
                channel=ch.value,
                batch=batch,
                error=IntakeError(
                    code=err.code, message=err.message, rule=rule, dead_letter_id=dl_id
                ),
            )
        if parsed.ignored is not None:
            self.metrics.ignored.labels(ch.value).inc()
            log.info("intake.ignored", channel=ch.value, reason=parsed.ignored)
            return IntakeResponse(channel=ch.value, ignored=parsed.ignored)
        # A replay folds failures into its dead letter only when the payload is one order.
        item_replay = replay is not None and len(parsed.items) == 1
        if len(parsed.items) == 1:
            results = [await self._item(sub, parsed.items[0], item_replay)]
            if on_item is not None:
                on_item(results[0])
        else:
            gate = asyncio.Semaphore(self.settings.batch_concurrency)

            async def one(item: ParsedItem) -> ItemResult:
                async with gate:
                    result = await self._item(sub, item, False)
                if on_item is not None:
                    on_item(result)
                return result

            results = list(await asyncio.gather(*(one(i) for i in parsed.items)))
        return IntakeResponse(channel=ch.value, batch=batch, items=results)

    # --- replays ------------------------------------------------------------------------

    async def replay(
        self,
        dead_letter_id: int,
        payload: bytes | str | None = None,
        on_item: Callable[[ItemResult], None] | None = None,
        *,
        principal: Principal,
    ) -> tuple[dict[str, Any], IntakeResponse]:
        """Process a dead letter's payload again (or a corrected one); returns (letter, outcome).

        ``principal`` (an operator: ``intake:manage``) replays a letter of its tenant; the payload
        acts for the principal that sent it (its accounts, its order ids, the subscription's
        actor), read again from the principal store. The letter is closed as ``replayed`` when the
        payload got through (accepted, a duplicate, or a business rejection); when it fails again
        it stays open with one more attempt.

        Raises:
            OmsError: ``FORBIDDEN`` without ``intake:manage`` or when the sender is no longer an
                active principal of the tenant; ``NOT_FOUND`` (also for another tenant's letter);
                ``INVALID_REQUEST`` when it is not open.
        """
        principal.require(Permission.INTAKE_MANAGE)
        row = await self._query(self.store.get_dead_letter, dead_letter_id, principal.tenant_id)
        if row is None:
            raise _dl_not_found(dead_letter_id)
        if row.status != DeadLetterStatus.OPEN:
            raise OmsError(
                ErrorCode.INVALID_REQUEST,
                f"dead letter {dead_letter_id} is {row.status}, not open; nothing to replay",
            )
        sender, scope_id = await self._sender(row, principal)
        if payload is None:
            body: bytes | str = row.payload
            if row.content_type.endswith(BASE64_SUFFIX):
                body = base64.b64decode(row.payload)
        else:
            body = payload
        log.info(
            "intake.replay",
            dead_letter_id=dead_letter_id,
            channel=row.channel,
            corrected=payload is not None,
            sender=sender.id,
            by=principal.id,
        )
        response = await self._receive(
            row.channel,
            body,
            json.loads(row.headers or "{}"),
            sender,
            scope_id,
            row.received_at,
            _Replay(dead_letter_id),
            principal,
            on_item,
        )
        after = await self._query(self.store.get_dead_letter, dead_letter_id, principal.tenant_id)
        assert after is not None
        return dead_letter_view(after, full=True), response

    async def _sender(self, row: DeadLetter, by: Principal) -> tuple[Principal, str | None]:
        """Who a dead letter's payload acts for when replayed, and the scope of its order ids."""
        if row.principal_id is None:  # received before intake authenticated its callers
            return by, None
        if row.principal_id == STRIPE_CHECKOUT_PRINCIPAL_ID:
            return stripe_checkout_principal(), STRIPE_CHECKOUT_PRINCIPAL_ID
        sender = await self._query(self.principals.principal, row.principal_id)
        if sender is None or sender.tenant_id != row.tenant_id:
            raise OmsError(
                ErrorCode.FORBIDDEN,
                f"dead letter {row.id} was sent by {row.principal_id}, which is no longer an "
                "active principal of this tenant, and a replay acts for its sender; discard it, "
                "or submit the order again yourself (oms intake file)",
            )
        return sender, sender.id

    async def _resolve_replay(
        self, dead_letter_id: int, response: IntakeResponse, by: Principal
    ) -> None:
        resolution: dict[str, Any] = {"outcome": "replayed", "by": by.id}
        if response.ignored is not None:
            resolution["ignored"] = response.ignored
        else:
            resolution["summary"] = response.summary()
            subs = [i.order["subscription_id"] for i in response.items if i.order is not None]
            if subs:
                resolution["subscription_ids"] = subs[:50]
        await self._query(
            self.store.resolve_dead_letter,
            dead_letter_id,
            DeadLetterStatus.REPLAYED,
            resolution,
            by.tenant_id,
        )
