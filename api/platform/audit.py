"""The audit trail: every state-changing request leaves exactly one append-only entry (models/audit.py).

What is a state-changing request: an authenticated POST, PUT, PATCH or DELETE that succeeds (2xx)
or that changed the database before failing.  Logging in (``POST /auth/token``) and the dashboard's
login and logout are not: they change no business state, and their caller is not yet known.
A request that fails (4xx, 5xx) before changing anything changes nothing and leaves no entry.
An Idempotency-Key replay runs nothing and leaves no entry: the first request has the one entry
(this middleware sits inside ``IdempotencyMiddleware``).  A successful write that turned out to
be a no-op (a payment reference seen before, revoking a revoked key, creating a contract whose
``external_id`` is known) still gets its entry: the trail records who asked for what.

Two ways an entry is written, and what its digests cover (``digest_of``):

* **Database writes made by the API** (users, departments, webhooks, API keys, passwords, task
  acknowledgements, the contract row a creation records, documents...): a ``before_commit``
  listener on the app's session factory adds the entry to the session that commits the change,
  so the entry and the change commit or roll back together (**same transaction**).  The digests
  (``digest_of = "rows"``) are SHA-256, in stable JSON, of the rows the transaction touched:
  ``before`` as read from the database before the transaction first changed them (null if every
  row is new), ``after`` as read at commit (null if every row is gone).  Both are read the same
  way, so one change's ``after`` is the next change's ``before`` for the same row.  Rows are found
  in ORM flushes and in ``session.execute`` of UPDATE/DELETE (rows read by the statement's WHERE)
  and single-row INSERT statements; a bulk statement is digested as its SQL and parameters.
  ``status`` is null: the entry commits before the answer exists.  One entry per request: later
  transactions of the same request (the creation's ``starting -> active`` step) add none; if the
  transaction holding the entry rolls back, the next one (or the middleware) writes it.
* **Workflow writes** (payments, milestones, amendments, terminations, integration batches: the
  API sends a Temporal update and the worker's projection writes the read model later, in
  another process): after the request succeeds (2xx) with no entry yet, ``AuditMiddleware`` writes
  one in its own transaction, *before* the answer goes out, so a client that reads the trail right
  after sees it.  The digests (``digest_of = "request"``) are SHA-256 of the request body
  (``before``: canonical JSON) and of the response body (``after``); ``status`` is the one answered.
  The workflow's own history carries who acted (the update's ``by`` / ``requested_by``, the event's
  ``actor``), and so does the entry (``actor``, ``on_behalf_of``).  If the database refuses the
  entry three times the answer still goes out (the change is made and must not be retried) and
  the failure is logged.

The entry's ``request_key`` is unique and made by the server for each request served: a retried
insert (``ON CONFLICT DO NOTHING``) cannot add a second row, and a client that reuses an
``X-Request-ID`` is not refused.  ``request_id`` is what the caller sent (or what the server made up).

Entries cannot be changed or removed: triggers (migration 0009) refuse UPDATE, DELETE and
TRUNCATE for every role, and the API has only ``GET /audit`` (api/platform/audit_routes.py).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, TypeGuard

from sqlalchemy import Column, Connection, Table, and_, event, inspect, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

from api.auth.principal import CURRENT, RequestContext
from api.platform.database import DatabaseStalled, in_thread
from models.audit import AuditEntry
from models.dml import execute_dml

log = logging.getLogger("api.audit")

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Public routes that write nothing of the business (a password rehash on login is housekeeping).
NOT_AUDITED = frozenset({"issue_token", "ui_login", "ui_login_submit", "ui_logout"})
# Tables whose rows are bookkeeping of the request itself, not state it changes.
IGNORED_TABLES = frozenset({AuditEntry.__tablename__, "idempotency_keys", "login_throttle"})

# What an entry is about, in order of preference when a request changes several rows.
SUBJECT_TABLES = {
    "contracts": "contract",
    "users": "user",
    "departments": "department",
    "webhook_subscriptions": "webhook",
    "api_keys": "api_key",
    "tasks": "task",
    "documents": "document",
}
# Path parameters naming the target (``contract_id`` first: milestone keys live under contracts).
PATH_TARGETS = (("contract_id", "contract"), ("user_id", "user"), ("subscription_id", "webhook"),
                ("key_id", "api_key"), ("task_id", "task"), ("key", "department"))
# The first path segment, when nothing else names the target.
SEGMENT_TARGETS = {"contracts": "contract", "users": "user", "departments": "department", "webhooks": "webhook",
                   "api-keys": "api_key", "tasks": "task", "integrations": "integration", "auth": "user"}

_CHANGES = "audit_changes"  # session.info: {(table, pk): _Change} for this transaction
_PENDING = "audit_pending"  # session.info: the request whose entry this session is committing


# ---------------------------------------------------------------- the request being served
def auditable(ctx: RequestContext | None) -> TypeGuard[RequestContext]:
    return (ctx is not None and ctx.principal is not None and ctx.method in WRITE_METHODS
            and ctx.route not in NOT_AUDITED)


def request_key(ctx: RequestContext) -> str:
    """The server's id for the request served (the caller's X-Request-ID may repeat)."""
    return ctx.audit_key


def _pending(ctx: RequestContext) -> bool:
    return ctx.audit_pending


def _set_pending(ctx: RequestContext, value: bool) -> None:
    ctx.audit_pending = value


# ---------------------------------------------------------------- digests
def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "sha256:" + hashlib.sha256(bytes(value)).hexdigest()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    return str(value)


def digest(value: Any) -> str:
    """SHA-256 hex of ``value`` as stable JSON (sorted keys, no spaces)."""
    text = json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def body_digest(body: bytes) -> str | None:
    """SHA-256 of a request or response body: canonical JSON if it is JSON, else the bytes."""
    if not body:
        return None
    try:
        return digest(json.loads(body))
    except ValueError:
        return hashlib.sha256(body).hexdigest()


class _BodyDigest:
    """``body_digest`` of a body read in chunks, keeping at most ``JSON_LIMIT`` bytes: a larger
    body (an uploaded file) is digested as its bytes."""

    JSON_LIMIT = 1 << 20

    def __init__(self) -> None:
        self.raw = hashlib.sha256()
        self.kept: bytearray | None = bytearray()
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.raw.update(chunk)
        self.size += len(chunk)
        if self.kept is not None:
            if self.size > self.JSON_LIMIT:
                self.kept = None
            else:
                self.kept.extend(chunk)

    def hexdigest(self) -> str | None:
        if self.size == 0:
            return None
        return body_digest(bytes(self.kept)) if self.kept is not None else self.raw.hexdigest()


def rows_digests(changes: dict[tuple[str, str], _Change]) -> tuple[str | None, str | None]:
    before = [{"table": t, "pk": pk, "row": c.before} for (t, pk), c in changes.items() if c.before is not None]
    after = [{"table": t, "pk": pk, "row": c.after} for (t, pk), c in changes.items() if c.after is not None]
    return (digest(before) if before else None, digest(after) if after else None)


# ---------------------------------------------------------------- what the entry is about
def _target_from_path(ctx: RequestContext) -> tuple[str, str] | None:
    for param, kind in PATH_TARGETS:
        value = ctx.path_params.get(param)
        if value:
            return kind, str(value)
    return None


def _fallback_type(ctx: RequestContext) -> str:
    segment = ctx.path.strip("/").split("/", 1)[0]
    return SEGMENT_TARGETS.get(segment, segment[:40] or "request")


def target_of_rows(ctx: RequestContext, changes: dict[tuple[str, str], _Change]) -> tuple[str, str | None]:
    if ctx.path_params.get("contract_id"):
        return "contract", ctx.path_params["contract_id"]
    for table, kind in SUBJECT_TABLES.items():
        for (t, pk) in changes:
            if t == table:
                return kind, pk
    found = _target_from_path(ctx)
    if found:
        return found
    if changes:
        table, pk = next(iter(changes))
        return table[:40], pk
    return _fallback_type(ctx), None


def target_of_answer(ctx: RequestContext, answer: bytes) -> tuple[str, str | None]:
    found = _target_from_path(ctx)
    if found:
        return found
    kind = _fallback_type(ctx)
    if ctx.route == "finance_payments":
        return "integration", "finance"
    if ctx.route == "erp_progress":
        return "integration", "erp"
    try:  # a creation answered with what it made (a contract whose external_id was known)
        data = json.loads(answer) if answer else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        ident = data.get("id") or data.get("key")
        if isinstance(ident, (str, int)):
            return kind, str(ident)
    return kind, None


def entry_values(ctx: RequestContext, *, target: tuple[str, str | None], status: int | None, digest_of: str,
                 before: str | None, after: str | None) -> dict[str, Any]:
    p = ctx.principal
    assert p is not None  # auditable(ctx): the caller is known
    target_type, target_id = target
    contract_id = ctx.path_params.get("contract_id") or (target_id if target_type == "contract" else None)
    return dict(
        at=datetime.now(timezone.utc),
        request_id=ctx.request_id[:64],
        request_key=request_key(ctx),
        actor=p.id[:100],
        actor_kind=p.kind,
        roles=" ".join(sorted(p.roles))[:200],
        on_behalf_of=(ctx.on_behalf_of or None) and ctx.on_behalf_of[:100],
        action=(ctx.route or f"{ctx.method} {ctx.path}")[:60],
        method=ctx.method,
        path=ctx.path[:2000],
        target_type=target_type[:40],
        target_id=None if target_id is None else str(target_id)[:200],
        contract_id=None if contract_id is None else str(contract_id)[:40],
        status=status,
        digest_of=digest_of,
        before_digest=before,
        after_digest=after,
    )


# ---------------------------------------------------------------- database writes: same transaction
@dataclass
class _Change:
    """A row the transaction touched: as it was before (read before the first change) and as it is
    at commit (read then).  ``table`` None: a statement whose rows are not known (a bulk INSERT)."""

    table: Table | None
    where: list[tuple[Column, Any]] = field(default_factory=list)
    before: dict | None = None
    after: dict | None = None


def _pk_string(values: list[Any] | tuple[Any, ...]) -> str:
    return "/".join("" if v is None else str(v) for v in values)


def _read_row(conn, table: Table, where: list[tuple[Column, Any]]) -> dict | None:
    row = conn.execute(select(*table.columns).where(and_(*(c == v for c, v in where)))).mappings().first()
    return None if row is None else _jsonable(dict(row))


def _touch(session: Session, table: Table, pk_values, before: dict | None) -> None:
    """Note a row; its ``before`` is the one read before the transaction first changed it."""
    changes = session.info.setdefault(_CHANGES, {})
    key = (table.name, _pk_string(pk_values))
    if key not in changes:
        changes[key] = _Change(table, list(zip(table.primary_key.columns, pk_values, strict=True)), before)


def _unknown_rows(session: Session, name: str, what: dict) -> None:
    session.info.setdefault(_CHANGES, {})[(name, f"?{uuid.uuid4().hex[:8]}")] = _Change(None, after=what)


def _orm_row(obj: Any) -> tuple[Table, tuple] | None:
    state = inspect(obj)
    table = state.mapper.local_table
    if not isinstance(table, Table) or table.name in IGNORED_TABLES:
        return None
    values = state.identity or state.mapper.primary_key_from_instance(obj)
    return table, tuple(values)


def _before_flush(session: Session, _flush_context, _instances) -> None:
    """Read, before the flush changes them, the rows of changed and deleted objects."""
    ctx = CURRENT.get()
    if not auditable(ctx):
        return
    changes = session.info.setdefault(_CHANGES, {})
    conn = None
    for obj in [*session.dirty, *session.deleted]:
        if obj in session.dirty and not session.is_modified(obj, include_collections=False):
            continue
        found = _orm_row(obj)
        if found is None:
            continue
        table, pk = found
        if (table.name, _pk_string(pk)) in changes:
            continue
        conn = conn or session.connection()
        where = list(zip(table.primary_key.columns, pk, strict=True))
        _touch(session, table, pk, _read_row(conn, table, where))


def _after_flush(session: Session, _flush_context) -> None:
    """Note the new rows (their keys are known now)."""
    ctx = CURRENT.get()
    if not auditable(ctx):
        return
    for obj in session.new:
        found = _orm_row(obj)
        if found is not None:
            _touch(session, *found, before=None)


def _statement(stmt, session: Session) -> dict[str, Any]:
    try:
        compiled = stmt.compile(dialect=session.get_bind().dialect)
        return {"statement": str(compiled), "params": _jsonable(compiled.params)}
    except Exception:  # noqa: BLE001 - a statement that will not print is still noted
        return {"statement": type(stmt).__name__}


def _do_orm_execute(state: ORMExecuteState):
    """INSERT, UPDATE and DELETE statements run with ``session.execute``: UPDATE and DELETE read
    the rows they will change first; a single-row INSERT notes its row by key."""
    if not (state.is_insert or state.is_update or state.is_delete):
        return None
    ctx = CURRENT.get()
    if not auditable(ctx):
        return None
    stmt: Any = state.statement  # an INSERT, UPDATE or DELETE (checked above)
    table = getattr(stmt, "table", None)
    if not isinstance(table, Table):
        return _run_noting_statement(state, "statement")
    if table.name in IGNORED_TABLES:
        return None
    session = state.session
    if isinstance(state.parameters, (list, tuple)):  # executemany: noted as the statement
        return _run_noting_statement(state, table.name)
    pk_columns = list(table.primary_key.columns)
    if state.is_insert:
        try:
            params = stmt.compile(dialect=session.get_bind().dialect).params
        except Exception:  # noqa: BLE001
            params = {}
        params = {**params, **dict(state.parameters or {})}  # type: ignore[arg-type]  # one row: a mapping
        if pk_columns and all(params.get(c.key) is not None for c in pk_columns):
            result = state.invoke_statement()
            pk = tuple(params[c.key] for c in pk_columns)
            _touch(session, table, pk, before=None)  # (an INSERT that did nothing reads back the old row)
            return result
        return _run_noting_statement(state, table.name)
    if stmt.whereclause is None or not pk_columns:
        return _run_noting_statement(state, table.name)
    try:
        conn = session.connection()
        query = select(*table.columns).where(stmt.whereclause)
        rows = conn.execute(query, dict(state.parameters or {})).mappings().all()  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - the statement still runs; its rows are noted as unknown
        log.exception("audit: could not read the rows a statement on %s changes", table.name)
        return _run_noting_statement(state, table.name)
    for row in rows:
        _touch(session, table, tuple(row[c.name] for c in pk_columns), _jsonable(dict(row)))
    return state.invoke_statement()


def _run_noting_statement(state: ORMExecuteState, name: str):
    result = state.invoke_statement()
    _unknown_rows(state.session, name, _statement(state.statement, state.session) | {
        "rows": _jsonable(state.parameters)})
    return result


def _before_commit(session: Session) -> None:
    ctx = CURRENT.get()
    if not auditable(ctx) or ctx.audited or _pending(ctx):
        return
    if session.new or session.dirty or session.deleted:
        session.flush()  # notes the rows (_before_flush, _after_flush) before the entry is added
    changes: dict[tuple[str, str], _Change] = session.info.get(_CHANGES) or {}
    if not changes:
        return
    conn = session.connection()
    for change in changes.values():
        if change.table is not None:
            change.after = _read_row(conn, change.table, change.where)
    before, after = rows_digests(changes)
    session.add(AuditEntry(**entry_values(ctx, target=target_of_rows(ctx, changes), status=None,
                                          digest_of="rows", before=before, after=after)))
    session.info[_PENDING] = ctx
    _set_pending(ctx, True)


def _after_commit(session: Session) -> None:
    ctx = session.info.pop(_PENDING, None)
    if ctx is not None:
        ctx.audited = True
        _set_pending(ctx, False)
    session.info.pop(_CHANGES, None)


def _after_transaction_end(session: Session, transaction) -> None:
    if transaction.parent is not None:
        return
    ctx = session.info.pop(_PENDING, None)
    if ctx is not None:  # rolled back: the entry went with the change
        _set_pending(ctx, False)
    session.info.pop(_CHANGES, None)


_LISTENERS = (("before_flush", _before_flush), ("after_flush", _after_flush), ("do_orm_execute", _do_orm_execute),
              ("before_commit", _before_commit), ("after_commit", _after_commit),
              ("after_transaction_end", _after_transaction_end))


def watch(sessions: sessionmaker[Session]) -> None:
    """Audit every database write made through ``sessions`` while serving a request."""
    for name, fn in _LISTENERS:
        if not event.contains(sessions, name, fn):
            event.listen(sessions, name, fn)


# ---------------------------------------------------------------- workflow writes: after the answer
def write_entry(sessions: sessionmaker[Session], values: dict[str, Any]) -> None:
    """Insert one entry in its own transaction; a second insert for the request adds nothing.
    Straight on a connection with a statement built once: it is on every write request's path."""
    engine = sessions.kw["bind"]
    with engine.begin() as conn:
        insert_entry(conn, values)


def insert_entry(conn: Connection, values: dict[str, Any]) -> None:
    """Insert one entry in the caller's transaction (a second insert for the request adds nothing)."""
    execute_dml(conn, _entry_insert(conn.dialect.name), values)


@functools.cache
def _entry_insert(dialect: str):
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(AuditEntry).on_conflict_do_nothing(index_elements=["request_key"])


class AuditMiddleware:
    """Writes the entry of a successful write request that the database listeners did not audit
    (a workflow update).  Inside AuthMiddleware (it needs the caller) and IdempotencyMiddleware
    (a replay is not audited again)."""

    ATTEMPTS = 3

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITE_METHODS:
            await self.app(scope, receive, send)
            return
        ctx = CURRENT.get()
        if ctx is None:
            await self.app(scope, receive, send)
            return
        ctx.before_answer = []  # the service leaves its read-model writes here (one thread hop for all)
        body = _BodyDigest()

        async def receive_teed():
            message = await receive()
            if message["type"] == "http.request":
                body.add(message.get("body", b""))
            return message

        messages: list[dict[str, Any]] = []
        status: int | None = None
        held = False  # the answer waits for the entry

        async def send_later(message):
            nonlocal status, held
            if message["type"] == "http.response.start":
                status = message["status"]
                held = (200 <= status < 300 and auditable(ctx) and not ctx.audited) or bool(ctx.before_answer)
            if held:
                messages.append(message)
            else:  # a failure, or a database write already audited: nothing to wait for
                await send(message)

        try:
            await self.app(scope, receive_teed, send_later)
        except BaseException:
            writes, ctx.before_answer = ctx.before_answer or [], None
            if writes:  # the workflow made the change: its copy is written whatever became of the answer
                await asyncio.to_thread(self._write, scope["app"].state.sessions, writes, None)
            raise
        writes, ctx.before_answer = ctx.before_answer or [], None
        values = None
        if held and not ctx.audited and 200 <= (status or 0) < 300 and auditable(ctx):
            answer = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
            values = entry_values(ctx, target=target_of_answer(ctx, answer), status=status, digest_of="request",
                                  before=body.hexdigest(), after=body_digest(answer))
        if writes or values is not None:
            state = scope["app"].state
            try:
                await in_thread(state.settings.database_call_seconds, self._write, state.sessions, writes, values)
            except DatabaseStalled:
                # The change stands in the workflow; the thread writes its copy and the entry when
                # the database answers again.  The caller is not kept waiting for that.
                log.error("audit: the database did not answer in time for request %s (%s %s); its read-model "
                          "writes and audit entry go on in their thread (a failure there is logged)",
                          ctx.request_id, scope["method"], scope["path"])
            if values is not None:
                ctx.audited = True
        for message in messages:
            await send(message)

    def _write(self, sessions, writes: list, values: dict[str, Any] | None) -> None:
        """In a worker thread: the read-model writes the answer waits for, then the entry.  The
        entry is offered to each write until one takes it into its own transaction: one commit,
        not two (on PostgreSQL, one WAL flush fewer on every update).  If none committed, the
        entry is written on its own."""
        for write in writes:
            # Each logs its own failure: the change stands in the workflow either way.
            if write(values):
                values = None
        if values is None:
            return
        for attempt in range(1, self.ATTEMPTS + 1):
            try:
                write_entry(sessions, values)
                return
            except DBAPIError:
                if attempt == self.ATTEMPTS:
                    log.exception("audit: the entry of request %s (%s %s by %s) could not be written",
                                  values["request_id"], values["method"], values["path"], values["actor"])
                    return
                time.sleep(0.2 * attempt)


def install(app) -> None:
    """Add the middleware (call before ``idempotency.install``: it must sit inside it).  The
    database listeners are attached to the session factory at startup with ``watch``."""
    app.add_middleware(AuditMiddleware)
