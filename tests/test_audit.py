"""The audit trail (issue #5): one append-only entry per state-changing request, on SQLite and PostgreSQL.

Through the running service (real uvicorn, Temporal dev server, worker): a mix of writes, made by
the bootstrap admin key and by logged-in people, each leaves exactly one entry with its actor and
request id (``X-Request-ID``); reads, refused writes and Idempotency-Key replays leave none.  The
actor of a workflow write is the actor the contract's event log records.  The table refuses UPDATE
and DELETE (and TRUNCATE on PostgreSQL) from the role the application connects as.  ``GET /audit``
is for admins and the contract's owners.

The whole suite is checked too: ``tests/audit_recorder.py`` (wired in ``running_service``) asserts
when a service stops that every successful write it served has exactly one entry.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

import httpx
import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import DBAPIError

from api.auth.principal import CURRENT, Principal, RequestContext
from api.platform import audit
from models import AuditEntry, IdempotencyKey, User
from models.db import make_engine
from tests.helpers import contract_request, login, strip_credentials, wait_for

PROBLEM_JSON = "application/problem+json"
ADMIN_ACTOR = "key:bootstrap"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def service(request):
    """The running service on SQLite (``api_service``) and on PostgreSQL (``api_service_pg``)."""
    return request.getfixturevalue("api_service" if request.param == "sqlite" else "api_service_pg")


def payment(reference: str, amount: str = "1.00") -> dict:
    return {"reference": reference, "amount": amount, "currency": "CNY",
            "received_at": datetime.now(timezone.utc).isoformat()}


def rid() -> str:
    return f"audit-test-{uuid.uuid4().hex}"


def uid(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:8]}"


class Calls:
    """A client that sends a fresh X-Request-ID with every request and remembers it."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.c = client
        self.last = ""

    async def __call__(self, method: str, url: str, *, request_id: str | None = None, **kw) -> httpx.Response:
        self.last = request_id or rid()
        headers = {**kw.pop("headers", {}), "X-Request-ID": self.last}
        return await self.c.request(method, url, headers=headers, **kw)


async def entries(admin: httpx.AsyncClient, **params) -> list[dict]:
    r = await admin.get("/audit", params={"limit": 500, **params})
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def create_contract(admin: httpx.AsyncClient, **overrides) -> str:
    r = await admin.post("/contracts", json=contract_request(datetime.now(timezone.utc), **overrides))
    assert r.status_code == 201, r.text
    return r.json()["id"]


# ====================================================================== one entry per write
@pytest.mark.devserver
async def test_every_write_leaves_one_entry_with_its_actor_and_request_id(service):
    """Database writes (users, departments, webhooks, keys, the contract row) and workflow writes
    (payment, milestone): one entry each, with the caller as actor; GETs, refused writes and
    replays none."""
    finance = await login(service.base_url, "sun.li")
    owner = await login(service.base_url, "li.wei")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as admin, \
            httpx.AsyncClient(base_url=strip_credentials(service.base_url), timeout=60) as person:
        call, as_person = Calls(admin), Calls(person)
        expected: dict[str, dict] = {}  # request id -> what its entry says

        def expect(r: httpx.Response, code: int, **fields) -> None:
            assert r.status_code == code, r.text
            expected[r.request.headers["x-request-id"]] = fields

        # -- the contract: the row is written by the API (same transaction), the rest by the workflow
        r = await call("POST", "/contracts", json=contract_request(datetime.now(timezone.utc)))
        cid = r.json()["id"]
        expect(r, 201, action="create_contract", actor=ADMIN_ACTOR, target_type="contract", target_id=cid,
               contract_id=cid, digest_of="rows", status=None)
        r = await as_person("POST", f"/contracts/{cid}/payments", headers=finance,
                            json=payment(f"BANK-{uuid.uuid4().hex[:6]}", "1000.00"))
        expect(r, 200, action="record_payment", actor="sun.li", actor_kind="user", target_type="contract",
               target_id=cid, contract_id=cid, digest_of="request", status=200)
        r = await as_person("POST", f"/contracts/{cid}/milestones/order_review/complete", headers=owner,
                            json={"note": "checked"})
        expect(r, 200, action="complete_milestone", actor="li.wei", contract_id=cid, status=200)

        # -- people and departments
        dept, person_id = uid("audit"), uid("wu")
        r = await call("POST", "/departments", json={"key": dept, "name": "Audit dept"})
        expect(r, 201, action="create_department", target_type="department", target_id=dept, digest_of="rows")
        r = await call("PUT", f"/departments/{dept}", json={"name": "Audit department"})
        expect(r, 200, action="replace_department", target_type="department", target_id=dept)
        r = await call("POST", "/users", json={"id": person_id, "name": "Wu", "email": f"{person_id}@example.com",
                                               "department": dept})
        expect(r, 201, action="create_user", target_type="user", target_id=person_id, contract_id=None)
        r = await call("PATCH", f"/users/{person_id}", json={"locale": "en"})
        expect(r, 200, action="update_user", target_type="user", target_id=person_id)
        r = await call("POST", "/auth/password", json={"user_id": person_id, "new_password": "a long password"})
        expect(r, 204, action="change_password", target_type="user", target_id=person_id)

        # -- webhooks: create, change, delete (a DELETE statement, read before it runs)
        r = await call("POST", "/webhooks", json={"url": "https://crm.example.com/hooks/audit"})
        sub = r.json()["id"]
        expect(r, 201, action="create_subscription", target_type="webhook", target_id=sub)
        r = await call("PATCH", f"/webhooks/{sub}", json={"active": False})
        expect(r, 200, action="update_subscription", target_type="webhook", target_id=sub)
        r = await call("DELETE", f"/webhooks/{sub}")
        expect(r, 204, action="delete_subscription", target_type="webhook", target_id=sub, digest_of="rows")

        # -- API keys: create, revoke, revoke again (a no-op: still one entry, of the request)
        r = await call("POST", "/api-keys", json={"name": "audit-erp", "roles": ["integration:erp"]})
        key_id = r.json()["id"]
        expect(r, 201, action="create_key", target_type="api_key", target_id=key_id)
        r = await call("POST", f"/api-keys/{key_id}/revoke")
        expect(r, 200, action="revoke_key", target_type="api_key", target_id=key_id, digest_of="rows")
        r = await call("POST", f"/api-keys/{key_id}/revoke")
        expect(r, 200, action="revoke_key", target_type="api_key", target_id=key_id, digest_of="request")

        # -- a task from the inbox, acknowledged by its assignee
        async def li_wei_task():
            page = (await person.get("/tasks", params={"status": "open", "limit": 500}, headers=owner)).json()
            return next((t for t in page if t["contract_id"] == cid), None) if isinstance(page, list) else None

        task = await wait_for(li_wei_task, timeout=30, interval=0.3)
        r = await as_person("POST", f"/tasks/{task['id']}/ack", headers=owner, json={})
        expect(r, 200, action="ack_task", actor="li.wei", target_type="task", target_id=str(task["id"]))

        # -- none for reads, refused writes, and a replay
        silent = []
        r = await call("GET", f"/contracts/{cid}")
        assert r.status_code == 200
        silent.append(call.last)
        r = await call("GET", "/users")
        silent.append(call.last)
        r = await as_person("POST", "/auth/token", data={"username": person_id, "password": "a long password"})
        assert r.status_code == 200, r.text  # logging in changes nothing
        silent.append(as_person.last)
        r = await call("POST", "/users", json={"id": uid("x"), "name": "X", "email": "x@example.com",
                                               "department": "no-such-department"})
        assert r.status_code == 422, r.text
        silent.append(call.last)
        r = await as_person("POST", f"/contracts/{cid}/payments", headers=owner,  # sales may not record payments
                            json=payment("nope"))
        assert r.status_code == 403, r.text
        silent.append(as_person.last)
        r = await call("POST", "/contracts/no-such-contract/payments", json=payment("nope"))
        assert r.status_code == 404, r.text
        silent.append(call.last)
        idem = {"Idempotency-Key": f"audit-{uuid.uuid4()}"}
        body = {"id": uid("idem"), "name": "Idem", "email": "idem@example.com"}
        r = await call("POST", "/users", json=body, headers=idem)
        expect(r, 201, action="create_user", target_type="user", target_id=body["id"])
        r = await call("POST", "/users", json=body, headers=idem)
        assert r.status_code == 201 and r.headers.get("idempotent-replayed") == "true"
        silent.append(call.last)

        # -- a client reusing an X-Request-ID is not refused: two writes, two entries
        shared = rid()
        a, b = uid("twin"), uid("twin")
        for user in (a, b):
            r = await call("POST", "/users", request_id=shared, json={"id": user, "name": "Twin",
                                                                      "email": "twin@example.com"})
            assert r.status_code == 201, r.text

        for request_id, fields in expected.items():
            found = await entries(admin, request_id=request_id)
            assert len(found) == 1, (request_id, fields, found)
            entry = {"actor": ADMIN_ACTOR, **fields}
            entry.setdefault("actor_kind", "service" if entry["actor"].startswith("key:") else "user")
            assert {k: found[0][k] for k in entry} == entry, found[0]
            assert found[0]["before_digest"] or found[0]["after_digest"]
        for request_id in silent:
            assert await entries(admin, request_id=request_id) == [], request_id
        twins = await entries(admin, request_id=shared)
        assert sorted(e["target_id"] for e in twins) == sorted([a, b])

        # The digests: the contract row is new (no before); the deleted subscription is gone (no after).
        (created,) = [e for e in await entries(admin, contract=cid) if e["action"] == "create_contract"]
        assert created["before_digest"] is None and len(created["after_digest"]) == 64
        deleting = next(k for k, v in expected.items() if v.get("action") == "delete_subscription")
        (deleted,) = await entries(admin, request_id=deleting)
        assert len(deleted["before_digest"]) == 64 and deleted["after_digest"] is None
        assert created["roles"] == ["admin"]


@pytest.mark.devserver
async def test_a_rows_digest_chains_to_the_next_change_of_the_same_row(service):
    """A user's state after one change is the state before the next: the digests match."""
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as admin:
        call = Calls(admin)
        person_id = uid("chain")
        r = await call("POST", "/users", json={"id": person_id, "name": "Chain", "email": f"{person_id}@example.com"})
        assert r.status_code == 201, r.text
        (created,) = await entries(admin, request_id=call.last)
        r = await call("PATCH", f"/users/{person_id}", json={"name": "Chain 2"})
        assert r.status_code == 200, r.text
        (changed,) = await entries(admin, request_id=call.last)
        assert created["after_digest"] == changed["before_digest"]
        assert changed["after_digest"] != changed["before_digest"]


# ====================================================================== the workflow agrees
@pytest.mark.devserver
async def test_the_audit_actor_is_the_actor_in_the_contracts_event_log(service):
    """A payment (by finance), a milestone completion and an amendment request (by the owner),
    made by logged-in people: the entry's actor is the event's actor."""
    finance = await login(service.base_url, "sun.li")
    owner = await login(service.base_url, "li.wei")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as admin, \
            httpx.AsyncClient(base_url=strip_credentials(service.base_url), timeout=60) as person:
        cid = await create_contract(admin)
        reference = f"BANK-{uuid.uuid4().hex[:6]}"
        writes = [
            ("record_payment", "payment.received", "sun.li", finance, f"/contracts/{cid}/payments",
             payment(reference, "500.00")),
            ("complete_milestone", "milestone.completed", "li.wei", owner,
             f"/contracts/{cid}/milestones/order_review/complete", {"note": "reviewed"}),
            ("request_amendment", "amendment.requested", "li.wei", owner, f"/contracts/{cid}/amendments",
             {"reason": "Customer site not ready",
              "changes": [{"kind": "move_due", "key": "shipping", "shift": "P10D"}]}),
        ]
        for _action, _event_type, _who, headers, url, body in writes:
            r = await person.post(url, json=body, headers={**headers, "X-Request-ID": rid()})
            assert r.status_code in (200, 201), r.text
        # An admin key acting for a person: the event names the person, the entry both.
        waive_id = rid()
        r = await admin.post(f"/contracts/{cid}/milestones/production_scheduling/waive",
                             headers={"X-Request-ID": waive_id}, json={"by": "zhang.min", "reason": "stock item"})
        assert r.status_code == 200, r.text

        async def projected():
            events = (await admin.get(f"/contracts/{cid}/events")).json()
            types = {e["type"] for e in events}
            return events if all(t in types for t in [*(w[1] for w in writes), "milestone.waived"]) else None

        events = await wait_for(projected, timeout=30, interval=0.2)
        trail = await entries(admin, contract=cid)
        for action, event_type, who, _h, _u, _b in writes:
            (entry,) = [e for e in trail if e["action"] == action]
            actors = {e["actor"] for e in events if e["type"] == event_type}
            assert actors == {entry["actor"]} == {who}, (action, actors, entry)
            assert entry["on_behalf_of"] is None
        (waived,) = await entries(admin, request_id=waive_id)
        assert (waived["actor"], waived["on_behalf_of"]) == (ADMIN_ACTOR, "zhang.min")
        assert {e["actor"] for e in events if e["type"] == "milestone.waived"} == {"zhang.min"}


# ====================================================================== append-only
@pytest.mark.devserver
async def test_the_audit_table_refuses_update_and_delete_from_the_application_role(service):
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as admin:
        r = await admin.post("/users", json={"id": uid("ro"), "name": "RO", "email": "ro@example.com"})
        assert r.status_code == 201, r.text
        for method in ("PUT", "PATCH", "DELETE"):  # and no route changes an entry
            r = await admin.request(method, "/audit")
            assert r.status_code == 405, (method, r.status_code, r.text)
    engine = make_engine(service.settings.database_url)  # as the application connects
    try:
        with engine.connect() as conn:
            before = conn.execute(text("SELECT count(*), max(id) FROM audit_log")).one()
        assert before[0] > 0
        statements = ["UPDATE audit_log SET actor = 'someone.else'",
                      f"UPDATE audit_log SET after_digest = NULL WHERE id = {before[1]}",
                      f"DELETE FROM audit_log WHERE id = {before[1]}",
                      "DELETE FROM audit_log"]
        if engine.dialect.name == "postgresql":
            statements.append("TRUNCATE audit_log")
        for sql in statements:
            with pytest.raises(DBAPIError, match="audit_log is append-only"), engine.begin() as conn:
                conn.execute(text(sql))
        with engine.connect() as conn:
            after = conn.execute(text("SELECT count(*), max(id) FROM audit_log")).one()
            changed = conn.execute(text("SELECT count(*) FROM audit_log WHERE actor = 'someone.else'")).scalar()
        assert after[0] >= before[0] and changed == 0
    finally:
        engine.dispose()


# ====================================================================== who reads the trail
@pytest.mark.devserver
async def test_admins_and_the_contracts_owners_read_its_trail(service):
    li_wei = await login(service.base_url, "li.wei")
    manager = await login(service.base_url, "zhang.min")
    finance = await login(service.base_url, "sun.li")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as admin, \
            httpx.AsyncClient(base_url=strip_credentials(service.base_url), timeout=60) as person:
        mine = await create_contract(admin)
        other = await create_contract(admin)
        theirs = await create_contract(admin, owner="chen.jing")  # li.wei's director: not his
        r = await person.post(f"/contracts/{mine}/milestones/order_review/complete", json={}, headers=li_wei)
        assert r.status_code == 200, r.text

        r = await person.get("/audit", params={"contract": mine}, headers=li_wei)
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        assert {e["contract_id"] for e in items} == {mine}
        assert {e["action"] for e in items} == {"create_contract", "complete_milestone"}
        assert other not in {e["target_id"] for e in items}

        r = await person.get("/audit", params={"contract": theirs}, headers=li_wei)
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM_JSON
        assert r.json()["detail"] == f"no contract with id {theirs!r}"
        r = await person.get("/audit", params={"contract": "no-such-contract"}, headers=li_wei)
        assert r.status_code == 404 and r.json()["detail"] == "no contract with id 'no-such-contract'"

        r = await person.get("/audit", params={"contract": mine}, headers=manager)  # his manager
        assert r.status_code == 200 and {e["contract_id"] for e in r.json()["items"]} == {mine}

        r = await person.get("/audit", params={"contract": mine}, headers=finance)  # sees it, does not own it
        assert r.status_code == 403 and r.json()["type"] == "/problems/forbidden", r.text

        r = await person.get("/audit", headers=li_wei)  # the whole trail: admins only
        assert r.status_code == 403 and r.json()["type"] == "/problems/forbidden", r.text

        # Admins read everything, filter, and page.
        r = await admin.get("/audit", params={"actor": "li.wei", "action": "complete_milestone", "limit": 500})
        assert r.status_code == 200 and mine in {e["contract_id"] for e in r.json()["items"]}
        first = (await admin.get("/audit", params={"limit": 2})).json()
        assert len(first["items"]) == 2 and first["next_after_id"] == first["items"][-1]["id"]
        second = (await admin.get("/audit", params={"limit": 2, "after_id": first["next_after_id"]})).json()
        assert second["items"][0]["id"] > first["items"][-1]["id"]


@pytest.mark.devserver
async def test_concurrent_writes_each_leave_one_entry(service):
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as admin:
        cid = await create_contract(admin)
        ids = [rid() for _ in range(8)]
        answers = await asyncio.gather(*(
            admin.post(f"/contracts/{cid}/payments", headers={"X-Request-ID": i},
                       json=payment(f"P-{i[-8:]}", "10.00"))
            for i in ids))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        trail = await entries(admin, contract=cid, action="record_payment")
        assert sorted(e["request_id"] for e in trail) == sorted(ids)


# ====================================================================== the listeners alone
ADMIN = Principal(id="key:test", name="test key", kind="service", roles=frozenset({"admin"}))


def serving(method: str, path: str, route: str, principal: Principal | None = ADMIN, **params) -> RequestContext:
    ctx = RequestContext(request_id=rid(), method=method, path=path, principal=principal, route=route,
                         path_params=params)
    CURRENT.set(ctx)
    return ctx


@pytest.fixture
def watched(sessions):
    audit.watch(sessions)
    token = CURRENT.set(None)
    yield sessions
    CURRENT.reset(token)


def trail(sessions, request_id: str) -> list[AuditEntry]:
    with sessions() as session:
        return list(session.execute(select(AuditEntry).where(AuditEntry.request_id == request_id)).scalars())


def new_user(user_id: str) -> User:
    return User(id=user_id, name="N", email="n@example.com", created_at=datetime.now(timezone.utc))


def test_a_rolled_back_change_takes_its_entry_with_it_and_the_next_transaction_writes_one(watched):
    ctx = serving("POST", "/users", "create_user")
    with pytest.raises(RuntimeError), watched.begin() as session:
        session.add(new_user(uid("gone")))
        session.flush()
        raise RuntimeError("the route failed")
    assert trail(watched, ctx.request_id) == [] and not ctx.audited
    kept = uid("kept")
    with watched.begin() as session:
        session.add(new_user(kept))
    with watched.begin() as session:  # a second transaction of the same request: no second entry
        session.get(User, kept).name = "Renamed"
    (entry,) = trail(watched, ctx.request_id)
    assert ctx.audited and entry.target_type == "user" and entry.target_id == kept and entry.status is None
    assert entry.digest_of == "rows" and entry.before_digest is None and entry.actor == "key:test"


def test_statements_are_read_before_they_change_rows_and_a_row_changed_twice_keeps_its_first_before(watched):
    a, b = uid("a"), uid("b")
    serving("POST", "/users", "create_user")
    with watched.begin() as session:
        session.add_all([new_user(a), new_user(b)])
    ctx = serving("PATCH", f"/users/{a}", "update_user", user_id=a)
    with watched.begin() as session:
        session.execute(update(User).where(User.id.in_([a, b])).values(locale="en"))
        session.get(User, a).name = "Twice"
        session.flush()
        session.get(User, a).name = "Thrice"
    (entry,) = trail(watched, ctx.request_id)
    with watched() as session:
        rows = {u.id: u for u in session.execute(select(User).where(User.id.in_([a, b]))).scalars()}
    assert rows[a].name == "Thrice" and rows[b].locale == "en"
    assert entry.target_type == "user" and entry.target_id == a  # the path names it
    assert entry.before_digest and entry.after_digest and entry.before_digest != entry.after_digest

    ctx = serving("DELETE", f"/users/{b}", "delete_user", user_id=b)
    with watched.begin() as session:
        session.execute(delete(User).where(User.id == b))
    (entry,) = trail(watched, ctx.request_id)
    assert entry.before_digest and entry.after_digest is None


def test_no_entry_for_reads_for_anonymous_callers_or_for_idempotency_bookkeeping(watched):
    for ctx in (serving("GET", "/users", "list_users"), serving("POST", "/auth/token", "issue_token", principal=None)):
        with watched.begin() as session:
            session.add(new_user(uid("quiet")))
        assert trail(watched, ctx.request_id) == []
    ctx = serving("POST", "/webhooks/x/test", "ping_subscription")
    now = datetime.now(timezone.utc)
    with watched.begin() as session:
        session.add(IdempotencyKey(scope="s" * 64, key=uid("k"), method="POST", path="/x", request_hash="h" * 64,
                                   status="in_progress", created_at=now, locked_until=now, expires_at=now))
    assert trail(watched, ctx.request_id) == [] and not ctx.audited


def test_writing_an_entry_twice_for_one_request_keeps_one(watched):
    ctx = serving("POST", "/contracts/c1/payments", "record_payment", contract_id="c1")
    values = audit.entry_values(ctx, target=("contract", "c1"), status=200, digest_of="request",
                                before=audit.body_digest(b'{"b": 1, "a": 2}'), after=None)
    audit.write_entry(watched, values)
    audit.write_entry(watched, {**values, "at": datetime.now(timezone.utc)})
    (entry,) = trail(watched, ctx.request_id)
    assert entry.contract_id == "c1" and entry.before_digest == audit.body_digest(b'{"a":2,"b":1}')


def test_the_entry_goes_with_a_read_model_write_or_on_its_own_when_none_committed(watched):
    """The audit middleware hands the entry to the writes the answer waits for until one takes it
    into its transaction (one commit for both); if none could commit, it is written alone."""
    for wrote_it in (False, True):
        ctx = serving("POST", "/contracts/c2/payments", "record_payment", contract_id="c2")
        values = audit.entry_values(ctx, target=("contract", "c2"), status=200, digest_of="request",
                                    before=None, after=None)
        handed: list = []

        def write(entry, wrote_it=wrote_it, handed=handed):
            handed.append(entry)
            return wrote_it

        def second(entry, handed=handed):
            handed.append(entry)
            return False

        audit.AuditMiddleware(None)._write(watched, [write, second], values)
        # Once taken, the entry is not handed on; left, the next write is offered it.
        assert handed == ([values, None] if wrote_it else [values, values])
        # Written by the middleware only when no write took it (here stand-ins that write nothing:
        # the real one is shown on PostgreSQL in test_api_projection.py).
        assert len(trail(watched, ctx.request_id)) == (0 if wrote_it else 1)
