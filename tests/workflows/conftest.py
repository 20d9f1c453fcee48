"""A whole subscription stack on the time-skipping server: real activities, DB and localstripe."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment

from activities.gateway import StripeGateway
from activities.gateway_port import PaymentGateway
from activities.store import Store
from models.catalog import default_catalog
from starter.service import OmsService
from workers.main import Dependencies, build_worker
from workers.servers import start_time_skipping

TEST_API_KEY = "sk_test_oms"


@dataclass
class Stack:
    env: WorkflowEnvironment
    service: OmsService
    store: Store
    gateway: PaymentGateway

    async def now(self) -> datetime:
        return await self.env.get_current_time()


@asynccontextmanager
async def open_stack(
    engine: Engine, gateway: PaymentGateway, **worker_options: Any
) -> AsyncIterator[Stack]:
    """A fresh time-skipping server (its virtual clock is global), one worker on ``gateway``."""
    env = await start_time_skipping()
    store = Store(engine)
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    service = OmsService(
        env.client, store, default_catalog(), task_queue=task_queue, search_attributes=False
    )
    try:
        with ThreadPoolExecutor(max_workers=8) as executor:
            worker = build_worker(
                env.client, task_queue, Dependencies(engine, gateway), executor, **worker_options
            )
            async with worker:
                yield Stack(env, service, store, gateway)
    finally:
        await env.shutdown()


@pytest.fixture
async def stack(engine: Engine, localstripe_url: str) -> AsyncIterator[Stack]:
    """The whole stack on the real local gateway."""
    gateway = StripeGateway(TEST_API_KEY, api_base=localstripe_url, max_network_retries=0)
    async with open_stack(engine, gateway) as opened:
        yield opened
