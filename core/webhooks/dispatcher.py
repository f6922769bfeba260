"""The webhook dispatcher: delivers ``contract_events`` to subscriptions (transactional outbox).

For each active subscription, events with ``id > cursor`` are taken in id order; those of a type
the subscription wants are POSTed one at a time (so a receiver sees each contract's events in the
order they happened), signed with the subscription's secret.  For every event:

1. *before* sending, its delivery-log row is written (attempts + 1) and the subscription's lease
   renewed, in one transaction;
2. the request is sent (outside any transaction; blocking I/O runs in a thread);
3. the outcome is written and, if final (delivered, or failed for good), the cursor moves past
   the event, in one transaction that only commits while this dispatcher still holds the lease.

A crash between 2 and 3 therefore sends the event again, with the same id (at least once).
Transient failures (5xx, 408/429, timeouts, refused connections) are retried with exponential
back-off (honouring ``Retry-After``) while the subscription waits, so order is kept; after
``webhook_max_attempts`` attempts or ``webhook_retry_window_seconds``, or at once on a permanent
answer (other 4xx, 3xx), the event is recorded ``failed`` and the next one goes.

**Replicas.** A subscription is served by one dispatcher at a time: a *lease* (``lease_owner``,
``lease_until``) taken with a conditional UPDATE, renewed before each attempt, and required by
every write; a dead replica's lease runs out and another one carries on (re-sending what the dead
one may have sent).  This works the same on PostgreSQL and SQLite.

**Commit order.** On PostgreSQL, ids come from a sequence when a row is inserted, but transactions
commit in any order: id 11 can be visible while id 10 is still being written.  Moving the cursor
past 11 would lose 10, so the dispatcher stops at a gap until it is *settled*: every transaction
running when the gap was seen has ended (``pg_current_snapshot``), or, as a fallback (say, a long
unrelated transaction holds the horizon back), ``webhook_gap_grace_seconds`` passed.  Gaps that
never fill (an ``ON CONFLICT DO NOTHING`` retry of the projection burns sequence values) are then
skipped.  SQLite writes one transaction at a time, so ids are visible in order there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
from sqlalchemy import func, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from core.channels import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from core.channels.webhook import post_webhook
from core.settings import Settings
from core.webhooks.events import CONTENT_TYPE, cloud_event, event_id, matches
from models import Contract, ContractEvent, Customer, WebhookDelivery, WebhookSubscription
from models.db import rows_changed

log = logging.getLogger("webhooks")

BATCH = 200  # events read per query
TURN_SECONDS = 20.0  # one subscription's turn before others get the thread back
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
_ERROR_CHARS = 1000


def _now() -> datetime:
    return datetime.now(timezone.utc)


class LeaseLost(Exception):
    """Another dispatcher took the subscription (ours ran out, or it was deactivated/deleted)."""


@dataclass(frozen=True)
class _Event:
    id: int
    contract_id: str
    seq: int | None  # None: recorded by the notification outbox, not the workflow
    type: str
    at: datetime
    actor: str
    data: dict
    contract_external_id: str | None
    customer_external_id: str | None

    @property
    def event_id(self) -> str:
        return event_id(self.contract_id, self.seq, self.id)

    def cloud_event(self) -> dict[str, Any]:
        return cloud_event(
            contract_id=self.contract_id,
            seq=self.seq,
            type=self.type,
            at=self.at,
            actor=self.actor,
            data=self.data,
            contract_external_id=self.contract_external_id,
            customer_external_id=self.customer_external_id,
            row_id=self.id,
        )


class _Gaps:
    """Which missing ids below a visible one may be skipped (see the module docstring)."""

    PROBE_AFTER = 0.1  # seconds between first sight and the snapshot taken as the horizon
    RANGE_CAP = 1000  # a wider hole (sequence jump after a crash) is tracked as one entry
    KEEP = 3600.0

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._seen: dict[int, list] = {}  # id -> [first seen (monotonic), horizon xid or None]
        self._lock = threading.Lock()

    def settled(self, session: Session, lo: int, hi: int) -> tuple[bool, float | None]:
        """Whether ids ``lo..hi`` (absent from the batch) will not appear, so they can be skipped;
        and, if not, in how many seconds a new look is worth it now (None: at the next poll)."""
        postgres = session.get_bind().dialect.name == "postgresql"
        now = time.monotonic()
        keys = range(lo, hi + 1) if hi - lo < self.RANGE_CAP else (lo,)
        with self._lock:
            self._prune(now)
            entries = [self._seen.setdefault(k, [now, None]) for k in keys]
        if all(now - first >= self.grace for first, _ in entries):
            if self._filled(session, lo, hi):
                return False, 0.0
            log.warning("skipping event ids %d..%d: not committed within %.0fs", lo, hi, self.grace)
            return True, None
        if not postgres:
            return False, None
        youngest = max(first for first, _ in entries)
        if now - youngest < self.PROBE_AFTER:
            return False, self.PROBE_AFTER - (now - youngest)
        if any(horizon is None for _, horizon in entries):
            # Every transaction that could hold these ids has an xid below this one by now.
            xmax = int(session.execute(text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")).scalar_one())
            with self._lock:
                for entry in entries:
                    if entry[1] is None:
                        entry[1] = xmax
        xmin = int(session.execute(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")).scalar_one())
        if not all(xmin >= horizon for _, horizon in entries):
            return False, None  # a transaction that may hold one of them is still running
        # Those transactions have ended: what they committed is visible to a new statement now.
        if self._filled(session, lo, hi):
            return False, 0.0
        return True, None

    @staticmethod
    def _filled(session: Session, lo: int, hi: int) -> bool:
        """Whether any id in lo..hi is visible now (then the batch is stale: read it again)."""
        found = session.execute(
            select(ContractEvent.id).where(ContractEvent.id >= lo, ContractEvent.id <= hi).limit(1)
        ).first()
        return found is not None

    def _prune(self, now: float) -> None:
        if len(self._seen) > 10000 or any(now - first > self.KEEP for first, _ in self._seen.values()):
            for k in [k for k, (first, _) in self._seen.items() if now - first > self.KEEP]:
                del self._seen[k]


class WebhookDispatcher:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        *,
        owner: str | None = None,
        post: Callable[..., int] = post_webhook,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._post = post
        self._gaps = _Gaps(settings.webhook_gap_grace_seconds)
        self._stopping = threading.Event()
        self._local = threading.local()  # one HTTP client (connection pool) per thread
        self._clients: list[httpx.Client] = []
        self._clients_lock = threading.Lock()

    def _client(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(timeout=self.settings.webhook_timeout_seconds, follow_redirects=False)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def close(self) -> None:
        """Close the HTTP clients (after the last turn)."""
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()

    # ------------------------------------------------------------------ loop
    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; each due subscription is served in a thread of its own."""
        log.info("webhook dispatcher %s polling every %.1fs", self.owner, self.settings.webhook_poll_seconds)
        inflight: dict[str, asyncio.Task] = {}
        try:
            while not stop.is_set():
                for sid, task in list(inflight.items()):
                    if task.done():
                        del inflight[sid]
                        if not task.cancelled() and task.exception() is not None:
                            log.error("webhook subscription %s: %r", sid, task.exception())
                try:
                    due = await asyncio.to_thread(self.due_subscriptions)
                except Exception:  # noqa: BLE001 - the database may be away; try again next round
                    log.exception("webhook dispatcher could not list subscriptions")
                    due = []
                for sid in due:
                    if sid not in inflight and len(inflight) < max(1, self.settings.webhook_max_parallel):
                        inflight[sid] = asyncio.create_task(asyncio.to_thread(self.serve, sid))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.webhook_poll_seconds)
        finally:
            self._stopping.set()  # in-flight turns end after their current attempt
            if inflight:
                await asyncio.wait(list(inflight.values()), timeout=self.settings.webhook_timeout_seconds + 5)
            self.close()

    def run_once(self) -> int:
        """Serve every due subscription once, here (tests, tools).  Returns the attempts made."""
        return sum(self.serve(sid) for sid in self.due_subscriptions())

    def due_subscriptions(self) -> list[str]:
        now = _now()
        newest = select(func.coalesce(func.max(ContractEvent.id), 0)).scalar_subquery()
        S = WebhookSubscription
        with self.sessions() as session:
            return list(
                session.execute(
                    select(S.id)
                    .where(
                        S.active.is_(True),
                        S.cursor < newest,
                        or_(S.next_attempt_at.is_(None), S.next_attempt_at <= now),
                        or_(S.lease_owner.is_(None), S.lease_owner == self.owner, S.lease_until < now),
                    )
                    .order_by(S.created_at)
                ).scalars()
            )

    # ------------------------------------------------------------------ one subscription
    def serve(self, subscription_id: str) -> int:
        """One turn on one subscription: deliver what is due, in order.  Returns attempts made."""
        if not self._claim(subscription_id):
            return 0
        attempts = 0
        deadline = time.monotonic() + TURN_SECONDS
        try:
            while not self._stopping.is_set() and time.monotonic() < deadline:
                made, more = self._step(subscription_id)
                attempts += made
                if not more:
                    break
        except LeaseLost:
            log.info("webhook subscription %s: lease lost; another dispatcher carries on", subscription_id)
        finally:
            self._release(subscription_id)
        return attempts

    def _claim(self, sid: str) -> bool:
        now = _now()
        S = WebhookSubscription
        with self.sessions.begin() as session:
            claimed = rows_changed(session.execute(
                update(S)
                .where(
                    S.id == sid,
                    S.active.is_(True),
                    or_(S.lease_owner.is_(None), S.lease_owner == self.owner, S.lease_until < now),
                )
                .values(lease_owner=self.owner, lease_until=now + timedelta(seconds=self.settings.webhook_lease_seconds))
                .execution_options(synchronize_session=False)
            ))
        return claimed == 1

    def _release(self, sid: str) -> None:
        S = WebhookSubscription
        try:
            with self.sessions.begin() as session:
                session.execute(
                    update(S)
                    .where(S.id == sid, S.lease_owner == self.owner)
                    .values(lease_owner=None, lease_until=None)
                    .execution_options(synchronize_session=False)
                )
        except Exception:  # noqa: BLE001 - the lease runs out by itself
            log.exception("webhook subscription %s: could not release the lease", sid)

    def _step(self, sid: str) -> tuple[int, bool]:
        """Read a batch past the cursor and work through it.  Returns (attempts, more to do now)."""
        with self.sessions() as session:
            sub = session.get(WebhookSubscription, sid)
            if sub is None or not sub.active or sub.lease_owner != self.owner:
                return 0, False
            if sub.next_attempt_at is not None and sub.next_attempt_at > _now():
                return 0, False
            cursor, patterns = sub.cursor, list(sub.event_types or [])
            rows = session.execute(
                select(
                    ContractEvent.id,
                    ContractEvent.contract_id,
                    ContractEvent.seq,
                    ContractEvent.type,
                    ContractEvent.at,
                    ContractEvent.actor,
                    ContractEvent.data,
                    Contract.external_id,
                    Customer.external_id,
                )
                .outerjoin(Contract, Contract.id == ContractEvent.contract_id)
                .outerjoin(Customer, Customer.id == Contract.customer_id)
                .where(ContractEvent.id > cursor)
                .order_by(ContractEvent.id)
                .limit(BATCH)
            ).all()
            events = [_Event(*row) for row in rows]
            # The deliverable prefix: stop at a hole that may still fill.
            ready: list[_Event] = []
            expected = cursor + 1
            look_again: float | None = None
            for ev in events:
                if ev.id != expected:
                    skip, look_again = self._gaps.settled(session, expected, ev.id - 1)
                    if not skip:
                        break
                ready.append(ev)
                expected = ev.id + 1
        handled = cursor  # the cursor as this dispatcher will leave it
        attempts = 0
        for ev in ready:
            if self._stopping.is_set():
                break
            if not matches(patterns, ev.type):
                handled = ev.id
                continue
            attempts += 1
            final = self._deliver(sid, ev, expected_cursor=cursor, skipped_to=handled)
            if not final:
                return attempts, False  # waiting for a retry; the cursor stays before this event
            cursor = handled = ev.id
        if handled != cursor:
            self._advance(sid, expected_cursor=cursor, to=handled)
        if look_again is not None and len(ready) < len(events):
            time.sleep(look_again)  # a hole is about to be decided (or just filled): look again now
            return attempts, True
        return attempts, len(ready) == BATCH and len(events) == len(ready)

    def _advance(self, sid: str, *, expected_cursor: int, to: int) -> None:
        """Move the cursor over events this subscription does not want."""
        S = WebhookSubscription
        with self.sessions.begin() as session:
            moved = rows_changed(session.execute(
                update(S)
                .where(S.id == sid, S.lease_owner == self.owner, S.cursor == expected_cursor)
                .values(cursor=to)
                .execution_options(synchronize_session=False)
            ))
            if moved != 1:
                raise LeaseLost(sid)

    # ------------------------------------------------------------------ one event
    def _deliver(self, sid: str, ev: _Event, *, expected_cursor: int, skipped_to: int) -> bool:
        """Attempt ``ev`` once.  True when its outcome is final (the cursor moved past it)."""
        settings = self.settings
        S, D = WebhookSubscription, WebhookDelivery
        now = _now()
        # 1. Record the attempt (and renew the lease) before anything leaves.
        with self.sessions.begin() as session:
            renewed = rows_changed(session.execute(
                update(S)
                .where(S.id == sid, S.lease_owner == self.owner, S.active.is_(True), S.cursor == expected_cursor)
                .values(lease_until=now + timedelta(seconds=settings.webhook_lease_seconds))
                .execution_options(synchronize_session=False)
            ))
            if renewed != 1:
                raise LeaseLost(sid)
            sub = session.get(S, sid)
            if sub is None:  # deleted since the lease was renewed
                raise LeaseLost(sid)
            url, secret = sub.url, sub.secret
            delivery = session.execute(
                select(D).where(D.subscription_id == sid, D.event_id == ev.event_id)
            ).scalar_one_or_none()
            if delivery is None:
                delivery = D(
                    subscription_id=sid,
                    event_id=ev.event_id,
                    event_row_id=ev.id,
                    contract_id=ev.contract_id,
                    seq=ev.seq or 0,
                    event_type=ev.type,
                    status=PENDING,
                    attempts=0,
                    first_attempt_at=now,
                    last_attempt_at=now,
                )
                session.add(delivery)
            delivery.status = PENDING
            delivery.attempts += 1
            delivery.last_attempt_at = now
            delivery.next_attempt_at = None
            attempt, first_attempt_at = delivery.attempts, delivery.first_attempt_at

        # 2. Send.
        started = time.monotonic()
        status_code: int | None = None
        error: DeliveryError | None = None
        try:
            status_code = self._post(
                settings, url, secret, ev.cloud_event(), event_id=ev.event_id, content_type=CONTENT_TYPE,
                client=self._client(),
            )
        except DeliveryError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - unforeseen: retried like a transient error, bounded
            error = TransientDeliveryError(f"webhook delivery raised {exc!r}")
        elapsed_ms = int((time.monotonic() - started) * 1000)

        # 3. Record the outcome; move the cursor if it is final.
        done = _now()
        retry_at: datetime | None = None
        if error is None:
            outcome = DELIVERED
        elif isinstance(error, PermanentDeliveryError):
            outcome = FAILED
        else:
            delay = min(
                settings.webhook_retry_initial_seconds * (2 ** (attempt - 1)),
                settings.webhook_retry_max_interval_seconds,
            )
            if error.retry_after is not None:
                delay = min(max(delay, error.retry_after), settings.webhook_retry_max_interval_seconds)
            retry_at = done + timedelta(seconds=delay)
            exhausted = attempt >= settings.webhook_max_attempts or (
                retry_at - first_attempt_at
            ).total_seconds() > settings.webhook_retry_window_seconds
            outcome = FAILED if exhausted else PENDING
            if exhausted:
                retry_at = None
        message = None if error is None else str(error)[:_ERROR_CHARS]
        code = status_code if error is None else error.code
        with self.sessions.begin() as session:
            values: dict[str, Any] = {}
            if outcome == PENDING:
                values.update(cursor=skipped_to, next_attempt_at=retry_at, last_error=message)
            elif outcome == DELIVERED:
                values.update(cursor=ev.id, next_attempt_at=None, consecutive_failures=0, last_delivered_at=done)
            else:
                values.update(
                    cursor=ev.id,
                    next_attempt_at=None,
                    consecutive_failures=S.consecutive_failures + 1,
                    last_failed_at=done,
                    last_error=message,
                )
            moved = rows_changed(session.execute(
                update(S)
                .where(S.id == sid, S.lease_owner == self.owner, S.cursor == expected_cursor)
                .values(**values)
                .execution_options(synchronize_session=False)
            ))
            if moved != 1:
                session.rollback()
                raise LeaseLost(sid)
            session.execute(
                update(D)
                .where(D.subscription_id == sid, D.event_id == ev.event_id)
                .values(
                    status=outcome,
                    response_status=code,
                    error=message,
                    next_attempt_at=retry_at,
                    delivered_at=done if outcome == DELIVERED else None,
                    extra={"duration_ms": elapsed_ms},
                )
                .execution_options(synchronize_session=False)
            )
        if outcome == DELIVERED:
            log.debug("webhook %s: %s %s delivered (%s)", sid, ev.type, ev.event_id, code)
        elif outcome == FAILED:
            log.warning("webhook %s: %s %s failed after %d attempt(s): %s", sid, ev.type, ev.event_id, attempt, message)
        else:
            log.info("webhook %s: %s %s attempt %d: %s; retry at %s", sid, ev.type, ev.event_id, attempt, message,
                     retry_at.isoformat() if retry_at else None)
        return outcome != PENDING


@contextlib.asynccontextmanager
async def running_dispatcher(sessions: sessionmaker[Session], settings: Settings) -> AsyncIterator[WebhookDispatcher | None]:
    """Run the dispatcher as a task of the current event loop for the duration of the block."""
    if not settings.webhook_dispatch_enabled:
        yield None
        return
    dispatcher = WebhookDispatcher(sessions, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop), name="webhook-dispatcher")
    try:
        yield dispatcher
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
