"""Real processes and real network pieces for the fault tests.

* :class:`Proc` — an OS process with its own log file that can be SIGKILLed and started again
  (the worker: ``python worker.py``; the API: ``uvicorn api.main:app``; the Temporal dev server).
* :class:`MailCatcher` — an SMTP server (aiosmtpd) that keeps every message, optionally
  answering with a chosen failure.
* :class:`HttpReceiver` — an HTTP server (a thread) standing for webhook receivers: it records
  every request and answers what the test tells it to.
* :class:`TcpProxy` — an asyncio TCP forwarder in front of PostgreSQL that can be cut (every
  connection dropped, new ones refused) and restored, to simulate a database outage without
  touching the shared PostgreSQL server.
* :class:`Observer` — polls the database the app writes (directly, never through the proxy) so
  scripted contracts can wait for "the level-2 escalation went out" without hammering the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from email import policy as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


async def until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2):
    """Poll a (sync or async) predicate until it is truthy; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


# ====================================================================== processes
class Proc:
    """One OS process at a time under a name; each start gets its own log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.logdir = logdir
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.kills = 0
        self.log: Path | None = None

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is already running"
        self.starts += 1
        self.log = self.logdir / f"{self.name}-{self.starts}.log"
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL: no clean-up of any kind, as in a crash or an OOM kill."""
        assert self.alive, f"{self.name} is not running:\n{self.tail()}"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.kills += 1

    def stop(self, timeout: float = 15) -> None:
        if not self.alive:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:] if self.log else "<not started>"
        except OSError:
            return "<no log>"

    def logs(self) -> str:
        out = []
        for n in range(1, self.starts + 1):
            with contextlib.suppress(OSError):
                out.append((self.logdir / f"{self.name}-{n}.log").read_text(errors="replace"))
        return "\n".join(out)


ADMIN_KEY = "faults-admin-key-" + "0" * 24


def app_env(database_url: str, temporal_address: str, task_queue: str, smtp_port: int, **extra: Any) -> dict[str, str]:
    """The environment the worker and the API read (core/settings.py), for one isolated stack."""
    env = {k: v for k, v in os.environ.items() if k not in ("SMTP_USERNAME", "SMTP_PASSWORD")}
    env.update(
        DATABASE_URL=database_url,
        TEMPORAL_ADDRESS=temporal_address,
        TEMPORAL_NAMESPACE="default",
        TASK_QUEUE=task_queue,
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp_port),
        SMTP_STARTTLS="false",
        SMTP_TIMEOUT_SECONDS="5",
        WEBHOOK_TIMEOUT_SECONDS="5",
        # The dispatcher, fast for a test: short polls and back-off.
        WEBHOOK_POLL_SECONDS="0.2",
        WEBHOOK_RETRY_INITIAL_SECONDS="0.2",
        WEBHOOK_RETRY_MAX_INTERVAL_SECONDS="2",
        WEBHOOK_LEASE_SECONDS="15",
        # A notice claimed by a worker killed before it recorded a decision waits for its lease
        # to run out: 15 s, not 60, so the run converges soon after (collect waits for it).
        OUTBOX_LEASE_SECONDS="15",
        # PostgreSQL is shared: keep each stack's connection count small.
        MAX_CONCURRENT_ACTIVITIES="8",
        WEBHOOK_MAX_PARALLEL="4",
        RECONCILE_AFTER_SECONDS="5",
        SEED_DEMO_ORG="1",
        PYTHONUNBUFFERED="1",
        # The script acts as the bootstrap admin (tests/faults/script.py sends this key).
        ADMIN_API_KEY=ADMIN_KEY,
        JWT_SECRET="faults-jwt-secret-" + "z" * 32,
        DOCUMENT_DIR=os.path.join(os.environ.get("TMPDIR", "/tmp"), f"fault-docs-{task_queue}"),
    )
    env.pop("CONTRACTS_FAULT_EXIT_AFTER_DECISION", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Worker(Proc):
    """``python worker.py``: the Temporal worker and, beside it, the webhook dispatcher."""

    def __init__(self, env: dict[str, str], logdir: Path, name: str = "worker") -> None:
        super().__init__(name, [sys.executable, "worker.py"], env, logdir)

    async def ready(self, timeout: float = 60) -> None:
        def polling():
            assert self.alive, f"{self.name} exited (rc={self.proc.returncode}):\n{self.tail()}"
            return "worker polling" in self.tail(100_000)

        await until(polling, timeout, f"{self.name} to poll")


class Api(Proc):
    """``uvicorn api.main:app`` on a free port."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.port = free_port()
        super().__init__("api", [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
                                 "--port", str(self.port), "--log-level", "warning"], env, logdir)
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self, timeout: float = 60) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=5,
                                     headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            async def up():
                assert self.alive, f"api exited (rc={self.proc.returncode}):\n{self.tail()}"
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await until(up, timeout, "the API to answer")


class DevServer(Proc):
    """Our own Temporal dev server on a SQLite file, so it can be stopped and started again."""

    def __init__(self, db_file: Path, logdir: Path) -> None:
        from core.temporal import find_binary
        from workflows.search_attributes import cli_flags

        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        argv = [
            find_binary("temporal"), "server", "start-dev",
            "--db-filename", str(db_file), "--ip", "127.0.0.1", "--port", str(self.port), "--headless",
            "--log-level", "error",
            "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
            *cli_flags(),
        ]
        super().__init__("temporal", argv, dict(os.environ), logdir)

    async def ready(self, timeout: float = 60) -> None:
        from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
        from temporalio.client import Client

        await until(lambda: self.alive and port_open(self.port), timeout, "the Temporal dev server port")

        async def answers():
            assert self.alive, f"temporal exited:\n{self.tail()}"
            try:
                client = await Client.connect(self.address)
                await client.workflow_service.get_system_info(GetSystemInfoRequest())
                return True
            except Exception:  # noqa: BLE001 - not up yet
                return False

        await until(answers, timeout, "the Temporal dev server to answer", interval=0.5)


# ====================================================================== SMTP
class MailCatcher:
    """A real SMTP server (aiosmtpd) on a free port keeping every accepted message.

    ``answer(msg, attempt)`` may return an SMTP reply ("451 ...", "550 ...") instead of accepting,
    or a float: seconds to stall before accepting (longer than the client's timeout = a timeout).
    ``rcpt_answer(address)`` may refuse a recipient at RCPT time ("550 5.1.1 ...").
    """

    def __init__(self, answer=None, rcpt_answer=None) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[tuple[list[str], Any]] = []
        self.attempts: dict[str, int] = defaultdict(int)  # by notification key
        self.rcpts: dict[str, int] = defaultdict(int)  # RCPT TO attempts by address
        self.answer = answer
        self.rcpt_answer = rcpt_answer
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    def start(self) -> MailCatcher:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # aiosmtpd hook
        self.rcpts[address] += 1
        if self.rcpt_answer is not None:
            reply = self.rcpt_answer(address)
            if reply:
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd hook
        msg = email.message_from_bytes(envelope.content, policy=email_policy.default)
        key = notification_key(msg)
        self.attempts[key] += 1
        if self.answer is not None:
            reply = self.answer(msg, self.attempts[key])
            if isinstance(reply, (int, float)) and not isinstance(reply, bool):
                await asyncio.sleep(reply)  # the client has given up by now: not delivered
                return "451 4.4.2 too slow"
            if reply:
                return reply
        self.messages.append((list(envelope.rcpt_tos), msg))
        return "250 OK"

    def keys(self) -> list[str]:
        return [notification_key(m) for _r, m in self.messages]


def notification_key(message) -> str:
    # Folded onto a continuation line (long header); the parser keeps the folding whitespace.
    return "".join(str(message.get("X-Contracts-Notification", "")).split())


def body_text(message) -> str:
    part = message.get_body(preferencelist=("plain",))
    return part.get_content() if part is not None else ""


# ====================================================================== HTTP receiver
class HttpReceiver:
    """A threaded HTTP server recording every POST: (path, headers, body, monotonic time).

    ``answer(path, headers, body, seen_before)`` returns the status to answer (default 200),
    ``seen_before`` counting earlier requests with the same ``X-Contracts-Event-Id``.  A request
    whose body ends early (its sender was killed mid-request) is recorded with ``status`` None
    and not answered: it is not a delivery.
    """

    def __init__(self, answer: Callable[[str, dict, bytes, int], int] | None = None) -> None:
        self.records: list[dict] = []
        self.answer = answer or (lambda path, headers, body, seen: 200)
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], int] = defaultdict(int)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - http.server naming
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                event_id = headers.get("x-contracts-event-id", "")
                if len(body) < length:
                    # The sender died between its headers and the end of its body (a worker killed
                    # mid-request): a real receiver never processes such a request, and the sender
                    # never saw an answer, so it is not a delivery.  Recorded, with no status.
                    with receiver._lock:
                        receiver.records.append({"path": self.path, "headers": headers, "body": body,
                                                 "id": event_id, "status": None, "t": time.monotonic()})
                    self.close_connection = True
                    return
                with receiver._lock:
                    seen = receiver._seen[(self.path, event_id)]
                    receiver._seen[(self.path, event_id)] += 1
                try:
                    status = receiver.answer(self.path, headers, body, seen)
                except Exception:  # noqa: BLE001 - a broken test hook must not hang the sender
                    status = 500
                with receiver._lock:
                    receiver.records.append({"path": self.path, "headers": headers, "body": body,
                                             "id": event_id, "status": status, "t": time.monotonic()})
                payload = b"ok"
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):  # quiet
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a killed sender resets its connection
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> HttpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def at(self, prefix: str) -> list[dict]:
        with self._lock:
            return [r for r in self.records if r["path"].startswith(prefix)]


# ====================================================================== TCP proxy
class TcpProxy:
    """An asyncio TCP forwarder: 127.0.0.1:<port> -> target.  ``cut()`` drops every connection
    and refuses new ones (the listening socket is closed); ``restore()`` listens again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.base_events.Server | None = None
        self._transports: set = set()
        self.down = False
        self.connections = 0

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.down = False
        return self

    async def cut(self) -> None:
        self.down = True
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.cut()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        pair = {writer.transport, up_writer.transport}
        self._transports |= pair

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort() if self.down else dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._transports -= pair


# ====================================================================== database observer
class Observer:
    """Polls the app's database (directly) for event types per contract and notification rows."""

    def __init__(self, database_url: str, interval: float = 0.5) -> None:
        self.engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg2://", 1),
                                    poolclass=NullPool)
        self.interval = interval
        self.events: dict[str, set[str]] = defaultdict(set)
        self.notifications: dict[str, dict[str, str]] = {}  # contract id -> {key: status}
        self._task: asyncio.Task | None = None
        self._tick = asyncio.Event()
        self.errors = 0
        self.last_ok: float | None = None  # when a poll last succeeded (a stale view looks like a stall)
        self.last_error = ""

    def _poll(self) -> tuple[dict, dict]:
        with self.engine.connect() as conn:
            events: dict[str, set[str]] = defaultdict(set)
            for cid, type_ in conn.execute(text("SELECT DISTINCT contract_id, type FROM contract_events")):
                events[cid].add(type_)
            notes: dict[str, dict[str, str]] = defaultdict(dict)
            for cid, key, status in conn.execute(text("SELECT contract_id, key, status FROM notifications")):
                notes[cid][key] = status
        return events, notes

    async def _run(self) -> None:
        while True:
            try:
                self.events, self.notifications = await asyncio.to_thread(self._poll)
                self.last_ok = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - keep observing
                self.errors += 1
                self.last_error = repr(exc)[:300]
            self._tick.set()
            self._tick = asyncio.Event()
            await asyncio.sleep(self.interval)

    def start(self) -> Observer:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.engine.dispose()

    async def wait(self, predicate: Callable[[], bool], timeout: float, what: str, cid: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}"
                                     + (self.describe(cid) if cid else ""))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._tick.wait(), timeout=5)

    def describe(self, cid: str) -> str:
        """What the database held for the contract when a wait gave up: the failure message must
        be enough to tell "never sent" from "sent to someone else" or "still failing"."""
        notes = sorted(f"{k} = {st}" for k, st in self.notifications.get(cid, {}).items())
        age = f"{time.monotonic() - self.last_ok:.1f}s ago" if self.last_ok else "never"
        return (f"\n  observer: last good poll {age}, {self.errors} failed polls {self.last_error}"
                + "\n  events: " + ", ".join(sorted(self.events.get(cid, ())))
                + "\n  notifications:\n    " + "\n    ".join(notes or ["(none)"]))

    def has_event(self, cid: str, type_: str) -> bool:
        return type_ in self.events.get(cid, ())

    def sent(self, cid: str, prefix: str, suffixes: list[str]) -> bool:
        """For each suffix, a notification ``<prefix>...<suffix>`` of contract ``cid`` is ``sent``."""
        notes = self.notifications.get(cid, {})
        for suffix in suffixes:
            if not any(k.startswith(prefix) and k.endswith(suffix) and st == "sent" for k, st in notes.items()):
                return False
        return True
