"""``Idempotency-Key`` on POST and PATCH: a retried request runs once and gets the first answer.

Semantics (after the IETF draft "The Idempotency-Key HTTP Header Field"):

* The key is optional: 1 to 255 visible ASCII characters (``!`` to ``~``).  Anything else is
  refused with a 422 problem, and so is the header sent twice.
* A key is scoped to the method and path: the same key on another route is another key.
* First request with a key: it runs, and its answer (status, headers such as ``content-type`` and
  ``location``, body) is stored under the key with a fingerprint of the request (query string and
  body; a JSON body is compared after canonicalisation, so key order and spacing do not matter).
* The same key and the same request again: the stored answer, with ``Idempotent-Replayed: true``;
  nothing runs.
* The same key with another request: 422 ``/problems/idempotency-key-reused`` (the draft's choice:
  the client reused a key for a different payload; retrying cannot help), nothing runs.
* The same key while the first request is still running: the second waits for the first (up to
  ``IDEMPOTENCY_WAIT_SECONDS``) and gets its stored answer; after that 409
  ``/problems/idempotency-key-in-progress`` with ``Retry-After`` (the draft's choice for a
  concurrent request; retrying later is the right move).  Either way it runs once.
* What is stored: the first answer whatever it is (2xx, and 4xx too: the same request would be
  refused the same way), except 5xx: a server error releases the key, so a retry runs again.
* Races are settled by the table's unique constraint (``INSERT ... ON CONFLICT DO NOTHING``): one
  request wins the key (``in_progress``), the others find its row.  The winner renews its lock while
  it runs; a row whose process died is taken over once ``locked_until`` has passed
  (``IDEMPOTENCY_LOCK_SECONDS``).  Keys are forgotten after ``IDEMPOTENCY_TTL_SECONDS`` (24 h).

A pure ASGI middleware: it needs the raw body before the route and the whole answer after it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from api.platform.database import in_thread
from api.platform.problems import database_unavailable, problem_response
from models.db import rows_changed
from models.idempotency import DONE, IN_PROGRESS, IdempotencyKey

log = logging.getLogger("api.idempotency")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
METHODS = frozenset({"POST", "PATCH"})
MAX_KEY_LENGTH = 255
KEY_PATTERN = r"^[!-~]{1,255}$"
_KEY_RE = re.compile(KEY_PATTERN)
# Not replayed: they describe the original connection, not the answer.
_NOT_STORED = frozenset({b"date", b"server", b"content-length", b"transfer-encoding", b"connection", b"keep-alive",
                         b"set-cookie"})
_PURGE_EVERY_SECONDS = 600.0

HEADER_DESCRIPTION = (
    "Optional. A unique key (1-255 visible ASCII characters, e.g. a UUID) that makes a retry of this "
    "request safe: the same key with the same request runs once and answers the stored response again "
    "(with `Idempotent-Replayed: true`); the same key with a different request is refused (422); while "
    "the first request with the key is still running, a second one waits for it, or gets 409. Keys are "
    "scoped to the method and path and remembered for 24 hours. 5xx answers are not stored."
)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def fingerprint(query_string: bytes, body: bytes) -> str:
    """SHA-256 of the request: query string and body; a JSON body in canonical form."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        payload = b"json:" + canonical.encode("utf-8", "surrogatepass")
    except ValueError:  # not JSON (or not UTF-8): the bytes as sent
        payload = b"raw:" + body
    return hashlib.sha256(query_string + b"\n" + payload).hexdigest()


def scope_of(method: str, path: str, caller: str = "") -> str:
    # Keys are the caller's own: another caller sending the same key never sees this one's answer.
    return hashlib.sha256(f"{caller} {method} {path}".encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class Stored:
    status: int
    headers: list[list[str]]
    body: bytes


@dataclass
class Claim:
    """What to do with a request: ``run`` it (holding ``token``), ``replay`` ``stored``, refuse a
    ``mismatch``, or ``wait`` for the request holding the key."""

    action: str
    row_id: int | None = None
    token: str | None = None
    stored: Stored | None = None


class KeyStore:
    """The ``idempotency_keys`` table: claim, renew, complete, release.  Synchronous; run in a thread."""

    def __init__(self, sessions: sessionmaker[Session], *, ttl: float, lock: float) -> None:
        self.sessions = sessions
        self.ttl = timedelta(seconds=ttl)
        self.lock = timedelta(seconds=lock)

    def claim(self, *, scope: str, key: str, method: str, path: str, request_hash: str) -> Claim:
        for _ in range(5):  # a row can vanish or change between our statements; look again
            now = _now()
            token = uuid.uuid4().hex
            fresh = dict(request_hash=request_hash, status=IN_PROGRESS, lock_token=token, response_status=None,
                         response_headers=None, response_body=None, created_at=now, locked_until=now + self.lock,
                         completed_at=None, expires_at=now + self.ttl)
            with self.sessions.begin() as session:
                dialect = session.get_bind().dialect.name
                insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
                stmt = (insert(IdempotencyKey)
                        .values(scope=scope, key=key, method=method, path=path[:2000], **fresh)
                        .on_conflict_do_nothing(index_elements=["scope", "key"]))
                if (rows_changed(session.execute(stmt)) or 0) == 1:
                    row_id = session.execute(
                        select(IdempotencyKey.id).where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
                    ).scalar_one()
                    return Claim("run", row_id=row_id, token=token)
            with self.sessions.begin() as session:
                row = session.execute(
                    select(IdempotencyKey).where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
                ).scalar_one_or_none()
                if row is None:
                    continue  # released (a 5xx) or purged in between: try to insert again
                if row.expires_at <= now:
                    # Forgotten: the key starts afresh, whatever the old request was.
                    taken = rows_changed(session.execute(
                        update(IdempotencyKey)
                        .where(IdempotencyKey.id == row.id, IdempotencyKey.expires_at == row.expires_at)
                        .values(**fresh)
                    ))
                    if taken == 1:
                        return Claim("run", row_id=row.id, token=token)
                    continue
                if row.request_hash != request_hash:
                    return Claim("mismatch", row_id=row.id)
                if row.status == DONE:
                    return Claim("replay", row_id=row.id, stored=Stored(
                        row.response_status or 200, list(row.response_headers or []), row.response_body or b""))
                if row.locked_until <= now:
                    # The request holding the key stopped renewing it (its process died): take over.
                    taken = rows_changed(session.execute(
                        update(IdempotencyKey)
                        .where(IdempotencyKey.id == row.id, IdempotencyKey.status == IN_PROGRESS,
                               IdempotencyKey.lock_token == row.lock_token)
                        .values(lock_token=token, locked_until=now + self.lock)
                    ))
                    if taken == 1:
                        log.warning("idempotency key %r on %s %s: taking over a request that stopped", key, method, path)
                        return Claim("run", row_id=row.id, token=token)
                    continue
                return Claim("wait", row_id=row.id)
        return Claim("wait")

    def renew(self, row_id: int, token: str) -> None:
        with self.sessions.begin() as session:
            session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.id == row_id, IdempotencyKey.lock_token == token)
                .values(locked_until=_now() + self.lock)
            )

    def complete(self, row_id: int, token: str, stored: Stored) -> None:
        with self.sessions.begin() as session:
            session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.id == row_id, IdempotencyKey.lock_token == token)
                .values(status=DONE, lock_token=None, response_status=stored.status, response_headers=stored.headers,
                        response_body=stored.body, completed_at=_now())
            )

    def release(self, row_id: int, token: str) -> None:
        with self.sessions.begin() as session:
            session.execute(
                delete(IdempotencyKey).where(IdempotencyKey.id == row_id, IdempotencyKey.lock_token == token)
            )

    def purge_expired(self) -> int:
        now = _now()
        with self.sessions.begin() as session:
            return rows_changed(session.execute(
                delete(IdempotencyKey).where(IdempotencyKey.expires_at < now, IdempotencyKey.locked_until < now)
            )) or 0


@dataclass
class _Captured:
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))


def _problem(status: int, detail: str, path: str, *, slug: str, headers: dict[str, str] | None = None, **extra: Any):
    response = problem_response(status, detail, path, slug=slug, **extra)
    if headers:
        response.headers.update(headers)
    return response


class IdempotencyMiddleware:
    def __init__(self, app) -> None:
        self.app = app
        self._next_purge = 0.0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in METHODS:
            await self.app(scope, receive, send)
            return
        values = [v for k, v in scope["headers"] if k == b"idempotency-key"]
        if not values:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        key = values[0].decode("latin-1").strip()
        if len(values) > 1 or not _KEY_RE.match(key):
            why = (f"send one {HEADER} header" if len(values) > 1
                   else f"{HEADER} must be 1 to {MAX_KEY_LENGTH} visible ASCII characters (no spaces)")
            await _problem(422, f"header.{HEADER}: {why}", path, slug="validation",
                           errors=[{"field": f"header.{HEADER}", "message": why}])(scope, receive, send)
            return

        received = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its request
            received += message.get("body", b"")
            if not message.get("more_body", False):
                break
        body = bytes(received)

        app = scope["app"]
        settings = app.state.settings
        store = KeyStore(app.state.sessions, ttl=settings.idempotency_ttl_seconds,
                         lock=settings.idempotency_lock_seconds)
        method = scope["method"]
        principal = scope.get("state", {}).get("principal")
        caller = principal.id if principal is not None else ""
        args = dict(scope=scope_of(method, path, caller), key=key, method=method, path=path,
                    request_hash=fingerprint(scope.get("query_string", b""), body))

        deadline = time.monotonic() + settings.idempotency_wait_seconds
        pause = 0.05
        while True:
            try:
                claim = await in_thread(settings.database_call_seconds, store.claim, **args)
            except (DBAPIError, PoolTimeoutError) as exc:
                if not database_unavailable(exc):
                    raise  # a bug, not an outage: the 500 handler logs it
                log.warning("idempotency key store unavailable: %s", exc.__class__.__name__)
                await _problem(503, "the database is unavailable; the request was not run. Retry with the same "
                               f"{HEADER}.", path, slug="database-unavailable",
                               headers={"Retry-After": "5"})(scope, receive, send)
                return
            if claim.action != "wait" or time.monotonic() >= deadline:
                break
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

        if claim.action == "replay" and claim.stored is not None:
            stored = claim.stored
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in stored.headers]
            headers += [(b"content-length", str(len(stored.body)).encode()), (REPLAYED_HEADER.lower().encode(), b"true")]
            await send({"type": "http.response.start", "status": stored.status, "headers": headers})
            await send({"type": "http.response.body", "body": stored.body})
            return
        if claim.action == "mismatch":
            await _problem(422, f"the {HEADER} {key!r} was already used for a different request to {method} {path}; "
                           "use a new key for a new request", path, slug="idempotency-key-reused")(scope, receive, send)
            return
        if claim.action == "wait":
            await _problem(409, f"a request with the {HEADER} {key!r} is still in progress; retry shortly to get "
                           "its answer", path, slug="idempotency-key-in-progress",
                           headers={"Retry-After": "1"})(scope, receive, send)
            return

        await self._run(scope, receive, send, store, claim, body)

    async def _run(self, scope, receive, send, store: KeyStore, claim: Claim, body: bytes) -> None:
        replayed_body = False

        async def receive_body() -> dict[str, Any]:
            nonlocal replayed_body
            if not replayed_body:
                replayed_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        captured = _Captured()
        renewing = asyncio.create_task(self._renew_forever(store, claim))
        try:
            await self.app(scope, receive_body, captured.send)
        except BaseException:
            renewing.cancel()
            await self._quietly(store.release, claim.row_id, claim.token)
            raise
        renewing.cancel()

        answer = b"".join(captured.chunks)
        if captured.status is None or captured.status >= 500:
            await self._quietly(store.release, claim.row_id, claim.token)  # a retry runs again
        else:
            stored = Stored(captured.status, [[k.decode("latin-1"), v.decode("latin-1")]
                                              for k, v in captured.headers if k.lower() not in _NOT_STORED], answer)
            await self._quietly(store.complete, claim.row_id, claim.token, stored)
        if captured.status is not None:
            await send({"type": "http.response.start", "status": captured.status, "headers": captured.headers})
            await send({"type": "http.response.body", "body": answer})
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + _PURGE_EVERY_SECONDS
            await self._quietly(store.purge_expired)

    @staticmethod
    async def _renew_forever(store: KeyStore, claim: Claim) -> None:
        every = max(0.5, store.lock.total_seconds() / 3)
        while True:
            await asyncio.sleep(every)
            await IdempotencyMiddleware._quietly(store.renew, claim.row_id, claim.token)

    @staticmethod
    async def _quietly(fn, *args) -> None:
        try:
            await asyncio.to_thread(fn, *args)
        except Exception:  # noqa: BLE001 - the answer still goes out; an unreleased key expires
            log.exception("idempotency key store: %s failed", fn.__name__)


def install(app) -> None:
    app.add_middleware(IdempotencyMiddleware)
