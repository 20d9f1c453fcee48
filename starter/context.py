"""Build the service (Temporal client, store, catalog) from configuration, for the CLI and API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from temporalio.client import Client

from activities.db import create_db_engine
from activities.store import Store
from models.catalog import default_catalog
from models.errors import ErrorCode, OmsError
from starter.service import OmsService
from workers.config import Config
from workers.main import connect

log = structlog.get_logger(__name__)


async def connect_temporal(config: Config) -> Client:
    """Connect, or an OmsError that says where we tried."""
    try:
        return await connect(config)
    except RuntimeError as err:  # the SDK raises RuntimeError for connection failures
        log.warning("temporal.connect_failed", address=config.temporal.address, error=str(err))
        raise OmsError(
            ErrorCode.TEMPORAL_UNAVAILABLE,
            f"cannot reach Temporal at {config.temporal.address} "
            f"(namespace {config.temporal.namespace}); is `make dev` running?",
        ) from err


def make_service(config: Config, client: Client, store: Store) -> OmsService:
    return OmsService(
        client,
        store,
        default_catalog(),
        task_queue=config.temporal.task_queue,
        default_timezone=config.billing.default_timezone,
        notice_days=config.billing.upcoming_notice_days,
        notice_days_by_interval=config.billing.notice_days_by_interval,
        test_clocks=config.temporal.test_clocks,
    )


@asynccontextmanager
async def open_service(config: Config) -> AsyncIterator[OmsService]:
    """A connected service; disposes of the DB engine afterwards."""
    engine = create_db_engine(config.database.url)
    try:
        client = await connect_temporal(config)
        yield make_service(config, client, Store(engine))
    finally:
        engine.dispose()
