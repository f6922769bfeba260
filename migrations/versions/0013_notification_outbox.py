"""notification outbox, amendment records, events recorded outside the workflow

The lean contract engine (workflows/contract/, patch ``lean-engine-v1``) no longer wakes for
reminders before due: it plans them, and the projection writes them to ``notification_outbox``
with its delta, where the dispatcher (core/outbox.py) sends each at its time.  The same outbox
carries the notices a contract decides at once (hand-off, approval request, amended date).
A reminder the outbox sent is logged in ``contract_events`` without a workflow ``seq``: ``seq``
becomes nullable and such events carry a unique ``key`` instead.  ``amendments`` keeps each
amendment with its impact, which the workflow lets go once the amendment is decided.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 08:00:00
"""
import sqlalchemy as sa
from alembic import op

import models.types

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('notification_outbox',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('key', sa.String(length=300), nullable=False),
    sa.Column('contract_id', sa.String(length=40), nullable=False),
    sa.Column('item_type', sa.String(length=30), nullable=False),
    sa.Column('item_key', sa.String(length=120), nullable=False),
    sa.Column('kind', sa.String(length=30), nullable=False),
    sa.Column('send_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('request', sa.JSON(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', models.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('lease_owner', sa.String(length=80), nullable=True),
    sa.Column('lease_until', models.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('done_at', models.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notification_outbox')),
    sa.UniqueConstraint('key', name=op.f('uq_notification_outbox_key')),
    )
    op.create_index('ix_outbox_due', 'notification_outbox', ['status', 'send_at'], unique=False)
    op.create_index('ix_outbox_item', 'notification_outbox', ['contract_id', 'item_type', 'item_key'], unique=False)
    op.create_table('amendments',
    sa.Column('contract_id', sa.String(length=40), nullable=False),
    sa.Column('amendment_id', sa.String(length=40), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('record', sa.JSON(), nullable=False),
    sa.Column('updated_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('contract_id', 'amendment_id', name=op.f('pk_amendments')),
    )
    with op.batch_alter_table('contract_events') as batch:
        batch.alter_column('seq', existing_type=sa.Integer(), nullable=True)
        batch.add_column(sa.Column('key', sa.String(length=300), nullable=True))
        batch.create_unique_constraint('uq_contract_events_key', ['key'])
    _append_only_again()


def _append_only_again() -> None:
    """SQLite's batch mode rebuilds the table, and its triggers go with the old one: the event log
    stays append-only (migration 0001).  PostgreSQL altered the table in place and kept them."""
    if op.get_bind().dialect.name == "postgresql":
        return
    for op_name in ("UPDATE", "DELETE"):
        op.execute(f"DROP TRIGGER IF EXISTS contract_events_no_{op_name.lower()}")
        op.execute(
            f"CREATE TRIGGER contract_events_no_{op_name.lower()} BEFORE {op_name} ON contract_events "
            f"BEGIN SELECT RAISE(ABORT, 'contract_events is append-only: {op_name} refused'); END"
        )


def downgrade() -> None:
    # Events without a seq cannot go back (the old schema has no room for them); the triggers
    # refuse a DELETE, so the rows are left out when SQLite rebuilds the table, and PostgreSQL
    # lifts its trigger for the statement.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE contract_events DISABLE TRIGGER contract_events_append_only")
        op.execute("DELETE FROM contract_events WHERE seq IS NULL")
        op.execute("ALTER TABLE contract_events ENABLE TRIGGER contract_events_append_only")
    else:
        op.execute("DROP TRIGGER IF EXISTS contract_events_no_delete")
        op.execute("DELETE FROM contract_events WHERE seq IS NULL")
    with op.batch_alter_table('contract_events') as batch:
        batch.drop_constraint('uq_contract_events_key', type_='unique')
        batch.drop_column('key')
        batch.alter_column('seq', existing_type=sa.Integer(), nullable=False)
    _append_only_again()
    op.drop_table('amendments')
    op.drop_index('ix_outbox_item', table_name='notification_outbox')
    op.drop_index('ix_outbox_due', table_name='notification_outbox')
    op.drop_table('notification_outbox')
