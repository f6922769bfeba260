"""documents: uploads (blob store), versions per series; communications log

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27 12:30:00
"""
import sqlalchemy as sa
from alembic import op

import models.types

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Uploads keep their bytes in the blob store: content becomes optional, storage_key names the
    # blob; versions count per (contract, kind, series).  Existing rows (supplementary agreements)
    # get series "" and keep their versions.
    with op.batch_alter_table('documents') as batch:
        batch.add_column(sa.Column('series', sa.String(length=300), server_default='', nullable=False))
        batch.add_column(sa.Column('storage_key', sa.String(length=200), nullable=True))
        batch.alter_column('content', existing_type=sa.LargeBinary(), nullable=True)
        batch.drop_constraint('uq_documents_contract_kind_version', type_='unique')
        batch.create_unique_constraint('uq_documents_contract_kind_series_version',
                                       ['contract_id', 'kind', 'series', 'version'])
    op.create_table('communications',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('contract_id', sa.String(length=40), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('subject', sa.String(length=300), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('counterpart', sa.String(length=200), nullable=True),
    sa.Column('occurred_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('recorded_by', sa.String(length=100), nullable=False),
    sa.Column('created_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('attachments', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_communications')),
    )
    op.create_index('ix_communications_contract_occurred', 'communications', ['contract_id', 'occurred_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_communications_contract_occurred', table_name='communications')
    op.drop_table('communications')
    # Uploaded documents have no content in the database and no place in the old schema.
    op.execute("DELETE FROM documents WHERE content IS NULL OR series <> ''")
    with op.batch_alter_table('documents') as batch:
        batch.drop_constraint('uq_documents_contract_kind_series_version', type_='unique')
        batch.create_unique_constraint('uq_documents_contract_kind_version', ['contract_id', 'kind', 'version'])
        batch.alter_column('content', existing_type=sa.LargeBinary(), nullable=False)
        batch.drop_column('storage_key')
        batch.drop_column('series')
