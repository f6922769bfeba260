"""Fault tests (issue #7): kill -9 the worker, restart Temporal, cut PostgreSQL, break deliveries.

Everything is real: the Temporal dev server, the worker as a separate OS process (``python
worker.py``, which also runs the webhook dispatcher), the API as a separate uvicorn process,
PostgreSQL (a fresh database per stack), an SMTP server and HTTP receivers.  Run them alone with
``pytest -m faults``; they also run in the default suite (CI).

* **Worker kills.**  ``FAULTS_CONTRACTS`` (200) scripted contracts (tests/faults/script.py:
  payments, completions with hand-offs, escalations, amendments, terminations) run twice at the
  same time on two isolated stacks: once untouched (the golden run) and once while the worker
  is SIGKILLed at seeded random moments and started again.  Every contract's final workflow
  state and database projection must equal the golden run's; every email, chat webhook and
  subscription event arrives under its key/id, none as a duplicate; no payment counts twice.
* **Temporal restart.**  A subset runs on our own dev server (SQLite file), which is stopped
  mid-run and started again on the same file: nothing lost, timers still fire, same outcomes.
* **PostgreSQL outage.**  A subset runs with the app's database behind a TCP proxy that is cut
  for 30 s mid-run: activities retry with back-off, the API answers 503 problem+json for reads
  that need the database while payments (workflow updates) keep working, and the projections
  converge to the golden outcomes when it returns.
* **Delivery errors.**  SMTP 451 / timeouts and webhook 5xx are retried with back-off and
  delivered once; an invalid address, a 550 and a webhook 4xx are not retried, are recorded
  ``failed`` and open a task for the operator; every retry policy is bounded.

The counts (contracts, kills, restarts, emails, webhooks, duplicates...) are printed and written
to ``test-artifacts/faults.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from core.migrate import upgrade
from tests.conftest import ARTIFACTS, drop_pg_database, new_pg_database
from tests.faults.harness import ADMIN_KEY, DevServer, TcpProxy, until
from tests.faults.script import Outcome, Stack, collect, compare, deliveries, payment_duplicates

pytestmark = [pytest.mark.faults, pytest.mark.devserver, pytest.mark.postgres]
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}  # the stacks run with this bootstrap admin key

N_CONTRACTS = int(os.environ.get("FAULTS_CONTRACTS", "200"))
N_SUBSET = int(os.environ.get("FAULTS_SUBSET", "25"))
N_KILLS = int(os.environ.get("FAULTS_KILLS", "4"))
SEED = int(os.environ.get("FAULTS_SEED", "20250107"))
OUTAGE_S = 30.0

_GOLDEN: dict[int, Outcome] = {}  # the untouched run's outcomes, shared by the tests of this module
_MIGRATING = threading.Lock()  # alembic's context is process-global: one migration at a time


def _migrate(url: str) -> None:
    with _MIGRATING:
        upgrade(url)


# ====================================================================== plumbing
@asynccontextmanager
async def pg_database(admin_dsn: str):
    name, url = new_pg_database(admin_dsn)
    try:
        await asyncio.to_thread(_migrate, url)
        yield url
    finally:
        drop_pg_database(admin_dsn, name)


@asynccontextmanager
async def running_stack(name: str, *, temporal_address: str, client, pg_server: str, logdir: Path,
                        proxy: TcpProxy | None = None, **kw):
    """A migrated database and a started stack; with ``proxy`` the app reaches PostgreSQL through it."""
    async with pg_database(pg_server) as url:
        app_url = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}") if proxy is not None else url
        stack = Stack(name, temporal_address=temporal_address, client=client, app_db_url=app_url,
                      observe_db_url=url, logdir=logdir, **kw)
        try:
            await stack.start()
            yield stack, url
        except BaseException:
            print(f"\n---- {name} worker log (tail)\n{stack.worker.tail(4000)}\n---- {name} api log (tail)\n"
                  f"{stack.api.tail(4000)}")
            raise
        finally:
            await stack.close()


async def golden(indices: list[int], *, temporal_address: str, client, pg_server: str, logdir: Path,
                 report) -> dict[int, Outcome]:
    """The untouched run's outcomes for these contracts (computed once per module)."""
    missing = [k for k in indices if k not in _GOLDEN]
    if missing:
        async with running_stack("golden", temporal_address=temporal_address, client=client, pg_server=pg_server,
                                 logdir=logdir) as (stack, url):
            seconds = await stack.run_script(missing)
            outcomes = await collect(stack, url)
            d = await deliveries(stack, url)
            assert not d.problems and d.duplicates == 0, d.problems
            report("golden", {"contracts": len(missing), "script_seconds": round(seconds, 1), **d.report()})
        _GOLDEN.update(outcomes)
    return {k: _GOLDEN[k] for k in indices}


def _save(name: str, counts: dict) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "faults.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[name] = counts
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))


@pytest.fixture
def report(capsys, record_testsuite_property):
    """Counts go to the terminal even when output is captured (CI runs without -s), to the junit
    xml as a property of the test suite (``faults.<run>``: xunit2 keeps no per-test properties),
    and to test-artifacts/faults.json."""

    def _report(name: str, counts: dict) -> None:
        with capsys.disabled():
            print(f"\nFAULTS {name}: " + ", ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
        record_testsuite_property(f"faults.{name}", json.dumps(counts, sort_keys=True, default=str))
        _save(name, counts)

    return _report


def temporal_of(dev_env) -> str:
    return dev_env.client.service_client.config.target_host


# ====================================================================== worker kills
@pytest.mark.timeout(1800)
async def test_worker_killed_at_random_moments_ends_like_the_golden_run(dev_env, pg_server, tmp_path, report):
    indices = list(range(N_CONTRACTS))
    rng = random.Random(SEED)
    started = time.monotonic()

    async def faulty():
        async with running_stack("kills", temporal_address=temporal_of(dev_env), client=dev_env.client,
                                 pg_server=pg_server, logdir=tmp_path) as (stack, url):
            script = asyncio.create_task(stack.run_script(indices))
            kills = []
            for _ in range(N_KILLS):
                await asyncio.sleep(rng.uniform(3.0, 9.0))  # the worker has been polling for this long
                if script.done():
                    break
                in_flight = len(indices) - len(stack.done)
                stack.worker.kill9()
                down = rng.uniform(0.5, 3.0)
                kills.append({"at_s": round(time.monotonic() - started, 1), "in_flight": in_flight,
                              "down_s": round(down, 1)})
                await asyncio.sleep(down)
                stack.worker.start()
                await stack.worker.ready()
            seconds = await script
            outcomes = await collect(stack, url)
            d = await deliveries(stack, url)
            return outcomes, d, kills, seconds, dict(stack.retries), dict(stack.escalation_failures)

    gold, (outcomes, d, kills, seconds, retries, escalation_failed) = await asyncio.gather(
        golden(indices, temporal_address=temporal_of(dev_env), client=dev_env.client, pg_server=pg_server,
               logdir=tmp_path, report=report),
        faulty(),
    )
    diffs = compare(gold, outcomes)
    dup_payments = payment_duplicates(outcomes)
    counts = {
        "contracts": len(outcomes), "kills": len(kills), "kill_moments": kills,
        "final": {s: sum(1 for o in outcomes.values() if o.state["status"] == s) for s in ("completed", "terminated")},
        "payments": sum(len(o.payments_refs) for o in outcomes.values()), "duplicate_payments": dup_payments,
        **d.report(), "mismatches": len(diffs), "racy_events_ignored": sum(o.racy for o in outcomes.values()),
        "escalation_failed_events": escalation_failed, "api_retries": retries, "script_seconds": round(seconds, 1),
        "total_seconds": round(time.monotonic() - started, 1),
    }
    report("worker_kills", counts)
    assert len(kills) == N_KILLS and all(k["in_flight"] > 0 for k in kills), kills
    if diffs:
        differ = [o.cid for k, o in outcomes.items()
                  if (o.state, o.db, o.notifications) != (gold[k].state, gold[k].db, gold[k].notifications)]
        await save_histories(dev_env.client, differ[:10], "kills")
    # A different event under a number already written (activities/projection.py says so).
    diverged = [line.strip() for log in sorted(Path(tmp_path).glob("kills-worker-*.log"))
                for line in log.read_text(errors="replace").splitlines() if "diverged" in line]
    assert not diffs, "\n".join(diffs[:20] + diverged[:10])
    assert not diverged, diverged[:10]
    assert not d.problems, d.problems
    assert d.duplicates == 0 and dup_payments == 0


async def save_histories(client, cids: list[str], name: str) -> None:
    """The histories of contracts that ended unlike the golden run, for the post-mortem."""
    ARTIFACTS.mkdir(exist_ok=True)
    for cid in cids:
        history = await client.get_workflow_handle(f"contract-{cid}").fetch_history()
        (ARTIFACTS / f"faults-mismatch-{name}-{cid}.json").write_text(history.to_json())


# ====================================================================== Temporal restart
@pytest.mark.timeout(900)
async def test_temporal_dev_server_restarted_mid_run_loses_nothing(dev_env, pg_server, tmp_path, report):
    """Our own dev server on a SQLite file is stopped mid-run and started again on the same file
    and port: every contract reaches the golden outcome (timers pending across the restart fire)."""
    from temporalio.client import Client

    from workflows.converter import data_converter

    indices = list(range(N_SUBSET))
    rng = random.Random(SEED + 1)
    server = DevServer(tmp_path / "temporal.db", tmp_path)
    server.start()
    try:
        await server.ready()
        client = await Client.connect(server.address, data_converter=data_converter)

        async def faulty():
            async with running_stack("restart", temporal_address=server.address, client=client,
                                     pg_server=pg_server, logdir=tmp_path) as (stack, url):
                script = asyncio.create_task(stack.run_script(indices))
                await asyncio.sleep(rng.uniform(8.0, 12.0))  # contracts registered, escalation timers running
                assert not script.done()
                in_flight = len(indices) - len(stack.done)
                waiting = await _running_workflows(client, stack)
                server.stop()  # SIGTERM: the dev server shuts down
                down = rng.uniform(3.0, 6.0)
                await asyncio.sleep(down)
                server.start()  # same --db-filename, same port
                await server.ready()
                seconds = await script
                worker_restarts = stack.worker.starts - 1
                outcomes = await collect(stack, url)
                d = await deliveries(stack, url)
                return outcomes, d, {"in_flight": in_flight, "running_workflows": waiting, "down_s": round(down, 1)}, \
                    seconds, dict(stack.retries), worker_restarts

        gold, (outcomes, d, restart, seconds, retries, worker_restarts) = await asyncio.gather(
            golden(indices, temporal_address=temporal_of(dev_env), client=dev_env.client, pg_server=pg_server,
                   logdir=tmp_path, report=report),
            faulty(),
        )
    finally:
        server.stop()
    diffs = compare(gold, outcomes)
    dup_payments = payment_duplicates(outcomes)
    report("temporal_restart", {
        "contracts": len(outcomes), "restarts": 1, **restart, "worker_restarts": worker_restarts,
        "payments": sum(len(o.payments_refs) for o in outcomes.values()), "duplicate_payments": dup_payments,
        **d.report(), "mismatches": len(diffs), "api_retries": retries, "script_seconds": round(seconds, 1)})
    assert restart["in_flight"] > 0 and restart["running_workflows"] > 0, restart
    assert not diffs, "\n".join(diffs[:20])
    assert not d.problems, d.problems
    assert d.duplicates == 0 and dup_payments == 0


async def _running_workflows(client, stack: Stack) -> int:
    """How many workflows (contracts and escalation children) of this stack are waiting on a timer
    or an activity right now: what a lost timer would strand."""
    count = 0
    async for _wf in client.list_workflows(f"TaskQueue = '{stack.task_queue}' AND ExecutionStatus = 'Running'"):
        count += 1
    return count


# ====================================================================== PostgreSQL outage
@pytest.mark.timeout(900)
async def test_postgres_outage_of_30s_mid_run_then_projections_converge(dev_env, pg_server, tmp_path, report):
    """The app reaches PostgreSQL through a TCP proxy that is cut for 30 s mid-run (the shared
    server itself is never touched): activities retry with back-off, reads that need the database
    answer 503 problem+json, payments (workflow updates) still work, and afterwards every
    projection converges to the golden outcome."""
    indices = list(range(N_SUBSET))
    rng = random.Random(SEED + 2)
    proxy = await TcpProxy("127.0.0.1", 5432).start()

    async def faulty():
        async with running_stack("outage", temporal_address=temporal_of(dev_env), client=dev_env.client,
                                 pg_server=pg_server, logdir=tmp_path, proxy=proxy) as (stack, url):
            extra = await _outage_contract(stack)
            script = asyncio.create_task(stack.run_script(indices))
            await asyncio.sleep(rng.uniform(8.0, 12.0))
            assert not script.done()
            in_flight = len(indices) - len(stack.done)
            await proxy.cut()
            cut_at = time.monotonic()
            seen = await _during_outage(stack, dev_env.client, cut_at, extra)
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - cut_at)))
            await proxy.restore()
            outage = round(time.monotonic() - cut_at, 1)
            seconds = await script
            outcomes = await collect(stack, url)
            d = await deliveries(stack, url)
            # The payment taken during the outage reached the read model too.
            engine = create_engine(url, poolclass=NullPool)
            try:
                def paid():
                    with engine.connect() as conn:
                        return conn.execute(text("SELECT paid_total FROM contracts WHERE id = :c"), {"c": extra}).scalar()
                await until(lambda: paid() == Decimal("10.00"), 120, "the outage payment's projection")
                seen["outage_payment_projected"] = str(paid())
            finally:
                engine.dispose()
            await dev_env.client.get_workflow_handle(f"contract-{extra}").terminate("test finished")
            return outcomes, d, {"in_flight": in_flight, "outage_s": outage, **seen}, seconds, dict(stack.retries)

    try:
        gold, (outcomes, d, outage, seconds, retries) = await asyncio.gather(
            golden(indices, temporal_address=temporal_of(dev_env), client=dev_env.client, pg_server=pg_server,
                   logdir=tmp_path, report=report),
            faulty(),
        )
    finally:
        await proxy.close()
    diffs = compare(gold, outcomes)
    dup_payments = payment_duplicates(outcomes)
    report("postgres_outage", {
        "contracts": len(outcomes), **outage,
        "payments": sum(len(o.payments_refs) for o in outcomes.values()), "duplicate_payments": dup_payments,
        **d.report(), "mismatches": len(diffs), "api_retries": retries, "script_seconds": round(seconds, 1)})
    assert outage["list_status"] == 503 and outage["list_type"] == "application/problem+json", outage
    assert outage["live_read_status"] == 200, outage
    assert outage["payment_status"] == 200 and outage["payment_applied"] is True, outage
    # Back-off: a few attempts in 30 s (1, 2, 4, 8, 16 s...), not one a second.
    assert 2 <= outage["projection_attempts"] <= 8, outage
    # What an operator reads on the pending activity is the database's reason, not "Failure exceeds size limit".
    assert outage.get("projection_last_failure", "").startswith("read model write failed: "), outage
    assert not diffs, "\n".join(diffs[:20])
    assert not d.problems, d.problems
    assert d.duplicates == 0 and dup_payments == 0


async def _during_outage(stack: Stack, client, cut_at: float, extra: str) -> dict:
    """Probe the API and Temporal while the database is away."""
    from workflows.contract import ContractWorkflow

    seen: dict = {}
    await asyncio.sleep(2.0)
    async with httpx.AsyncClient(base_url=stack.api.url, timeout=30, headers=ADMIN_HEADERS) as http:
        r = await http.get("/contracts", params={"limit": 5})
        seen["list_status"], seen["list_type"] = r.status_code, r.headers.get("content-type")
        seen["list_body"] = r.json().get("type") if r.headers.get("content-type") == "application/problem+json" else None
        # One contract of the script that is still open: its live state comes from the workflow.
        open_ones = [stack.cids[k] for k in stack.cids if k not in stack.done]
        cid = open_ones[0]
        r = await http.get(f"/contracts/{cid}")
        seen["live_read_status"] = r.status_code
        # A payment is a workflow update: it is applied now; its projection waits for the database.
        # (A contract of its own: an extra payment on a scripted one would change its outcome.)
        r = await http.post(f"/contracts/{extra}/payments", json={
            "reference": "OUTAGE-1", "amount": "10.00", "currency": "CNY", "received_at": "2026-01-15T10:00:00+08:00"})
        seen["payment_status"] = r.status_code
        seen["payment_applied"] = r.json().get("applied") if r.status_code == 200 else r.text
    # The projection of that contract: its local activity gave up within a second (the workflow task
    # must not wait for the database), and a regular activity is failing and retried with back-off.
    handle = client.get_workflow_handle(f"contract-{extra}")
    attempts = 0
    while time.monotonic() - cut_at < OUTAGE_S - 1.0:
        desc = await handle.describe()
        for pa in desc.raw_description.pending_activities:
            if pa.activity_type.name == "project_delta":
                attempts = max(attempts, pa.attempt)
                seen["projection_last_failure"] = pa.last_failure.message[:160]
        await asyncio.sleep(1.0)
    seen["projection_attempts"] = attempts
    state = await handle.query(ContractWorkflow.state_query)
    seen["extra_contract_paid"] = state.paid_total
    return seen


async def _outage_contract(stack: Stack) -> str:
    """A contract outside the script, registered before the cut, to pay during the outage."""
    now = datetime.now(timezone.utc)
    r = await stack.call("POST", "/contracts", {
        "title": "Paid during a database outage", "customer": {"name": "Outage Ltd"}, "currency": "CNY",
        "amount": "100.00", "effective_date": now.isoformat(), "end_date": (now + timedelta(days=400)).isoformat(),
        "owner": "li.wei", "notifications": {"reminders": [], "escalation": []},
        "milestones": [{"key": "work", "name": "Work", "kind": "custom", "owner": "li.wei", "department": "sales",
                        "due_after": "PT10M"}],
        "installments": [{"key": "i1", "amount": "100.00", "due_after": "PT10M"}]}, expect=(201,))
    return r.json()["id"]


# ====================================================================== delivery errors
OPERATOR = "operator"


def _escalate_now(channels: list[str]) -> dict:
    return {"reminders": [], "escalation": [{"after": "PT0S", "to": ["owner"], "channels": channels}]}


def _one_milestone(title: str, key: str, owner: str, department: str, channels: list[str]) -> dict:
    now = datetime.now(timezone.utc)
    return {
        "title": title, "customer": {"name": "Delivery Errors Ltd"}, "currency": "CNY", "amount": "1000.00",
        "effective_date": now.isoformat(), "end_date": (now + timedelta(days=400)).isoformat(), "owner": "li.wei",
        "notifications": _escalate_now(channels),
        "milestones": [{"key": key, "name": title, "kind": "custom", "owner": owner, "department": department,
                        "due_after": "PT2S"}],
        "installments": [{"key": "i1", "amount": "1000.00", "due_after": "PT10M"}],
    }


@pytest.mark.timeout(600)
async def test_transient_errors_retry_with_backoff_permanent_ones_fail_once_and_reach_the_operator(
        dev_env, pg_server, tmp_path, report):
    """Through the real worker process:

    * SMTP: a stalled server (client timeout) then ``451`` -> retried, delivered once;
      the same notice's chat webhook then answers 503 twice -> retried with growing gaps, once;
    * permanent: a recipient refused with ``550``, a malformed address, a webhook answering
      ``410`` -> one attempt each, recorded ``failed``, a task for the operator, no retry;
    * subscriptions: a receiver answering 503 once per event gets each event on the 2nd
      attempt; one answering 404 has every event recorded ``failed`` after one attempt;
    * every retry policy the workflows scheduled is bounded.
    """
    from temporalio.api.enums.v1 import EventType

    from tests.faults.harness import HttpReceiver, MailCatcher

    def smtp(msg, attempt):
        key = "".join(str(msg.get("X-Contracts-Notification", "")).split())
        if ":milestone:flaky_mail:" in key:
            return {1: 3.0, 2: "451 4.3.0 mailbox busy, try again later"}.get(attempt)  # 3.0: stall past the timeout
        return None

    def rcpt(address):
        return "550 5.1.1 <ghost@example.com>: mailbox unavailable" if address == "ghost@example.com" else None

    def http(path, headers, body, seen):
        if path == "/dept/sales":
            return 503 if seen < 2 else 200
        if path == "/dept/logistics":
            return 410
        if path == "/sub/all":
            return 503 if seen == 0 else 200
        if path == "/sub/gone":
            return 404
        return 200

    mail, hooks = MailCatcher(answer=smtp, rcpt_answer=rcpt), HttpReceiver(answer=http)
    async with running_stack("delivery", temporal_address=temporal_of(dev_env), client=dev_env.client,
                             pg_server=pg_server, logdir=tmp_path, mail=mail, hooks=hooks,
                             env_extra={"SMTP_TIMEOUT_SECONDS": "1", "OPERATOR_USER": OPERATOR}) as (stack, url):
        gone = (await stack.call("POST", "/webhooks", {"url": f"{hooks.url}/sub/gone", "event_types": ["*"]},
                                 expect=(201,))).json()["id"]
        await stack.call("POST", "/users", {"id": "ghost.user", "name": "Ghost", "email": "ghost@example.com",
                                            "department": "sales", "manager_id": "zhang.min"}, expect=(201,))
        await stack.call("POST", "/users", {"id": "typo.user", "name": "Typo", "email": "typo.user@example.com",
                                            "department": "sales", "manager_id": "zhang.min"}, expect=(201,))
        engine = create_engine(url, poolclass=NullPool)
        with engine.begin() as conn:  # as an HR import could leave it: not an address at all
            conn.execute(text("UPDATE users SET email = 'typo.user(at)example.com' WHERE id = 'typo.user'"))

        cases = {
            "transient": _one_milestone("Flaky mail and chat", "flaky_mail", "li.wei", "sales", ["email", "webhook"]),
            "smtp_550": _one_milestone("Mailbox gone", "ghost", "ghost.user", "sales", ["email"]),
            "bad_address": _one_milestone("Malformed address", "typo", "typo.user", "sales", ["email"]),
            "webhook_410": _one_milestone("Chat bot gone", "gone", "zhao.lei", "logistics", ["webhook"]),
        }
        cids = {}
        for name, body in cases.items():
            cids[name] = (await stack.call("POST", "/contracts", body, expect=(201,))).json()["id"]

        def rows():
            with engine.connect() as conn:
                return {k: (st, err, ch, c) for k, st, err, ch, c in conn.execute(text(
                    "SELECT key, status, error, channel, contract_id FROM notifications"))}

        async def settled():
            r = rows()
            mine = {k: v for k, v in r.items() if v[3] in cids.values()}
            return len(mine) == 5 and all(v[0] in ("sent", "failed") for v in mine.values())

        await until(settled, 120, "every notification sent or failed", interval=0.5)
        await asyncio.sleep(8.0)  # a retry of a permanent failure, if any, would come now
        notes = {k: v for k, v in rows().items() if v[3] in cids.values()}
        by_contract = {name: {k: v for k, v in notes.items() if v[3] == cid} for name, cid in cids.items()}
        async with httpx.AsyncClient(base_url=stack.api.url, timeout=30, headers=ADMIN_HEADERS) as api:
            tasks = (await api.get("/tasks", params={"assignee": OPERATOR, "status": "open"})).json()
            subs = {sid: (await api.get(f"/webhooks/{sid}/deliveries", params={"limit": 500})).json()["items"]
                    for sid in (stack.subscription_id, gone)}

        # ---- transient: SMTP stalled, then 451, then accepted; the chat webhook 503, 503, 200
        transient = by_contract["transient"]
        email_key = next(k for k, v in transient.items() if v[2] == "email")
        chat_key = next(k for k, v in transient.items() if v[2] == "webhook")
        assert {v[0] for v in transient.values()} == {"sent"}, transient
        assert mail.attempts[email_key] == 3, dict(mail.attempts)
        assert mail.keys().count(email_key) == 1  # accepted exactly once
        chat = [r for r in hooks.at("/dept/sales") if r["id"] == chat_key]
        assert [r["status"] for r in chat] == [503, 503, 200], [r["status"] for r in chat]
        gaps = [round(b["t"] - a["t"], 1) for a, b in zip(chat, chat[1:], strict=False)]
        assert gaps[0] >= 1.0 and gaps[1] > gaps[0], gaps  # exponential back-off between activity attempts

        # ---- permanent: one attempt each, recorded failed, escalated to the operator
        failed = {name: next(iter(by_contract[name].items())) for name in ("smtp_550", "bad_address", "webhook_410")}
        for name, (_key, (status, error, _ch, _c)) in failed.items():
            assert status == "failed", (name, status, error)
        assert "550" in failed["smtp_550"][1][1] and mail.rcpts["ghost@example.com"] == 1, dict(mail.rcpts)
        assert "invalid email address" in failed["bad_address"][1][1]
        assert "410" in failed["webhook_410"][1][1]
        assert [r["status"] for r in hooks.at("/dept/logistics")] == [410]
        operator_tasks = {t["key"]: t for t in tasks}
        assert set(operator_tasks) == {f"delivery-failed:{key}" for key, _v in failed.values()}, operator_tasks
        assert not any(chat_key in k or email_key in k for k in operator_tasks)

        # ---- the workflows' side: permanent failures completed on the first attempt, the
        # transient one on the 5th (2 SMTP + 2 webhook failures); every retry policy bounded.
        attempts: dict[str, Any] = {}
        policies: dict[str, Any] = {}
        for name, cid in cids.items():
            async for wf in dev_env.client.list_workflows(f"WorkflowId STARTS_WITH 'contract-{cid}'"):
                history = await dev_env.client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
                for ev in history.events:
                    if ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                        a = ev.activity_task_scheduled_event_attributes
                        rp = a.retry_policy
                        policies.setdefault(a.activity_type.name, set()).add(
                            (rp.maximum_attempts, rp.maximum_interval.ToSeconds(),
                             a.start_to_close_timeout.ToSeconds()))
                    if ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED and "escalation" in wf.id:
                        attempts[name] = ev.activity_task_started_event_attributes.attempt
        assert attempts == {"transient": 5, "smtp_550": 1, "bad_address": 1, "webhook_410": 1}, attempts
        for max_attempts, max_interval, start_to_close in policies["notify"]:
            assert 0 < max_attempts <= 20 and 0 < max_interval <= 300 and start_to_close > 0, policies["notify"]
        worst_case = _retry_budget(max(p[0] for p in policies["notify"]), max(p[1] for p in policies["notify"]))

        # ---- subscriptions: 503 once -> delivered on the 2nd attempt; 404 -> failed after one
        mine = set(cids.values())
        flaky = [x for x in subs[stack.subscription_id] if x["contract_id"] in mine]
        dead = [x for x in subs[gone] if x["contract_id"] in mine]
        assert flaky and all(x["status"] == "delivered" and x["attempts"] == 2 for x in flaky), flaky[:3]
        assert dead and all(x["status"] == "failed" and x["attempts"] == 1 for x in dead), dead[:3]
        engine.dispose()

        report("delivery_errors", {
            "smtp_attempts_transient": mail.attempts[email_key], "emails_delivered_transient": 1,
            "chat_attempts_transient": len(chat), "chat_gaps_s": gaps,
            "permanent_failures": len(failed), "smtp_rcpt_attempts_550": mail.rcpts["ghost@example.com"],
            "webhook_attempts_410": len(hooks.at("/dept/logistics")), "operator_tasks": len(operator_tasks),
            "notify_activity_attempts": attempts,
            "retry_policies": {k: sorted(v) for k, v in policies.items()},
            "notify_worst_case_retry_minutes": round(worst_case / 60, 1),
            "subscription_503_once_attempts": sorted({x["attempts"] for x in flaky}),
            "subscription_404_attempts": sorted({x["attempts"] for x in dead}),
            "duplicates": 0,
        })


def _retry_budget(max_attempts: int, max_interval: float, initial: float = 1.0, coefficient: float = 2.0) -> float:
    """Seconds of back-off a bounded Temporal retry policy can spend at most (timeouts aside)."""
    total, interval = 0.0, initial
    for _ in range(max_attempts - 1):
        total += min(interval, max_interval)
        interval *= coefficient
    return total
