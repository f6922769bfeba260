"""Engine and sessions for PostgreSQL (production) and SQLite (the embedded default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        # SQLAlchemy 2.1 reads bare postgresql:// as psycopg 3, which is not installed.
        parsed = parsed.set(drivername="postgresql+psycopg2")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # API reads while the worker writes
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    connect_args = {k: v for k, v in PG_CONNECT_DEFAULTS.items() if k not in parsed.query}
    return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=connect_args)


# libpq settings each PostgreSQL connection gets unless DATABASE_URL names them (``?connect_timeout=10``).
# Without a connect timeout, a database host that takes the connection and never answers (a
# failover under way, a black-holed route) held the caller for ever; several API paths query on
# the event loop, so that froze every request, /healthz included.  Keepalives notice a peer that
# vanished under an open pooled connection (~60 s) instead of the OS's ~15 minutes.
PG_CONNECT_DEFAULTS: dict[str, int] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def rows_changed(result: Result[Any]) -> int:
    """How many rows an INSERT, UPDATE or DELETE run with ``Session.execute`` changed (SQLAlchemy
    types that result as a plain ``Result``; for these statements it is a ``CursorResult``)."""
    return cast(CursorResult[Any], result).rowcount
