"""A database that takes connections and never answers (a host mid-failover, a black-holed route,
a stalled proxy): callers get an error in bounded time, and /readyz says "not ready" at once while
the API keeps serving.  Before, a PostgreSQL connection attempt waited for ever, and /readyz asked
the database on the event loop, holding every other request with it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import psycopg2
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from api.platform.meta import READY_CHECK_SECONDS, readyz
from models.db import PG_CONNECT_DEFAULTS, make_engine, make_session_factory


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never sends a byte; yields the port."""
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        server.close()
        for conn in held:
            conn.close()


def _seconds_to_fail(url: str) -> float:
    engine = make_engine(url)
    started = time.monotonic()
    try:
        with pytest.raises(OperationalError, match="timeout expired"), engine.connect():
            pass
        return time.monotonic() - started
    finally:
        engine.dispose()


def test_a_database_that_never_answers_fails_within_the_connect_timeout():
    default = PG_CONNECT_DEFAULTS["connect_timeout"]
    with silent_server() as port:
        took = _seconds_to_fail(f"postgresql+psycopg2://postgres@127.0.0.1:{port}/test")
        assert default - 0.5 <= took < default + 3, took
        # DATABASE_URL's own setting wins over the default.
        took = _seconds_to_fail(f"postgresql+psycopg2://postgres@127.0.0.1:{port}/test?connect_timeout=1")
        assert took < 2.5, took


def test_postgres_connections_carry_the_timeout_and_keepalives(pg_server):
    engine = make_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/test")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
            dbapi = conn.connection.dbapi_connection
            assert isinstance(dbapi, psycopg2.extensions.connection)
            used = dbapi.get_dsn_parameters()
        for name, value in PG_CONNECT_DEFAULTS.items():
            assert used.get(name) == str(value), (name, used.get(name))
    finally:
        engine.dispose()


async def test_readiness_answers_not_ready_in_time_and_the_loop_keeps_serving(dev_env):
    with silent_server() as port:
        # A connect timeout far longer than the readiness deadline: the deadline must answer.
        engine = make_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{port}/test?connect_timeout=30")
        state = SimpleNamespace(sessions=make_session_factory(engine), temporal=dev_env.client)
        request = SimpleNamespace(app=SimpleNamespace(state=state))
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:  # what every other request sees of the event loop meanwhile
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.05)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        started = time.monotonic()
        try:
            answer = await readyz(request)  # type: ignore[arg-type]
        finally:
            took = time.monotonic() - started
            done.set()
            await tick
            engine.dispose()
    assert took < READY_CHECK_SECONDS + 1.5, took
    assert max(gaps) < 0.5, max(gaps)
    assert answer.status_code == 503
    body = answer.body.decode()
    assert f"database error: no answer within {READY_CHECK_SECONDS} s" in body and "temporal ok" in body
