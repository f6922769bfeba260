"""The notification outbox's dispatcher: sends each notice a contract decided, at its time, once.

Contracts plan their reminders and decide their notices; the projection writes them to
``notification_outbox`` in the same transaction as the read model (models/outbox.py).  A
dispatcher runs in every worker process.  Each round it claims the notices whose ``send_at`` has
come, in due order:

1. the claim (a lease: ``lease_owner``, ``lease_until``, attempts + 1) is one conditional UPDATE,
   so two dispatchers never hold the same notice (``FOR UPDATE SKIP LOCKED`` on PostgreSQL;
   SQLite writes one transaction at a time);
2. the notice goes to its recipients through the same code as the ``notify`` activity
   (activities/notify.py ``deliver``), which records each (recipient, channel) before sending, so
   a dispatcher that dies mid-way and a successor that re-sends skip what was recorded sent (one
   that died between the server's acceptance and that record sends it again, under the same
   Message-ID and key: no SMTP exchange can close that window);
3. the row is marked ``sent`` (and a reminder logged as a ``notification.reminder`` contract event
   without a workflow seq), only while this dispatcher still holds the lease.

A reminder is *taken* as it is claimed (``told_at``, in the claim's transaction, serialised per
item), unless it is a copy of one already taken: same item, offset and level, and either planned
at the same contract version or due within ``outbox_same_reminder_within_seconds`` (and within its
offset) of it.  A copy is cancelled instead of sent.  Why: the projection writes plans from a local
activity, inside the workflow task that made them.  A worker that dies after that write but
before the server recorded the task leaves the task to run again later, on a later clock; an item
dated from a completion in that task (the deposit due 7 days after order review) gets a due date
a few seconds on, so its catch-up reminder, due at once, is planned again under another key.  The
rerun's plan cancels the first copy if it is still pending, but not if a dispatcher already sent
it: this check is what keeps that to one message.

A transient failure (SMTP 4xx, a timeout) releases the notice with a back-off; after
``outbox_max_attempts`` it is ``failed`` and the operator gets a task.  A cancelled notice (its
plan changed) is never claimed.  The projection wakes the dispatcher of its own process when it
queues something due now; otherwise it looks every ``outbox_poll_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from core import org
from core.channels import TransientDeliveryError
from core.durations import to_timedelta
from core.serde import from_jsonable
from core.settings import Settings
from models import ContractEvent, OutboxNotice
from models.db import rows_changed
from models.outbox import CANCELLED, FAILED, PENDING, SENT
from models.types import UTCDateTime
from workflows.types import NotifyRequest

log = logging.getLogger("outbox")

Clock = Callable[[], Awaitable[datetime]]


async def wall_clock() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Claimed:
    id: int
    key: str
    contract_id: str
    kind: str
    attempts: int
    request: dict[str, Any]


class OutboxDispatcher:
    def __init__(self, sessions: sessionmaker[Session], settings: Settings,
                 deliver: Callable[[NotifyRequest], dict[str, int]], clock: Clock = wall_clock) -> None:
        self._sessions = sessions
        self._engine = sessions.kw["bind"]  # the hot path's statements go straight on a connection
        self._settings = settings
        self._deliver = deliver
        self._clock = clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"[:80]
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots = asyncio.Semaphore(max(1, settings.outbox_parallel))
        self._window = timedelta(seconds=settings.outbox_same_reminder_within_seconds)
        self.sent = 0

    def wake(self) -> None:
        """Look now (thread-safe: the projection activity calls it from its thread)."""
        loop, event = self._loop, self._event
        if loop is not None and event is not None:
            loop.call_soon_threadsafe(event.set)

    async def run(self, stop: asyncio.Event) -> None:
        self._loop, self._event = asyncio.get_running_loop(), asyncio.Event()
        while not stop.is_set():
            self._event.clear()  # before looking: a wake during the round is not lost
            try:
                now = await self._clock()
                claimed = await asyncio.to_thread(self._claim, now)
            except Exception:  # noqa: BLE001 - the database may be away: try again next round
                log.exception("outbox: claiming failed; trying again")
                claimed = []
            if claimed:
                await asyncio.gather(*(self._send(c, now) for c in claimed), return_exceptions=True)
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(_first(self._event, stop), timeout=self._settings.outbox_poll_seconds)

    # ---------------------------------------------------------------- claim
    def _claim(self, now: datetime) -> list[Claimed]:
        """Statements built once per dialect (``_statements``), run straight on a connection: the
        ORM adds nothing to two statements on one table, and building them each round cost more
        than running them.  The reminders claimed are taken in the same transaction."""
        st = _statements(self._engine.dialect.name, self._settings.outbox_batch)
        until = now + timedelta(seconds=self._settings.outbox_lease_seconds)
        with self._engine.begin() as conn:
            ids = list(conn.execute(st.due, {"now": now}).scalars())
            if not ids:
                return []
            rows = conn.execute(st.claim, {"ids": ids, "now": now, "owner": self.owner, "until": until}).all()
            claimed = sorted(rows, key=lambda r: ids.index(r.id))
            twins = self._take_reminders(conn, [r for r in claimed if r.kind == "reminder"], now)
        return [Claimed(*r[:6]) for r in claimed if r.id not in twins]

    def _take_reminders(self, conn: Connection, rows: list[Any], now: datetime) -> set[int]:
        """Take the claimed reminders for delivery (``told_at``), but a copy of one already taken
        under another key: those are cancelled, and their ids returned.  In the claim's
        transaction, one at a time per item: SQLite's claim holds its one write lock; PostgreSQL
        takes an advisory lock per item, so two dispatchers holding both copies see each other."""
        if not rows:
            return set()
        o = OutboxNotice
        items = sorted({(r.contract_id, r.request.get("item_type"), r.request.get("item_key")) for r in rows})
        if conn.dialect.name == "postgresql":
            for item in items:  # taken in order, so two dispatchers never deadlock on them
                conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(":".join(map(str, item))))))
        mine = {r.id for r in rows}
        taken: dict[tuple[Any, ...], list[tuple[str, dict[str, Any]]]] = {}
        for key, cid, item_type, item_key, request in conn.execute(
                select(o.key, o.contract_id, o.item_type, o.item_key, o.request).where(
                    o.contract_id.in_({i[0] for i in items}), o.kind == "reminder", o.told_at.is_not(None),
                    o.status != FAILED, o.id.not_in(mine))):
            taken.setdefault((cid, item_type, item_key), []).append((key, request))
        twins: set[int] = set()
        newly_taken: list[int] = []
        for r in sorted(rows, key=lambda r: r.told_at is None):  # those taken before (a retry) first
            item = (r.contract_id, r.request.get("item_type"), r.request.get("item_key"))
            twin = next((key for key, other in taken.get(item, []) if _same_reminder(r.request, other, self._window)),
                        None)
            if twin is None:
                taken.setdefault(item, []).append((r.key, r.request))
                if r.told_at is None:
                    newly_taken.append(r.id)
                continue
            twins.add(r.id)
            log.info("outbox: reminder %s is the one already sent as %s; not sent again", r.key, twin)
            conn.execute(update(o).where(o.id == r.id).values(
                status=CANCELLED, done_at=_now(), lease_owner=None, lease_until=None,
                error=f"the same reminder went out as {twin}"[:2000]))
        if newly_taken:
            conn.execute(update(o).where(o.id.in_(newly_taken)).values(told_at=now))
        return twins

    # ---------------------------------------------------------------- send
    async def _send(self, c: Claimed, now: datetime) -> None:
        async with self._slots:
            try:
                request = from_jsonable(NotifyRequest, c.request)
                counts = await asyncio.to_thread(self._deliver_current, request)
            except TransientDeliveryError as exc:
                await self._settle(self._retry_later, c, now, str(exc))
                return
            except Exception as exc:  # noqa: BLE001 - a bug or the database: retried like a transient failure
                log.exception("outbox: notice %s failed", c.key)
                await self._settle(self._retry_later, c, now, f"{exc.__class__.__name__}: {exc}")
                return
            await self._settle(self._mark_sent, c, request, counts, now)

    async def _settle(self, write: Callable[..., None], *args: Any) -> None:
        """Record an outcome; if the database refuses (it is away), the claim runs out and the
        notice is taken again later: its deliveries already recorded are not sent twice."""
        try:
            await asyncio.to_thread(write, *args)
        except Exception:  # noqa: BLE001 - the dispatcher must outlive a database outage
            log.warning("outbox: could not record the outcome of %s; it will be taken again", args[0].key,
                        exc_info=True)

    def _deliver_current(self, request: NotifyRequest) -> dict[str, int]:
        """Deliver, saying what an installment still owes as the reminder goes out (the plan was
        made when its date was set; payments may have come since)."""
        if request.item_type == "installment" and request.amount is not None:
            from models import Installment

            with self._sessions() as session:
                owed = session.execute(select(Installment.amount - Installment.paid).where(
                    Installment.contract_id == request.contract_id, Installment.key == request.item_key)
                ).scalar_one_or_none()
            if owed is not None:
                places = max(0, -Decimal(request.amount).as_tuple().exponent)  # type: ignore[operator]
                request = replace(request, amount=str(Decimal(owed).quantize(Decimal(1).scaleb(-places))))
        return self._deliver(request)

    def _mark_sent(self, c: Claimed, request: NotifyRequest, counts: dict[str, int], now: datetime) -> None:
        st = _statements(self._engine.dialect.name, self._settings.outbox_batch)
        with self._engine.begin() as conn:
            done = conn.execute(st.mark_sent, {"nid": c.id, "owner": self.owner, "done_at": _now()}).rowcount
            if done and c.kind == "reminder":
                # Logged like the workflow's own events, under the notice's key instead of a seq.
                conn.execute(st.log_reminder, {
                    "contract_id": c.contract_id, "seq": None, "key": c.key, "type": "notification.reminder",
                    "at": now, "actor": "system",
                    "data": {"item_type": request.item_type, "key": request.item_key, "level": request.level,
                             "to": request.to, "cc": request.cc, "tag": request.tag, "sent": counts.get("sent", 0)}})
        if done:
            self.sent += 1

    def _retry_later(self, c: Claimed, now: datetime, error: str) -> None:
        o, s = OutboxNotice, self._settings
        with self._sessions.begin() as session:
            if c.attempts >= s.outbox_max_attempts:
                done = rows_changed(session.execute(update(o).where(o.id == c.id, o.lease_owner == self.owner).values(
                    status=FAILED, done_at=_now(), lease_owner=None, lease_until=None, error=error[:2000])))
                if done:
                    org.open_task(session, key=f"outbox-failed:{c.key}"[:300], contract_id=c.contract_id,
                                  milestone_key=None, assignee=s.operator_user,
                                  title=f"Notice not delivered after {c.attempts} attempts: {c.key}"[:300],
                                  body=f"{error}\n\noutbox notice {c.key}")
                log.warning("outbox: notice %s failed for good after %d attempts: %s", c.key, c.attempts, error)
                return
            delay = min(s.outbox_retry_max_interval_seconds, s.outbox_retry_initial_seconds * 2 ** (c.attempts - 1))
            session.execute(update(o).where(o.id == c.id, o.lease_owner == self.owner).values(
                next_attempt_at=now + timedelta(seconds=delay), lease_owner=None, lease_until=None,
                error=error[:2000]))


@dataclass(frozen=True)
class _Statements:
    due: Any
    claim: Any
    mark_sent: Any
    log_reminder: Any


@functools.cache
def _statements(dialect: str, batch: int) -> _Statements:
    """The claim and the ``sent`` mark, as ``_claim`` and ``_mark_sent`` used to build them each
    time (same SQL), with their values as bound parameters."""
    table, events = cast(Table, OutboxNotice.__table__), cast(Table, ContractEvent.__table__)
    o = table.c
    now = bindparam("now", type_=UTCDateTime())
    free = [o.status == PENDING, o.send_at <= now, or_(o.next_attempt_at.is_(None), o.next_attempt_at <= now),
            or_(o.lease_until.is_(None), o.lease_until < now)]
    due = select(o.id).where(*free).order_by(o.send_at, o.id).limit(batch)
    if dialect == "postgresql":
        due = due.with_for_update(skip_locked=True)
    claim = (update(table).where(o.id.in_(bindparam("ids", expanding=True)), *free)
             .values(lease_owner=bindparam("owner"), lease_until=bindparam("until", type_=UTCDateTime()),
                     attempts=o.attempts + 1)
             .returning(o.id, o.key, o.contract_id, o.kind, o.attempts, o.request, o.told_at))
    mark_sent = (update(table).where(o.id == bindparam("nid"), o.lease_owner == bindparam("owner"))
                 .values(status=SENT, done_at=bindparam("done_at", type_=UTCDateTime()), lease_owner=None,
                         lease_until=None, error=None))
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    log_reminder = insert(events).on_conflict_do_nothing(index_elements=["key"])
    return _Statements(due, claim, mark_sent, log_reminder)


def _same_reminder(one: dict[str, Any], other: dict[str, Any], window: timedelta) -> bool:
    """Two outbox requests are the same reminder: same offset (tag) and level, and either planned
    at the same contract version (a task run again plans at the version it planned at before,
    whatever its clock), or for due dates closer than ``window`` and than the offset itself (a
    "10 seconds before" reminder in a demo is not merged with one for a date a minute later)."""
    if other.get("tag") != one.get("tag") or other.get("level") != one.get("level"):
        return False
    if one.get("planned_at_version") and one.get("planned_at_version") == other.get("planned_at_version"):
        return True
    a, b = one.get("due_at"), other.get("due_at")
    if a is None or b is None:
        return a is None and b is None
    with contextlib.suppress(ValueError):  # a tag that is not an offset: the window alone
        window = min(window, to_timedelta(str(one.get("tag", "")).removeprefix("-")))
    return abs(datetime.fromisoformat(a) - datetime.fromisoformat(b)) < window


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _now() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------- the time-skipping server
def due_now(sessions: sessionmaker[Session], now: datetime) -> int:
    """How many notices are waiting to be sent as of ``now``."""
    from sqlalchemy import func

    o = OutboxNotice
    with sessions() as session:
        return session.execute(select(func.count()).select_from(o).where(
            o.status == PENDING, o.send_at <= now, or_(o.next_attempt_at.is_(None), o.next_attempt_at <= now),
        )).scalar_one()


def next_send_at(sessions: sessionmaker[Session], after: datetime, until: datetime) -> datetime | None:
    from sqlalchemy import func

    o = OutboxNotice
    with sessions() as session:
        return session.execute(select(func.min(o.send_at)).where(
            o.status == PENDING, o.send_at > after, o.send_at <= until)).scalar_one()


async def advance_sending(env: Any, when: datetime, sessions: sessionmaker[Session], timeout: float = 15.0) -> None:
    """Move a time-skipping test server's clock to ``when`` as real time passes for the outbox:
    stop at each queued notice's time and let the dispatcher send it.  Reminders do not wake the
    contract, so one big skip would otherwise send them all at its end (or, if the item is resolved
    right after the skip, not at all).  For tests and benchmarks."""
    async def drained() -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while due_now(sessions, await env.get_current_time()):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("the notification outbox did not send what was due")
            await asyncio.sleep(0.05)

    while True:
        now = await env.get_current_time()
        await drained()
        nxt = next_send_at(sessions, now, when)
        if nxt is None:
            break
        await env.sleep(nxt - now)
    now = await env.get_current_time()
    if when > now:
        await env.sleep(when - now)
    await drained()


@contextlib.asynccontextmanager
async def running_outbox(sessions: sessionmaker[Session], settings: Settings,
                         deliver: Callable[[NotifyRequest], dict[str, int]],
                         clock: Clock = wall_clock) -> AsyncIterator[OutboxDispatcher | None]:
    """Run the dispatcher as a task of the current event loop for the duration of the block."""
    if not settings.outbox_dispatch_enabled:
        yield None
        return
    dispatcher = OutboxDispatcher(sessions, settings, deliver, clock)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop), name="outbox-dispatcher")
    try:
        yield dispatcher
    finally:
        stop.set()
        dispatcher.wake()
        with contextlib.suppress(asyncio.CancelledError):
            await task
