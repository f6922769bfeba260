"""audit trail: the append-only audit_log (triggers refuse UPDATE, DELETE and TRUNCATE)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 12:30:00

The triggers fire for every role, the table's owner and superusers included (short of a
superuser switching triggers off with ``session_replication_role = replica``, or dropping the
table).  A deployment that connects with a separate, non-owner application role should also
grant it only SELECT and INSERT on audit_log; the triggers hold whatever the grants.

On SQLite: a later batch migration that recreates audit_log would drop its triggers; such a
migration must create them again (``create_triggers`` below).
"""
import sqlalchemy as sa
from alembic import op

import models.types

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

MESSAGE = "audit_log is append-only"

PG_TRIGGERS = [
    f"""
    CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '{MESSAGE}: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
    END;
    $$
    """,
    """
    CREATE TRIGGER audit_log_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_log
        FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()
    """,
    """
    CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
        FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()
    """,
    "REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC",
]

SQLITE_TRIGGERS = [
    f"""
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, '{MESSAGE}: UPDATE refused'); END
    """,
    f"""
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, '{MESSAGE}: DELETE refused'); END
    """,
]


def create_triggers() -> None:
    dialect = op.get_bind().dialect.name
    for sql in PG_TRIGGERS if dialect == "postgresql" else SQLITE_TRIGGERS if dialect == "sqlite" else []:
        op.execute(sql)


def upgrade() -> None:
    op.create_table(
        'audit_log',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('at', models.types.UTCDateTime(), nullable=False),
        sa.Column('request_id', sa.String(length=64), nullable=False),
        sa.Column('request_key', sa.String(length=32), nullable=False),
        sa.Column('actor', sa.String(length=100), nullable=False),
        sa.Column('actor_kind', sa.String(length=10), nullable=False),
        sa.Column('roles', sa.String(length=200), nullable=False),
        sa.Column('on_behalf_of', sa.String(length=100), nullable=True),
        sa.Column('action', sa.String(length=60), nullable=False),
        sa.Column('method', sa.String(length=10), nullable=False),
        sa.Column('path', sa.String(length=2000), nullable=False),
        sa.Column('target_type', sa.String(length=40), nullable=False),
        sa.Column('target_id', sa.String(length=200), nullable=True),
        sa.Column('contract_id', sa.String(length=40), nullable=True),
        sa.Column('status', sa.Integer(), nullable=True),
        sa.Column('digest_of', sa.String(length=10), nullable=False),
        sa.Column('before_digest', sa.String(length=64), nullable=True),
        sa.Column('after_digest', sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log')),
        sa.UniqueConstraint('request_key', name=op.f('uq_audit_log_request_key')),
    )
    for column in ('action', 'actor', 'contract_id', 'request_id'):
        op.create_index(op.f(f'ix_audit_log_{column}'), 'audit_log', [column], unique=False)
    create_triggers()


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update_or_delete ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    elif dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    for column in ('request_id', 'contract_id', 'actor', 'action'):
        op.drop_index(op.f(f'ix_audit_log_{column}'), table_name='audit_log')
    op.drop_table('audit_log')
