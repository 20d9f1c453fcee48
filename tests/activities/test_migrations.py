"""The Alembic migrations build exactly the schema the code declares, on SQLite and PostgreSQL.

``db_url`` is an empty database (a fresh SQLite file, or a fresh PostgreSQL schema when
``OMS_TEST_DATABASE_URL`` is set), so every test starts from nothing, as a new deployment does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlmodel import SQLModel

from activities.db import create_db_engine
from activities.store import Store
from activities.tables import Customer
from workers.migrate import alembic_config, upgrade


@pytest.fixture
def empty_db(db_url: str) -> Iterator[Engine]:
    """An engine on ``db_url`` with no tables at all."""
    eng = create_db_engine(db_url)
    assert sa.inspect(eng).get_table_names() == []
    yield eng
    eng.dispose()


def schema_drift(engine: Engine) -> list[Any]:
    """What autogenerate would change to make the database match ``SQLModel.metadata``.

    Types and server defaults are compared too; an empty list means no drift at all.
    """
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(ctx, SQLModel.metadata))


def schema_shape(engine: Engine) -> dict[str, Any]:
    """Tables with their columns, indexes and unique constraints, comparable across calls."""
    insp = sa.inspect(engine)
    shape: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        shape[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)
            ],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"])) for i in insp.get_indexes(table)
            ),
            "unique": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(table)),
        }
    return shape


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(db_url: str) -> str:
    heads = ScriptDirectory.from_config(alembic_config(db_url)).get_heads()
    assert len(heads) == 1, f"the migrations have several heads: {heads}"
    return heads[0]


def test_upgrade_on_an_empty_database_builds_exactly_the_declared_schema(
    db_url: str, empty_db: Engine
) -> None:
    upgrade(db_url)

    assert schema_drift(empty_db) == []
    tables = set(sa.inspect(empty_db).get_table_names())
    assert tables == set(SQLModel.metadata.tables) | {"alembic_version"}
    assert current_revision(empty_db) == head_revision(db_url)


def test_upgrade_twice_is_a_no_op_that_keeps_the_data(db_url: str, empty_db: Engine) -> None:
    upgrade(db_url)
    shape = schema_shape(empty_db)
    Store(empty_db).upsert_customer("cust_1", "ada@example.com", "UTC")

    upgrade(db_url)

    assert schema_shape(empty_db) == shape
    assert current_revision(empty_db) == head_revision(db_url)
    assert Store(empty_db).count(Customer) == 1
    assert schema_drift(empty_db) == []


def test_downgrade_to_base_removes_every_table_and_upgrade_restores_them(
    db_url: str, empty_db: Engine
) -> None:
    upgrade(db_url)
    shape = schema_shape(empty_db)

    command.downgrade(alembic_config(db_url), "base")

    assert set(sa.inspect(empty_db).get_table_names()) <= {"alembic_version"}
    assert current_revision(empty_db) is None

    upgrade(db_url)

    assert schema_shape(empty_db) == shape
    assert schema_drift(empty_db) == []
