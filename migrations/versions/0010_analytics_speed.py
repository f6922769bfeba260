"""analytics speed: milestones.stage_days (a generated column: the stage time in days), the stage
index carries it (and satisfaction), what fell due is indexed per stage, and a partial index of
open milestones by due date

At 100,000 contracts (1,000,000 milestones) the 12-month stage statistics read ~570,000 completed
milestones: computing completed_at - started_at for each was a third of that statement, the
percentile sorts most of the rest.  The database now keeps the difference on the row (generated:
exact by construction, nothing for the projection to maintain) and
``ix_milestones_kind_completed_at`` INCLUDEs it, so the percentiles sort values read straight from
an index-only scan.  ``ix_milestones_kind_due_at`` (replacing 0007's ``ix_milestones_due_at``,
which only analytics read) gives each stage its range of due dates: no hashing of ~500,000 rows by
stage.  The late milestones still open are the only ones whose contract's closing matters: the
partial index ``ix_milestones_open_due`` finds them without reading the completed ones
(docs/analytics.md, Performance).

PostgreSQL: a STORED column (adding it rewrites the milestones table once, under an exclusive
lock: seconds per million rows).  SQLite cannot add a stored column to an existing table: VIRTUAL
(computed when read), and its indexes have no INCLUDE.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 12:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

# The same expressions as models.contract.StageDays.
STAGE_DAYS = {
    'postgresql': "CASE WHEN completed_at IS NOT NULL THEN date_part('epoch', greatest(completed_at - "
                  "coalesce(started_at, completed_at), interval '0')) / 86400.0 END",
    'sqlite': "CASE WHEN completed_at IS NOT NULL THEN max(julianday(completed_at) - "
              "julianday(coalesce(started_at, completed_at)), 0.0) END",
}
OLD_STAGE_INCLUDE = ['status', 'started_at', 'due_at', 'owner', 'department', 'contract_id']
STAGE_INCLUDE = ['status', 'stage_days', 'due_at', 'owner', 'department', 'contract_id', 'satisfaction']
OPEN_INCLUDE = ['kind', 'status', 'owner', 'department', 'contract_id']
OLD_DUE_INCLUDE = ['kind', 'status', 'completed_at', 'owner', 'department', 'contract_id']
KIND_DUE_INCLUDE = ['status', 'completed_at', 'owner', 'department', 'contract_id']


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.add_column('milestones', sa.Column(
        'stage_days', sa.Float(), sa.Computed(sa.text(STAGE_DAYS.get(dialect, STAGE_DAYS['sqlite'])),
                                               persisted=dialect == 'postgresql'), nullable=True))
    op.drop_index('ix_milestones_kind_completed_at', table_name='milestones')
    op.create_index('ix_milestones_kind_completed_at', 'milestones', ['kind', 'completed_at'], unique=False,
                    postgresql_include=STAGE_INCLUDE)
    op.drop_index('ix_milestones_due_at', table_name='milestones')
    op.create_index('ix_milestones_kind_due_at', 'milestones', ['kind', 'due_at'], unique=False,
                    postgresql_include=KIND_DUE_INCLUDE)
    op.create_index('ix_milestones_open_due', 'milestones', ['due_at'], unique=False,
                    postgresql_include=OPEN_INCLUDE, postgresql_where=sa.text('completed_at IS NULL'),
                    sqlite_where=sa.text('completed_at IS NULL'))


def downgrade() -> None:
    op.drop_index('ix_milestones_open_due', table_name='milestones')
    op.drop_index('ix_milestones_kind_due_at', table_name='milestones')
    op.create_index('ix_milestones_due_at', 'milestones', ['due_at'], unique=False,
                    postgresql_include=OLD_DUE_INCLUDE)
    op.drop_index('ix_milestones_kind_completed_at', table_name='milestones')
    op.create_index('ix_milestones_kind_completed_at', 'milestones', ['kind', 'completed_at'], unique=False,
                    postgresql_include=OLD_STAGE_INCLUDE)
    if op.get_bind().dialect.name == 'sqlite':
        with op.batch_alter_table('milestones') as batch:
            batch.drop_column('stage_days')
    else:
        op.drop_column('milestones', 'stage_days')
