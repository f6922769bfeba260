"""Revoked access tokens: logging out ends the token, not only the browser's cookie

Access tokens now carry an id (``jti``); logging out records it here until the token would have
expired, and authentication refuses a recorded id.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 23:00:00
"""
import sqlalchemy as sa
from alembic import op

import models.types

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('revoked_tokens',
    sa.Column('jti', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.String(length=100), nullable=False),
    sa.Column('expires_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('jti', name=op.f('pk_revoked_tokens')),
    )
    op.create_index(op.f('ix_revoked_tokens_expires_at'), 'revoked_tokens', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_revoked_tokens_expires_at'), table_name='revoked_tokens')
    op.drop_table('revoked_tokens')
