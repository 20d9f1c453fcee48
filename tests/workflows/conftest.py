"""A whole subscription stack on the time-skipping server: real activities, DB and localstripe."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import pytest
from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment

from activities.gateway import StripeGateway
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
    gateway: StripeGateway

    async def now(self) -> datetime:
        return await self.env.get_current_time()


@pytest.fixture
async def stack(engine: Engine, localstripe_url: str) -> AsyncIterator[Stack]:
    """A fresh time-skipping server per test (its virtual clock is global), one worker."""
    env = await start_time_skipping()
    gateway = StripeGateway(TEST_API_KEY, api_base=localstripe_url, max_network_retries=0)
    store = Store(engine)
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    service = OmsService(
        env.client, store, default_catalog(), task_queue=task_queue, search_attributes=False
    )
    try:
        with ThreadPoolExecutor(max_workers=8) as executor:
            worker = build_worker(env.client, task_queue, Dependencies(engine, gateway), executor)
            async with worker:
                yield Stack(env, service, store, gateway)
    finally:
        await env.shutdown()
