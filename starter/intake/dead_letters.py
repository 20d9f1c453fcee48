"""Recording dead letters: a draft from a failed order or payload, written (or spooled)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping

import structlog

from activities.intake_store import DeadLetterDraft
from models.channels import content_type as channel_content_type
from models.intake_rules import CustomerTier, Decision, estimate_term_value, priority_score
from models.orders import Channel, ParsedItem
from starter.intake.spool import DeadLetterSpool
from starter.intake.submission import Submission, _Replay
from starter.intake.transient import classify

log = structlog.get_logger("starter.intake")  # the package's one logger name

# Request headers kept with a dead letter (what a replay needs; never credentials: the
# Authorization header is not kept, a replay acts for the principal recorded with the letter).
KEPT_HEADERS = ("stripe-signature", "content-type", "user-agent", "x-request-id")
BASE64_SUFFIX = ";base64"


class DeadLetterWriter(DeadLetterSpool):
    """Dead letters of the intake flow (a replay folds its failures into the replayed one)."""

    def _draft(
        self,
        sub: Submission,
        item: ParsedItem,
        code: str,
        reason: str,
        rule: str | None,
        attempts: int,
        decision: Decision | None,
    ) -> DeadLetterDraft:
        if decision is not None:
            priority = decision.priority
        else:
            value, currency = estimate_term_value(self.catalog, item.hint)
            priority = priority_score(value, currency, CustomerTier.NEW)
        channel_order_id = item.channel_order_id
        return DeadLetterDraft(
            channel=sub.channel.value,
            payload=item.raw,
            content_type=item.content_type,
            headers=_kept(sub.hdrs),
            reason=reason,
            error_code=code,
            rule=rule,
            attempts=attempts,
            priority=priority,
            order_key=f"{sub.channel.value}:{channel_order_id}" if channel_order_id else None,
            order_id=sub.order_id(channel_order_id) if channel_order_id else None,
            tenant_id=sub.tenant_id,
            principal_id=sub.scope_id,
            received_at=sub.received,
        )

    async def _dead_letter(self, draft: DeadLetterDraft, replay: _Replay | None) -> int | None:
        """Record a dead letter (or fold it into the replayed one); spool it if the DB fails.

        Card-like numbers are masked before anything is written, the spool included.
        """
        draft = draft.redacted()
        self.metrics.dead_lettered.labels(draft.channel, draft.error_code).inc()
        for attempt in range(2):
            try:
                if replay is not None and not replay.used:
                    row = await self._db(
                        self.store.refail_dead_letter, replay.dead_letter_id, draft
                    )
                    replay.used = True
                else:
                    row, _ = await self._db(self.store.add_dead_letter, draft)
                return row.id
            except Exception as exc:
                if attempt == 0 and classify(exc) is not None:
                    await asyncio.sleep(self.settings.backoff_max_s)
                    continue
                log.error(
                    "intake.dead_letter_write_failed", channel=draft.channel, error=str(exc)[:300]
                )
                break
        self._spool(draft)
        return None


def _kept(hdrs: Mapping[str, str]) -> dict[str, str]:
    return {k: v[:500] for k, v in hdrs.items() if k in KEPT_HEADERS}


def _payload_text(body: bytes | str, ch: Channel) -> tuple[str, str]:
    """The payload as storable text and its media type (base64 when it is not UTF-8)."""
    media = channel_content_type(ch)
    if isinstance(body, str):
        return body, media
    try:
        return body.decode("utf-8"), media
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), media + BASE64_SUFFIX
