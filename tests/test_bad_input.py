"""Bad input found by trying the API as a new user would: each case answered 500/503 or misbehaved
before; now each is a 4xx RFC 9457 problem that changes nothing (no row written, no workflow).

Real uvicorn, Temporal dev server, worker and webhook dispatcher; SQLite, and PostgreSQL where the
database decides the answer (the customer filter, the login throttle).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from api.auth.login_throttle import LoginLimiter, TooManyAttempts
from api.platform.fields import CONTRACT_ITEMS_MAX, MILESTONES_MAX, STANDARD_MAX
from api.platform.guards import MAX_JSON_DEPTH
from core.channels import PermanentDeliveryError
from core.channels.webhook import post_webhook
from core.durations import DurationError, check_duration, parse_duration, to_timedelta
from core.migrate import upgrade
from core.settings import Settings
from tests.conftest import running_api, running_service
from tests.helpers import contract_request, wait_for
from tests.test_api_errors import assert_problem, assert_unchanged, settled

PROBLEM_JSON = "application/problem+json"


def _ms(key: str, **extra) -> dict:
    return {"key": key, "name": key.title(), "kind": "custom", "owner": "wang.fang", "department": "delivery", **extra}


async def _total(c: httpx.AsyncClient) -> int:
    r = await c.get("/contracts", params={"limit": 1})
    assert r.status_code == 200, r.text
    return r.json()["total"]


async def _refused_creation(c: httpx.AsyncClient, body: dict, status: int, *needles: str) -> dict:
    """POST /contracts is refused with ``status`` naming ``needles``, and no contract appears."""
    before = await _total(c)
    r = await c.post("/contracts", json=body)
    problem = assert_problem(r, status, *needles)
    assert await _total(c) == before, "a refused contract left a row"
    return problem


@pytest.fixture
async def c(api_service):
    async with httpx.AsyncClient(base_url=api_service.base_url, timeout=60) as client:
        yield client


async def _new_contract(c: httpx.AsyncClient, **overrides) -> str:
    r = await c.post("/contracts", json=contract_request(datetime.now(timezone.utc), **overrides))
    assert r.status_code == 201, r.text
    return r.json()["id"]


# ------------------------------------------------------------------ 1. dates outside years 1970..2200
NOW = datetime.now(timezone.utc)
DATE_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("effective-year-1", {"effective_date": "0001-01-01"}, "effective_date"),
    ("end-year-9999", {"end_date": "9999-12-31"}, "end_date"),
    ("end-datetime-9999", {"end_date": "9999-12-31T23:59:59-12:00"}, "end_date"),
    ("effective-1969", {"effective_date": "1969-12-31"}, "effective_date"),
    ("due-9999", {"milestones": [_ms("late", due="9999-12-31T23:59:59-12:00")]}, "milestones.0.due"),
    ("due-year-1", {"milestones": [_ms("early", due="0001-01-01T00:00:00+14:00")]}, "milestones.0.due"),
    ("installment-due-9999", {"installments": [{"key": "all", "amount": "120000.00",
                                                "due": "9999-12-31T23:59:59+00:00"}]}, "installments.0.due"),
]


@pytest.mark.parametrize("overrides,field", [c[1:] for c in DATE_CASES], ids=[c[0] for c in DATE_CASES])
async def test_dates_outside_the_supported_years_are_refused(c, overrides, field):
    problem = await _refused_creation(c, contract_request(NOW, **overrides), 422, field, "1970 to 2200")
    assert problem["type"] == "/problems/validation"


async def test_dates_outside_the_supported_years_change_no_contract(c):
    cid = await _new_contract(c)
    before = await settled(c, cid)
    payment = {"reference": "Y9999", "amount": "1.00", "currency": "CNY", "received_at": "9999-12-31T23:59:59-12:00"}
    assert_problem(await c.post(f"/contracts/{cid}/payments", json=payment), 422, "received_at", "1970 to 2200")
    payment["received_at"] = "0001-01-01T00:00:00+14:00"
    assert_problem(await c.post(f"/contracts/{cid}/payments", json=payment), 422, "received_at")
    for change in ({"kind": "move_due", "key": "shipping", "due_at": "9999-12-31T23:59:59-12:00"},
                   {"kind": "extend_end", "end_at": "9999-12-31T23:59:59-12:00"},
                   {"kind": "extend_end", "end_at": "0001-01-01T00:00:00+00:00"}):
        r = await c.post(f"/contracts/{cid}/amendments", json={"reason": "typo", "changes": [change]})
        assert_problem(r, 422, "1970 to 2200")
    await assert_unchanged(c, cid, before)


async def test_a_bank_line_dated_outside_the_supported_years_is_rejected_alone(c):
    """A statement is judged line by line: the mistyped date rejects its line, the others apply."""
    cid = await _new_contract(c)
    line = {"amount": "1.00", "currency": "CNY", "contract_id": cid}
    r = await c.post("/integrations/finance/payments", json={"lines": [
        {**line, "line_id": f"y1-{cid}", "received_at": "0001-01-01T00:00:00+14:00"},
        {**line, "line_id": f"ok-{cid}", "received_at": "2026-11-27T10:00:00+08:00"}]})
    assert r.status_code == 200, r.text
    first, second = r.json()["lines"]
    assert first["outcome"] == "rejected" and "1970 to 2200" in first["reason"], first
    assert second["outcome"] == "applied", second


# ------------------------------------------------------------------ 2. durations above a century
def test_check_duration_caps_durations_and_leaves_the_workflow_functions_alone():
    for text in ("P99999Y", "P1000000D", "PT99999999999999999999H", "P1201M", "P100Y1D", "P36526D"):
        with pytest.raises(DurationError, match="at most 100 years"):
            check_duration(text)
    assert check_duration("P100Y") == parse_duration("P100Y")
    assert check_duration("P5D") == parse_duration("P5D")
    assert check_duration("PT10S", days_only=True) == to_timedelta("PT10S")
    with pytest.raises(DurationError, match="months or years"):
        check_duration("P1M", days_only=True)
    with pytest.raises(DurationError, match="not an ISO 8601"):
        check_duration("-P1D")


DURATION_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("due-after", {"milestones": [_ms("x", due_after="P99999Y")]}, "P99999Y"),
    ("playbook-override", {"milestones": [{"key": "shipping", "due_after": "P1000000D"}]}, "P1000000D"),
    ("absurd-hours", {"milestones": [_ms("x", due_after="PT99999999999999999999H")]}, "PT99999999999999999999H"),
    ("milestone-reminder", {"milestones": [_ms("x", due_after="P5D", reminders=["P1000000D"])]}, "reminders"),
    ("installment-due-after", {"installments": [{"key": "all", "amount": "120000.00", "due_after": "P99999Y"}]},
     "P99999Y"),
    ("policy-reminder", {"notifications": {"reminders": ["P1000000D"]}}, "notifications.reminders"),
    ("escalation-after", {"notifications": {"escalation": [{"after": "P1000000D", "to": ["owner"],
                                                            "channels": ["email"]}]}}, "escalation"),
    ("renewal-term", {"renewal": {"auto_renew": True, "term": "P99999Y"}}, "renewal.term"),
    ("renewal-reminder", {"renewal": {"reminders": ["P1000000D"]}}, "renewal.reminders"),
    ("approval-within", {"amendments": {"approval_within": "P1000000D"}}, "approval_within"),
]


@pytest.mark.parametrize("overrides,needle", [c[1:] for c in DURATION_CASES], ids=[c[0] for c in DURATION_CASES])
async def test_durations_above_a_century_are_refused(c, overrides, needle):
    await _refused_creation(c, contract_request(NOW, **overrides), 422, needle, "at most 100 years")


async def test_an_amendment_shift_above_a_century_is_refused(c):
    cid = await _new_contract(c)
    before = await settled(c, cid)
    for shift in ("P99999Y", "-P99999Y", "P1000000D", "PT99999999999999999999H"):
        r = await c.post(f"/contracts/{cid}/amendments",
                         json={"reason": "site", "changes": [{"kind": "move_due", "key": "shipping", "shift": shift}]})
        assert_problem(r, 422, "changes[0].shift", "at most 100 years")
    await assert_unchanged(c, cid, before)


# ------------------------------------------------------------------ 3. deep JSON, large bodies
def _nested(depth: int, leaf, kind: str = "object"):
    value = leaf
    for _ in range(depth):
        value = {"a": value} if kind == "object" else [value]
    return value


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 400, 100_000])
async def test_deeply_nested_json_is_refused(c, depth):
    before = await _total(c)
    deep_object = json.dumps(_nested(depth, 1)) if depth < 1000 else '{"a":' * depth + "1" + "}" * depth
    deep_array = "[" * depth + "]" * depth
    # Anywhere: the whole body, a field typed dict (amendment approvals), a field typed str.
    bodies = [
        ("/contracts", deep_object),
        ("/contracts", deep_array),
        ("/contracts", json.dumps(contract_request(NOW, amendments={"approvals": {"money": _nested(depth - 3, [])}}))
         if depth < 1000 else None),
        ("/webhooks", '{"url": "http://127.0.0.1:9/x", "event_types": ' + deep_array + "}"),
        ("/users", '{"id": "deep", "name": ' + deep_object + "}"),
    ]
    for path, body in bodies:
        if body is None:
            continue
        r = await c.post(path, content=body, headers={"content-type": "application/json"})
        assert_problem(r, 422, f"nested more than {MAX_JSON_DEPTH} levels")
    assert await _total(c) == before


async def test_json_as_deep_as_allowed_reaches_the_route(c):
    r = await c.post("/contracts", content=json.dumps(_nested(MAX_JSON_DEPTH, 1)),
                     headers={"content-type": "application/json"})
    assert_problem(r, 422)  # the schema refuses it (unknown field 'a'), not the depth guard
    assert "nested" not in r.json()["detail"]


async def test_a_body_over_the_size_limit_is_413(api_service, c):
    limit = api_service.settings.max_json_body_bytes
    before = await _total(c)
    body = json.dumps(contract_request(NOW, title="x" * (limit + 1)))
    assert_problem(await c.post("/contracts", content=body, headers={"content-type": "application/json"}),
                   413, "MAX_JSON_BODY_BYTES")

    async def chunks():  # no Content-Length: counted while it is read
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    r = await c.post("/contracts", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM_JSON, r.text
    assert str(limit) in r.json()["detail"]
    assert await _total(c) == before


# ------------------------------------------------------------------ 4. huge text, too large a spec
async def test_a_3_mb_standard_is_refused_and_leaves_no_row(c):
    body = contract_request(NOW, milestones=[{"key": "shipping", "standard": "x" * 3_000_000}])
    await _refused_creation(c, body, 422, "milestones.0.standard", str(STANDARD_MAX))


TEXT_CASES = [
    ("title", {"title": "t" * 301}, "title"),
    ("customer-name", {"customer": {"name": "n" * 201}}, "customer.name"),
    ("milestone-name", {"milestones": [_ms("x", name="n" * 201, due_after="P5D")]}, "milestones.0.name"),
    ("owner", {"owner": "o" * 101}, "owner"),
    ("playbook", {"playbook": "p" * 61}, "playbook"),
    ("amount", {"amount": "1" * 41}, "amount"),
    ("effective-date", {"effective_date": "2" * 41}, "effective_date"),
    ("due-after-text", {"milestones": [_ms("x", due_after="P" + "1" * 40 + "D")]}, "milestones.0.due_after"),
]


@pytest.mark.parametrize("overrides,field", [c[1:] for c in TEXT_CASES], ids=[c[0] for c in TEXT_CASES])
async def test_overlong_text_is_refused(c, overrides, field):
    await _refused_creation(c, contract_request(NOW, **overrides), 422, field, "at most")


async def test_overlong_notes_reasons_and_messages_change_nothing(c):
    cid = await _new_contract(c)
    before = await settled(c, cid)
    long = "z" * 2001
    for path, body, field in [
        ("milestones/order_review/complete", {"note": long}, "note"),
        ("milestones/order_review/progress", {"percent": 10, "message": long}, "message"),
        ("milestones/order_review/waive", {"reason": long}, "reason"),
        ("terminate", {"reason": long}, "reason"),
        ("amendments", {"reason": "r" * 4001, "changes": [{"kind": "move_due", "key": "shipping", "shift": "P1D"}]},
         "reason"),
    ]:
        assert_problem(await c.post(f"/contracts/{cid}/{path}", json=body), 422, field, "at most")
    await assert_unchanged(c, cid, before)


async def test_a_spec_too_large_for_its_workflow_is_refused_before_its_row(api_service, c):
    # Every field within its cap, but together more than MAX_CONTRACT_SPEC_BYTES.
    limit = api_service.settings.max_contract_spec_bytes
    count = limit // STANDARD_MAX + 10
    assert count <= MILESTONES_MAX
    milestones = [_ms(f"m{k}", due_after="P5D", standard="s" * STANDARD_MAX) for k in range(count)]
    body = contract_request(NOW, playbook=None, milestones=milestones, external_id=f"big-{uuid.uuid4().hex[:8]}")
    await _refused_creation(c, body, 422, "too large", str(limit))
    r = await c.get("/contracts", params={"customer": body["customer"]["external_id"]})
    assert r.json()["total"] == 0


async def test_a_playbook_repeating_over_a_very_long_term_is_refused(c):
    # A monthly playbook over two centuries: thousands of milestones, refused before they are built.
    body = contract_request(NOW, playbook="service", effective_date="1990-01-01", end_date="2199-12-31")
    await _refused_creation(c, body, 422, "milestones", f"at most {CONTRACT_ITEMS_MAX}")


# ------------------------------------------------------------------ 5. list lengths
def _escalation(levels: int, **level) -> dict:
    return {"escalation": [{"after": f"P{k}D", "to": ["owner"], "channels": ["email"], **level}
                           for k in range(levels)]}


LIST_CASES = [
    ("milestones", {"milestones": [_ms(f"m{k}", due_after="P1D") for k in range(MILESTONES_MAX + 1)]},
     "milestones", MILESTONES_MAX),
    ("installments", {"installments": [{"key": f"i{k}", "amount": "1.00", "due_after": "P1D"} for k in range(121)]},
     "installments", 120),
    ("depends-on", {"milestones": [_ms("x", due_after="P1D", depends_on=[f"d{k}" for k in range(51)])]},
     "depends_on", 50),
    ("milestone-reminders", {"milestones": [_ms("x", due_after="P1D", reminders=["P1D"] * 11)]}, "reminders", 10),
    ("policy-reminders", {"notifications": {"reminders": ["P1D"] * 11}}, "notifications.reminders", 10),
    ("escalation-levels", {"notifications": _escalation(11)}, "notifications.escalation", 10),
    ("escalation-channels", {"notifications": _escalation(1, channels=["email", "webhook", "inbox", "email"])},
     "channels", 3),
    ("escalation-to", {"notifications": _escalation(1, to=["owner"] * 5)}, "to", 4),
    ("renewal-reminders", {"renewal": {"reminders": ["P1D"] * 11}}, "renewal.reminders", 10),
    ("approval-roles", {"amendments": {"approvals": {"money": [f"r{k}" for k in range(11)]}}}, "approvals", 10),
]


@pytest.mark.parametrize("overrides,field,cap", [c[1:] for c in LIST_CASES], ids=[c[0] for c in LIST_CASES])
async def test_overlong_lists_are_refused_with_their_cap(c, overrides, field, cap):
    await _refused_creation(c, contract_request(NOW, **overrides), 422, field, f"at most {cap}")


async def test_overlong_lists_elsewhere_are_refused_with_their_cap(c):
    cid = await _new_contract(c)
    before = await settled(c, cid)
    change = {"kind": "move_due", "key": "shipping", "shift": "P1D"}
    r = await c.post(f"/contracts/{cid}/amendments", json={"reason": "many", "changes": [change] * 51})
    assert_problem(r, 422, "changes", "at most 50")
    r = await c.post(f"/contracts/{cid}/communications",
                     json={"kind": "note", "body": "b", "attachments": [f"d{k}" for k in range(21)]})
    assert_problem(r, 422, "attachments", "at most 20")
    await assert_unchanged(c, cid, before)
    r = await c.post("/webhooks", json={"url": "http://127.0.0.1:9/x", "event_types": ["*"] * 51})
    assert_problem(r, 422, "event_types", "at most 50")
    r = await c.post("/api-keys", json={"name": "many", "roles": ["admin"] * 5})
    assert_problem(r, 422, "roles", "at most 4")


# ------------------------------------------------------------------ 6. webhooks to private addresses
PRIVATE_URLS = [
    "http://127.0.0.1:9/hooks",
    "http://localhost:8080/hooks",
    "http://10.1.2.3/hooks",
    "http://192.168.0.10/hooks",
    "http://172.16.5.4/hooks",
    "http://169.254.169.254/latest/meta-data",
    "http://0.0.0.0/hooks",
    "http://224.0.0.1/hooks",
    f"http://{socket.gethostname()}:9/hooks",  # a name that resolves to 127.0.0.1 (/etc/hosts)
]
# IPv6 literals: refused by the URL's pattern already (webhook URLs name hosts by DNS labels or IPv4).
IPV6_URLS = ["http://[::1]:8080/hooks", "http://[fc00::1]/hooks", "http://[fe80::1]/hooks",
             "http://[::ffff:127.0.0.1]/hooks"]


@pytest.fixture(scope="module")
async def strict_service(dev_env, tmp_path_factory, mailbox):
    """A service as production runs it: webhooks to private addresses refused (its own database: its
    audit trail is checked against its own requests)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('strict') / 'contracts.db'}"
    upgrade(url)
    async with running_service(dev_env, url, mailbox.port, webhook_allow_private_targets=False) as svc:
        yield svc


def test_the_tests_allow_private_targets_and_production_does_not():
    assert Settings().webhook_allow_private_targets is True  # tests/conftest.py
    assert Settings.model_fields["webhook_allow_private_targets"].default is False


async def test_webhook_urls_to_private_addresses_are_refused_at_registration(strict_service):
    async with httpx.AsyncClient(base_url=strict_service.base_url, timeout=30) as c:
        before = len((await c.get("/webhooks")).json())
        for url in PRIVATE_URLS:
            r = await c.post("/webhooks", json={"url": url, "event_types": ["*"]})
            assert_problem(r, 422, "url", "public addresses")
        for url in IPV6_URLS:
            assert_problem(await c.post("/webhooks", json={"url": url, "event_types": ["*"]}), 422, "url")
        assert len((await c.get("/webhooks")).json()) == before
        # A PATCH to a private URL is refused too, and leaves the subscription as it was.
        r = await c.post("/webhooks", json={"url": "https://hooks.example.com/contracts", "event_types": ["*"]})
        assert r.status_code == 201, r.text  # a name that does not resolve (yet) is judged at delivery
        sid = r.json()["id"]
        for url in PRIVATE_URLS[:3]:
            assert_problem(await c.patch(f"/webhooks/{sid}", json={"url": url}), 422, "url", "public addresses")
        assert (await c.get(f"/webhooks/{sid}")).json()["url"] == "https://hooks.example.com/contracts"
        # Departments' webhook endpoints: the same rule.
        dept = (await c.get("/departments/sales")).json()
        for url in PRIVATE_URLS[:4] + IPV6_URLS:  # (department URLs may be IPv6 literals)
            r = await c.put("/departments/sales", json={"name": dept["name"], "webhook_url": url})
            assert_problem(r, 422, "webhook_url", "public addresses")
            r = await c.post("/departments", json={"key": f"d{uuid.uuid4().hex[:6]}", "name": "D", "webhook_url": url})
            assert_problem(r, 422, "webhook_url", "public addresses")
        assert (await c.get("/departments/sales")).json() == dept
        await c.delete(f"/webhooks/{sid}")


class _Receiver:
    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                receiver.requests.append((self.headers.get("Host", ""),
                                          self.rfile.read(int(self.headers.get("Content-Length", "0")))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_a_webhook_whose_host_now_resolves_privately_fails_at_delivery(strict_service):
    """Registered while its name pointed elsewhere; DNS now says 127.0.0.1: nothing is sent, the
    delivery is recorded failed (permanent: one attempt) and the next event goes on."""
    from core.webhooks import store
    from models.db import make_engine, make_session_factory

    receiver = _Receiver()
    engine = make_engine(strict_service.settings.database_url)
    try:
        url = f"http://{socket.gethostname()}:{receiver.port}/hooks"  # resolves to 127.0.0.1
        with make_session_factory(engine).begin() as session:  # as if registered before DNS changed
            sid = store.create_subscription(session, url=url, secret="s" * 20, event_types=["contract.*"]).id
        async with httpx.AsyncClient(base_url=strict_service.base_url, timeout=30) as c:
            cid = await _new_contract(c)

            async def failed():
                r = await c.get(f"/webhooks/{sid}/deliveries", params={"contract_id": cid})
                items = r.json()["items"]
                return items if items and all(d["status"] == "failed" for d in items) else None

            deliveries = await wait_for(failed, timeout=30)
            assert all(d["attempts"] == 1 and "public addresses" in d["error"] for d in deliveries), deliveries
            ping = (await c.post(f"/webhooks/{sid}/test")).json()
            assert ping["delivered"] is False and "public addresses" in ping["error"], ping
            await c.delete(f"/webhooks/{sid}")
        assert receiver.requests == []
    finally:
        engine.dispose()
        receiver.close()


def test_delivery_connects_to_the_address_it_checked():
    """A name is resolved once, checked, and that address is the one connected to (with the URL's
    Host): a second lookup cannot swap in another address."""
    receiver = _Receiver()
    try:
        allowed = Settings(webhook_allow_private_targets=True)
        assert post_webhook(allowed, f"http://localhost:{receiver.port}/x", "secret", {"a": 1}, event_id="e-1") == 204
        assert receiver.requests == [(f"localhost:{receiver.port}", b'{"a":1}')]
        strict = Settings(webhook_allow_private_targets=False)
        for url in (f"http://localhost:{receiver.port}/x", f"http://127.0.0.1:{receiver.port}/x",
                    f"http://{socket.gethostname()}:{receiver.port}/x"):
            with pytest.raises(PermanentDeliveryError, match="public addresses"):
                post_webhook(strict, url, "secret", {"a": 1}, event_id="e-2")
        assert len(receiver.requests) == 1
    finally:
        receiver.close()


# ------------------------------------------------------------------ 7. login throttling
async def _person(c: httpx.AsyncClient, password: str = "a long password") -> str:
    uid = f"throttle.{uuid.uuid4().hex[:8]}"
    r = await c.post("/users", json={"id": uid, "name": uid, "email": f"{uid}@example.com", "department": "sales"})
    assert r.status_code == 201, r.text
    r = await c.post("/auth/password", json={"user_id": uid, "new_password": password})
    assert r.status_code == 204, r.text
    return uid


async def _log_in(url: str, user: str, password: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=30) as anon:
        return await anon.post("/auth/token", data={"username": user, "password": password})


async def test_failed_log_ins_are_throttled_and_a_success_resets(api_service):
    await _throttled_and_reset(api_service)


async def test_failed_log_ins_are_throttled_and_a_success_resets_on_postgres(api_service_pg):
    await _throttled_and_reset(api_service_pg)


async def _throttled_and_reset(service) -> None:
    limit = service.settings.login_max_failures
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as c:
        uid = await _person(c)
    for _ in range(limit - 1):
        assert (await _log_in(service.url, uid, "wrong")).status_code == 401
    assert (await _log_in(service.url, uid, "a long password")).status_code == 200  # resets the count
    for _ in range(limit - 1):
        assert (await _log_in(service.url, uid, "wrong")).status_code == 401
    assert (await _log_in(service.url, uid, "wrong")).status_code == 401  # the limit-th failure: blocked now
    for password in ("wrong", "a long password"):  # refused whatever the password, until Retry-After
        r = await _log_in(service.url, uid, password)
        problem = assert_problem(r, 429, "too many failed log-ins")
        assert problem["type"] == "/problems/too-many-log-ins"
        assert 0 < int(r.headers["Retry-After"]) <= service.settings.login_lockout_seconds
    # Others are not affected.
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as c:
        other = await _person(c)
    assert (await _log_in(service.url, other, "a long password")).status_code == 200


async def test_log_in_ignores_letter_case_and_case_variants_count_as_one_name(api_service):
    """'LI.WEI' logs in as li.wei (ids differing only in case are one person), so its failures
    count against li.wei: varying the case is not a way round the throttle."""
    limit = api_service.settings.login_max_failures
    async with httpx.AsyncClient(base_url=api_service.base_url, timeout=30) as c:
        uid = await _person(c)
    r = await _log_in(api_service.url, uid.upper(), "a long password")
    assert r.status_code == 200, r.text
    async with httpx.AsyncClient(base_url=api_service.url, timeout=30,
                                 headers={"authorization": f"Bearer {r.json()['access_token']}"}) as me:
        assert (await me.get("/auth/me")).json()["id"] == uid  # the person, under their own id
    variants = [uid.upper(), uid.title(), uid, uid.swapcase()]
    for n in range(limit):
        assert (await _log_in(api_service.url, variants[n % len(variants)], "wrong")).status_code == 401
    assert (await _log_in(api_service.url, uid, "a long password")).status_code == 429


async def test_the_throttle_holds_across_api_replicas(dev_env, api_service_pg):
    """Two API processes on one database count the same failures."""
    settings = api_service_pg.settings.model_copy(update={"seed_demo_org": False})
    async with httpx.AsyncClient(base_url=api_service_pg.base_url, timeout=30) as c:
        uid = await _person(c)
    async with running_api(settings) as second:
        replicas = [api_service_pg.url, second]
        for n in range(settings.login_max_failures):
            assert (await _log_in(replicas[n % 2], uid, "wrong")).status_code == 401
        for url in replicas:
            assert (await _log_in(url, uid, "a long password")).status_code == 429


def test_failures_from_one_address_are_throttled_across_names(sessions):
    settings = Settings(login_max_failures=3, login_max_failures_per_address=4, login_lockout_seconds=60)
    throttle = LoginLimiter(settings)
    for n in range(4):  # one failure each for four names, from one address
        with sessions.begin() as session:
            throttle.check(session, f"name{n}", "203.0.113.7")
            throttle.failed(session, f"name{n}", "203.0.113.7")
    with sessions.begin() as session, pytest.raises(TooManyAttempts) as refused:
        throttle.check(session, "someone.else", "203.0.113.7")
    assert refused.value.status == 429 and 0 < int(refused.value.headers["Retry-After"]) <= 60
    with sessions.begin() as session:
        throttle.check(session, "someone.else", "198.51.100.1")  # another address is not blocked
        for _ in range(3):
            throttle.failed(session, "victim", "198.51.100.1")
    with sessions.begin() as session, pytest.raises(TooManyAttempts):
        throttle.check(session, "victim", "192.0.2.99")  # the name is blocked from anywhere


async def test_the_dashboard_login_is_throttled_too(api_service):
    async with httpx.AsyncClient(base_url=api_service.base_url, timeout=30) as c:
        uid = await _person(c)
    async with httpx.AsyncClient(base_url=api_service.url, timeout=30) as anon:
        for _ in range(api_service.settings.login_max_failures):
            r = await anon.post("/ui/login", data={"username": uid, "password": "wrong"})
            assert r.status_code == 401
        r = await anon.post("/ui/login", data={"username": uid, "password": "a long password"},
                            headers={"accept": "text/html"})
        assert r.status_code == 429 and "Retry-After" in r.headers


# ------------------------------------------------------------------ 8. LIKE wildcards in ?customer=
async def test_customer_filter_matches_percent_and_underscore_literally(api_service):
    await _wildcards_are_literal(api_service)


async def test_customer_filter_matches_percent_and_underscore_literally_on_postgres(api_service_pg):
    await _wildcards_are_literal(api_service_pg)


async def _wildcards_are_literal(service) -> None:
    tag = uuid.uuid4().hex[:6]
    names = {"percent": f"{tag} 100% Steel", "plain": f"{tag} 1000 Steel", "underscore": f"{tag} Steel_Works",
             "letter": f"{tag} SteelXWorks"}
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as c:
        ids = {}
        for label, name in names.items():
            ids[label] = await _new_contract(c, customer={"name": name})

        async def found(query: str) -> set[str]:
            r = await c.get("/contracts", params={"customer": query, "limit": 500})
            assert r.status_code == 200, r.text
            return {item["id"] for item in r.json()["items"]}

        assert await found(f"{tag} 100%") == {ids["percent"]}
        assert await found(f"{tag} steel_w") == await found(f"{tag} STEEL_W") == {ids["underscore"]}
        assert await found(f"{tag} Steel") == {ids["underscore"], ids["letter"]}  # a plain substring still matches
        assert await found(f"{tag}%Steel") == set()
        assert await found(f"{tag} _000") == set()
        assert await found("\\") is not None  # the escape character itself is just a character
        r = await c.get("/contracts", params={"customer": "%"})
        assert r.status_code == 200 and all("%" in i["customer"] for i in r.json()["items"])


async def test_bad_input_left_no_server_error(c):
    """The cases above, sent together once more, answer no 5xx (guards against a 500 slipping in)."""
    bodies = [contract_request(NOW, **overrides) for _, overrides, _ in DATE_CASES + DURATION_CASES]
    answers = await asyncio.gather(*(c.post("/contracts", json=b) for b in bodies))
    assert all(400 <= r.status_code < 500 for r in answers), [r.status_code for r in answers]


# ------------------------------------------------------------------ owners nobody answers to
@pytest.mark.parametrize("overrides, field, needle", [
    ({"owner": "ghost"}, "owner", "no user 'ghost'"),
    ({"milestones": [_ms("site_survey", owner="ghost", due_after="P5D")]}, "milestones[site_survey].owner",
     "no user 'ghost'"),
    ({"milestones": [_ms("site_survey", department="nodept", due_after="P5D")]}, "milestones[site_survey].department",
     "no department 'nodept'"),
])
async def test_a_contract_owned_by_nobody_the_organisation_knows_is_refused(c, overrides, field, needle):
    """Every milestone has exactly one owner who can be reminded: an unknown person or department
    (a typo, someone not yet added) is a 422 naming the field, and no contract appears."""
    problem = await _refused_creation(c, contract_request(datetime.now(timezone.utc), **overrides), 422, needle)
    assert field in [e["field"] for e in problem["errors"]], problem


async def test_an_inactive_person_cannot_be_given_a_milestone(c):
    uid = f"left.{uuid.uuid4().hex[:6]}"
    assert (await c.post("/users", json={"id": uid, "name": uid, "email": f"{uid}@example.com",
                                         "department": "delivery"})).status_code == 201
    assert (await c.patch(f"/users/{uid}", json={"active": False})).status_code == 200
    body = contract_request(datetime.now(timezone.utc), milestones=[_ms("site_survey", owner=uid, due_after="P5D")])
    await _refused_creation(c, body, 422, f"user '{uid}' is inactive")


@pytest.mark.parametrize("change, needle", [
    ({"kind": "change_owner", "key": "shipping", "owner": "ghost"}, "changes[0].owner: no user 'ghost'"),
    ({"kind": "add_milestone", "milestone": _ms("site_survey", owner="ghost", due_after="P5D")},
     "changes[0].milestone.owner: no user 'ghost'"),
    ({"kind": "add_milestone", "milestone": _ms("site_survey", department="nodept", due_after="P5D")},
     "changes[0].milestone.department: no department 'nodept'"),
])
async def test_an_amendment_cannot_hand_a_milestone_to_an_unknown_owner(c, change, needle):
    cid = await _new_contract(c)
    before = await settled(c, cid)
    r = await c.post(f"/contracts/{cid}/amendments", json={"reason": "reorganised", "changes": [change]})
    assert_problem(r, 422, needle)
    await assert_unchanged(c, cid, before)
    assert (await c.get(f"/contracts/{cid}/amendments")).json() == []


@pytest.mark.parametrize("shift", ["P0D", "PT0S", "-P0D", "P0Y0M0D"])
async def test_an_amendment_that_moves_nothing_is_refused(c, shift):
    """It would still become a contract version and a supplementary agreement changing nothing."""
    cid = await _new_contract(c)
    before = await settled(c, cid)
    r = await c.post(f"/contracts/{cid}/amendments",
                     json={"reason": "no-op", "changes": [{"kind": "move_due", "key": "shipping", "shift": shift}]})
    assert_problem(r, 422, "changes[0].shift", "moves nothing")
    due = next(m["due_at"] for m in before[0]["milestones"] if m["key"] == "order_review")
    r = await c.post(f"/contracts/{cid}/amendments",
                     json={"reason": "no-op", "changes": [{"kind": "move_due", "key": "order_review", "due_at": due}]})
    assert_problem(r, 422, "changes[0].due_at", "already due at")
    await assert_unchanged(c, cid, before)
    assert (await c.get(f"/contracts/{cid}/amendments")).json() == []


async def test_money_received_in_the_future_is_refused(c):
    """A payment (or a bank line) dated ahead is a typo, not money in the bank: 422 (the line
    alone rejected), nothing applied; a day's grace for zones and clocks."""
    from datetime import timedelta

    cid = await _new_contract(c)
    before = await settled(c, cid)
    ahead = (datetime.now(timezone.utc) + timedelta(days=2)).isoformat()
    pay = {"reference": "AHEAD-1", "amount": "1.00", "currency": "CNY", "received_at": ahead}
    assert_problem(await c.post(f"/contracts/{cid}/payments", json=pay), 422, "received_at", "in the future")
    await assert_unchanged(c, cid, before)
    r = await c.post("/integrations/finance/payments", json={"lines": [
        {"line_id": f"ahead-{cid}", "amount": "1.00", "currency": "CNY", "contract_id": cid, "received_at": ahead}]})
    assert r.status_code == 200 and r.json()["lines"][0]["outcome"] == "rejected", r.text
    assert "in the future" in r.json()["lines"][0]["reason"]
    soon = (datetime.now(timezone.utc) + timedelta(hours=12)).isoformat()  # a zone ahead, or a fast clock
    r = await c.post(f"/contracts/{cid}/payments", json={**pay, "reference": "SOON-1", "received_at": soon})
    assert r.status_code == 200 and r.json()["applied"] is True, r.text


async def test_money_dated_years_before_the_contract_is_refused(c):
    """A year mistyped (2016 for 2026) is not an advance payment: more than a year before the
    contract took effect is refused (422, the bank line alone rejected), nothing applied; a deposit
    months before it is money like any other."""
    from datetime import timedelta

    cid = await _new_contract(c)
    before = await settled(c, cid)
    typo = (datetime.now(timezone.utc) - timedelta(days=3653)).isoformat()
    pay = {"reference": "TYPO-1", "amount": "1.00", "currency": "CNY", "received_at": typo}
    assert_problem(await c.post(f"/contracts/{cid}/payments", json=pay), 422, "received_at",
                   "more than a year before the contract took effect")
    await assert_unchanged(c, cid, before)
    r = await c.post("/integrations/finance/payments", json={"lines": [
        {"line_id": f"typo-{cid}", "amount": "1.00", "currency": "CNY", "contract_id": cid, "received_at": typo}]})
    assert r.status_code == 200 and r.json()["lines"][0]["outcome"] == "rejected", r.text
    assert "more than a year before" in r.json()["lines"][0]["reason"]
    await assert_unchanged(c, cid, before)
    deposit = (datetime.now(timezone.utc) - timedelta(days=300)).isoformat()
    r = await c.post(f"/contracts/{cid}/payments", json={**pay, "reference": "DEPOSIT-1", "received_at": deposit})
    assert r.status_code == 200 and r.json()["applied"] is True, r.text


async def test_malformed_json_says_where_it_breaks_not_a_field_named_1(c):
    r = await c.post("/contracts", content=b'{"title": "x",', headers={"content-type": "application/json"})
    problem = assert_problem(r, 422, "not valid JSON at character")
    assert [e["field"] for e in problem["errors"]] == [""], problem
