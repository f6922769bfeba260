"""Amendments through the API on the real dev server: impact, approval by role (who may approve
is checked against the organisation), versions, the supplementary agreement as a document, and
clear 4xx answers that change nothing."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from tests.helpers import contract_request, wait_for

PROBLEM = "application/problem+json"


async def _create(c: httpx.AsyncClient, **overrides) -> str:
    r = await c.post("/contracts", json=contract_request(datetime.now(timezone.utc), **overrides))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _deliver_late_tasks(database_url: str, cid: str, items: dict) -> dict:
    """What the inbox channel does (activities/notify.py): insert the task, then close it if its
    item is settled in the read model; the statuses the tasks end with."""
    from sqlalchemy import select

    from core import org
    from models import Task
    from models.db import make_engine

    engine = make_engine(database_url)
    statuses = {}
    try:
        for item_type, item_key in items:
            key = f"{cid}:{item_type}:{item_key}:late{uuid.uuid4().hex[:6]}:approval0:liu.yang:inbox"
            with engine.begin() as conn:
                org.task_once(conn, key=key, contract_id=cid, milestone_key=None, assignee="liu.yang", title="late")
            with engine.begin() as conn:
                org.close_task_if_settled(conn, key=key, contract_id=cid, item_type=item_type, item_key=item_key)
            with engine.connect() as conn:
                statuses[(item_type, item_key)] = conn.execute(select(Task.status).where(Task.key == key)).scalar_one()
    finally:
        engine.dispose()
    return statuses


async def _all_have(found) -> bool:
    return all((await found).values())


async def _none_have(found) -> bool:
    return not any((await found).values())


async def _problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    return r.json()


@pytest.fixture(params=["sqlite", "postgres"])
def service(request):
    return request.getfixturevalue("api_service" if request.param == "sqlite" else "api_service_pg")


async def test_amendment_request_approve_version_and_agreement(service):
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as c:
        cid = await _create(c)
        before = (await c.get(f"/contracts/{cid}")).json()
        shipping_due = next(m["due_at"] for m in before["milestones"] if m["key"] == "shipping")
        r = await c.post(f"/contracts/{cid}/amendments", json={
            "requested_by": "li.wei", "reason": "Customer's site not ready; shipping moves 10 days",
            "changes": [{"kind": "move_due", "key": "shipping", "shift": "P10D"},
                        {"kind": "change_amount", "amount": "130000.00"}],
        })
        assert r.status_code == 201, r.text
        a = r.json()
        assert a["status"] == "pending" and a["required_roles"] == ["manager", "finance", "legal"]
        assert a["approvers"] == {"manager": "zhang.min", "finance": "sun.li", "legal": "liu.yang"}
        assert a["impact"]["amount_delta"] == "10000.00" and a["impact"]["new_outstanding"] == "130000.00"
        ship = next(i for i in a["impact"]["milestones"] if i["key"] == "shipping")
        assert ship["change"] == "moved" and ship["shift_days"] == 10

        # An approver must hold the role: a salesperson cannot approve as legal (403), nor as manager.
        p = await _problem(await c.post(f"/contracts/{cid}/amendments/{a['id']}/approve",
                                        json={"by": "li.wei", "role": "legal"}), 403)
        assert "legal" in p["detail"]
        await _problem(await c.post(f"/contracts/{cid}/amendments/{a['id']}/approve",
                                    json={"by": "wang.fang", "role": "manager"}), 403)
        # Several roles pending: say which one.
        await _problem(await c.post(f"/contracts/{cid}/amendments/{a['id']}/approve", json={"by": "zhang.min"}), 422)

        async def approval_tasks(status: str) -> dict[str, list]:
            found = {}
            for person in ("zhang.min", "sun.li", "liu.yang"):
                tasks = (await c.get("/tasks", params={"assignee": person, "status": status, "limit": 500})).json()
                found[person] = [t for t in tasks if t["contract_id"] == cid and f":approval:{a['id']}:" in t["key"]]
            return found

        # Each approver has the request in their inbox (the notice is delivered by the outbox)...
        await wait_for(lambda: _all_have(approval_tasks("open")))
        for by, role in (("zhang.min", "manager"), ("sun.li", "finance")):
            r = await c.post(f"/contracts/{cid}/amendments/{a['id']}/approve", json={"by": by, "role": role})
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "pending"
        assert (await c.get(f"/contracts/{cid}")).json()["amount"] == "120000.00"
        r = await c.post(f"/contracts/{cid}/amendments/{a['id']}/approve",
                         json={"by": "liu.yang", "role": "legal", "comment": "clause 4 checked"})
        assert r.status_code == 200 and r.json()["status"] == "applied" and r.json()["contract_version"] == 2

        # ... and it leaves their open tasks once the amendment is decided.
        await wait_for(lambda: _none_have(approval_tasks("open")))
        assert all(len(done) == 1 for done in (await approval_tasks("done")).values())
        # A notice delivered after its item settled (the outbox was behind) is done at once;
        # one about an item still open stays open.
        late = _deliver_late_tasks(service.settings.database_url, cid, {
            ("approval", f"{a['id']}:legal"): "done", ("milestone", "shipping"): "open"})
        assert late == {("approval", f"{a['id']}:legal"): "done", ("milestone", "shipping"): "open"}

        after = (await c.get(f"/contracts/{cid}")).json()
        assert after["amount"] == "130000.00" and after["outstanding"] == "130000.00"
        new_ship = next(m["due_at"] for m in after["milestones"] if m["key"] == "shipping")
        assert datetime.fromisoformat(new_ship) - datetime.fromisoformat(shipping_due) == timedelta(days=10)

        versions = (await c.get(f"/contracts/{cid}/versions")).json()
        assert [v["version"] for v in versions] == [1, 2]
        assert {d["by"] for d in versions[1]["approved_by"]} == {"zhang.min", "sun.li", "liu.yang"}
        assert {x["clause"] for x in versions[1]["clauses"]} >= {"milestone.shipping.due", "amount"}

        async def agreement():
            docs = (await c.get(f"/contracts/{cid}/documents")).json()
            return docs if docs else None

        docs = await wait_for(agreement)
        assert docs[0]["kind"] == "supplementary_agreement" and docs[0]["version"] == 1
        body = await c.get(docs[0]["download_url"])
        assert body.status_code == 200 and body.headers["content-type"].startswith("text/html")
        assert hashlib.sha256(body.content).hexdigest() == docs[0]["sha256"] == body.headers["x-content-sha256"]
        html = body.text
        assert "补充协议" in html and "130,000.00 CNY" in html and "120,000.00 CNY" in html
        wanted = {"amendment.requested", "amendment.approval", "amendment.approved", "amendment.applied",
                  "document.created"}

        async def logged():  # the document row can land before its event is projected
            types = {e["type"] for e in (await c.get(f"/contracts/{cid}/events")).json()}
            return wanted <= types

        await wait_for(logged)
        await _problem(await c.get(f"/contracts/{cid}/documents/nope/content"), 404)
        # Decided is decided.
        await _problem(await c.post(f"/contracts/{cid}/amendments/{a['id']}/reject",
                                    json={"by": "zhang.min", "role": "manager"}), 409)


async def test_an_amendment_overtaken_by_another_cannot_be_approved(api_service):
    """Two pending "shipping +10 days": once the first is applied, the second's impact (from the
    original date) no longer holds; approving it is a 409 and moves nothing; it can be rejected."""
    async with httpx.AsyncClient(base_url=api_service.base_url, timeout=30) as c:
        cid = await _create(c)
        url = f"/contracts/{cid}/amendments"
        move = {"requested_by": "li.wei", "reason": "site not ready",
                "changes": [{"kind": "move_due", "key": "shipping", "shift": "P10D"}]}
        first, second = [(await c.post(url, json=move)).json() for _ in range(2)]
        assert first["based_on_version"] == second["based_on_version"] == 1
        approved = await c.post(f"{url}/{first['id']}/approve", json={"by": "zhang.min", "role": "manager"})
        assert approved.json()["status"] == "applied", approved.text
        before = (await c.get(f"/contracts/{cid}")).json()
        p = await _problem(await c.post(f"{url}/{second['id']}/approve", json={"by": "zhang.min", "role": "manager"}),
                           409)
        assert "no longer holds" in p["detail"]
        after = (await c.get(f"/contracts/{cid}")).json()  # (its version moves on: the agreement is being made)
        assert [(m["key"], m["due_at"]) for m in after["milestones"]] == [
            (m["key"], m["due_at"]) for m in before["milestones"]]
        r = await c.post(f"{url}/{second['id']}/reject", json={"by": "zhang.min", "comment": "overtaken"})
        assert r.json()["status"] == "rejected"
        assert [v["version"] for v in (await c.get(f"/contracts/{cid}/versions")).json()] == [1, 2]


async def test_extend_end_takes_the_new_last_day_as_creation_does(api_service):
    """``end_date`` 2030-06-30 means the term runs through that day in the business zone: it ends
    at 2030-07-01 00:00 +08:00 (2030-06-30T16:00Z), as ``end_date`` does at creation."""
    async with httpx.AsyncClient(base_url=api_service.base_url, timeout=30) as c:
        cid = await _create(c)
        r = await c.post(f"/contracts/{cid}/amendments", json={
            "requested_by": "li.wei", "reason": "Customer extends the service year",
            "changes": [{"kind": "extend_end", "end_date": "2030-06-30"}]})
        assert r.status_code == 201, r.text
        new_end = datetime.fromisoformat(r.json()["impact"]["new_end_at"].replace("Z", "+00:00"))
        assert new_end == datetime(2030, 6, 30, 16, 0, tzinfo=timezone.utc)


async def test_bad_amendments_get_clear_4xx_and_change_nothing(api_service):
    async with httpx.AsyncClient(base_url=api_service.base_url, timeout=30) as c:
        cid = await _create(c)
        r = await c.post(f"/contracts/{cid}/payments", json={
            "reference": "B1", "amount": "50000.00", "currency": "CNY",
            "received_at": datetime.now(timezone.utc).isoformat()})
        assert r.status_code == 200
        before = (await c.get(f"/contracts/{cid}")).json()
        url = f"/contracts/{cid}/amendments"
        cases = [
            ({"requested_by": "li.wei", "reason": "x", "changes": []}, 422),
            ({"requested_by": "li.wei", "reason": "x", "changes": [{"kind": "teleport"}]}, 422),
            ({"requested_by": "li.wei", "reason": "x", "changes": [{"kind": "move_due", "key": "shipping"}]}, 422),
            ({"requested_by": "li.wei", "reason": "x", "changes": [{"kind": "move_due", "key": "nope",
                                                                    "shift": "P1D"}]}, 404),
            ({"requested_by": "li.wei", "reason": "x", "changes": [{"kind": "move_due", "key": "shipping",
                                                                    "shift": "soon"}]}, 422),
            ({"requested_by": "li.wei", "reason": "x", "changes": [{"kind": "change_amount",
                                                                    "amount": "40000.00"}]}, 409),
            ({"requested_by": "li.wei", "reason": "x", "changes": [{"kind": "change_amount",
                                                                    "amount": "-1"}]}, 422),
            ({"requested_by": "li.wei", "reason": "x", "changes": [{"kind": "extend_end",
                                                                    "end_at": "2020-01-01T00:00:00+08:00"}]}, 422),
            ({"requested_by": "li.wei", "reason": "x", "changes": [{"kind": "extend_end",
                                                                    "end_date": "2020-01-01"}]}, 422),
            ({"requested_by": "li.wei", "reason": "x", "changes": [{"kind": "extend_end",
                                                                    "end_date": "2030-13-01"}]}, 422),
            ({"requested_by": "li.wei", "reason": "x", "changes": [{"kind": "extend_end"}]}, 422),
            ({"requested_by": "li.wei", "reason": "x", "changes": [{"kind": "extend_end", "end_date": "2030-01-01",
                                                                    "end_at": "2030-01-02T00:00:00+08:00"}]}, 422),
            ({"requested_by": "li.wei", "reason": "x", "changes": [{"kind": "move_due", "key": "shipping",
                                                                    "shift": "P1D", "end_date": "2030-01-01"}]}, 422),
            ({"requested_by": "li.wei", "reason": "x", "changes": [{"kind": "add_milestone", "milestone": {
                "key": "audit", "name": "Audit", "kind": "custom", "owner": "li.wei", "department": "sales",
                "due_after": "P5D", "after": "ghost"}}]}, 422),
            ({"requested_by": "li.wei", "reason": "x", "changes": [{"kind": "remove_milestone",
                                                                    "key": "shipping"}]}, 409),
            ({"requested_by": "li.wei", "reason": "", "changes": [{"kind": "move_due", "key": "shipping",
                                                                   "shift": "P1D"}]}, 422),
            ({"requested_by": "li.wei", "reason": "x", "changes": [{"kind": "move_due", "key": "shipping",
                                                                    "shift": "P1D", "surprise": 1}]}, 422),
            # Shipping moved ahead of the production scheduling it waits for (moves-keep-order-v1).
            ({"requested_by": "li.wei", "reason": "x", "changes": [{"kind": "move_due", "key": "shipping",
                                                                    "shift": "-P60D"}]}, 422),
        ]
        for body, status in cases:
            r = await c.post(url, json=body)
            assert r.status_code == status, (body, r.status_code, r.text)
            assert r.headers["content-type"].startswith(PROBLEM)
        p = await _problem(await c.post(url, json=cases[-1][0]), 422)
        assert "'shipping' would fall due" in p["detail"] and "before 'production_scheduling'" in p["detail"], p
        await _problem(await c.post("/contracts/nope/amendments", json=cases[2][0]), 404)
        await _problem(await c.post(f"{url}/nope/approve", json={"by": "zhang.min", "role": "manager"}), 404)
        after = (await c.get(f"/contracts/{cid}")).json()
        assert after == before
        assert (await c.get(url)).json() == []

        # Withdrawn and rejected requests change nothing either.
        a = (await c.post(url, json={"requested_by": "li.wei", "reason": "try",
                                     "changes": [{"kind": "move_due", "key": "shipping", "shift": "P3D"}]})).json()
        p = await _problem(await c.post(f"{url}/{a['id']}/withdraw", json={"by": "zhang.min"}), 403)
        assert "only the requester (li.wei)" in p["detail"]
        assert (await c.post(f"{url}/{a['id']}/withdraw", json={"by": "li.wei"})).json()["status"] == "withdrawn"
        b = (await c.post(url, json={"requested_by": "li.wei", "reason": "try again",
                                     "changes": [{"kind": "move_due", "key": "shipping", "shift": "P3D"}]})).json()
        r = await c.post(f"{url}/{b['id']}/reject", json={"by": "zhang.min", "comment": "no"})
        assert r.status_code == 200 and r.json()["status"] == "rejected"
        final = (await c.get(f"/contracts/{cid}")).json()
        assert [(m["key"], m["due_at"]) for m in final["milestones"]] == [
            (m["key"], m["due_at"]) for m in before["milestones"]]
        assert [v["version"] for v in (await c.get(f"/contracts/{cid}/versions")).json()] == [1]
