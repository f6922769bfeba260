"""``Idempotency-Key`` on POST and PATCH (api/platform/idempotency.py), on SQLite and on PostgreSQL.

Through the running service (real uvicorn, Temporal dev server, worker): the same key and body
answer the stored response once more (``Idempotent-Replayed: true``) and run nothing; the same key
with another body is refused (422); ten concurrent requests with one key run once.  Then the
middleware alone, on a small app over both databases, for what the service cannot show on demand:
a 5xx releases the key, a request that died holding its key is taken over once the lock runs
out, a request in flight makes a second one wait and then answer 409, an expired key starts afresh.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.platform.idempotency import IdempotencyMiddleware, fingerprint, scope_of
from core.settings import Settings
from models.idempotency import DONE, IN_PROGRESS, IdempotencyKey
from tests.helpers import contract_request

PROBLEM_JSON = "application/problem+json"
REPLAYED = "idempotent-replayed"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def service(request):
    """The running service on SQLite (``api_service``) and on PostgreSQL (``api_service_pg``)."""
    return request.getfixturevalue("api_service" if request.param == "sqlite" else "api_service_pg")


def key() -> str:
    return f"test-{uuid.uuid4()}"


def assert_problem(r: httpx.Response, status: int, slug: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].split(";")[0] == PROBLEM_JSON
    body = r.json()
    assert body["type"] == f"/problems/{slug}" and body["status"] == status and body["detail"], body
    return body


async def contracts_of(c: httpx.AsyncClient, crm_id: str) -> int:
    r = await c.get("/contracts", params={"customer": crm_id, "limit": 500})
    assert r.status_code == 200, r.text
    return r.json()["total"]


# ====================================================================== through the service
@pytest.mark.devserver
async def test_same_key_and_body_answers_the_stored_response_and_creates_one_contract(service):
    body = contract_request(datetime.now(timezone.utc))
    crm = body["customer"]["external_id"]
    k = key()
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as c:
        first = await c.post("/contracts", json=body, headers={"Idempotency-Key": k})
        assert first.status_code == 201, first.text
        assert REPLAYED not in first.headers
        # The same JSON with its keys in another order and other spacing is the same request.
        reordered = json.dumps(dict(reversed(list(body.items()))), indent=2)
        again = await c.post("/contracts", content=reordered,
                             headers={"Idempotency-Key": k, "content-type": "application/json"})
        assert again.status_code == 201, again.text
        assert again.headers[REPLAYED] == "true"
        assert again.headers["content-type"] == first.headers["content-type"]
        assert again.content == first.content
        assert await contracts_of(c, crm) == 1

        # Without the key the same body is a new request: a second contract (no external_id).
        other = await c.post("/contracts", json=body)
        assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
        assert await contracts_of(c, crm) == 2


@pytest.mark.devserver
async def test_same_key_with_another_body_is_refused_and_runs_nothing(service):
    now = datetime.now(timezone.utc)
    body = contract_request(now)
    k = key()
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as c:
        first = await c.post("/contracts", json=body, headers={"Idempotency-Key": k})
        assert first.status_code == 201, first.text
        changed = {**body, "amount": "99.00"}
        r = await c.post("/contracts", json=changed, headers={"Idempotency-Key": k})
        problem = assert_problem(r, 422, "idempotency-key-reused")
        assert k in problem["detail"]
        assert await contracts_of(c, body["customer"]["external_id"]) == 1
        # The key is scoped to method and path: on another route it is another key.
        user = {"id": f"idem.{uuid.uuid4().hex[:8]}", "name": "Idem Potent", "email": "idem@example.com"}
        r = await c.post("/users", json=user, headers={"Idempotency-Key": k})
        assert r.status_code == 201, r.text


@pytest.mark.devserver
async def test_ten_concurrent_requests_with_one_key_create_one_contract(service):
    body = contract_request(datetime.now(timezone.utc))
    k = key()
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as c:
        answers = await asyncio.gather(*(c.post("/contracts", json=body, headers={"Idempotency-Key": k})
                                         for _ in range(10)))
        assert await contracts_of(c, body["customer"]["external_id"]) == 1
    created = [r for r in answers if r.status_code == 201]
    assert created, [r.text for r in answers]
    assert len({r.content for r in created}) == 1  # every 201 is the same answer
    assert sum(1 for r in created if REPLAYED not in r.headers) == 1  # and it ran once
    for r in answers:
        if r.status_code != 201:
            assert_problem(r, 409, "idempotency-key-in-progress")
            assert r.headers["retry-after"]


@pytest.mark.devserver
async def test_ten_concurrent_user_creations_with_one_key_run_once(service):
    user = {"id": f"idem.{uuid.uuid4().hex[:8]}", "name": "Idem Potent", "email": "idem@example.com"}
    k = key()
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as c:
        answers = await asyncio.gather(*(c.post("/users", json=user, headers={"Idempotency-Key": k})
                                         for _ in range(10)))
    # A second execution would have answered 409 "user exists".
    assert {r.status_code for r in answers} <= {201, 409}, [r.text for r in answers]
    assert sum(1 for r in answers if r.status_code == 201 and REPLAYED not in r.headers) == 1
    for r in answers:
        if r.status_code == 409:
            assert_problem(r, 409, "idempotency-key-in-progress")


@pytest.mark.devserver
async def test_payment_amendment_and_webhook_creation_replay_their_first_answer(service):
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as c:
        r = await c.post("/contracts", json=contract_request(datetime.now(timezone.utc), amount="1000.00"))
        assert r.status_code == 201, r.text
        cid = r.json()["id"]

        # Payment: the replay is the first answer (applied: true), not a second run (which would say
        # applied: false); one payment is recorded.
        payment = {"reference": f"BANK-{uuid.uuid4().hex[:6]}", "amount": "100.00", "currency": "CNY",
                   "received_at": "2026-11-27T10:00:00+08:00"}
        k = key()
        first = await c.post(f"/contracts/{cid}/payments", json=payment, headers={"Idempotency-Key": k})
        assert first.status_code == 200 and first.json()["applied"] is True, first.text
        again = await c.post(f"/contracts/{cid}/payments", json=payment, headers={"Idempotency-Key": k})
        assert again.status_code == 200 and again.headers[REPLAYED] == "true"
        assert again.json() == first.json()
        live = (await c.get(f"/contracts/{cid}")).json()
        assert [p["reference"] for p in live["payments"]] == [payment["reference"]]
        assert live["outstanding"] == "900.00"
        r = await c.post(f"/contracts/{cid}/payments", json={**payment, "amount": "200.00"},
                         headers={"Idempotency-Key": k})
        assert_problem(r, 422, "idempotency-key-reused")

        # Amendment: one request, one amendment.
        change = {"requested_by": "li.wei", "reason": "Customer site not ready",
                  "changes": [{"kind": "move_due", "key": "shipping", "shift": "P10D"}]}
        k = key()
        first = await c.post(f"/contracts/{cid}/amendments", json=change, headers={"Idempotency-Key": k})
        assert first.status_code == 201, first.text
        again = await c.post(f"/contracts/{cid}/amendments", json=change, headers={"Idempotency-Key": k})
        assert again.status_code == 201 and again.headers[REPLAYED] == "true"
        assert again.json()["id"] == first.json()["id"]
        amendments = (await c.get(f"/contracts/{cid}/amendments")).json()
        assert [a["id"] for a in amendments] == [first.json()["id"]]

        # Webhook subscription: one subscription; the replay carries the same (generated) secret.
        sub = {"url": "http://127.0.0.1:9/idempotency", "description": f"idem {uuid.uuid4().hex[:8]}"}
        k = key()
        first = await c.post("/webhooks", json=sub, headers={"Idempotency-Key": k})
        assert first.status_code == 201, first.text
        again = await c.post("/webhooks", json=sub, headers={"Idempotency-Key": k})
        assert again.status_code == 201 and again.headers[REPLAYED] == "true"
        assert again.json() == first.json()
        subs = [s for s in (await c.get("/webhooks")).json() if s["description"] == sub["description"]]
        assert [s["id"] for s in subs] == [first.json()["id"]]

        # A PATCH too.
        k = key()
        patch = {"description": "renamed once"}
        first = await c.patch(f"/webhooks/{subs[0]['id']}", json=patch, headers={"Idempotency-Key": k})
        again = await c.patch(f"/webhooks/{subs[0]['id']}", json=patch, headers={"Idempotency-Key": k})
        assert first.status_code == again.status_code == 200 and again.headers[REPLAYED] == "true"
        assert again.json() == first.json()


@pytest.mark.devserver
async def test_a_4xx_answer_is_stored_and_replayed_too(service):
    payment = {"reference": "BANK-404", "amount": "1.00", "currency": "CNY", "received_at": "2026-11-27T10:00:00Z"}
    k = key()
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as c:
        first = await c.post("/contracts/no-such-contract/payments", json=payment, headers={"Idempotency-Key": k})
        assert_problem(first, 404, "contract-not-found")
        again = await c.post("/contracts/no-such-contract/payments", json=payment, headers={"Idempotency-Key": k})
        assert again.status_code == 404 and again.headers[REPLAYED] == "true"
        assert again.content == first.content and again.headers["content-type"] == PROBLEM_JSON


@pytest.mark.devserver
@pytest.mark.parametrize("bad", ["", "a b", "a\tb", "x" * 256, "ключ"], ids=["empty", "inner-space", "tab",
                                                                            "256-chars", "non-ascii"])
async def test_an_invalid_key_is_refused(api_service, bad):
    user = {"id": f"idem.{uuid.uuid4().hex[:8]}", "name": "Idem Potent", "email": "idem@example.com"}
    async with httpx.AsyncClient(base_url=api_service.base_url, timeout=30) as c:
        r = await c.post("/users", json=user, headers=[("Idempotency-Key", bad.encode("utf-8"))])
        body = assert_problem(r, 422, "validation")
        assert body["errors"][0]["field"] == "header.Idempotency-Key"
        assert (await c.get(f"/users/{user['id']}")).status_code == 404  # nothing ran
        longest = (uuid.uuid4().hex * 8)[:255]
        r = await c.post("/users", json=user, headers={"Idempotency-Key": longest})
        assert r.status_code == 201, r.text


@pytest.mark.devserver
async def test_the_header_is_in_the_openapi_document(api_service):
    async with httpx.AsyncClient(base_url=api_service.base_url) as c:
        doc = (await c.get("/openapi.json")).json()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            names = [p["name"] for p in op.get("parameters", [])]
            assert ("Idempotency-Key" in names) == (method in ("post", "patch")), (method, path)


# ====================================================================== the middleware alone
class Endpoint:
    """POST /things: counts its runs; answers what ``outcomes`` says (status), then 201."""

    def __init__(self) -> None:
        self.runs = 0
        self.outcomes: list[int] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, request: Request):
        self.runs += 1
        body = await request.json()
        if self.gate is not None:
            await self.gate.wait()
        status = self.outcomes.pop(0) if self.outcomes else 201
        return JSONResponse({"run": self.runs, "echo": body}, status_code=status,
                            headers={"Location": f"/things/{self.runs}"})


def small_app(sessions, **settings) -> tuple[Starlette, Endpoint]:
    endpoint = Endpoint()
    app = Starlette(routes=[Route("/things", endpoint.__call__, methods=["POST"])])
    app.state.sessions = sessions
    app.state.settings = Settings(**settings)
    app.add_middleware(IdempotencyMiddleware)
    return app, endpoint


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def put_row(sessions, k: str, body: dict, **fields) -> None:
    now = datetime.now(timezone.utc)
    values = dict(scope=scope_of("POST", "/things"), key=k, method="POST", path="/things",
                  request_hash=fingerprint(b"", json.dumps(body).encode()), status=IN_PROGRESS,
                  lock_token=uuid.uuid4().hex, created_at=now, locked_until=now + timedelta(seconds=60),
                  expires_at=now + timedelta(hours=24))
    values.update(fields)
    with sessions.begin() as session:
        session.add(IdempotencyKey(**values))


async def test_a_server_error_is_not_stored_and_a_retry_runs_again(sessions):
    app, endpoint = small_app(sessions)
    endpoint.outcomes = [500, 503]
    async with client(app) as c:
        answers = [await c.post("/things", json={"a": 1}, headers={"Idempotency-Key": "k5xx"}) for _ in range(4)]
    assert [r.status_code for r in answers] == [500, 503, 201, 201]
    assert endpoint.runs == 3
    assert REPLAYED not in answers[2].headers and answers[3].headers[REPLAYED] == "true"
    assert answers[3].headers["location"] == "/things/3" and answers[3].json() == answers[2].json()


async def test_a_request_that_died_holding_its_key_is_taken_over_when_its_lock_runs_out(sessions):
    app, endpoint = small_app(sessions, idempotency_wait_seconds=0.2)
    body = {"a": 2}
    put_row(sessions, "kdead", body, locked_until=datetime.now(timezone.utc) - timedelta(seconds=1))
    put_row(sessions, "kalive", body)  # still locked: its request is (as far as we know) running
    async with client(app) as c:
        r = await c.post("/things", json=body, headers={"Idempotency-Key": "kdead"})
        assert r.status_code == 201 and endpoint.runs == 1
        r = await c.post("/things", json=body, headers={"Idempotency-Key": "kalive"})
        assert_problem(r, 409, "idempotency-key-in-progress")
        assert endpoint.runs == 1
    with sessions() as session:
        rows = {row.key: row for row in session.query(IdempotencyKey).filter(IdempotencyKey.key.in_(["kdead", "kalive"]))}
    assert rows["kdead"].status == DONE and rows["kdead"].response_status == 201
    assert rows["kalive"].status == IN_PROGRESS


async def test_a_second_request_waits_for_the_first_and_gets_its_answer(sessions):
    app, endpoint = small_app(sessions, idempotency_wait_seconds=10)
    endpoint.gate = asyncio.Event()
    async with client(app) as c:
        first = asyncio.create_task(c.post("/things", json={"a": 3}, headers={"Idempotency-Key": "kwait"}))
        while endpoint.runs == 0:
            await asyncio.sleep(0.01)
        second = asyncio.create_task(c.post("/things", json={"a": 3}, headers={"Idempotency-Key": "kwait"}))
        await asyncio.sleep(0.3)
        assert not second.done()
        endpoint.gate.set()
        a, b = await first, await second
    assert a.status_code == b.status_code == 201 and a.json() == b.json()
    assert b.headers[REPLAYED] == "true" and endpoint.runs == 1


async def test_an_expired_key_starts_afresh(sessions):
    app, endpoint = small_app(sessions)
    past = datetime.now(timezone.utc) - timedelta(hours=1)
    put_row(sessions, "kold", {"other": "body"}, status=DONE, lock_token=None, response_status=201,
            response_headers=[], response_body=b"{}", expires_at=past, locked_until=past)
    async with client(app) as c:
        r = await c.post("/things", json={"a": 4}, headers={"Idempotency-Key": "kold"})
    assert r.status_code == 201 and REPLAYED not in r.headers and endpoint.runs == 1


def test_the_fingerprint_reads_json_canonically():
    assert fingerprint(b"", b'{"a": 1, "b": [1, 2]}') == fingerprint(b"", b'{"b":[1,2],"a":1}')
    assert fingerprint(b"", b'{"a": 1}') != fingerprint(b"", b'{"a": 2}')
    assert fingerprint(b"x=1", b"{}") != fingerprint(b"", b"{}")
    assert fingerprint(b"", b"\xff not json") == fingerprint(b"", b"\xff not json")
    assert len(scope_of("POST", "/contracts")) == len(hashlib.sha256().hexdigest())


def test_models_and_migrations_agree_on_every_table(database_url):
    """The models and the Alembic migrations describe the same schema (all tables, indexes, constraints)."""
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
    assert diff == []
