"""order intake: intake orders, dead letters, credit ledger, inventory

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 12:00:00.000000

Hand-written to match activities/intake_tables.py exactly (tests/activities/test_migrations.py
compares the migrated schema with SQLModel.metadata).
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def _str(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table('credit_accounts',
    sa.Column('account_id', _str(64), nullable=False),
    sa.Column('name', _str(200), nullable=False),
    sa.Column('currency', _str(3), nullable=False),
    sa.Column('credit_limit_minor', sa.BigInteger(), nullable=False),
    sa.Column('outstanding_minor', sa.BigInteger(), nullable=False),
    sa.Column('reserved_minor', sa.BigInteger(), nullable=False),
    sa.Column('good_standing', sa.Boolean(), nullable=False),
    sa.Column('trusted_partner', sa.Boolean(), nullable=False),
    sa.Column('enterprise', sa.Boolean(), nullable=False),
    sa.Column('paid_invoices', sa.Integer(), nullable=False),
    sa.Column('late_payments', sa.Integer(), nullable=False),
    sa.Column('billing_email', _str(320), nullable=True),
    sa.Column('payment_method_id', _str(64), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('account_id')
    )

    op.create_table('dead_letters',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('channel', _str(32), nullable=False),
    sa.Column('order_key', _str(240), nullable=True),
    sa.Column('open_key', _str(240), nullable=True),
    sa.Column('content_type', _str(100), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('headers', sa.Text(), nullable=False),
    sa.Column('reason', _str(1000), nullable=False),
    sa.Column('error_code', _str(64), nullable=False),
    sa.Column('rule', _str(64), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('priority', sa.BigInteger(), nullable=False),
    sa.Column('status', _str(16), nullable=False),
    sa.Column('resolution', sa.Text(), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('open_key')
    )
    with op.batch_alter_table('dead_letters', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dead_letters_channel'), ['channel'], unique=False)
        batch_op.create_index(batch_op.f('ix_dead_letters_order_key'), ['order_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_dead_letters_priority'), ['priority'], unique=False)
        batch_op.create_index(batch_op.f('ix_dead_letters_status'), ['status'], unique=False)

    op.create_table('intake_orders',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order_id', _str(64), nullable=False),
    sa.Column('channel', _str(32), nullable=False),
    sa.Column('channel_order_id', _str(200), nullable=False),
    sa.Column('status', _str(16), nullable=False),
    sa.Column('customer_id', _str(64), nullable=False),
    sa.Column('account_id', _str(64), nullable=False),
    sa.Column('plan_id', _str(64), nullable=False),
    sa.Column('interval', _str(16), nullable=False),
    sa.Column('currency', _str(3), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('rule_set', _str(16), nullable=False),
    sa.Column('rule', _str(64), nullable=True),
    sa.Column('error_code', _str(64), nullable=True),
    sa.Column('message', _str(1000), nullable=True),
    sa.Column('subscription_id', _str(64), nullable=True),
    sa.Column('term_value_minor', sa.BigInteger(), nullable=False),
    sa.Column('credit_reserved_minor', sa.BigInteger(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('result', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('channel', 'channel_order_id'),
    sa.UniqueConstraint('order_id')
    )
    with op.batch_alter_table('intake_orders', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_intake_orders_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_intake_orders_rule'), ['rule'], unique=False)
        batch_op.create_index(batch_op.f('ix_intake_orders_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_intake_orders_subscription_id'), ['subscription_id'], unique=False)

    op.create_table('inventory',
    sa.Column('sku', _str(64), nullable=False),
    sa.Column('on_hand', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('sku')
    )

    op.create_table('inventory_reservations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sku', _str(64), nullable=False),
    sa.Column('order_key', _str(240), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('order_key')
    )
    with op.batch_alter_table('inventory_reservations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_inventory_reservations_sku'), ['sku'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('inventory_reservations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_inventory_reservations_sku'))

    op.drop_table('inventory_reservations')
    op.drop_table('inventory')
    with op.batch_alter_table('intake_orders', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_intake_orders_subscription_id'))
        batch_op.drop_index(batch_op.f('ix_intake_orders_status'))
        batch_op.drop_index(batch_op.f('ix_intake_orders_rule'))
        batch_op.drop_index(batch_op.f('ix_intake_orders_account_id'))

    op.drop_table('intake_orders')
    with op.batch_alter_table('dead_letters', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dead_letters_status'))
        batch_op.drop_index(batch_op.f('ix_dead_letters_priority'))
        batch_op.drop_index(batch_op.f('ix_dead_letters_order_key'))
        batch_op.drop_index(batch_op.f('ix_dead_letters_channel'))

    op.drop_table('dead_letters')
    op.drop_table('credit_accounts')
