"""auth: users log in (argon2id password hash, extra roles such as admin); API keys for machines

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 12:30:00
"""
import sqlalchemy as sa
from alembic import op

import models.types

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('users') as batch:
        batch.add_column(sa.Column('password_hash', sa.String(length=200), nullable=True))
        batch.add_column(sa.Column('extra_roles', sa.String(length=200), server_default='', nullable=False))
    op.create_table(
        'api_keys',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('roles', sa.String(length=200), nullable=False),
        sa.Column('secret_sha256', sa.String(length=64), nullable=False),
        sa.Column('created_by', sa.String(length=100), nullable=False),
        sa.Column('created_at', models.types.UTCDateTime(), nullable=False),
        sa.Column('revoked_at', models.types.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )


def downgrade() -> None:
    op.drop_table('api_keys')
    with op.batch_alter_table('users') as batch:
        batch.drop_column('extra_roles')
        batch.drop_column('password_hash')
