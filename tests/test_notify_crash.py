"""Killing the worker between "escalation decided" and "email sent", then restarting it, yields
exactly one email.

Everything is real: the Temporal dev server, the worker as a separate OS process
(``python worker.py``), an SQLite file database and an SMTP server (aiosmtpd).  The worker is
started with ``CONTRACTS_FAULT_EXIT_AFTER_DECISION=<marker>``: the first ``notify`` activity
records its decision row and the process dies with ``os._exit(137)`` before sending.  A second
worker process then picks up the retried activity, finds the ``decided`` row and sends, once.

The retry only comes after the activity's start-to-close timeout (60 s: the activity has no
heartbeat), so the test waits for the email for up to 150 s.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from core.channels.email import format_message_id
from core.migrate import upgrade
from core.seed import seed_demo_org
from models.db import make_engine, make_session_factory
from models.notification import Notification
from tests.helpers import STARTED, make_spec, start_contract

pytestmark = pytest.mark.devserver

ROOT = Path(__file__).resolve().parent.parent
OWNER_EMAIL = "li.wei@example.com"
KILL_WAIT_S = 30.0
# start_to_close_timeout of notify (60 s) + first retry backoff (1 s) + margin.
EMAIL_WAIT_S = 150.0
SETTLE_S = 5.0


def _worker(tmp_path: Path, name: str, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "worker.py"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return proc, log


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()  # SIGTERM: the worker shuts down cleanly
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _ours(mailbox, contract_id: str) -> list:
    """Messages to the owner about this contract (the mailbox is shared by the session)."""
    return [
        m for m in mailbox.to(OWNER_EMAIL)
        if str(m.get("X-Contracts-Notification", "")).startswith(f"{contract_id}:")
    ]


def _rows(sessions, contract_id: str) -> list[tuple[str, str, str, int]]:
    with sessions() as s:
        return [
            (n.key, n.status, n.channel, n.attempts)
            for n in s.execute(select(Notification).where(Notification.contract_id == contract_id)).scalars()
        ]


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-3000:]
    except OSError:
        return "<no log>"


async def test_worker_killed_after_decision_sends_exactly_one_email(dev_env, mailbox, tmp_path):
    url = f"sqlite:///{tmp_path / 'contracts.db'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    with sessions.begin() as s:
        seed_demo_org(s)

    marker = tmp_path / "died"
    task_queue = f"crash-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": dev_env.client.namespace,
        "TASK_QUEUE": task_queue,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(mailbox.port),
        "SMTP_STARTTLS": "false",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("SMTP_USERNAME", None)
    env.pop("SMTP_PASSWORD", None)
    faulty_env = {**env, "CONTRACTS_FAULT_EXIT_AFTER_DECISION": str(marker)}
    clean_env = {k: v for k, v in env.items() if k != "CONTRACTS_FAULT_EXIT_AFTER_DECISION"}

    now = datetime.now(timezone.utc)
    spec = make_spec(
        now,
        playbook=None,
        milestones=[
            {"key": "review", "name": "Review", "kind": "order_review", "owner": "li.wei",
             "department": "sales", "due_after": "PT2S"},
        ],
        notifications={"reminders": [], "escalation": [{"after": "PT0S", "to": ["owner"], "channels": ["email"]}]},
    )
    contract_id = spec.contract_id

    first = second = handle = None
    first_log = second_log = None
    try:
        first, first_log = _worker(tmp_path, "worker-1", faulty_env)
        handle = await start_contract(dev_env.client, spec, task_queue)

        # ---- 1. the first worker dies right after recording the decision
        deadline = time.monotonic() + KILL_WAIT_S
        while first.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert first.returncode == 137, f"worker did not die as injected (rc={first.returncode}):\n{_tail(first_log)}"
        assert marker.exists()
        rows = _rows(sessions, contract_id)
        assert len(rows) == 1, rows
        key, status, channel, _attempts = rows[0]
        assert (status, channel) == ("decided", "email"), rows
        assert key.startswith(f"{contract_id}:milestone:review:") and key.endswith(":escalation1:li.wei:email"), key
        assert _ours(mailbox, contract_id) == [], "email sent before the crash"

        # ---- 2. a fresh worker process picks up the retried activity and sends once
        second, second_log = _worker(tmp_path, "worker-2", clean_env)
        deadline = time.monotonic() + EMAIL_WAIT_S
        while not _ours(mailbox, contract_id) and time.monotonic() < deadline:
            assert second.poll() is None, f"restarted worker exited (rc={second.returncode}):\n{_tail(second_log)}"
            await asyncio.sleep(0.5)
        assert _ours(mailbox, contract_id), f"no email within {EMAIL_WAIT_S}s of the restart:\n{_tail(second_log)}"
        await asyncio.sleep(SETTLE_S)  # a duplicate, if any, would arrive now

        messages = _ours(mailbox, contract_id)
        assert len(messages) == 1, [m["Message-ID"] for m in messages]
        msg = messages[0]
        assert msg["X-Contracts-Notification"] == key
        assert msg["Message-ID"] == format_message_id(key)
        rows = _rows(sessions, contract_id)
        assert [(k, st) for k, st, _c, _a in rows] == [(key, "sent")], rows
        assert second.poll() is None, "restarted worker should still be running"
        print(f"\ncrash test: kills=1, emails={len(messages)}, duplicates={len(messages) - 1}, key={key}")
    finally:
        if handle is not None:
            try:
                await handle.terminate("test finished")
            except Exception as exc:  # noqa: BLE001 - already closed is fine
                print("terminate:", exc)
            if handle in STARTED:
                STARTED.remove(handle)
        _stop(first)
        _stop(second)
        engine.dispose()
