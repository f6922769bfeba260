"""Outgoing webhook subscriptions: a real HTTP receiver verifies every signature and event order.

Two layers:
* the dispatcher on its own, over real databases (SQLite and PostgreSQL), with events written
  straight into ``contract_events``: order, filters, retries, permanent failures, bounded
  retries, a crash between send and record, two replicas, PostgreSQL commit-order gaps;
* the running service (real Temporal dev server, worker, uvicorn, dispatcher): a contract's
  whole life arrives at the subscriber, via the API, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from core.channels.webhook import verify
from core.settings import Settings
from core.webhooks.dispatcher import WebhookDispatcher
from core.webhooks.events import EVENT_TYPES, matches
from core.webhooks.store import create_subscription
from models import Contract, ContractEvent, Customer, WebhookDelivery, WebhookSubscription
from tests.helpers import contract_request, wait_for

SECRET_A = "whsec_test_secret_aaaaaaaaaaaaaaaa"
SECRET_B = "whsec_test_secret_bbbbbbbbbbbbbbbb"


# ====================================================================== the receiver
class Receiver:
    """A real HTTP server (a thread) standing for subscribers: one path per subscription.

    Every request is recorded with whether its signature verifies under that path's secret.
    ``answer(path, event, times_seen_before)`` picks the HTTP status (default 200).
    """

    def __init__(self, answer: Callable[[str, dict, int], int] | None = None) -> None:
        self.secrets: dict[str, str] = {}
        self.records: list[dict] = []
        self.answer = answer or (lambda path, event, seen: 200)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                path = self.path
                try:
                    event = json.loads(body)
                except ValueError:
                    event = {}
                with receiver._lock:
                    seen = sum(1 for r in receiver.records if r["path"] == path and r["id"] == event.get("id"))
                    status = receiver.answer(path, event, seen)
                    receiver.records.append(
                        {
                            "path": path,
                            "id": event.get("id"),
                            "event": event,
                            "body": body,
                            "status": status,
                            "header_id": self.headers.get("X-Contracts-Event-Id"),
                            "content_type": self.headers.get("Content-Type", ""),
                            "verified": verify(
                                receiver.secrets.get(path, ""),
                                self.headers.get("X-Contracts-Timestamp", ""),
                                body,
                                self.headers.get("X-Contracts-Signature", ""),
                            ),
                        }
                    )
                reply = b"ok" if status < 300 else b"not now"
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, path: str, secret: str | None = None) -> str:
        if secret is not None:
            self.secrets[path] = secret
        return self.base + path

    # -------------------------------------------------------------- views
    def at(self, path: str, contract_id: str | None = None) -> list[dict]:
        with self._lock:
            rows = [r for r in self.records if r["path"] == path]
        if contract_id is not None:
            rows = [r for r in rows if r["event"].get("data", {}).get("contract_id") == contract_id]
        return rows

    def accepted_ids(self, path: str, contract_id: str | None = None) -> list[str]:
        """Event ids the subscriber accepted (answered 2xx), in arrival order."""
        return [r["id"] for r in self.at(path, contract_id) if r["status"] < 300]

    def check_all(self, path: str) -> None:
        """What must hold for every request ever received on ``path``."""
        rows = self.at(path)
        assert rows, f"nothing received on {path}"
        assert all(r["verified"] for r in rows), [r["id"] for r in rows if not r["verified"]]
        assert all(r["header_id"] == r["id"] for r in rows)
        assert all(r["content_type"].startswith("application/cloudevents+json") for r in rows)
        bodies: dict[str, bytes] = {}
        for r in rows:  # a duplicate is the same event: same id, same bytes
            assert bodies.setdefault(r["id"], r["body"]) == r["body"], r["id"]
        by_contract: dict[str, list[int]] = defaultdict(list)
        for r in rows:
            ev = r["event"]
            assert ev["specversion"] == "1.0" and ev["datacontenttype"] == "application/json"
            seq = ev["data"]["seq"]
            if seq is not None:
                assert ev["id"] == f"{ev['data']['contract_id']}:{seq}"
            else:  # a reminder the notification outbox recorded: named by its row
                assert ev["id"].startswith(f"{ev['data']['contract_id']}:r") and ev["type"] == "notification.reminder"
            assert ev["source"] == f"/contracts/{ev['data']['contract_id']}"
            assert ev["time"].endswith("Z")
            if seq is not None:
                by_contract[ev["data"]["contract_id"]].append(seq)
        for cid, seqs in by_contract.items():
            # Per contract, never an older event after a newer one (a retry repeats the same one).
            assert seqs == sorted(seqs), (cid, seqs)
        accepted = [r["id"] for r in rows if r["status"] < 300]
        assert len(accepted) == len(set(accepted)), "an accepted event was sent again"

    def __enter__(self) -> Receiver:
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# ====================================================================== dispatcher on a database
def fast_settings(**overrides) -> Settings:
    values: dict[str, Any] = dict(
        webhook_retry_initial_seconds=0.05,
        webhook_retry_max_interval_seconds=0.2,
        webhook_max_attempts=5,
        webhook_timeout_seconds=5,
        webhook_gap_grace_seconds=0.5,
    )
    values.update(overrides)
    return Settings(**values)


def add_contract(sessions, cid: str | None = None) -> tuple[str, str, str]:
    """A contract row (with its customer) the events can refer to; returns (id, CRM id, customer CRM id)."""
    cid = cid or uuid.uuid4().hex[:16]
    now = datetime.now(timezone.utc)
    ext, cust_ext = f"CRM-C-{cid[:6]}", f"CRM-K-{cid[:6]}"
    with sessions.begin() as s:
        customer = Customer(name="华东机电有限公司", external_id=cust_ext, created_at=now)
        s.add(customer)
        s.flush()
        s.add(
            Contract(
                id=cid, external_id=ext, workflow_id=f"contract-{cid}", title="t", customer_id=customer.id,
                customer_name=customer.name, currency="CNY", amount=Decimal("100.00"), paid_total=Decimal(0),
                outstanding=Decimal("100.00"), credit=Decimal(0), effective_at=now, end_at=now + timedelta(days=30),
                owner="li.wei", status="active", overdue_count=0, version=0, spec={}, created_at=now, updated_at=now,
            )
        )
    return cid, ext, cust_ext


def add_events(sessions, cid: str, types: list[str], start_seq: int = 1) -> None:
    with sessions.begin() as s:
        for k, type_ in enumerate(types):
            s.add(ContractEvent(contract_id=cid, seq=start_seq + k, type=type_, at=datetime.now(timezone.utc),
                                actor="li.wei", data={"key": f"k{start_seq + k}", "note": "签收"}))


def subscribe(sessions, url: str, secret: str, types=("*",), replay=True) -> str:
    with sessions.begin() as s:
        return create_subscription(s, url=url, secret=secret, event_types=list(types), replay_from_start=replay).id


def drain(dispatcher: WebhookDispatcher, done: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "dispatch did not finish in time"
        dispatcher.run_once()
        time.sleep(0.02)


def deliveries(sessions, sid: str) -> list[WebhookDelivery]:
    with sessions() as s:
        return list(s.execute(select(WebhookDelivery).where(WebhookDelivery.subscription_id == sid)
                              .order_by(WebhookDelivery.event_row_id)).scalars())


def subscription(sessions, sid: str) -> WebhookSubscription:
    with sessions() as s:
        return s.get(WebhookSubscription, sid)


def log_ids(sessions, cid: str, types=("*",)) -> list[str]:
    with sessions() as s:
        rows = s.execute(select(ContractEvent.seq, ContractEvent.type).where(ContractEvent.contract_id == cid)
                         .order_by(ContractEvent.seq)).all()
    return [f"{cid}:{seq}" for seq, type_ in rows if matches(types, type_)]


LIFE = ["contract.created", "milestone.progress", "milestone.completed", "notification.handoff", "milestone.overdue",
        "payment.received", "installment.paid", "milestone.completed", "contract.completed"]


def test_events_arrive_in_order_signed_filtered_with_crm_ids(sessions):
    contracts = [add_contract(sessions) for _ in range(3)]
    for k in range(3):  # interleaved across contracts, in order within each
        for cid, _, _ in contracts:
            add_events(sessions, cid, LIFE[3 * k: 3 * k + 3], start_seq=3 * k + 1)
    money = ("payment.*", "installment.paid", "contract.completed")
    with Receiver() as rx:
        a = subscribe(sessions, rx.url("/a", SECRET_A), SECRET_A)
        b = subscribe(sessions, rx.url("/b", SECRET_B), SECRET_B, types=money)
        dispatcher = WebhookDispatcher(sessions, fast_settings())
        drain(dispatcher, lambda: len(rx.at("/a")) == 27 and len(rx.at("/b")) == 9)
        rx.check_all("/a")
        rx.check_all("/b")
        for cid, ext, cust in contracts:
            assert rx.accepted_ids("/a", cid) == log_ids(sessions, cid) and len(log_ids(sessions, cid)) == 9
            assert rx.accepted_ids("/b", cid) == log_ids(sessions, cid, money) and len(rx.accepted_ids("/b", cid)) == 3
            for r in rx.at("/a", cid):
                data = r["event"]["data"]
                assert (data["contract_external_id"], data["customer_external_id"]) == (ext, cust)
                assert data["actor"] == "li.wei" and data["note"] == "签收"
        first = rx.at("/a", contracts[0][0])[0]["event"]
        assert first["type"] == "contract.created" and "subject" not in first
        completed = [r["event"] for r in rx.at("/a") if r["event"]["type"] == "milestone.completed"][0]
        assert completed["subject"] == f"milestones/{completed['data']['key']}"

        # The log: one delivered entry per event; the cursors at the end of the log.
        assert [d.status for d in deliveries(sessions, a)] == ["delivered"] * 27
        assert all(d.attempts == 1 and d.response_status == 200 for d in deliveries(sessions, a))
        assert len(deliveries(sessions, b)) == 9
        with sessions() as s:
            newest = s.execute(select(ContractEvent.id).order_by(ContractEvent.id.desc()).limit(1)).scalar()
        assert subscription(sessions, a).cursor == subscription(sessions, b).cursor == newest
        assert dispatcher.run_once() == 0  # nothing left: nothing sent twice


def test_transient_errors_are_retried_with_the_same_id_and_order_is_kept(sessions):
    cid, _, _ = add_contract(sessions)
    add_events(sessions, cid, LIFE[:4])
    # The receiver reads each of the first two events, then answers 500 twice, 503 once... then 200.
    plan = {f"{cid}:1": [500, 500], f"{cid}:2": [503]}

    def answer(path, event, seen):
        codes = plan.get(event["id"], [])
        return codes[seen] if seen < len(codes) else 200

    with Receiver(answer) as rx:
        sid = subscribe(sessions, rx.url("/a", SECRET_A), SECRET_A)
        dispatcher = WebhookDispatcher(sessions, fast_settings())
        drain(dispatcher, lambda: len(rx.accepted_ids("/a")) == 4)
        rx.check_all("/a")
        assert [r["id"] for r in rx.at("/a")] == [f"{cid}:{n}" for n in (1, 1, 1, 2, 2, 3, 4)]
        assert rx.accepted_ids("/a") == log_ids(sessions, cid)
        log = deliveries(sessions, sid)
        assert [(d.status, d.attempts) for d in log] == [("delivered", 3), ("delivered", 2), ("delivered", 1),
                                                          ("delivered", 1)]
        assert log[0].error is None and log[0].delivered_at is not None


def test_permanent_answer_is_recorded_failed_and_the_next_event_goes(sessions):
    cid, _, _ = add_contract(sessions)
    add_events(sessions, cid, LIFE[:5])
    refused = {f"{cid}:2": 410, f"{cid}:4": 400}
    with Receiver(lambda path, event, seen: refused.get(event["id"], 200)) as rx:
        sid = subscribe(sessions, rx.url("/a", SECRET_A), SECRET_A)
        dispatcher = WebhookDispatcher(sessions, fast_settings())
        drain(dispatcher, lambda: len(rx.at("/a")) == 5)
        time.sleep(0.3)
        dispatcher.run_once()
        assert [r["id"] for r in rx.at("/a")] == log_ids(sessions, cid), "a refused event is not retried"
        log = deliveries(sessions, sid)
        assert [(d.seq, d.status, d.attempts, d.response_status) for d in log] == [
            (1, "delivered", 1, 200), (2, "failed", 1, 410), (3, "delivered", 1, 200), (4, "failed", 1, 400),
            (5, "delivered", 1, 200),
        ]
        assert "410" in log[1].error
        sub = subscription(sessions, sid)
        assert sub.consecutive_failures == 0 and sub.last_failed_at is not None and sub.active


def test_retries_are_bounded_then_failed_and_the_stream_moves_on(sessions):
    cid, _, _ = add_contract(sessions)
    add_events(sessions, cid, LIFE[:3])
    down = {f"{cid}:2"}
    with Receiver(lambda path, event, seen: 503 if event["id"] in down else 200) as rx:
        sid = subscribe(sessions, rx.url("/a", SECRET_A), SECRET_A)
        dispatcher = WebhookDispatcher(sessions, fast_settings(webhook_max_attempts=4))
        drain(dispatcher, lambda: f"{cid}:3" in rx.accepted_ids("/a"))
        assert [r["id"] for r in rx.at("/a")] == [f"{cid}:1"] + [f"{cid}:2"] * 4 + [f"{cid}:3"]
        log = deliveries(sessions, sid)
        assert [(d.status, d.attempts) for d in log] == [("delivered", 1), ("failed", 4), ("delivered", 1)]
        assert log[1].response_status == 503 and log[1].next_attempt_at is None

    # And by time: a receiver that keeps failing is given up on after the retry window.
    cid2, _, _ = add_contract(sessions)
    with Receiver(lambda path, event, seen: 500 if event["id"] == f"{cid2}:1" else 200) as rx:
        sid2 = subscribe(sessions, rx.url("/w", SECRET_A), SECRET_A, replay=False)  # from now on
        add_events(sessions, cid2, LIFE[:2])
        dispatcher = WebhookDispatcher(
            sessions, fast_settings(webhook_max_attempts=1000, webhook_retry_window_seconds=0.5)
        )
        drain(dispatcher, lambda: f"{cid2}:2" in rx.accepted_ids("/w"))
        first = deliveries(sessions, sid2)[0]
        assert (first.event_id, first.status) == (f"{cid2}:1", "failed") and 2 <= first.attempts < 20


def test_a_crash_between_send_and_record_resends_the_same_event(sessions):
    """The dispatcher dies after the receiver got the event but before the outcome was written:
    the next dispatcher (after the lease runs out) sends it again, same id, same bytes."""
    cid, _, _ = add_contract(sessions)
    add_events(sessions, cid, LIFE[:3])

    class Crash(BaseException):
        pass

    from core.channels.webhook import post_webhook

    def post_then_die(*args, **kwargs):
        status = post_webhook(*args, **kwargs)
        if kwargs["event_id"] == f"{cid}:2":
            raise Crash()  # the process is gone: nothing after this runs
        return status

    with Receiver() as rx:
        sid = subscribe(sessions, rx.url("/a", SECRET_A), SECRET_A)
        settings = fast_settings(webhook_lease_seconds=1.0)
        doomed = WebhookDispatcher(sessions, settings, owner="replica-1", post=post_then_die)
        doomed._release = lambda sid: None  # type: ignore[method-assign]  # a dead process releases nothing
        with pytest.raises(Crash):
            doomed.run_once()
        assert rx.accepted_ids("/a") == [f"{cid}:1", f"{cid}:2"]
        survivor = WebhookDispatcher(sessions, settings, owner="replica-2")
        assert survivor.run_once() == 0, "the lease still holds"
        time.sleep(1.1)
        drain(survivor, lambda: len(rx.at("/a")) == 4)
        assert [r["id"] for r in rx.at("/a")] == [f"{cid}:1", f"{cid}:2", f"{cid}:2", f"{cid}:3"]
        assert rx.at("/a")[1]["body"] == rx.at("/a")[2]["body"]
        assert all(r["verified"] for r in rx.at("/a"))
        assert [(d.status, d.attempts) for d in deliveries(sessions, sid)] == [
            ("delivered", 1), ("delivered", 2), ("delivered", 1)]


def test_two_replicas_deliver_everything_once_and_in_order(sessions):
    """Two dispatchers (as two worker replicas) on the same database while events keep coming."""
    contracts = [add_contract(sessions)[0] for _ in range(5)]
    n = 12
    with Receiver() as rx:
        subs = [subscribe(sessions, rx.url(f"/s{k}", SECRET_A), SECRET_A) for k in range(2)]
        settings = fast_settings(webhook_max_parallel=4)
        replicas = [WebhookDispatcher(sessions, settings, owner=f"replica-{k}") for k in range(2)]
        stop = threading.Event()

        def writer(cid):
            for seq in range(1, n + 1):
                add_events(sessions, cid, ["milestone.progress"], start_seq=seq)
                time.sleep(0.005)

        def replica(d):
            while not stop.is_set():
                d.run_once()
                time.sleep(0.01)

        threads = [threading.Thread(target=writer, args=(c,)) for c in contracts]
        runners = [threading.Thread(target=replica, args=(d,)) for d in replicas]
        for t in threads + runners:
            t.start()
        for t in threads:
            t.join(60)
        try:
            deadline = time.monotonic() + 60
            while any(len(rx.at(f"/s{k}")) < n * len(contracts) for k in range(2)):
                assert time.monotonic() < deadline, [len(rx.at(f"/s{k}")) for k in range(2)]
                time.sleep(0.05)
            time.sleep(0.3)
        finally:
            stop.set()
            for t in runners:
                t.join(30)
        for k, sid in enumerate(subs):
            rx.check_all(f"/s{k}")
            assert len(rx.at(f"/s{k}")) == n * len(contracts), "every event exactly once"
            for cid in contracts:
                assert rx.accepted_ids(f"/s{k}", cid) == [f"{cid}:{seq}" for seq in range(1, n + 1)]
            assert {d.status for d in deliveries(sessions, sid)} == {"delivered"}
        assert {r["path"] for r in rx.records} == {"/s0", "/s1"}


def test_a_gap_in_event_ids_is_waited_for_then_skipped(sessions, database_url):
    """Ids can be visible out of order (PostgreSQL) or never used: the dispatcher waits at a hole
    until it can no longer fill, delivering what filled it first."""
    cid, _, _ = add_contract(sessions)
    add_events(sessions, cid, ["contract.created"])
    with Receiver() as rx:
        subscribe(sessions, rx.url("/a", SECRET_A), SECRET_A)
        dispatcher = WebhookDispatcher(sessions, fast_settings(webhook_gap_grace_seconds=1.0))
        drain(dispatcher, lambda: len(rx.at("/a")) == 1)
        if database_url.startswith("sqlite"):
            # SQLite never shows ids out of order; a hole can only be made by hand.
            with sessions.begin() as s:
                top = s.execute(select(ContractEvent.id).order_by(ContractEvent.id.desc())).scalars().first()
                s.add(ContractEvent(id=top + 3, contract_id=cid, seq=3, type="milestone.completed",
                                    at=datetime.now(timezone.utc), actor="x", data={}))
            dispatcher.run_once()
            assert len(rx.at("/a")) == 1, "waits at the hole"
            time.sleep(1.1)
            drain(dispatcher, lambda: len(rx.at("/a")) == 2)
            return
        # PostgreSQL: a transaction takes id N and is still open while N+1 commits.
        late = sessions()
        late.add(ContractEvent(contract_id=cid, seq=2, type="milestone.progress", at=datetime.now(timezone.utc),
                               actor="x", data={}))
        late.flush()
        add_events(sessions, cid, ["milestone.completed"], start_seq=3)
        for _ in range(5):
            dispatcher.run_once()
            time.sleep(0.05)
        assert [r["id"] for r in rx.at("/a")] == [f"{cid}:1"], "N+1 must wait for N"
        late.commit()
        late.close()
        drain(dispatcher, lambda: len(rx.at("/a")) == 3)
        assert [r["id"] for r in rx.at("/a")] == [f"{cid}:1", f"{cid}:2", f"{cid}:3"]
        # A hole that never fills (the transaction rolled back) is skipped as soon as every
        # transaction that might have held it is over, long before the grace period.
        gone = sessions()
        gone.add(ContractEvent(contract_id=cid, seq=4, type="x.y", at=datetime.now(timezone.utc), actor="x", data={}))
        gone.flush()
        add_events(sessions, cid, ["milestone.completed"], start_seq=5)
        gone.rollback()
        gone.close()
        started = time.monotonic()
        drain(dispatcher, lambda: len(rx.at("/a")) == 4)
        assert time.monotonic() - started < 0.9
        assert rx.at("/a")[-1]["id"] == f"{cid}:5"


def test_pausing_and_deleting(sessions):
    cid, _, _ = add_contract(sessions)
    add_events(sessions, cid, LIFE[:2])
    with Receiver() as rx:
        sid = subscribe(sessions, rx.url("/a", SECRET_A), SECRET_A)
        with sessions.begin() as s:
            s.get(WebhookSubscription, sid).active = False
        dispatcher = WebhookDispatcher(sessions, fast_settings())
        assert dispatcher.run_once() == 0 and rx.at("/a") == []
        with sessions.begin() as s:
            s.get(WebhookSubscription, sid).active = True
        drain(dispatcher, lambda: len(rx.at("/a")) == 2)  # nothing lost while paused
        # New subscriptions start after the newest event unless asked to replay.
        later = subscribe(sessions, rx.url("/b", SECRET_B), SECRET_B, replay=False)
        add_events(sessions, cid, LIFE[2:3], start_seq=3)
        drain(dispatcher, lambda: len(rx.at("/b")) == 1)
        assert rx.accepted_ids("/b") == [f"{cid}:3"]
        assert len(deliveries(sessions, later)) == 1


def test_models_and_migration_agree_on_the_webhook_tables(database_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from models import Base
    from models.db import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    mine = [d for d in diff if "webhook" in repr(d)]
    assert mine == []


# ====================================================================== the running service
def answer_with_two_500s_on_first_payment(target: dict):
    """The subscriber takes the first payment in, then answers 500, twice (it crashed mid-way)."""

    def answer(path, event, seen):
        data = event.get("data", {})
        if (path == "/all" and event.get("type") == "payment.received" and data.get("contract_id") == target.get("cid")
                and data.get("reference") == "BANK-1" and seen < 2):
            target["payment"] = event["id"]
            return 500
        return 200

    return answer


async def contract_life_through_the_service(service) -> None:
    target: dict = {}
    rx = Receiver(answer_with_two_500s_on_first_payment(target))
    wanted_b = ["milestone.completed", "milestone.overdue", "payment.received", "contract.*"]
    with rx:
        async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as c:
            r = await c.post("/webhooks", json={"url": rx.url("/all"), "description": "CRM, everything",
                                                "active": False})
            assert r.status_code == 201, r.text
            sub_a = r.json()
            assert sub_a["secret"].startswith("whsec_") and sub_a["event_types"] == ["*"]
            rx.secrets["/all"] = sub_a["secret"]  # generated, shown once
            r = await c.patch(f"/webhooks/{sub_a['id']}", json={"active": True})
            assert r.status_code == 200 and r.json()["active"] is True
            r = await c.post("/webhooks", json={"url": rx.url("/some", SECRET_B), "secret": SECRET_B,
                                                "event_types": wanted_b})
            assert r.status_code == 201, r.text
            sub_b = r.json()
            got = (await c.get(f"/webhooks/{sub_a['id']}")).json()
            assert "secret" not in got and got["active"] is True
            assert all("secret" not in s for s in (await c.get("/webhooks")).json())

            now = datetime.now(timezone.utc)
            body = contract_request(now, amount="1000.00", external_id=f"CRM-{uuid.uuid4().hex[:8]}",
                                    milestones=[{"key": "order_review", "due_after": "PT2S"}])
            r = await c.post("/contracts", json=body)
            assert r.status_code == 201, r.text
            cid = target["cid"] = r.json()["id"]

            async def log():
                return (await c.get(f"/contracts/{cid}/events")).json()

            async def has(type_):
                return any(e["type"] == type_ for e in await log())

            await wait_for(lambda: has("milestone.overdue"), timeout=30)
            for key in ["order_review", "production_scheduling", "shipping", "customer_acceptance", "invoicing"]:
                r = await c.post(f"/contracts/{cid}/milestones/{key}/complete", json={"by": "li.wei"})
                assert r.status_code == 200, r.text
                if key == "order_review":
                    r = await c.post(f"/contracts/{cid}/payments", json={
                        "reference": "BANK-1", "amount": "300.00", "currency": "CNY",
                        "received_at": now.isoformat()})
                    assert r.status_code == 200 and r.json()["applied"], r.text
                    # A change agreed with the customer: requested, approved, applied.
                    r = await c.post(f"/contracts/{cid}/amendments", json={
                        "requested_by": "li.wei", "reason": "customer asked for a later shipping date",
                        "changes": [{"kind": "move_due", "key": "shipping", "shift": "P1D"}]})
                    assert r.status_code == 201, r.text
                    r = await c.post(f"/contracts/{cid}/amendments/{r.json()['id']}/approve",
                                     json={"by": "zhang.min", "role": "manager"})
                    assert r.status_code == 200 and r.json()["status"] == "applied", r.text
                    await wait_for(lambda: has("document.created"), timeout=30)
            r = await c.post(f"/contracts/{cid}/payments", json={
                "reference": "BANK-2", "amount": "700.00", "currency": "CNY", "received_at": now.isoformat()})
            assert r.status_code == 200, r.text
            await wait_for(lambda: has("contract.completed"), timeout=30)

            async def all_arrived():
                ids = [e["event_id"] for e in await log()]
                return ids if rx.accepted_ids("/all", cid) == ids else None

            ids = await wait_for(all_arrived, timeout=30)
            events = await log()
            types = [e["type"] for e in events]
            for t in ["contract.created", "milestone.overdue", "milestone.completed", "payment.received",
                      "amendment.requested", "amendment.approved", "amendment.applied", "document.created",
                      "installment.paid", "contract.completed"]:
                assert t in types, (t, types)
            assert events[[e["event_id"] for e in events].index(target["payment"])]["type"] == \
                "payment.received"
            wanted_ids = [e["event_id"] for e in events if matches(wanted_b, e["type"])]
            await wait_for(lambda: _eq(rx.accepted_ids("/some", cid), wanted_ids), timeout=30)

            # Every request verified, CloudEvents, per-contract order; duplicates only as the same event.
            rx.check_all("/all")
            rx.check_all("/some")
            received = [r["id"] for r in rx.at("/all", cid)]
            assert received.count(target["payment"]) == 3 and len(received) == len(ids) + 2
            assert [i for k, i in enumerate(received) if i not in received[:k]] == ids
            for received_request in rx.at("/all", cid):
                data = received_request["event"]["data"]
                assert data["contract_external_id"] == body["external_id"]
                assert data["customer_external_id"] == body["customer"]["external_id"]
            print(f"contract {cid}: {len(ids)} events delivered in order, {len(received)} requests, "
                  f"{len(rx.at('/some', cid))} to the filtered subscription")

            # The delivery log, through the API.
            page = (await c.get(f"/webhooks/{sub_a['id']}/deliveries",
                                params={"contract_id": cid, "limit": 500})).json()
            assert page["total"] == len(ids) and {d["status"] for d in page["items"]} == {"delivered"}
            payment = next(d for d in page["items"] if d["event_id"] == target["payment"])
            assert payment["attempts"] == 3 and payment["event_type"] == "payment.received"
            failed = (await c.get(f"/webhooks/{sub_a['id']}/deliveries", params={"status": "failed"})).json()
            assert failed["total"] == 0
            ping = (await c.post(f"/webhooks/{sub_b['id']}/test")).json()
            assert ping["delivered"] is True and ping["status_code"] == 200
            assert rx.at("/some")[-1]["event"]["type"] == "webhook.ping" and rx.at("/some")[-1]["verified"]

            for sid in (sub_a["id"], sub_b["id"]):
                assert (await c.delete(f"/webhooks/{sid}")).status_code == 204
                r = await c.get(f"/webhooks/{sid}")
                assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"


async def _eq(a, b):
    return a == b


async def test_a_contracts_life_reaches_the_subscriber(api_service):
    await contract_life_through_the_service(api_service)


@pytest.mark.postgres
async def test_a_contracts_life_reaches_the_subscriber_on_postgres(api_service_pg):
    await contract_life_through_the_service(api_service_pg)


async def test_api_validation_and_not_found(api_service):
    async with httpx.AsyncClient(base_url=api_service.base_url) as c:
        bad = [
            {"url": "ftp://example.com/hook"},
            {"url": "not a url"},
            {"url": "https://user:pw@example.com/hook"},
            {"url": "https://example.com/hook", "secret": "short"},
            {"url": "https://example.com/hook", "event_types": []},
            {"url": "https://example.com/hook", "event_types": ["milestone.finished"]},
            {"url": "https://example.com/hook", "event_types": ["nothing.*"]},
            {"url": "https://example.com/hook", "event_types": ["*", "*"]},
            {"url": "https://example.com/hook", "colour": "red"},
            {},
        ]
        for body in bad:
            r = await c.post("/webhooks", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["errors"], body
        r = await c.post("/webhooks", content=b"{", headers={"content-type": "application/json"})
        assert r.status_code == 422

        r = await c.post("/webhooks", json={"url": "https://example.com/hook", "secret": "s" * 16,
                                            "event_types": ["milestone.*", "amendment.requested"], "active": False})
        assert r.status_code == 201
        sid = r.json()["id"]
        assert r.json()["secret"] == "s" * 16
        for patch in [{"url": None}, {"active": None}, {"event_types": ["bogus"]}, {"url": "mailto:x@y"},
                      {"id": "other"}]:
            r = await c.patch(f"/webhooks/{sid}", json=patch)
            assert r.status_code == 422, (patch, r.text)
        r = await c.patch(f"/webhooks/{sid}", json={"event_types": ["*"], "description": "all"})
        assert r.status_code == 200 and r.json()["event_types"] == ["*"] and "secret" not in r.json()

        for method, path in [("get", "/webhooks/nope"), ("patch", "/webhooks/nope"), ("delete", "/webhooks/nope"),
                             ("get", "/webhooks/nope/deliveries"), ("post", "/webhooks/nope/test")]:
            kwargs = {"json": {"active": True}} if method == "patch" else {}
            r = await getattr(c, method)(path, **kwargs)
            assert r.status_code == 404, (method, path, r.text)
            assert r.headers["content-type"] == "application/problem+json"
        r = await c.get(f"/webhooks/{sid}/deliveries", params={"status": "lost"})
        assert r.status_code == 422
        r = await c.get(f"/webhooks/{sid}/deliveries", params={"limit": 0})
        assert r.status_code == 422

        # A ping to a receiver that is not there says so; it is not a server error.
        r = await c.patch(f"/webhooks/{sid}", json={"url": "http://127.0.0.1:9/nothing"})
        assert r.status_code == 200
        ping = (await c.post(f"/webhooks/{sid}/test")).json()
        assert ping["delivered"] is False and ping["error"]

        types = {t["type"] for t in (await c.get("/webhooks/event-types")).json()}
        assert types == set(EVENT_TYPES)
        assert {"contract.created", "milestone.completed", "milestone.overdue", "payment.received",
                "amendment.requested", "amendment.approved", "contract.completed"} <= types
        assert (await c.delete(f"/webhooks/{sid}")).status_code == 204


def test_every_event_the_workflow_emits_can_be_subscribed_to():
    """A new event type in the workflow must be added to EVENT_TYPES (and docs/webhooks.md)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    # The lean engine (journal.emit in its rules and workflow), the frozen legacy one, and the
    # events the notification outbox records itself.
    sources = [p.read_text() for p in [*(root / "workflows").rglob("*.py"), root / "core" / "outbox.py"]]
    source = "\n".join(sources)
    emitted = set(re.findall(r'(?:_emit|emit)\(\s*"([a-z_]+\.[a-z_]+)"', source))
    emitted |= set(re.findall(r'type="([a-z_]+\.[a-z_]+)"', (root / "core" / "outbox.py").read_text()))
    emitted |= {f"amendment.{w}" for w in ("approved", "rejected", "withdrawn")}
    emitted |= {f"contract.{s}" for s in ("completed", "terminated", "expired")}
    kinds = set(re.findall(r'_notify_about\(\s*"([a-z]+)"', source))
    kinds |= set(re.findall(r'notice\(\s*(?:state|s), "([a-z]+)"', source))
    emitted |= {f"notification.{k}" for k in kinds}
    assert len(emitted) > 25
    assert emitted <= set(EVENT_TYPES), sorted(emitted - set(EVENT_TYPES))
    docs = (Path(__file__).resolve().parents[1] / "docs" / "webhooks.md").read_text()
    assert [t for t in EVENT_TYPES if f"`{t}`" not in docs] == []
