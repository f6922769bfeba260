"""Every write the test suite makes leaves exactly one audit entry (issue #5: the audit trail).

``WriteRecorder.wrap`` wraps the app served by a test service: it notes every request (its
``X-Request-ID``, adding one when the client sent none, so each request can be matched to its
entry), method, path, answer and whether it was an Idempotency-Key replay.  ``check`` runs when the
service stops and reads ``audit_log``:

  * a successful (2xx) write, not a replay and not a public one (login), has one entry with its
    request id;
  * a write that failed has at most one (it changed nothing, or it changed the database before
    failing: a contract recorded while Temporal was down);
  * no entry lacks a request: a read (GET) or an unknown request id has none;
  * the entry names the caller the service authenticated (its ``actor``).

Requests sharing an ``X-Request-ID`` are counted together.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass

from sqlalchemy import text

from api.auth.middleware import is_public
from api.platform.audit import WRITE_METHODS
from models.db import make_engine


@dataclass
class Served:
    request_id: str
    method: str
    path: str
    status: int | None = None
    replayed: bool = False
    actor: str | None = None  # who the service authenticated (AuthMiddleware's principal)


class WriteRecorder:
    def __init__(self) -> None:
        self.served: list[Served] = []

    def wrap(self, app):
        async def recorded(scope, receive, send):
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            headers = list(scope["headers"])
            given = [v for k, v in headers if k.lower() == b"x-request-id"]
            if given and given[0]:
                request_id = given[0].decode("latin-1")
            else:
                request_id = "rec-" + uuid.uuid4().hex
                headers = [(k, v) for k, v in headers if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                scope = dict(scope, headers=headers)
            note = Served(request_id[:64], scope["method"], scope["path"])
            self.served.append(note)

            async def noting(message):
                if message["type"] == "http.response.start":
                    note.status = message["status"]
                    note.replayed = any(k.lower() == b"idempotent-replayed" for k, _v in message.get("headers", []))
                await send(message)

            try:
                await app(scope, receive, noting)
            finally:
                principal = scope.get("state", {}).get("principal")
                note.actor = principal.id if principal is not None else None

        return recorded

    def problems(self, database_url: str) -> list[str]:
        engine = make_engine(database_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT request_id, action, actor FROM audit_log")).all()
        finally:
            engine.dispose()
        entries = Counter(r[0] for r in rows)
        actions: dict[str, list[str]] = {}
        actors: dict[str, set[str]] = {}
        for rid, action, actor in rows:
            actions.setdefault(rid, []).append(action)
            actors.setdefault(rid, set()).add(actor)
        ok: Counter = Counter()
        failed: Counter = Counter()
        what: dict[str, str] = {}
        for s in self.served:
            what.setdefault(s.request_id, f"{s.method} {s.path} -> {s.status}")
            if s.method not in WRITE_METHODS or is_public(s.path):
                continue
            if s.status is not None and 200 <= s.status < 300 and not s.replayed:
                ok[s.request_id] += 1
            else:
                failed[s.request_id] += 1
        found = []
        for s in self.served:
            if ok[s.request_id] and s.actor is not None and actors.get(s.request_id, {s.actor}) != {s.actor}:
                found.append(f"{what[s.request_id]} (request {s.request_id}): audit actor "
                             f"{sorted(actors[s.request_id])}, the caller was {s.actor}")
        for rid in sorted(set(ok) | set(entries)):
            n, want = entries[rid], ok[rid]
            if n < want:
                found.append(f"{what[rid]} (request {rid}): {n} audit entries, expected {want}")
            elif n > want + failed[rid]:
                found.append(f"{what.get(rid, 'no such request')} (request {rid}): {n} audit entries "
                             f"{actions.get(rid)}, expected {want}")
        return found

    def check(self, database_url: str) -> None:
        found = self.problems(database_url)
        assert not found, f"{len(found)} write(s) without exactly one audit entry:\n" + "\n".join(found[:30])
