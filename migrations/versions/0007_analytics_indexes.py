"""analytics: milestones.started_at (stage start) and contracts.settled_at (paid in full), both
kept by the projection, and the indexes the analytics queries range-scan (docs/analytics.md,
bench/analytics.py)

On PostgreSQL the indexes carry the columns the queries read (INCLUDE), so a period's rows come
from an index-only scan; SQLite gets the same indexes on the key columns.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 12:00:00
"""
import sqlalchemy as sa
from alembic import op

import models.types

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

# name, table, key columns, PostgreSQL INCLUDE columns — the same list is in models/contract.py.
INDEXES = [
    ('ix_milestones_completed_at', 'milestones', ['completed_at'],
     ['kind', 'status', 'started_at', 'due_at', 'owner', 'department', 'contract_id', 'planned_cost',
      'actual_cost', 'satisfaction']),
    # Stage statistics per kind (one range scan per stage: api/analytics.py _stats).
    ('ix_milestones_kind_completed_at', 'milestones', ['kind', 'completed_at'],
     ['status', 'started_at', 'due_at', 'owner', 'department', 'contract_id']),
    ('ix_milestones_due_at', 'milestones', ['due_at'],
     ['kind', 'status', 'completed_at', 'owner', 'department', 'contract_id']),
    ('ix_installments_due_at', 'installments', ['due_at'], ['contract_id', 'amount', 'paid', 'paid_at']),
    ('ix_installments_paid_at', 'installments', ['paid_at'], ['contract_id', 'amount', 'paid', 'due_at']),
    ('ix_payments_received_at', 'payments', ['received_at'], ['contract_id']),
    ('ix_payments_contract_received', 'payments', ['contract_id', 'received_at'], ['reference', 'amount']),
    ('ix_contracts_effective_at', 'contracts', ['effective_at'], ['currency', 'amount', 'playbook', 'owner']),
    ('ix_contracts_settled_at', 'contracts', ['settled_at'],
     ['effective_at', 'playbook', 'owner', 'customer_id', 'customer_name']),
    # The contract columns joined to items (currency, scope filters) without reading the wide rows.
    ('ix_contracts_id_analytics', 'contracts', ['id'],
     ['currency', 'playbook', 'owner', 'customer_id', 'customer_name', 'closed_at']),
]


def upgrade() -> None:
    with op.batch_alter_table('milestones') as batch:
        batch.add_column(sa.Column('started_at', models.types.UTCDateTime(timezone=True), nullable=True))
    # Rows projected before this column existed: the latest completion of an earlier milestone
    # (by position) of the same contract, else the contract's effective date.
    op.execute(
        "UPDATE milestones SET started_at = COALESCE("
        " (SELECT MAX(m2.completed_at) FROM milestones m2"
        "   WHERE m2.contract_id = milestones.contract_id AND m2.position < milestones.position),"
        " (SELECT c.effective_at FROM contracts c WHERE c.id = milestones.contract_id))"
    )
    with op.batch_alter_table('contracts') as batch:
        batch.add_column(sa.Column('settled_at', models.types.UTCDateTime(timezone=True), nullable=True))
    # The payment that brought the running total (received_at order) to the amount.  Money is a
    # decimal string on SQLite: summed there in integer ten-thousandths, exactly.
    if op.get_bind().dialect.name == 'sqlite':
        paid, amount = "CAST(ROUND(CAST(p.amount AS REAL) * 10000) AS INTEGER)", \
            "CAST(ROUND(CAST(contracts.amount AS REAL) * 10000) AS INTEGER)"
    else:
        paid, amount = "p.amount", "contracts.amount"
    op.execute(
        "UPDATE contracts SET settled_at = (SELECT MIN(r.received_at) FROM"
        f" (SELECT p.received_at, SUM({paid}) OVER (ORDER BY p.received_at, p.reference) AS paid"
        "   FROM payments p WHERE p.contract_id = contracts.id) r"
        f" WHERE r.paid >= {amount} AND {amount} > 0)"
    )
    for name, table, columns, include in INDEXES:
        op.create_index(name, table, columns, unique=False, postgresql_include=include)


def downgrade() -> None:
    for name, table, _columns, _include in reversed(INDEXES):
        op.drop_index(name, table_name=table)
    with op.batch_alter_table('contracts') as batch:
        batch.drop_column('settled_at')
    with op.batch_alter_table('milestones') as batch:
        batch.drop_column('started_at')
