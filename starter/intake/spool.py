"""The local spool file: dead letters the database could not take wait there (JSON lines)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import structlog

from activities.intake_store import DeadLetterDraft
from models.identity import DEFAULT_TENANT
from starter.intake.core import IntakeCore

log = structlog.get_logger("starter.intake")  # the package's one logger name


class DeadLetterSpool(IntakeCore):
    """Writing dead letters to the spool and moving them into the table later."""

    def _spool(self, draft: DeadLetterDraft) -> None:
        draft = draft.redacted()
        path = Path(self.settings.spool_path)
        entry = {
            "channel": draft.channel,
            "payload": draft.payload,
            "content_type": draft.content_type,
            "headers": draft.headers,
            "reason": draft.reason,
            "error_code": draft.error_code,
            "rule": draft.rule,
            "attempts": draft.attempts,
            "priority": draft.priority,
            "order_key": draft.order_key,
            "order_id": draft.order_id,
            "tenant_id": draft.tenant_id,
            "principal_id": draft.principal_id,
            "received_at": draft.received_at.isoformat(),
        }
        with self._spool_lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        self.metrics.spooled.labels(draft.channel).inc()
        log.error(
            "intake.spooled",
            channel=draft.channel,
            path=str(path),
            order_key=draft.order_key,
            code=draft.error_code,
        )

    def drain_spool(self) -> int:
        """Move spooled dead letters into the table; returns how many (blocking; call in a thread).

        Entries that fail to load stay in the spool.
        """
        path = Path(self.settings.spool_path)
        with self._spool_lock:
            if not path.exists():
                return 0
            lines = path.read_text(encoding="utf-8").splitlines()
            kept: list[str] = []
            moved = 0
            for line in lines:
                if not line.strip():
                    continue
                try:
                    e = json.loads(line)
                    self.store.add_dead_letter(
                        DeadLetterDraft(
                            channel=e["channel"],
                            payload=e["payload"],
                            content_type=e["content_type"],
                            headers=e["headers"],
                            reason=e["reason"],
                            error_code=e["error_code"],
                            rule=e["rule"],
                            attempts=e["attempts"],
                            priority=e["priority"],
                            order_key=e["order_key"],
                            order_id=e.get("order_id"),
                            tenant_id=e.get("tenant_id") or DEFAULT_TENANT,
                            principal_id=e.get("principal_id"),
                            received_at=datetime.fromisoformat(e["received_at"]),
                        )
                    )
                    moved += 1
                except Exception as exc:
                    log.error("intake.spool_entry_failed", error=str(exc)[:300])
                    kept.append(line)
            if kept:
                path.write_text("\n".join(kept) + "\n", encoding="utf-8")
            else:
                path.unlink()
        if moved:
            log.info("intake.spool_drained", moved=moved, kept=len(kept))
        return moved
