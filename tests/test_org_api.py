"""People, departments, the task inbox and notification logs through the real API.

The service is shared by the whole session: every test names its own people (uuid suffix).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import httpx
import pytest

from core import org
from models.db import make_engine, make_session_factory
from tests.helpers import contract_request

PROBLEM = "application/problem+json"


def uid(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def repo(api_service):
    """Sessions on the service's own database, to write what the workflow side would."""
    engine = make_engine(api_service.settings.database_url)
    yield make_session_factory(engine)
    engine.dispose()


def assert_problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status and body["detail"]
    return body


async def test_departments_and_users_round_trip(api_service):
    async with httpx.AsyncClient(base_url=api_service.base_url) as c:
        dept = uid("fin")
        r = await c.post("/departments", json={"key": dept, "name": "Finance", "webhook_url": "https://chat.example.com/hook",
                                               "webhook_secret": "s3cret"})
        assert r.status_code == 201, r.text
        assert r.json() == {"key": dept, "name": "Finance", "head_id": None, "default_assignee_id": None,
                            "webhook_url": "https://chat.example.com/hook", "webhook_secret_set": True}

        boss, clerk = uid("zhou"), uid("sun")
        r = await c.post("/users", json={"id": boss, "name": "周强", "email": f"{boss}@example.com", "department": dept})
        assert r.status_code == 201, r.text
        assert r.json()["locale"] == "zh" and r.json()["active"] is True and r.json()["manager_id"] is None
        r = await c.post("/users", json={"id": clerk, "name": "Sun Li", "email": f"{clerk}@example.com",
                                         "department": dept, "manager_id": boss, "locale": "en"})
        assert r.status_code == 201, r.text

        r = await c.put(f"/departments/{dept}", json={"name": "财务部", "head_id": boss, "default_assignee_id": clerk,
                                                       "webhook_url": "https://chat.example.com/hook"})
        assert r.status_code == 200, r.text
        assert r.json()["head_id"] == boss and r.json()["default_assignee_id"] == clerk
        assert r.json()["webhook_secret_set"] is True  # left out: kept
        assert "webhook_secret" not in r.json()  # write-only
        listed = {d["key"]: d for d in (await c.get("/departments")).json()}
        assert listed[dept]["name"] == "财务部"

        people = (await c.get("/users", params={"department": dept})).json()
        assert [p["id"] for p in people] == sorted([boss, clerk])
        assert (await c.get(f"/users/{clerk}")).json()["manager_id"] == boss

        r = await c.patch(f"/users/{clerk}", json={"locale": "zh", "active": False})
        assert r.status_code == 200 and r.json()["locale"] == "zh" and r.json()["active"] is False
        assert r.json()["manager_id"] == boss  # untouched
        r = await c.patch(f"/users/{clerk}", json={"manager_id": None})
        assert r.status_code == 200 and r.json()["manager_id"] is None
        inactive = (await c.get("/users", params={"department": dept, "active": "false"})).json()
        assert [p["id"] for p in inactive] == [clerk]


async def test_user_and_department_errors_are_problems(api_service):
    async with httpx.AsyncClient(base_url=api_service.base_url) as c:
        a, b, c_ = uid("a"), uid("b"), uid("c")
        for user, manager in ((a, None), (b, a), (c_, b)):
            r = await c.post("/users", json={"id": user, "name": user, "email": f"{user}@example.com",
                                             "manager_id": manager})
            assert r.status_code == 201, r.text

        # 409: taken id / key.
        body = assert_problem(await c.post("/users", json={"id": a, "name": "again", "email": "x@example.com"}), 409)
        assert a in body["detail"]
        dept = uid("dept")
        assert (await c.post("/departments", json={"key": dept, "name": "D"})).status_code == 201
        assert_problem(await c.post("/departments", json={"key": dept, "name": "D"}), 409)

        # 404: unknown user / department.
        assert_problem(await c.get(f"/users/{uid('nobody')}"), 404)
        assert_problem(await c.patch(f"/users/{uid('nobody')}", json={"name": "x"}), 404)
        assert_problem(await c.put(f"/departments/{uid('nodept')}", json={"name": "x"}), 404)

        # 422: unknown references, cycles, bad input.
        body = assert_problem(await c.post("/users", json={"id": uid("d"), "name": "d", "email": "d@example.com",
                                                           "manager_id": uid("ghost")}), 422)
        assert body["errors"][0]["field"] == "manager_id"
        body = assert_problem(await c.post("/users", json={"id": uid("d"), "name": "d", "email": "d@example.com",
                                                           "department": uid("nodept")}), 422)
        assert body["errors"][0]["field"] == "department"
        body = assert_problem(await c.patch(f"/users/{a}", json={"manager_id": c_}), 422)  # a <- b <- c <- a
        assert "cycle" in body["detail"]
        assert_problem(await c.patch(f"/users/{a}", json={"manager_id": a}), 422)
        assert (await c.get(f"/users/{a}")).json()["manager_id"] is None  # nothing changed
        assert_problem(await c.patch(f"/users/{a}", json={"name": None}), 422)
        assert_problem(await c.patch(f"/users/{a}", json={"locale": "fr"}), 422)
        assert_problem(await c.post("/users", json={"id": "bad id!", "name": "x", "email": "x@example.com"}), 422)
        assert_problem(await c.post("/users", json={"id": uid("e"), "name": "x", "email": "not-an-email"}), 422)
        assert_problem(await c.put(f"/departments/{dept}", json={"name": "D", "head_id": uid("ghost")}), 422)


async def test_task_inbox_and_ack(api_service, repo):
    owner = uid("sun")
    contract = uid("c")
    with repo.begin() as session:
        first, _ = org.open_task(session, f"handoff:{contract}:invoicing", contract, "invoicing", owner,
                                 "Issue the invoice", "Goods accepted by the customer.")
        second, _ = org.open_task(session, f"handoff:{contract}:payment_collection", contract, "payment_collection",
                                  owner, "Collect payment", "")
        _, created = org.open_task(session, f"handoff:{contract}:invoicing", contract, "invoicing", owner, "dup", "")
        assert created is False

    async with httpx.AsyncClient(base_url=api_service.base_url) as c:
        inbox = (await c.get("/tasks", params={"assignee": owner, "status": "open"})).json()
        assert [t["id"] for t in inbox] == [second.id, first.id]  # newest first
        assert inbox[1]["title"] == "Issue the invoice" and inbox[1]["status"] == "open"

        r = await c.post(f"/tasks/{first.id}/ack", json={"by": owner})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "acked" and r.json()["acked_by"] == owner and r.json()["acked_at"]
        assert_problem(await c.post(f"/tasks/{first.id}/ack", json={"by": owner}), 409)
        assert_problem(await c.post("/tasks/999999999/ack", json={"by": owner}), 404)
        assert_problem(await c.post(f"/tasks/{first.id}/ack", json={"by": ""}), 422)

        still_open = (await c.get("/tasks", params={"assignee": owner, "status": "open"})).json()
        assert [t["id"] for t in still_open] == [second.id]
        everything = (await c.get("/tasks", params={"assignee": owner})).json()
        assert {t["status"] for t in everything} == {"open", "acked"}
        assert_problem(await c.get("/tasks", params={"status": "sleeping"}), 422)


async def test_contract_notifications(api_service, repo):
    async with httpx.AsyncClient(base_url=api_service.base_url) as c:
        assert_problem(await c.get(f"/contracts/{uuid.uuid4().hex[:16]}/notifications"), 404)

        r = await c.post("/contracts", json=contract_request(datetime.now(timezone.utc)))
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        # The contract's own reminders may land any moment (order review's P7D reminder is due at
        # once): this test looks only at the shipping notices it records itself.
        def shipping(rows: list[dict]) -> list[dict]:
            return [n for n in rows if ":milestone:shipping:" in n["key"]]

        assert shipping((await c.get(f"/contracts/{cid}/notifications")).json()) == []

        def decide(level: int, recipient: str, role: str, channel: str) -> str:
            key = f"{cid}:milestone:shipping:level{level}:{recipient}:{channel}"
            with repo.begin() as session:
                org.record_notification_decision(
                    session, key=key, contract_id=cid, item_type="milestone", item_key="shipping", level=level,
                    kind="reminder" if level == 0 else "escalation", recipient=recipient, role=role,
                    channel=channel, subject=f"Shipping level {level}", body="…")
            return key

        k1 = decide(0, "li.wei", "owner", "email")
        k2 = decide(1, "zhang.min", "manager", "email")
        decide(1, "zhang.min", "manager", "email")  # a retry: still two
        with repo.begin() as session:
            org.mark_notification_sent(session, k1)
            org.mark_notification_failed(session, k2, "connection refused")

        rows = shipping((await c.get(f"/contracts/{cid}/notifications")).json())
        assert [(n["key"], n["status"]) for n in rows] == [(k1, "sent"), (k2, "failed")]
        assert rows[0]["sent_at"] and rows[1]["error"] == "connection refused" and rows[1]["attempts"] == 1
        assert rows[1]["role"] == "manager" and rows[1]["level"] == 1
