"""milestone costs, customer satisfaction and overdue_since, for analytics

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 09:55:00
"""
import sqlalchemy as sa
from alembic import op

import models.types

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('milestones') as batch:
        batch.add_column(sa.Column('overdue_since', models.types.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('planned_cost', models.types.Money(), nullable=True))
        batch.add_column(sa.Column('actual_cost', models.types.Money(), nullable=True))
        batch.add_column(sa.Column('satisfaction', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('milestones') as batch:
        batch.drop_column('satisfaction')
        batch.drop_column('actual_cost')
        batch.drop_column('planned_cost')
        batch.drop_column('overdue_since')
