"""The intake service: its entry point ``handle`` (one payload) and dead-letter replays.

The order path, dead-letter recording, the spool and the operations are mixins from the sibling
modules; see the package docstring for the flow.
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

from activities.intake_store import DeadLetterDraft, DeadLetterStatus, IntakeStore
from models.catalog import Catalog
from models.channels import parse_payload
from models.errors import ErrorCode, OmsError
from models.orders import (
    BATCH_CHANNELS,
    AdapterContext,
    Channel,
    ParsedItem,
    ParsedPayload,
    parse_channel,
)
from starter.intake.dead_letters import BASE64_SUFFIX, _kept, _payload_text, _Replay
from starter.intake.metrics import IntakeMetrics
from starter.intake.operations import DeadLetterOperations, _dl_not_found, dead_letter_view
from starter.intake.order_path import OrderPath
from starter.intake.results import IntakeError, IntakeResponse, ItemResult
from starter.intake.settings import IntakeSettings
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
    ) -> None:
        """Args:
        service: Returns the connected service (raises ``OmsError(TEMPORAL_UNAVAILABLE)``
            when Temporal cannot be reached); called per order, so it may connect lazily.
        store: The intake repository.
        catalog: Plans (adapters and rules read it).
        settings: Budgets, secret, spool; defaults for local development.
        metrics: Where the counters go (a fresh registry by default).
        clock: The wall clock (signature tolerance, dead-letter receipt times).
        """
        self.service = service
        self.store = store
        self.catalog = catalog
        self.settings = settings or IntakeSettings()
        self.metrics = metrics or IntakeMetrics()
        self.clock = clock
        self._spool_lock = threading.Lock()

    # --- entry point --------------------------------------------------------------------

    async def handle(
        self,
        channel: str,
        body: bytes | str,
        headers: Mapping[str, str] | None = None,
        *,
        received_at: datetime | None = None,
        replay_of: int | None = None,
        on_item: Callable[[ItemResult], None] | None = None,
    ) -> IntakeResponse:
        """Process one payload of ``channel``; never raises for bad input or outages.

        Args:
            channel: The channel name (URL segment).
            body: The payload exactly as received.
            headers: Request headers (any case).
            received_at: When it was received (a replay passes the original receipt time, so
                signature tolerance is measured from then); default now.
            replay_of: The dead letter this payload replays (its failures fold into it).
            on_item: Called as each order of the payload is finished (CLI progress).
        """
        started = time.monotonic()
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        received = received_at or self.clock()
        replay = _Replay(replay_of) if replay_of is not None else None
        try:
            ch = parse_channel(channel)
        except OmsError as err:
            log.info("intake.unknown_channel", channel=channel[:40])
            self.metrics.received.labels("unknown").inc()
            return IntakeResponse(
                channel=channel[:40],
                error=IntakeError(code=err.code, message=err.message, rule="channel.known"),
            )
        response = await self._handle(ch, body, hdrs, received, replay, on_item)
        if replay is not None and not replay.used:
            await self._resolve_replay(replay.dead_letter_id, response)
        if response.error is not None:
            outcome = "refused"
        elif len(response.items) == 1:
            outcome = response.items[0].outcome.value
        else:
            outcome = "batch" if response.items else "ignored"
        self.metrics.latency.labels(ch.value, outcome).observe(time.monotonic() - started)
        return response

    async def _handle(
        self,
        ch: Channel,
        body: bytes | str,
        hdrs: dict[str, str],
        received: datetime,
        replay: _Replay | None,
        on_item: Callable[[ItemResult], None] | None,
    ) -> IntakeResponse:
        batch = ch in BATCH_CHANNELS
        ctx = AdapterContext(
            catalog=self.catalog,
            now=received,
            headers=hdrs,
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
                    headers=_kept(hdrs),
                    reason=err.message,
                    error_code=err.code.value,
                    rule=rule,
                    received_at=received,
                ),
                replay,
            )
            log.warning(
                "intake.payload_refused",
                channel=ch.value,
                code=err.code.value,
                reason=err.message,
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
        item_replay = replay if replay is not None and len(parsed.items) == 1 else None
        if len(parsed.items) == 1:
            results = [await self._item(ch, parsed.items[0], hdrs, received, item_replay)]
            if on_item is not None:
                on_item(results[0])
        else:
            gate = asyncio.Semaphore(self.settings.batch_concurrency)

            async def one(item: ParsedItem) -> ItemResult:
                async with gate:
                    result = await self._item(ch, item, hdrs, received, None)
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
    ) -> tuple[dict[str, Any], IntakeResponse]:
        """Process a dead letter's payload again (or a corrected one); returns (letter, outcome).

        The letter is closed as ``replayed`` when the payload got through (accepted, a duplicate,
        or a business rejection); when it fails again it stays open with one more attempt.

        Raises:
            OmsError: ``DEAD_LETTER_NOT_FOUND``; ``INVALID_REQUEST`` when it is not open.
        """
        row = await self._query(self.store.get_dead_letter, dead_letter_id)
        if row is None:
            raise _dl_not_found(dead_letter_id)
        if row.status != DeadLetterStatus.OPEN:
            raise OmsError(
                ErrorCode.INVALID_REQUEST,
                f"dead letter {dead_letter_id} is {row.status}, not open; nothing to replay",
            )
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
        )
        response = await self.handle(
            row.channel,
            body,
            json.loads(row.headers or "{}"),
            received_at=row.received_at,
            replay_of=dead_letter_id,
            on_item=on_item,
        )
        after = await self._query(self.store.get_dead_letter, dead_letter_id)
        assert after is not None
        return dead_letter_view(after, full=True), response

    async def _resolve_replay(self, dead_letter_id: int, response: IntakeResponse) -> None:
        resolution: dict[str, Any] = {"outcome": "replayed"}
        if response.ignored is not None:
            resolution["ignored"] = response.ignored
        else:
            resolution["summary"] = response.summary()
            subs = [i.order["subscription_id"] for i in response.items if i.order is not None]
            if subs:
                resolution["subscription_ids"] = subs[:50]
        await self._query(
            self.store.resolve_dead_letter, dead_letter_id, DeadLetterStatus.REPLAYED, resolution
        )
