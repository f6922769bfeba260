"""Notification outbox: ``told_at``, when a dispatcher took a reminder for delivery

A contract's workflow task that wrote a reminder plan through its local activity, and was then
lost with its worker before the server recorded it, runs again later: a plan whose date comes
from that task's clock (a milestone due N days after its predecessor's completion) is made again
for a due date a few seconds on, under another key.  ``told_at`` lets the dispatcher recognise
the second copy of a reminder that already went out (core/outbox.py).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 20:30:00
"""
import sqlalchemy as sa
from alembic import op

import models.types

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('notification_outbox') as batch:
        batch.add_column(sa.Column('told_at', models.types.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('notification_outbox') as batch:
        batch.drop_column('told_at')
