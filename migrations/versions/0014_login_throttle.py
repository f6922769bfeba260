"""Login throttle: failed log-ins per user name and per client address (POST /auth/token answers 429)

Written beside 0013 (the notification outbox) and chained after it; the table is independent of
0013's changes.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 07:00:00
"""
import sqlalchemy as sa
from alembic import op

import models.types

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('login_throttle',
    sa.Column('key', sa.String(length=300), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('window_started_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('blocked_until', models.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_login_throttle')),
    )
    op.create_index(op.f('ix_login_throttle_window_started_at'), 'login_throttle', ['window_started_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_login_throttle_window_started_at'), table_name='login_throttle')
    op.drop_table('login_throttle')
