"""The state every part of :class:`~starter.intake.IntakeService` shares, and its store calls.

``IntakeService`` is assembled from mixins, one per module (``order_path``, ``dead_letters``,
``spool``, ``operations``); each reads the attributes declared here, which
``IntakeService.__init__`` sets.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import structlog

from activities.auth_store import AuthStore
from activities.intake_store import IntakeStore
from models.catalog import Catalog
from models.errors import OmsError
from starter.intake.metrics import IntakeMetrics
from starter.intake.settings import IntakeSettings
from starter.intake.transient import classify, public_message
from starter.service import OmsService

log = structlog.get_logger("starter.intake")  # the package's one logger name

T = TypeVar("T")


class IntakeCore:
    """The attributes of an :class:`~starter.intake.IntakeService` (see its ``__init__``)."""

    service: Callable[[], Awaitable[OmsService]]
    store: IntakeStore
    catalog: Catalog
    settings: IntakeSettings
    metrics: IntakeMetrics
    clock: Callable[[], datetime]
    principals: AuthStore
    _spool_lock: threading.Lock

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking store call in a thread, bounded by the attempt time-out."""
        return await asyncio.wait_for(
            asyncio.to_thread(fn, *args, **kwargs), self.settings.attempt_timeout_s
        )

    async def _query(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A store call for operations (not the order path): DB failures become OmsError."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except Exception as exc:
            transient = classify(exc)
            if transient is None:
                raise
            code, detail = transient
            log.warning("intake.query_failed", code=code.value, error=detail)
            raise OmsError(code, public_message(code)) from exc
