"""Killing the worker between "escalation decided" and "email sent", then restarting it, yields
exactly one email.

Everything is real: the Temporal dev server, the worker as a separate OS process
(``python worker.py``), an SQLite file database and an SMTP server (aiosmtpd).  The worker is
started with ``CONTRACTS_FAULT_EXIT_AFTER_DECISION=<marker>``: the first ``notify`` activity
records its decision row and the process dies with ``os._exit(137)`` before sending.  A second
worker process then picks up the retried activity, finds the ``decided`` row and sends, once.

The retry only comes after the activity's start-to-close timeout (25 s: the activity has no
heartbeat), so the test waits for the email for up to 90 s.
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
# start_to_close_timeout of notify (25 s) + first retry backoff (1 s) + margin.
EMAIL_WAIT_S = 90.0
SETTLE_S = 5.0


def _database(tmp_path: Path):
    """A fresh SQLite file, migrated and seeded with the demo org; (url, engine, sessionmaker)."""
    url = f"sqlite:///{tmp_path / 'contracts.db'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    with sessions.begin() as s:
        seed_demo_org(s)
    return url, engine, sessions


def _one_escalation_email_spec():
    """One milestone owned by li.wei, due in 2 s; escalation level 1 at due+0 emails the owner.
    No reminders, no playbook: exactly one email is expected."""
    return make_spec(
        datetime.now(timezone.utc),
        playbook=None,
        milestones=[
            {"key": "review", "name": "Review", "kind": "order_review", "owner": "li.wei",
             "department": "sales", "due_after": "PT2S"},
        ],
        notifications={"reminders": [], "escalation": [{"after": "PT0S", "to": ["owner"], "channels": ["email"]}]},
    )


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


def _key_of(message) -> str:
    # The header is folded onto a continuation line (it is longer than 78 characters with its
    # name), and Python's parser keeps the folding whitespace: strip it.
    return str(message.get("X-Contracts-Notification", "")).strip()


def _ours(mailbox, contract_id: str) -> list:
    """Messages to the owner about this contract (the mailbox is shared by the session)."""
    return [
        m for m in mailbox.to(OWNER_EMAIL)
        if _key_of(m).startswith(f"{contract_id}:")
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


async def _diagnose(client, handle) -> str:
    """What the escalation child is waiting for, for a readable failure."""
    lines = []
    try:
        async for wf in client.list_workflows(f'WorkflowId STARTS_WITH "{handle.id}"'):
            desc = await client.get_workflow_handle(wf.id, run_id=wf.run_id).describe()
            lines.append(f"{wf.id} {desc.status}")
            for pa in desc.raw_description.pending_activities:
                lines.append(
                    f"  pending {pa.activity_type.name} state={pa.state} attempt={pa.attempt} "
                    f"last_failure={pa.last_failure.message!r} worker={pa.last_worker_identity}"
                )
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        lines.append(f"diagnose failed: {exc!r}")
    return "\n".join(lines)


async def test_worker_killed_after_decision_sends_exactly_one_email(dev_env, mailbox, tmp_path):
    url, engine, sessions = _database(tmp_path)
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

    spec = _one_escalation_email_spec()
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
        if not _ours(mailbox, contract_id):
            pytest.fail(
                f"no email within {EMAIL_WAIT_S}s of the restart; rows={_rows(sessions, contract_id)}\n"
                f"{await _diagnose(dev_env.client, handle)}\nworker-2 log:\n{_tail(second_log)}"
            )
        await asyncio.sleep(SETTLE_S)  # a duplicate, if any, would arrive now

        messages = _ours(mailbox, contract_id)
        assert len(messages) == 1, [m["Message-ID"] for m in messages]
        msg = messages[0]
        assert _key_of(msg) == key
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


class DefersOnce:
    """aiosmtpd handler: the first DATA gets ``451`` (try again later), every later one ``250``."""

    def __init__(self) -> None:
        self.attempts = 0
        self.accepted: list = []

    async def handle_DATA(self, server, session, envelope):
        import email
        from email import policy

        self.attempts += 1
        if self.attempts == 1:
            return "451 4.3.0 Try again later"
        self.accepted.append(email.message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"


async def test_transient_smtp_failure_is_retried_and_sends_exactly_one_email(dev_env, tmp_path):
    """No crash: the SMTP server defers the first attempt; Temporal retries the activity, which
    finds its 'decided' row and sends, once."""
    from aiosmtpd.controller import Controller

    from core.settings import Settings
    from tests.conftest import free_port, running_worker

    url, engine, sessions = _database(tmp_path)
    smtp = DefersOnce()
    controller = Controller(smtp, hostname="127.0.0.1", port=free_port())
    controller.start()
    task_queue = f"retry-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        database_url=url,
        temporal_address=dev_env.client.service_client.config.target_host,
        task_queue=task_queue,
        smtp_host="127.0.0.1",
        smtp_port=controller.port,
        smtp_username=None,
        smtp_starttls=False,
    )
    spec = _one_escalation_email_spec()
    handle = None
    try:
        async with running_worker(dev_env.client, settings, task_queue):
            handle = await start_contract(dev_env.client, spec, task_queue)
            deadline = time.monotonic() + 60
            while not smtp.accepted and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert smtp.accepted, f"no email within 60 s; attempts={smtp.attempts}, rows={_rows(sessions, spec.contract_id)}"
            await asyncio.sleep(SETTLE_S)  # a duplicate, if any, would arrive now
        rows = _rows(sessions, spec.contract_id)
        assert len(rows) == 1 and rows[0][1] == "sent", rows
        key = rows[0][0]
        assert smtp.attempts == 2, smtp.attempts
        assert len(smtp.accepted) == 1
        assert _key_of(smtp.accepted[0]) == key
        assert smtp.accepted[0]["Message-ID"] == format_message_id(key)
        print(f"\nretry test: smtp attempts={smtp.attempts}, emails={len(smtp.accepted)}, duplicates={len(smtp.accepted) - 1}")
    finally:
        if handle is not None:
            try:
                await handle.terminate("test finished")
            except Exception as exc:  # noqa: BLE001 - already closed is fine
                print("terminate:", exc)
            if handle in STARTED:
                STARTED.remove(handle)
        controller.stop()
        engine.dispose()
