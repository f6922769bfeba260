"""DML on the hot write path, executed with SQLAlchemy's own SQL and type processing but without
its per-statement execution machinery.

Every update a contract answers is written by the API before it answers (``write_handed``), so
its handful of INSERTs and UPDATEs are on every payment's and completion's path.  Run through
``Connection.execute``, each one walks SQLAlchemy's execution context (cache key, compiled-cache
lookup, parameter set-up, result wrapping, events): measured on this machine, a payment's write
took 1.4 ms of CPU in the API, where the same six statements on the bare driver take 0.4 ms.
Most of the difference is code run with cold caches between requests, so the less code runs, the
less the request waits.

``execute_dml`` compiles each (statement, dialect, parameter names) once, with SQLAlchemy, and
keeps the SQL string and how to build the driver's parameters (the same ``construct_params`` and
bind processors SQLAlchemy applies: Decimals, aware datetimes, JSON).  Then it runs the SQL on the
connection's own DBAPI cursor, inside the caller's transaction.  A driver error comes out as
SQLAlchemy's ``DBAPIError`` (a lost connection invalidates it, as ``execute`` does), so callers
handle failures as before.

``first_row`` does the same for a lookup by key (a SELECT of plain columns).

Only where the driver's ``executemany`` is as good as SQLAlchemy's: any statement on SQLite (in
process, no round trips), and single-row statements elsewhere.  Several rows on PostgreSQL go
through ``Connection.execute``, which batches them into one round trip (insertmanyvalues).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import BigInteger, Connection, Integer, Select, SmallInteger, String, Text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import UpdateBase

Params = Mapping[str, Any]
_Built = tuple[str, Callable[[Params], Any]]
_compiled: dict[tuple[int, str, tuple[str, ...]], tuple[UpdateBase | Select, _Built | None]] = {}
# Column types whose values come back from SQLite's and psycopg2's cursors as SQLAlchemy returns them.
_AS_THE_DRIVER_READS = frozenset({String, Text, Integer, BigInteger, SmallInteger})
# For statements built once (module level, or cached per dialect).  One built per call would fill
# the cache: past this many entries it starts again.
MAX_COMPILED = 256


def execute_dml(conn: Connection, stmt: UpdateBase, params: Params | Sequence[Params]) -> int:
    """Run an INSERT, UPDATE or DELETE with one row of parameters or several (all with the same
    names); the number of rows it changed."""
    rows: Sequence[Params] = [params] if isinstance(params, Mapping) else params
    if not rows:
        return 0
    if len(rows) > 1 and conn.dialect.name != "sqlite":
        return conn.execute(stmt, list(rows)).rowcount
    built = _built(conn, stmt, tuple(rows[0]))
    if built is None:
        return conn.execute(stmt, list(rows)).rowcount
    sql, build = built
    with _driver_cursor(conn, sql) as cursor:
        if len(rows) == 1:
            cursor.execute(sql, build(rows[0]))
        else:
            cursor.executemany(sql, [build(r) for r in rows])
        return cursor.rowcount


def first_row(conn: Connection, stmt: Select, params: Params) -> tuple[Any, ...] | None:
    """The first row of a SELECT of plain columns (a lookup by key on every update's path), as a
    tuple; None when there is none.  Through ``Connection.execute`` when a column's type converts
    what the driver returns (the bare cursor would not)."""
    built = _built(conn, stmt, tuple(params))
    if built is None:
        row = conn.execute(stmt, params).first()
        return None if row is None else tuple(row)
    sql, build = built
    with _driver_cursor(conn, sql) as cursor:
        cursor.execute(sql, build(params))
        found = cursor.fetchone()
        return None if found is None else tuple(found)


@contextmanager
def _driver_cursor(conn: Connection, sql: str) -> Iterator[Any]:
    """A cursor of the connection's DBAPI connection (in its transaction); a driver error comes
    out as SQLAlchemy's, and a lost connection is invalidated, as ``Connection.execute`` does."""
    dbapi_conn = conn.connection.dbapi_connection
    assert dbapi_conn is not None
    cursor = dbapi_conn.cursor()
    try:
        yield cursor
    except conn.dialect.loaded_dbapi.Error as exc:
        invalidated = conn.dialect.is_disconnect(exc, dbapi_conn, cursor)
        if invalidated:
            conn.invalidate(exc)
        raise DBAPIError.instance(sql, None, exc, conn.dialect.loaded_dbapi.Error,
                                  connection_invalidated=invalidated, dialect=conn.dialect) from exc
    finally:
        cursor.close()


def _built(conn: Connection, stmt: UpdateBase | Select, names: tuple[str, ...]) -> _Built | None:
    """The SQL and parameter builder; None for a statement that needs more of SQLAlchemy than
    that: column defaults computed in Python (a column the rows leave out), parameters expanded
    at execution (IN lists), or result columns whose type converts the driver's values."""
    key = (id(stmt), conn.dialect.name, names)
    found = _compiled.get(key)
    if found is not None and found[0] is stmt:  # the statement itself is kept, so its id is not reused
        return found[1]
    if isinstance(stmt, Select):
        compiled = stmt.compile(dialect=conn.dialect)
        converts = any(type(c.type) not in _AS_THE_DRIVER_READS for c in stmt.selected_columns)
    else:
        compiled = stmt.compile(dialect=conn.dialect, column_keys=list(names))
        converts = False
    if converts or compiled.insert_prefetch or compiled.update_prefetch or compiled.post_compile_params \
            or compiled.literal_execute_params:
        _remember(key, stmt, None)
        return None
    processors = cast(dict[str, Callable[[Any], Any]], compiled._bind_processors)
    if compiled.positional:
        order = tuple(compiled.positiontup or ())

        def build(row: Params) -> Any:
            values = compiled.construct_params(row, escape_names=False)
            return tuple(processors[k](values[k]) if k in processors else values[k] for k in order)
    else:
        escaped = compiled.escaped_bind_names

        def build(row: Params) -> Any:
            values = compiled.construct_params(row, escape_names=False)
            return {escaped.get(k, k): processors[k](v) if k in processors else v for k, v in values.items()}
    built = (compiled.string, build)
    _remember(key, stmt, built)
    return built


def _remember(key: tuple[int, str, tuple[str, ...]], stmt: UpdateBase | Select, built: _Built | None) -> None:
    if len(_compiled) >= MAX_COMPILED:
        _compiled.clear()
    _compiled[key] = (stmt, built)
