"""test clocks

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 09:00:00.000000

Hand-written to match ``ClockRecord`` in activities/tables.py exactly
(tests/activities/test_migrations.py compares the migrated schema with SQLModel.metadata).
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "test_clocks",
        sa.Column("clock_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("now", sa.DateTime(timezone=True), nullable=False),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("clock_id"),
    )


def downgrade() -> None:
    op.drop_table("test_clocks")
