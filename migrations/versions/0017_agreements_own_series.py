"""Each supplementary agreement is a document of its own, not a version of the previous one

Agreements formed one series per contract (agreement N was version N of "the agreement"), so the
documents list and ``.../versions`` presented No. 2 as replacing No. 1.  Each now has its own
series (its ``source_key``, unique per amendment) and is version 1.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 04:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

documents = sa.table(
    'documents',
    sa.column('id', sa.String), sa.column('contract_id', sa.String), sa.column('kind', sa.String),
    sa.column('series', sa.String), sa.column('version', sa.Integer), sa.column('source_key', sa.String),
    sa.column('created_at', sa.DateTime),
)
AGREEMENT = 'supplementary_agreement'


def upgrade() -> None:
    op.execute(
        documents.update()
        .where(documents.c.kind == AGREEMENT, documents.c.series == '', documents.c.source_key.is_not(None))
        .values(series=documents.c.source_key, version=1)
    )


def downgrade() -> None:
    # Back to one series per contract, numbered in the order the agreements were made.
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(documents.c.id, documents.c.contract_id)
        .where(documents.c.kind == AGREEMENT, documents.c.series == documents.c.source_key)
        .order_by(documents.c.contract_id, documents.c.created_at, documents.c.id)
    ).all()
    numbers: dict[str, int] = {}
    for doc_id, contract_id in rows:
        numbers[contract_id] = numbers.get(contract_id, 0) + 1
        bind.execute(documents.update().where(documents.c.id == doc_id)
                     .values(series='', version=numbers[contract_id]))
