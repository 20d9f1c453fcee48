"""What the intake answers: per-order :class:`ItemResult`, per-payload :class:`IntakeResponse`."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from models.errors import http_status

# Error code of an unexpected failure (a bug): dead-lettered, answered with HTTP 500.
INTERNAL = "INTERNAL"
# Refusals that decide nothing about the order itself (who may send it, a clash with an earlier
# copy): a replay answered only with these leaves its dead letter open.
NOT_JUDGED_RULES = frozenset(
    {"access.permission", "access.channel", "access.partner", "access.account", "order.idempotency"}
)


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    DEAD_LETTERED = "dead_lettered"
    IGNORED = "ignored"


class IntakeError(BaseModel):
    """The ``error`` object of a refused order: a stable code, a sentence, the rule that fired."""

    code: str
    message: str
    rule: str | None = None
    field: str | None = None
    dead_letter_id: int | None = None


class ItemResult(BaseModel):
    """The outcome of one order of a payload."""

    outcome: Outcome
    status_code: int
    index: int | None = None
    channel_order_id: str | None = None
    order: dict[str, Any] | None = None
    error: IntakeError | None = None

    def body(self) -> dict[str, Any]:
        if self.order is not None:
            return self.order
        assert self.error is not None
        return {"error": self.error.model_dump(exclude_none=True)}

    def entry(self) -> dict[str, Any]:
        """This result as one entry of a batch answer."""
        entry: dict[str, Any] = {
            "index": self.index,
            "channel_order_id": self.channel_order_id,
            "outcome": self.outcome.value,
            "http_status": self.status_code,
        }
        if self.order is not None:
            entry["order"] = self.order
        if self.error is not None:
            entry["error"] = self.error.model_dump(exclude_none=True)
        return entry


class IntakeResponse(BaseModel):
    """What ``handle`` made of one payload; ``status_code`` and ``body()`` are the HTTP answer."""

    channel: str
    batch: bool = False
    items: list[ItemResult] = []
    error: IntakeError | None = None  # the payload as a whole was refused
    ignored: str | None = None

    @property
    def status_code(self) -> int:
        if self.error is not None:
            return http_status(self.error.code) if self.error.code != INTERNAL else 500
        if self.ignored is not None or self.batch:
            return 200
        return self.items[0].status_code

    @property
    def judged(self) -> bool:
        """Whether the payload got through to a decision (an answer, a rule's verdict), rather
        than being refused only for who sent it or as a clash with an earlier copy."""
        if self.error is not None:
            return self.error.rule not in NOT_JUDGED_RULES
        if self.ignored is not None or not self.items:
            return True
        return not all(i.error is not None and i.error.rule in NOT_JUDGED_RULES for i in self.items)

    def summary(self) -> dict[str, int]:
        counts = {"received": len(self.items)}
        for outcome in (
            Outcome.ACCEPTED,
            Outcome.DUPLICATE,
            Outcome.REJECTED,
            Outcome.DEAD_LETTERED,
        ):
            counts[outcome.value] = sum(1 for i in self.items if i.outcome == outcome)
        return counts

    def body(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error.model_dump(exclude_none=True)}
        if self.ignored is not None:
            return {"ignored": self.ignored}
        if not self.batch:
            return self.items[0].body()
        return {
            "channel": self.channel,
            "summary": self.summary(),
            "results": [i.entry() for i in self.items],
        }


def summarize(results: Iterable[ItemResult]) -> dict[str, int]:
    """Counts per outcome."""
    counts = {o.value: 0 for o in Outcome if o != Outcome.IGNORED}
    for r in results:
        if r.outcome.value in counts:
            counts[r.outcome.value] += 1
    return counts
