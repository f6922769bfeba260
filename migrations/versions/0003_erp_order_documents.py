"""ERP order number on contracts; documents (supplementary agreements)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 09:40:00
"""
import sqlalchemy as sa
from alembic import op

import models.types

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('contracts') as batch:
        batch.add_column(sa.Column('erp_order_no', sa.String(length=60), nullable=True))
        batch.create_index('ix_contracts_erp_order_no', ['erp_order_no'], unique=False)
    op.create_table('documents',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('contract_id', sa.String(length=40), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('title', sa.String(length=300), nullable=False),
    sa.Column('filename', sa.String(length=200), nullable=False),
    sa.Column('media_type', sa.String(length=100), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.Column('source_key', sa.String(length=200), nullable=True),
    sa.Column('created_by', sa.String(length=100), nullable=False),
    sa.Column('created_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_documents')),
    sa.UniqueConstraint('contract_id', 'kind', 'version', name='uq_documents_contract_kind_version'),
    sa.UniqueConstraint('source_key', name='uq_documents_source_key'),
    )
    op.create_index('ix_documents_contract_id', 'documents', ['contract_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_documents_contract_id', table_name='documents')
    op.drop_table('documents')
    with op.batch_alter_table('contracts') as batch:
        batch.drop_index('ix_contracts_erp_order_no')
        batch.drop_column('erp_order_no')
