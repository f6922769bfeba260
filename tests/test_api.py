"""The API end to end: real uvicorn, real Temporal dev server and worker, real databases."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import httpx
import pytest

from core.temporal import find_binary
from tests.helpers import contract_request, wait_for
from workflows import search_attributes as sa


def six_installments(total: str = "1200000.00") -> list[dict]:
    each = Decimal(total) / 6
    return [
        {"key": f"i{k}", "due_after": f"P{k}M", "amount": str(each.quantize(Decimal('0.01')))} for k in range(1, 7)
    ]


async def create(client: httpx.AsyncClient, **overrides) -> dict:
    body = contract_request(datetime.now(timezone.utc), **overrides)
    r = await client.post("/contracts", json=body)
    assert r.status_code == 201, r.text
    return r.json()



def temporal_list(service, query: str) -> list[dict]:
    out = subprocess.run(
        [find_binary("temporal"), "workflow", "list", "--address", service.settings.temporal_address,
         "--query", query, "--output", "json"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout
    out = out.strip()
    if not out:
        return []
    if out.startswith("["):
        return json.loads(out)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


async def test_goods_sale_contract_with_six_installments(api_service):
    async with httpx.AsyncClient(base_url=api_service.base_url) as c:
        created = await create(c, amount="1200000.00", installments=six_installments())
        assert created["status"] == "active"
        assert created["workflow_id"] == f"contract-{created['id']}"
        r = await c.get(f"/contracts/{created['id']}")
        assert r.status_code == 200
        live = r.json()
        assert len(live["milestones"]) == 6
        assert all(m["due_at"] for m in live["milestones"])
        assert all(m["status"] == "pending" for m in live["milestones"])
        owners = {m["key"]: m["owner"] for m in live["milestones"]}
        assert owners["order_review"] == "li.wei"  # the sales owner
        assert owners["invoicing"] == "sun.li"  # finance's default assignee in the demo organisation
        assert len(live["installments"]) == 6
        assert live["outstanding"] == "1200000.00"

        # Findable by operators: the CLI query the README shows.
        listed = await asyncio.to_thread(
            temporal_list, api_service, f"ContractStatus='active' AND ContractId='{created['id']}'"
        )
        assert [w["execution"]["workflowId"] for w in listed] == [created["workflow_id"]]

        # And in the database read model.
        page = (await c.get("/contracts", params={"owner": "li.wei", "status": "active", "limit": 500})).json()
        assert created["id"] in [item["id"] for item in page["items"]]


async def test_external_id_makes_creation_idempotent(api_service):
    async with httpx.AsyncClient(base_url=api_service.base_url) as c:
        ext = f"CRM-{uuid.uuid4().hex[:8]}"
        body = contract_request(datetime.now(timezone.utc), external_id=ext)
        first = await c.post("/contracts", json=body)
        second = await c.post("/contracts", json=body)
        assert first.status_code == 201 and second.status_code == 200
        assert first.json()["id"] == second.json()["id"]
        # Concurrent duplicates settle on one contract too.
        ext2 = f"CRM-{uuid.uuid4().hex[:8]}"
        body2 = contract_request(datetime.now(timezone.utc), external_id=ext2)
        results = await asyncio.gather(*(c.post("/contracts", json=body2) for _ in range(5)))
        assert sorted(r.status_code for r in results).count(201) == 1
        assert len({r.json()["id"] for r in results}) == 1


async def test_payment_twice_applies_once_and_overpayment_becomes_credit(api_service):
    async with httpx.AsyncClient(base_url=api_service.base_url) as c:
        created = await create(c, amount="1000.00", installments=[
            {"key": "a", "due_after": "P10D", "amount": "333.33"},
            {"key": "b", "due_after": "P20D", "amount": "333.33"},
            {"key": "c", "due_after": "P30D", "amount": "333.34"},
        ])
        cid = created["id"]
        pay = {"reference": "BANK-20261127-001", "amount": "400.10", "currency": "CNY",
               "received_at": "2026-11-27T10:00:00+08:00"}
        r1 = await c.post(f"/contracts/{cid}/payments", json=pay)
        r2 = await c.post(f"/contracts/{cid}/payments", json=pay)
        assert r1.status_code == r2.status_code == 200
        assert r1.json()["applied"] is True and r2.json()["applied"] is False
        assert r1.json()["outstanding"] == r2.json()["outstanding"] == "599.90"
        assert r1.json()["allocations"] == {"a": "333.33", "b": "66.77"}

        # Over-payment: balance to zero, the excess is kept as the customer's credit.
        r3 = await c.post(f"/contracts/{cid}/payments", json={**pay, "reference": "BANK-2", "amount": "700.00"})
        assert r3.json() == {**r3.json(), "applied": True, "outstanding": "0.00", "credit": "100.10"}
        live = (await c.get(f"/contracts/{cid}")).json()
        assert [i["status"] for i in live["installments"]] == ["paid", "paid", "paid"]
        assert live["paid"] == "1100.10" and live["credit"] == "100.10"
        assert [p["reference"] for p in live["payments"]] == ["BANK-20261127-001", "BANK-2"]

        async def events():
            evs = (await c.get(f"/contracts/{cid}/events")).json()
            return evs if any(e["type"] == "payment.overpaid" for e in evs) else None

        evs = await wait_for(events)
        assert [e["type"] for e in evs].count("payment.received") == 2
        # The workflow's events: no duplicates, in order (a reminder the outbox sent has no seq).
        seqs = [e["seq"] for e in evs if e["seq"] is not None]
        assert seqs == sorted(set(seqs))


async def test_milestone_overdue_visible_everywhere_within_2_seconds(api_service):
    async with httpx.AsyncClient(base_url=api_service.base_url) as c:
        created = await create(c, playbook=None, milestones=[
            {"key": "kickoff", "name": "Kick-off", "kind": "custom", "owner": "wang.fang", "department": "delivery",
             "due_after": "PT5S"},
        ])
        cid = created["id"]
        live = (await c.get(f"/contracts/{cid}")).json()
        due_at = datetime.fromisoformat(live["milestones"][0]["due_at"])
        assert live["milestones"][0]["status"] == "pending"

        async def overdue_in_get():
            m = (await c.get(f"/contracts/{cid}")).json()["milestones"][0]
            return m["status"] == "overdue"

        async def overdue_in_list():
            page = (await c.get("/contracts", params={"overdue": "true", "limit": 500})).json()
            return cid in [i["id"] for i in page["items"]]

        async def overdue_in_temporal():
            desc = await api_service.client.get_workflow_handle(created["workflow_id"]).describe()
            return (desc.typed_search_attributes.get(sa.OVERDUE_COUNT) or 0) > 0

        lateness = {}
        for name, check in [("get", overdue_in_get), ("list", overdue_in_list), ("search attribute", overdue_in_temporal)]:
            await wait_for(check, timeout=15, interval=0.05)
            lateness[name] = (datetime.now(timezone.utc) - due_at).total_seconds()
        print("overdue visible after due time:", {k: f"{v:.2f}s" for k, v in lateness.items()})
        assert all(v <= 2.0 for v in lateness.values()), lateness
        listed = await asyncio.to_thread(temporal_list, api_service, f"OverdueCount > 0 AND ContractId='{cid}'")
        assert len(listed) == 1


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def either_service(request):
    return request.getfixturevalue("api_service" if request.param == "sqlite" else "api_service_pg")


async def test_contracts_of_a_new_customer_created_at_once_all_register(either_service):
    """Eight contracts for one customer the repository has not seen, at the same time: each
    request registers the customer (its CRM id is unique); one wins, the others use its row.
    Before, the losers answered 500 (a CSV import with the same customer on several rows)."""
    service = either_service
    crm = f"CRM-NEW-{uuid.uuid4().hex[:8]}"
    now = datetime.now(timezone.utc)
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as c:
        bodies = [contract_request(now, customer={"name": "Hangzhou Newco", "external_id": crm},
                                   external_id=f"NEWCO-{uuid.uuid4().hex[:8]}") for _ in range(8)]
        answers = await asyncio.gather(*(c.post("/contracts", json=b) for b in bodies))
        assert [r.status_code for r in answers] == [201] * 8, [r.text for r in answers if r.status_code != 201]
        page = (await c.get("/contracts", params={"customer": crm, "limit": 500})).json()
        assert page["total"] == 8


async def test_milestone_flow_and_termination(api_service):
    async with httpx.AsyncClient(base_url=api_service.base_url) as c:
        cid = (await create(c))["id"]
        r = await c.post(f"/contracts/{cid}/milestones/order_review/progress",
                         json={"percent": 50, "message": "credit check", "source": "erp"})
        assert r.status_code == 200 and r.json()["item_status"] == "in_progress"
        r = await c.post(f"/contracts/{cid}/milestones/order_review/complete", json={"by": "li.wei", "note": "ok"})
        assert r.json()["item_status"] == "done"
        r = await c.post(f"/contracts/{cid}/milestones/production_scheduling/waive",
                         json={"by": "zhang.min", "reason": "stock item"})
        assert r.json()["item_status"] == "waived"
        r = await c.post(f"/contracts/{cid}/terminate", json={"reason": "customer cancelled", "by": "legal"})
        assert r.status_code == 200 and r.json()["contract_status"] == "terminated"

        async def terminated_in_db():
            page = (await c.get("/contracts", params={"status": "terminated", "limit": 500})).json()
            return next((i for i in page["items"] if i["id"] == cid), None)

        row = await wait_for(terminated_in_db)
        assert row["next_due_at"] is None  # its open milestones will never fall due
        r = await c.post(f"/contracts/{cid}/payments", json={
            "reference": "late", "amount": "1.00", "currency": "CNY", "received_at": "2026-11-27T10:00:00+08:00"})
        assert r.status_code == 409
        assert r.headers["content-type"] == "application/problem+json"
        types = [e["type"] for e in (await c.get(f"/contracts/{cid}/events")).json()
                 if not e["type"].startswith(("notification.", "escalation."))]
        assert types == ["contract.created", "milestone.progress", "milestone.completed", "milestone.waived",
                         "contract.terminated"]


async def test_playbooks_health_and_docs(api_service):
    async with httpx.AsyncClient(base_url=api_service.base_url) as c:
        books = {b["name"]: b for b in (await c.get("/playbooks")).json()}
        assert {"goods_sale", "service"} <= set(books)
        assert [m["key"] for m in books["goods_sale"]["milestones"]][0] == "order_review"
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        ready = (await c.get("/readyz")).json()
        assert ready["checks"] == {"database": "ok", "temporal": "ok"}
        assert (await c.get("/docs")).status_code == 200
        spec = (await c.get("/openapi.json")).json()
        assert "/contracts/{contract_id}/payments" in spec["paths"]


async def test_service_playbook_generates_monthly_and_quarterly_items(api_service):
    async with httpx.AsyncClient(base_url=api_service.base_url) as c:
        now = datetime.now(timezone.utc)
        cid = (await create(c, playbook="service", amount="240000.00",
                            end_date=(now + timedelta(days=364)).isoformat()))["id"]
        live = (await c.get(f"/contracts/{cid}")).json()
        keys = [m["key"] for m in live["milestones"]]
        assert keys.count("kickoff") == 1 and "acceptance" in keys
        assert len([k for k in keys if k.startswith("report_")]) == 11
        assert len([k for k in keys if k.startswith("invoice_")]) == 4
        assert [i["amount"] for i in live["installments"]] == ["60000.00"] * 4


@pytest.mark.postgres
async def test_contract_life_on_postgres(api_service_pg):
    async with httpx.AsyncClient(base_url=api_service_pg.base_url) as c:
        created = await create(c, amount="1200000.00", installments=six_installments())
        cid = created["id"]
        pay = {"reference": "PG-1", "amount": "200000.00", "currency": "CNY", "received_at": "2026-11-27T10:00:00+08:00"}
        assert (await c.post(f"/contracts/{cid}/payments", json=pay)).json()["applied"] is True
        assert (await c.post(f"/contracts/{cid}/payments", json=pay)).json()["applied"] is False

        async def projected():
            page = (await c.get("/contracts", params={"customer": "Ningbo", "limit": 500})).json()
            item = next((i for i in page["items"] if i["id"] == cid), None)
            return item if item and item["outstanding"] == "1000000.00" else None

        item = await wait_for(projected)
        assert item["amount"] == "1200000.00"
        evs = (await c.get(f"/contracts/{cid}/events")).json()
        business = [e["type"] for e in evs if not e["type"].startswith("notification.")]
        assert business == ["contract.created", "installment.paid", "payment.received"]


async def test_escalation_levels_arrive_in_order_through_the_running_service(api_service, mailbox):
    """A policy in seconds: levels at due+PT0S, +PT3S (manager in copy), +PT6S, each within 2 s."""
    async with httpx.AsyncClient(base_url=api_service.base_url) as c:
        created = await create(c, playbook=None, milestones=[
            {"key": "acceptance", "name": "Customer acceptance", "kind": "customer_acceptance",
             "owner": "li.wei", "department": "sales", "due_after": "PT3S"},
        ], notifications={"reminders": [], "escalation": [
            {"after": "PT0S", "to": ["owner"], "channels": ["email", "inbox"]},
            {"after": "PT3S", "to": ["owner"], "cc": ["manager"], "channels": ["email"]},
            {"after": "PT6S", "to": ["manager_of_manager"], "cc": ["department_head"], "channels": ["email"]},
        ]})
        cid = created["id"]
        live = (await c.get(f"/contracts/{cid}")).json()
        due_at = datetime.fromisoformat(live["milestones"][0]["due_at"])

        arrivals: dict[int, float] = {}

        async def level_arrived():
            for _, m in mailbox.messages:
                key = m["X-Contracts-Notification"] or ""
                if cid in key:
                    level = int(key.split(":")[4].removeprefix("escalation"))
                    arrivals.setdefault(level, (datetime.now(timezone.utc) - due_at).total_seconds())
            return len(arrivals) >= 3

        await wait_for(level_arrived, timeout=20, interval=0.05)
        print("escalation levels arrived after due:", {k: f"{v:.2f}s" for k, v in sorted(arrivals.items())})
        assert sorted(arrivals) == [1, 2, 3]
        assert arrivals[1] < arrivals[2] < arrivals[3]
        for level, planned in ((1, 0), (2, 3), (3, 6)):
            assert planned <= arrivals[level] + 0.1 <= planned + 2.1, arrivals
        level3 = [m for _, m in mailbox.messages if f"{cid}:" in (m["X-Contracts-Notification"] or "")
                  and ":escalation3:" in m["X-Contracts-Notification"]]
        assert level3[0]["To"].addresses[0].addr_spec == "chen.jing@example.com"  # li.wei's manager's manager

        tasks = (await c.get("/tasks", params={"assignee": "li.wei", "status": "open"})).json()
        assert any(t["contract_id"] == cid for t in (tasks if isinstance(tasks, list) else tasks["items"]))
        notes = (await c.get(f"/contracts/{cid}/notifications")).json()
        notes = notes if isinstance(notes, list) else notes["items"]
        assert {n["level"] for n in notes} == {1, 2, 3}
        assert len({(n["level"], n["recipient"], n["channel"]) for n in notes}) == len(notes)
        # Completing the milestone stops the chain and drops the escalation level.
        await c.post(f"/contracts/{cid}/milestones/acceptance/complete", json={"by": "li.wei"})

        async def calm():
            desc = await api_service.client.get_workflow_handle(created["workflow_id"]).describe()
            return desc.typed_search_attributes.get(sa.ESCALATION_LEVEL) == 0

        await wait_for(calm)

        async def inbox_cleared():  # the escalation's inbox task is done with the milestone
            open_now = (await c.get("/tasks", params={"assignee": "li.wei", "status": "open", "limit": 500})).json()
            return not any(t["contract_id"] == cid for t in open_now)

        await wait_for(inbox_cleared)
        done = (await c.get("/tasks", params={"assignee": "li.wei", "status": "done", "limit": 500})).json()
        assert any(t["contract_id"] == cid and t["milestone_key"] == "acceptance" for t in done), done


async def test_costs_and_customer_satisfaction_are_recorded(api_service):
    """Planned cost at creation, actual cost and the customer's score at completion: the raw
    material of the cost-overrun and satisfaction analytics."""
    from sqlalchemy import select

    from models import Milestone
    from models.db import make_engine, make_session_factory

    async with httpx.AsyncClient(base_url=api_service.base_url, timeout=30) as c:
        cid = (await create(c, milestones=[{"key": "order_review", "planned_cost": "1000.00"},
                                           {"key": "customer_acceptance", "planned_cost": "200.00"}]))["id"]
        r = await c.post(f"/contracts/{cid}/milestones/order_review/complete",
                         json={"by": "li.wei", "actual_cost": "1250.50", "satisfaction": 4})
        assert r.status_code == 422 and "acceptance" in r.json()["detail"]  # a score belongs to acceptance
        r = await c.post(f"/contracts/{cid}/milestones/order_review/complete",
                         json={"by": "li.wei", "actual_cost": "1250.505"})
        assert r.status_code == 422
        r = await c.post(f"/contracts/{cid}/milestones/order_review/complete",
                         json={"by": "li.wei", "actual_cost": "1250.50"})
        assert r.status_code == 200, r.text
        for key in ("production_scheduling", "shipping"):
            assert (await c.post(f"/contracts/{cid}/milestones/{key}/complete", json={"by": "li.wei"})).status_code == 200
        r = await c.post(f"/contracts/{cid}/milestones/customer_acceptance/complete",
                         json={"by": "wang.fang", "satisfaction": 6})
        assert r.status_code == 422
        r = await c.post(f"/contracts/{cid}/milestones/customer_acceptance/complete",
                         json={"by": "wang.fang", "satisfaction": 5, "actual_cost": "150.00"})
        assert r.status_code == 200, r.text
        live = {m["key"]: m for m in (await c.get(f"/contracts/{cid}")).json()["milestones"]}
        assert live["order_review"]["planned_cost"] == "1000.00" and live["order_review"]["actual_cost"] == "1250.50"
        assert live["customer_acceptance"]["satisfaction"] == 5

    engine = make_engine(api_service.settings.database_url)
    sessions = make_session_factory(engine)

    async def projected():
        with sessions() as s:
            rows = {m.key: m for m in s.execute(select(Milestone).where(Milestone.contract_id == cid)).scalars()}
        ok = rows["customer_acceptance"].satisfaction == 5 and rows["order_review"].actual_cost == Decimal("1250.50")
        return rows if ok else None

    rows = await wait_for(projected)
    assert rows["order_review"].planned_cost == Decimal("1000.00")
    engine.dispose()


async def test_a_payment_is_one_payment_however_its_reference_is_spaced_and_after_the_contract_closes(api_service):
    """The reference is the key that keeps a bank transfer from being applied twice: "BANK-1 "
    is "BANK-1".  And a client resending a payment after the contract closed (its answer was
    lost) hears "already recorded", not that the payment failed; a new one is still refused."""
    await _one_payment_per_reference(api_service)


async def test_one_payment_per_reference_on_postgres(api_service_pg):
    await _one_payment_per_reference(api_service_pg)


async def _one_payment_per_reference(service) -> None:
    async with httpx.AsyncClient(base_url=service.base_url) as c:
        cid = (await create(c, amount="1000.00", installments=[{"key": "a", "due_after": "P10D", "amount": "1000.00"}]))["id"]
        pay = {"reference": "BANK-1", "amount": "400.00", "currency": "CNY", "received_at": "2026-11-27T10:00:00+08:00"}
        assert (await c.post(f"/contracts/{cid}/payments", json=pay)).json()["applied"] is True
        for spelled in ("BANK-1 ", " BANK-1", "\u3000BANK-1\t"):
            r = await c.post(f"/contracts/{cid}/payments", json={**pay, "reference": spelled})
            assert r.status_code == 200 and r.json()["applied"] is False and r.json()["outstanding"] == "600.00", r.text
        blank = await c.post(f"/contracts/{cid}/payments", json={**pay, "reference": " \t "})
        assert blank.status_code == 422 and blank.headers["content-type"] == "application/problem+json"

        r = await c.post(f"/contracts/{cid}/terminate", json={"reason": "customer cancelled", "by": "legal"})
        assert r.status_code == 200 and r.json()["contract_status"] == "terminated"

        async def closed_in_db():
            row = (await c.get("/contracts", params={"customer": "Ningbo", "limit": 500})).json()["items"]
            return any(i["id"] == cid and i["status"] == "terminated" for i in row) or None

        await wait_for(closed_in_db)
        again = await c.post(f"/contracts/{cid}/payments", json={**pay, "reference": "BANK-1 "})
        assert again.status_code == 200, again.text
        assert again.json() == {"applied": False, "outstanding": "600.00", "credit": "0.00", "reference": "BANK-1",
                                "allocations": {}}
        other_amount = await c.post(f"/contracts/{cid}/payments", json={**pay, "amount": "500.00"})
        assert other_amount.status_code == 409 and "already recorded" in other_amount.json()["detail"]
        new = await c.post(f"/contracts/{cid}/payments", json={**pay, "reference": "BANK-2"})
        assert new.status_code == 409 and new.json()["type"].endswith("/contract-closed")
        live = (await c.get(f"/contracts/{cid}")).json()
        assert live["paid"] == "400.00" and [p["reference"] for p in live["payments"]] == ["BANK-1"]


async def test_events_page_exactly_with_reminders_among_them(api_service):
    await _events_page_exactly(api_service)


async def test_events_page_exactly_with_reminders_among_them_on_postgres(api_service_pg):
    await _events_page_exactly(api_service_pg)


async def _events_page_exactly(service) -> None:
    """A sent reminder has no seq.  Paging by ``after_seq`` repeated it (``limit=2``: [seq 1,
    reminder], then after_seq=1: [reminder, reminder]), and an after_seq past the last event
    listed reminders recorded long before it.  ``after`` (an event_id) pages exactly."""
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as c:
        signed = datetime.now(timezone.utc) - timedelta(days=10)  # order review 8 days late: reminded at once
        r = await c.post("/contracts", json=contract_request(signed, end_date=(signed + timedelta(days=365)).isoformat()))
        assert r.status_code == 201, r.text
        cid = r.json()["id"]

        async def log():
            return (await c.get(f"/contracts/{cid}/events", params={"limit": 1000})).json()

        await wait_for(lambda: _any_reminder(log))
        # Then a workflow event after the reminders, and a log that has stopped moving.
        payment = {"reference": f"EV-{uuid.uuid4().hex[:6]}", "amount": "1.00", "currency": "CNY",
                   "received_at": datetime.now(timezone.utc).isoformat()}
        r = await c.post(f"/contracts/{cid}/payments", json=payment)
        assert r.status_code == 200, r.text
        await wait_for(lambda: _has(log, "payment."))
        everything = await log()
        while (again := await log()) != everything:
            everything = again
            await asyncio.sleep(0.5)
        assert any(e["seq"] is None for e in everything) and any(e["seq"] is not None for e in everything)
        last_seq = max(e["seq"] for e in everything if e["seq"] is not None)
        assert everything[-1]["seq"] == last_seq, everything[-3:]  # the payment came after the reminders

        paged, after = [], None
        for _ in range(len(everything)):  # each page moves on, or this ends short
            params = {"limit": 2, **({"after": after} if after else {})}
            page = (await c.get(f"/contracts/{cid}/events", params=params)).json()
            if not page:
                break
            paged += page
            after = page[-1]["event_id"]
        assert [e["event_id"] for e in paged] == [e["event_id"] for e in everything]

        beyond = (await c.get(f"/contracts/{cid}/events", params={"after_seq": last_seq + 5})).json()
        assert beyond == []
        first_reminder = next(i for i, e in enumerate(everything) if e["seq"] is None)
        seq_before = max([e["seq"] for e in everything[:first_reminder] if e["seq"] is not None], default=0)
        from_there = (await c.get(f"/contracts/{cid}/events", params={"after_seq": seq_before})).json()
        assert from_there == everything[first_reminder:]

        for bad in (f"other{cid}:1", f"{cid}:r999999999", f"{cid}:abc", f"{cid}:{last_seq + 1}", "",
                    f"{cid}:{'9' * 40}", f"{cid}:r{'9' * 19}"):
            r = await c.get(f"/contracts/{cid}/events", params={"after": bad})
            assert r.status_code == 422, (bad, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")


async def _any_reminder(log) -> bool:
    return any(e["type"] == "notification.reminder" and e["seq"] is None for e in await log())


async def _has(log, prefix: str) -> bool:
    return any(e["type"].startswith(prefix) for e in await log())


async def test_the_term_shows_its_last_day_not_the_day_after(api_service):
    """``end_date`` 2027-11-26 ends the term at 2027-11-27 00:00 (Beijing): the dashboard showed
    that date as the term's end, a day late, and so did supplementary agreements."""
    from core.documents import format_value
    from workflows.types import ClauseChange

    async with httpx.AsyncClient(base_url=api_service.base_url, timeout=30) as c:
        body = contract_request(datetime.now(timezone.utc), effective_date="2026-12-01", end_date="2027-11-26")
        r = await c.post("/contracts", json=body)
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        live = (await c.get(f"/contracts/{cid}")).json()
        assert datetime.fromisoformat(live["end_at"]) == datetime.fromisoformat("2027-11-27T00:00:00+08:00")
        page = await c.get(f"/ui/contracts/{cid}", headers={"accept": "text/html"})
        assert page.status_code == 200
        assert "2026-12-01 → 2027-11-26" in page.text, page.text[:2000]
    extend = ClauseChange("end_at", "End date", "date", "2027-11-27T00:00:00+08:00", "2028-01-01T00:00:00+08:00")
    assert [format_value(extend, v, "CNY") for v in (extend.old, extend.new)] == ["2027-11-26", "2027-12-31"]
    due = ClauseChange("milestone.shipping.due", "Shipping: due date", "date", "2027-01-01T00:00:00+08:00", None)
    assert format_value(due, due.old, "CNY") == "2027-01-01"  # a due date is the day it falls on
