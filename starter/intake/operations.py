"""Dead-letter operations (list, show, discard) and reports; replay is on the service.

Each takes the authenticated principal: reading needs ``intake:read``, discarding
``intake:manage``, and everything is the principal's tenant's only. Another tenant's dead letter
answers ``NOT_FOUND`` exactly like an id nobody has.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog

from activities.intake_store import DeadLetterStatus
from activities.intake_tables import DeadLetter
from models.errors import ErrorCode, OmsError
from models.identity import Permission, Principal, not_found
from starter.intake.spool import DeadLetterSpool

log = structlog.get_logger("starter.intake")  # the package's one logger name


class DeadLetterOperations(DeadLetterSpool):
    """What operators do with the dead-letter queue, and the intake reports."""

    async def dead_letters(
        self,
        principal: Principal,
        *,
        status: str | None = "open",
        channel: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The tenant's dead letters, highest priority first (spooled ones are moved in first)."""
        principal.require(Permission.INTAKE_READ)
        try:
            await asyncio.to_thread(self.drain_spool)
        except Exception as exc:  # the listing still works; the spool waits
            log.warning("intake.spool_drain_failed", error=str(exc)[:300])
        rows = await self._query(
            self.store.list_dead_letters,
            tenant_id=principal.tenant_id,
            status=status,
            channel=channel,
            limit=limit,
        )
        return [dead_letter_view(r) for r in rows]

    async def dead_letter(self, principal: Principal, dead_letter_id: int) -> dict[str, Any]:
        """One dead letter of the principal's tenant, with its payload.

        Raises:
            OmsError: ``FORBIDDEN`` without ``intake:read``; ``NOT_FOUND``.
        """
        principal.require(Permission.INTAKE_READ)
        row = await self._query(self.store.get_dead_letter, dead_letter_id, principal.tenant_id)
        if row is None:
            raise _dl_not_found(dead_letter_id)
        return dead_letter_view(row, full=True)

    async def discard(
        self, principal: Principal, dead_letter_id: int, reason: str | None = None
    ) -> dict[str, Any]:
        """Give up on a dead letter (its order's reservations are released).

        Raises:
            OmsError: ``FORBIDDEN`` without ``intake:manage``; ``NOT_FOUND``;
                ``INVALID_REQUEST`` when it is not open.
        """
        principal.require(Permission.INTAKE_MANAGE)
        row = await self._query(self.store.get_dead_letter, dead_letter_id, principal.tenant_id)
        if row is None:
            raise _dl_not_found(dead_letter_id)
        closed = await self._query(
            self.store.resolve_dead_letter,
            dead_letter_id,
            DeadLetterStatus.DISCARDED,
            {
                "outcome": "discarded",
                "reason": reason or "discarded by an operator",
                "by": principal.id,
            },
            principal.tenant_id,
        )
        if closed is None:
            raise OmsError(
                ErrorCode.INVALID_REQUEST,
                f"dead letter {dead_letter_id} is {row.status}, not open; nothing to discard",
            )
        log.info("intake.discarded", dead_letter_id=dead_letter_id, reason=reason, by=principal.id)
        return dead_letter_view(closed, full=True)

    # --- reports ------------------------------------------------------------------------

    async def orders(
        self,
        principal: Principal,
        *,
        status: str | None = None,
        rule: str | None = None,
        channel: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The tenant's orders, newest first."""
        principal.require(Permission.INTAKE_READ)
        rows = await self._query(
            self.store.list_orders,
            tenant_id=principal.tenant_id,
            status=status,
            rule=rule,
            channel=channel,
            limit=limit,
        )
        return [
            {
                **r.model_dump(mode="json", exclude={"id", "result", "fingerprint"}),
                "result": json.loads(r.result) if r.result else {},
            }
            for r in rows
        ]

    async def rejections(self, principal: Principal) -> list[dict[str, Any]]:
        """The tenant's rejections per rule, code, rule set and channel."""
        principal.require(Permission.INTAKE_READ)
        return await self._query(self.store.rejection_counts, principal.tenant_id)


def dead_letter_view(row: DeadLetter, full: bool = False) -> dict[str, Any]:
    """A dead letter for the API and CLI (``full`` adds the payload, headers, resolution)."""
    view: dict[str, Any] = {
        "id": row.id,
        "channel": row.channel,
        "status": row.status,
        "reason": row.reason,
        "error_code": row.error_code,
        "rule": row.rule,
        "priority": row.priority,
        "attempts": row.attempts,
        "order_key": row.order_key,
        "principal_id": row.principal_id,
        "received_at": row.received_at.isoformat(),
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "resolved_at": row.resolved_at.isoformat() if row.resolved_at else None,
    }
    if full:
        view["content_type"] = row.content_type
        view["payload"] = row.payload
        view["headers"] = json.loads(row.headers or "{}")
        view["resolution"] = json.loads(row.resolution) if row.resolution else None
    return view


def _dl_not_found(dead_letter_id: int) -> OmsError:
    """The one answer for a dead letter nobody has and for another tenant's."""
    return not_found("dead letter", str(dead_letter_id))
