"""item currency: milestones.currency and installments.currency, the contract's currency copied
onto its items, and the analytics indexes that carry it

The money analytics (cost overrun per currency, receivables and billed amounts per currency) joined
every milestone or installment of the period to its contract only to read the currency: at
100,000 contracts (1,000,000 milestones) that join was about half of the quarterly report's
database time.  A contract's currency is fixed when it is created (no amendment changes it), so
the projection writes it on each item row and the statements group by the item's own column;
contracts are joined only when a customer/playbook/owner filter asks for them
(docs/analytics.md, Performance).  ``ix_milestones_completed_at`` and both installment indexes
INCLUDE it, so those reads stay index-only.

Existing rows are backfilled from their contract; the columns are NOT NULL (on SQLite with a
server default of '' that the backfill and the projection never leave in place).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27 13:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

# name, table, key columns, PostgreSQL INCLUDE columns (before, after) — as in models/contract.py.
INDEXES = [
    ('ix_milestones_completed_at', 'milestones', ['completed_at'],
     ['kind', 'status', 'started_at', 'due_at', 'owner', 'department', 'contract_id', 'planned_cost',
      'actual_cost', 'satisfaction']),
    ('ix_installments_due_at', 'installments', ['due_at'], ['contract_id', 'amount', 'paid', 'paid_at']),
    ('ix_installments_paid_at', 'installments', ['paid_at'], ['contract_id', 'amount', 'paid', 'due_at']),
]


def _recreate_indexes(with_currency: bool) -> None:
    for name, table, columns, include in INDEXES:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, columns, unique=False,
                        postgresql_include=[*include, 'currency'] if with_currency else include)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table in ('milestones', 'installments'):
        if dialect == 'postgresql':
            op.add_column(table, sa.Column('currency', sa.String(length=3), nullable=True))
            op.execute(f"UPDATE {table} SET currency = c.currency FROM contracts c "  # noqa: S608 - fixed names
                       f"WHERE c.id = {table}.contract_id")
            op.alter_column(table, 'currency', existing_type=sa.String(length=3), nullable=False)
        else:
            # SQLite adds a NOT NULL column only with a default, and cannot rebuild milestones in
            # a batch (its reflection garbles the generated stage_days column): '' here, replaced
            # at once by the contract's currency; the projection always writes it.
            op.add_column(table, sa.Column('currency', sa.String(length=3), nullable=False,
                                           server_default=''))
            op.execute(f"UPDATE {table} SET currency = (SELECT c.currency FROM contracts c "  # noqa: S608
                       f"WHERE c.id = {table}.contract_id)")
    _recreate_indexes(with_currency=True)


def downgrade() -> None:
    _recreate_indexes(with_currency=False)
    for table in ('installments', 'milestones'):
        if op.get_bind().dialect.name == 'sqlite':
            op.execute(f"ALTER TABLE {table} DROP COLUMN currency")  # SQLite 3.35+; not indexed there
        else:
            op.drop_column(table, 'currency')
