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
from collections.abc import AsyncIterator, Iterator
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


@contextlib.asynccontextmanager
async def loop_gaps() -> AsyncIterator[list[float]]:
    """What every other request sees of the event loop during the block: the gaps between
    ticks meant to come every 50 ms."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.05)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    try:
        yield gaps
    finally:
        done.set()
        await tick


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
        started = time.monotonic()
        try:
            async with loop_gaps() as gaps:
                answer = await readyz(request)  # type: ignore[arg-type]
        finally:
            took = time.monotonic() - started
            engine.dispose()
    assert took < READY_CHECK_SECONDS + 1.5, took
    assert max(gaps) < 0.5, max(gaps)
    assert answer.status_code == 503
    body = answer.body.decode()
    assert f"database error: no answer within {READY_CHECK_SECONDS} s" in body and "temporal ok" in body


# ---------------------------------------------------------------- a database that stops answering mid-run
class StallingProxy:
    """A TCP forwarder to PostgreSQL, in threads of its own (whatever happens to the test's event
    loop, it keeps its word).  ``stall()``: bytes are still accepted from both sides but no longer
    passed on, and new connections are accepted and left silent (a frozen server whose kernel
    still acknowledges); ``resume()``: everything held is passed on."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.server = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.server.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self, at_most: float) -> None:
        """Stall; resume by itself after ``at_most`` s (a test whose event loop is blocked by the
        stall, the bug this guards against, then fails on its timings instead of hanging)."""
        self.flowing.clear()
        timer = threading.Timer(at_most, self.resume)
        timer.daemon = True
        timer.start()

    def resume(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self.closed.set()
        self.flowing.set()
        self.server.close()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


@pytest.mark.postgres
@pytest.mark.devserver
async def test_a_database_that_stops_answering_never_freezes_the_api(dev_env, pg_server, mailbox):
    """PostgreSQL stops answering mid-run (connections open, nothing comes back).  The event loop
    keeps serving (/healthz at once); a payment still reaches the contract's workflow and is
    answered; what needs the read model answers 503 within the deadline; a person's request,
    whose log-in check needs the database, too.  Once the database answers again, the read model
    catches up with the payment made meanwhile."""
    from datetime import datetime, timezone

    import httpx

    from core.migrate import upgrade
    from tests.conftest import drop_pg_database, new_pg_database, running_service
    from tests.helpers import contract_request, login, strip_credentials, wait_for

    deadline = 1.0
    name, url = new_pg_database(pg_server)
    upgrade(url)
    proxy = StallingProxy(5432)
    proxied = url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
    try:
        async with running_service(dev_env, proxied, mailbox.port, database_call_seconds=deadline) as service, \
                httpx.AsyncClient(base_url=service.base_url, timeout=60) as c:
            cid = (await c.post("/contracts", json=contract_request(datetime.now(timezone.utc)))).json()["id"]
            person = await login(service.base_url, "li.wei")

            def payment(ref: str) -> dict:
                return {"reference": ref, "amount": "1000.00", "currency": "CNY",
                        "received_at": datetime.now(timezone.utc).isoformat()}

            assert (await c.post(f"/contracts/{cid}/payments", json=payment("BEFORE"))).json()["applied"] is True

            async def timed(coro) -> tuple[httpx.Response, float]:
                started = time.monotonic()
                r = await coro
                return r, time.monotonic() - started

            proxy.stall(at_most=45)
            try:  # (resumed whatever happens: the service cannot shut down on a stalled database)
                async with loop_gaps() as gaps:
                    paid, paid_s = await timed(c.post(f"/contracts/{cid}/payments", json=payment("DURING")))
                    health, health_s = await timed(c.get("/healthz"))
                    amendments, amendments_s = await timed(c.get(f"/contracts/{cid}/amendments"))
                    async with httpx.AsyncClient(base_url=strip_credentials(service.base_url), timeout=60) as anon:
                        mine, mine_s = await timed(anon.get(f"/contracts/{cid}", headers=person))
            finally:
                proxy.resume()
            proxy.resume()
            # (Bounds far from both outcomes: blocked, the loop waits for the proxy's 45 s.)
            assert health.status_code == 200 and health_s < 1.0, health_s
            # The payment: the row lookup gives up after the deadline and the workflow alone judges
            # it.  Its workflow task then waits for its local activity's attempts at the read model
            # (PROJECTION_NOW: 5 s each) before the write goes to a background activity.
            assert paid.status_code == 200 and paid.json()["applied"] is True, paid.text
            assert paid.json()["outstanding"] == "118000.00" and paid_s < 30, paid_s
            for r, took in ((amendments, amendments_s), (mine, mine_s)):
                assert r.status_code == 503 and r.headers["content-type"].startswith("application/problem+json"), \
                    r.text
                assert took < deadline + 3, took
            assert max(gaps) < 1.0, max(gaps)

            async def caught_up():
                row = (await c.get("/contracts", params={"limit": 500})).json()["items"]
                found = next((i for i in row if i["id"] == cid), None)
                return found if found and found["outstanding"] == "118000.00" else None

            await wait_for(caught_up, timeout=60)
    finally:
        proxy.close()
        drop_pg_database(pg_server, name)
