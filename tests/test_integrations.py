"""Incoming integrations end to end: finance bank-statement batches and ERP progress batches.

Real uvicorn, real Temporal dev server and worker, SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import delete

from api.integrations.service import reference_tokens
from models import Payment
from models.db import make_engine, make_session_factory
from tests.helpers import contract_request, wait_for

FINANCE = "/integrations/finance/payments"
ERP = "/integrations/erp/progress"


async def create_contracts(c: httpx.AsyncClient, n: int, **overrides) -> list[dict]:
    """n goods-sale contracts, each with a contract number (external_id) of its own."""
    now = datetime.now(timezone.utc)
    gate = asyncio.Semaphore(10)
    tag = uuid.uuid4().hex[:6].upper()

    async def one(k: int) -> dict:
        body = contract_request(now, external_id=f"HT-{tag}-{k:04d}", amount="1000000.00", **overrides)
        async with gate:
            r = await c.post("/contracts", json=body)
        assert r.status_code == 201, r.text
        return {**r.json(), "external_id": body["external_id"]}

    return list(await asyncio.gather(*(one(k) for k in range(n))))


def build_statement(contracts: list[dict], n_lines: int, seed: int = 7) -> tuple[list[dict], dict]:
    """A statement of n_lines: ~75 % new lines (matched by id, number or reference text), ~12 %
    repeats of earlier lines (same line id and amount), ~10 % unmatched, a few rejected ones."""
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:8]
    at = datetime(2026, 11, 27, 10, 0, tzinfo=timezone(timedelta(hours=8)))
    lines: list[dict] = []
    expect: dict = {"paid": defaultdict(Decimal), "refs": defaultdict(set), "first": [], "kind": []}
    distinct: list[tuple[dict, str]] = []

    def add(line: dict, kind: str, contract_id: str | None = None) -> None:
        lines.append(line)
        expect["kind"].append((kind, contract_id))

    while len(lines) < n_lines:
        roll = rng.random()
        k = len(lines)
        if roll < 0.12 and distinct:  # the same bank line again, in the same batch
            line, cid = rng.choice(distinct)
            add(dict(line), "repeat", cid)
        elif roll < 0.17:  # a contract number nobody knows
            add({"line_id": f"{tag}-{k}", "amount": "10.00", "currency": "CNY", "received_at": at.isoformat(),
                 "contract_number": f"NOPE-{k}"}, "unmatched")
        elif roll < 0.22:  # free text with no contract in it
            add({"line_id": f"{tag}-{k}", "amount": "10.00", "currency": "CNY", "received_at": at.isoformat(),
                 "reference": f"往来款 转账 {k}", "payer": "Unknown Ltd"}, "unmatched")
        elif roll < 0.23:  # the wrong currency: matched but refused by the contract
            target = rng.choice(contracts)
            add({"line_id": f"{tag}-{k}", "amount": "10.00", "currency": "USD", "received_at": at.isoformat(),
                 "contract_id": target["id"]}, "rejected", target["id"])
        elif roll < 0.24 and distinct:  # an earlier line id with another amount
            line, cid = rng.choice(distinct)
            add({**line, "amount": str(Decimal(line["amount"]) + 1)}, "rejected", cid)
        else:
            target = rng.choice(contracts)
            amount = Decimal(rng.randint(100, 50000)) / 100
            line = {"line_id": f"{tag}-{k}", "amount": str(amount), "currency": "CNY",
                    "received_at": (at + timedelta(minutes=k)).isoformat(), "payer": "Ningbo Precision Machinery"}
            how = rng.randrange(4)
            if how == 0:
                line["contract_id"] = target["id"]
            elif how == 1:
                line["contract_number"] = target["external_id"]
            elif how == 2:
                line["reference"] = f"货款{target['external_id']}，第{k}笔"
            else:
                line["reference"] = f"PAYMENT REF {target['id'].upper()} INV-{k}"
            add(line, "new", target["id"])
            distinct.append((line, target["id"]))
            expect["paid"][target["id"]] += amount
            expect["refs"][target["id"]].add(f"bank:{line['line_id']}")
    return lines, expect


async def post(c: httpx.AsyncClient, path: str, body: dict) -> tuple[dict, float]:
    started = time.perf_counter()
    r = await c.post(path, json=body, timeout=300)
    elapsed = time.perf_counter() - started
    assert r.status_code == 200, r.text
    return r.json(), elapsed


async def finance_batch_posted_twice(service, n_contracts: int, n_lines: int) -> dict:
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as c:
        contracts = await create_contracts(c, n_contracts)
        lines, expect = build_statement(contracts, n_lines)
        body = {"statement_id": f"STMT-{uuid.uuid4().hex[:6]}", "lines": lines}

        first, t1 = await post(c, FINANCE, body)
        second, t2 = await post(c, FINANCE, body)
        print(f"\n{n_lines} lines: first post {n_lines / t1:.0f} lines/s, second post {n_lines / t2:.0f} lines/s")

        for result in (first, second):
            assert result["totals"]["lines"] == n_lines == len(result["lines"])
            assert [r["index"] for r in result["lines"]] == list(range(n_lines))
            assert [r["line_id"] for r in result["lines"]] == [line["line_id"] for line in lines]
            assert sum(result["totals"][o] for o in ("applied", "duplicate", "unmatched", "rejected")) == n_lines

        kinds = Counter(kind for kind, _ in expect["kind"])
        n_new = kinds["new"]
        assert first["totals"] == {"lines": n_lines, "applied": n_new, "duplicate": kinds["repeat"],
                                   "unmatched": kinds["unmatched"], "rejected": kinds["rejected"]}
        # Posted again: every line already applied is a duplicate, nothing is applied twice.
        assert second["totals"] == {"lines": n_lines, "applied": 0, "duplicate": n_new + kinds["repeat"],
                                    "unmatched": kinds["unmatched"], "rejected": kinds["rejected"]}
        for (kind, cid), r1, r2 in zip(expect["kind"], first["lines"], second["lines"], strict=True):
            want = {"new": "applied", "repeat": "duplicate"}.get(kind, kind)
            assert r1["outcome"] == want, (kind, r1)
            assert r2["outcome"] == ("duplicate" if kind in ("new", "repeat") else kind), (kind, r2)
            assert r1["contract_id"] == r2["contract_id"] == cid
            if kind in ("unmatched", "rejected"):
                assert r1["reason"] and r2["reason"]
        matched_by = Counter(r["matched_by"] for r in first["lines"] if r["outcome"] == "applied")
        assert set(matched_by) == {"contract_id", "contract_number", "reference"}

        # The contracts themselves: each payment exactly once, the sum of its distinct lines.
        gate = asyncio.Semaphore(16)

        async def live(contract: dict) -> dict:
            async with gate:
                return (await c.get(f"/contracts/{contract['id']}")).json()

        states = await asyncio.gather(*(live(x) for x in contracts))
        for contract, state in zip(contracts, states, strict=True):
            cid = contract["id"]
            refs = [p["reference"] for p in state["payments"]]
            assert len(refs) == len(set(refs))
            assert set(refs) == expect["refs"][cid]
            assert Decimal(state["paid"]) == expect["paid"][cid]
            assert Decimal(state["outstanding"]) == max(Decimal("1000000.00") - expect["paid"][cid], Decimal(0))
        # Per contract, the last applied line's balance is the contract's balance.
        last_outstanding = {r["contract_id"]: r["outstanding"] for r in first["lines"] if r["outcome"] == "applied"}
        for contract, state in zip(contracts, states, strict=True):
            if contract["id"] in last_outstanding:
                assert last_outstanding[contract["id"]] == state["outstanding"]
        return {"first_seconds": t1, "second_seconds": t2}


async def test_finance_batch_of_1000_lines_posted_twice_applies_each_payment_once(api_service):
    started = time.perf_counter()
    timing = await finance_batch_posted_twice(api_service, n_contracts=60, n_lines=1000)
    assert time.perf_counter() - started < 120, timing


@pytest.mark.postgres
async def test_finance_batch_posted_twice_on_postgres(api_service_pg):
    await finance_batch_posted_twice(api_service_pg, n_contracts=20, n_lines=300)


def test_reference_tokens():
    assert reference_tokens("货款HT-2026-0001，谢谢") == ["HT-2026-0001"]
    assert reference_tokens("HT-1001/INV-77.") == ["HT-1001/INV-77", "HT-1001", "INV-77"]
    assert reference_tokens("pay 12 ab") == []  # shorter than 4 characters: never a contract number
    assert reference_tokens(None) == []


async def test_a_line_with_a_malformed_amount_is_rejected_alone(api_service):
    """'1e3' is read by Decimal as 1000: a feed sending it sends a float printed, not an amount.
    The line is rejected with the reason; the statement's other lines are applied."""
    at = "2026-11-27T10:00:00+08:00"
    async with httpx.AsyncClient(base_url=api_service.base_url, timeout=60) as c:
        (a,) = await create_contracts(c, 1)
        tag = uuid.uuid4().hex[:8]
        lines = [{"line_id": f"{tag}-{k}", "amount": amount, "currency": "CNY", "received_at": at,
                  "contract_id": a["id"]} for k, amount in enumerate(["1e3", "100.00", "+5", "\uff11\uff12"])]
        out, _ = await post(c, FINANCE, {"lines": lines})
        assert [r["outcome"] for r in out["lines"]] == ["rejected", "applied", "rejected", "rejected"], out
        assert "not a decimal amount" in out["lines"][0]["reason"]
        live = (await c.get(f"/contracts/{a['id']}")).json()
        assert live["paid"] == "100.00"


async def test_finance_line_on_a_closed_contract_and_statement_order(api_service):
    at = "2026-11-27T10:00:00+08:00"
    async with httpx.AsyncClient(base_url=api_service.base_url, timeout=60) as c:
        (a, b) = await create_contracts(c, 2)
        tag = uuid.uuid4().hex[:8]
        # Statement order decides the allocation: the 300.00 line first fills the deposit first.
        lines = [
            {"line_id": f"{tag}-1", "amount": "300000.00", "currency": "CNY", "received_at": at,
             "reference": f"Deposit {a['external_id'].lower()}"},  # the number in another case
            {"line_id": f"{tag}-2", "amount": "100.00", "currency": "CNY", "received_at": at,
             "contract_id": a["id"]},
            {"line_id": f"{tag}-3", "amount": "1.00", "currency": "CNY", "received_at": at,
             "reference": f"{a['external_id']} and {b['external_id']}"},  # names two contracts
            {"line_id": f"{tag}-4", "amount": "1.00", "currency": "CNY", "received_at": at,
             "contract_id": a["id"], "contract_number": b["external_id"]},  # contradicting hints
            {"line_id": f"{tag}-2", "amount": "100.00", "currency": "CNY", "received_at": at,
             "contract_id": b["id"]},  # the same bank line for another contract
        ]
        out, _ = await post(c, FINANCE, {"lines": lines})
        got = [(r["outcome"], r.get("matched_by")) for r in out["lines"]]
        assert got == [("applied", "reference"), ("applied", "contract_id"), ("unmatched", None),
                       ("rejected", None), ("rejected", "contract_id")], out
        assert out["lines"][0]["allocations"] == {"deposit": "300000.00"}
        assert out["lines"][1]["allocations"] == {"balance": "100.00"}
        assert out["lines"][1]["outstanding"] == "699900.00"
        assert "several contracts" in out["lines"][2]["reason"]
        assert "already applied to contract" in out["lines"][4]["reason"]

        # Closed contract: the line already on it is a duplicate; a new one is rejected with the reason.
        r = await c.post(f"/contracts/{a['id']}/terminate", json={"reason": "customer cancelled", "by": "li.wei"})
        assert r.status_code == 200, r.text
        again, _ = await post(c, FINANCE, {"lines": [lines[1], {**lines[1], "line_id": f"{tag}-9"}]})
        assert [r["outcome"] for r in again["lines"]] == ["duplicate", "rejected"], again
        assert "terminated" in again["lines"][1]["reason"] or "closed" in again["lines"][1]["reason"]
        state = (await c.get(f"/contracts/{a['id']}")).json()
        assert state["paid"] == "300100.00"


async def test_repost_is_a_duplicate_even_when_the_read_model_lags(api_service):
    """A re-posted line is usually answered from the read model; without it the workflow decides."""
    at = "2026-11-27T10:00:00+08:00"
    async with httpx.AsyncClient(base_url=api_service.base_url, timeout=60) as c:
        (a,) = await create_contracts(c, 1)
        line = {"line_id": uuid.uuid4().hex, "amount": "250.00", "currency": "CNY", "received_at": at,
                "contract_number": a["external_id"]}
        first, _ = await post(c, FINANCE, {"lines": [line]})
        assert first["lines"][0]["outcome"] == "applied"

        engine = make_engine(api_service.settings.database_url)
        sessions = make_session_factory(engine)

        def payment_rows() -> int:
            with sessions() as session:
                return len(session.query(Payment).filter_by(contract_id=a["id"]).all())

        async def projected():
            return await asyncio.to_thread(payment_rows) == 1

        await wait_for(projected)
        again, _ = await post(c, FINANCE, {"lines": [line]})
        assert again["lines"][0]["outcome"] == "duplicate" and again["lines"][0]["outstanding"] is None  # read model

        def forget() -> None:  # as if the projection had not caught up yet
            with sessions.begin() as session:
                session.execute(delete(Payment).where(Payment.contract_id == a["id"]))

        await asyncio.to_thread(forget)
        lagging, _ = await post(c, FINANCE, {"lines": [line, {**line, "amount": "251.00"}]})
        engine.dispose()
        assert [r["outcome"] for r in lagging["lines"]] == ["duplicate", "rejected"], lagging
        assert lagging["lines"][0]["outstanding"] == "999750.00"  # answered by the workflow
        assert "different amount" in lagging["lines"][1]["reason"]
        state = (await c.get(f"/contracts/{a['id']}")).json()
        assert [p["amount"] for p in state["payments"]] == ["250.00"]


async def test_finance_envelope_errors_are_422_and_change_nothing(api_service):
    at = "2026-11-27T10:00:00+08:00"
    async with httpx.AsyncClient(base_url=api_service.base_url, timeout=60) as c:
        (a,) = await create_contracts(c, 1)
        good = {"line_id": uuid.uuid4().hex, "amount": "10.00", "currency": "CNY", "received_at": at,
                "contract_id": a["id"]}
        bad_bodies = [
            {"lines": []},
            {"lines": [good, {**good, "line_id": "x2", "received_at": "2026-11-27T10:00:00"}]},  # naive time
            {"lines": [good, {k: v for k, v in good.items() if k != "line_id"}]},
            {"lines": [good, {**good, "line_id": "x3", "amount": 10.5}]},  # a float, not a decimal string
            {"lines": [good, {**good, "line_id": "x4", "colour": "red"}]},  # unknown field
            {"statement": "S1", "lines": [good]},
            {"lines": [good, {**good, "line_id": " padded "}]},
        ]
        for body in bad_bodies:
            r = await c.post(FINANCE, json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            problem = r.json()
            assert problem["status"] == 422 and problem["detail"] and problem["errors"]
        r = await c.post(FINANCE, json={"lines": [{**good, "line_id": f"l{k}"} for k in range(5001)]})
        assert r.status_code == 413 and r.headers["content-type"].startswith("application/problem+json"), r.text
        assert "5000" in r.json()["detail"]
        state = (await c.get(f"/contracts/{a['id']}")).json()
        assert state["payments"] == [] and state["paid"] == "0.00"
        # A line-level problem is not an envelope problem: it is reported on the line.
        out, _ = await post(c, FINANCE, {"lines": [good, {**good, "line_id": "x5", "amount": "1.001"}]})
        assert [r["outcome"] for r in out["lines"]] == ["applied", "rejected"]
        assert "decimals" in out["lines"][1]["reason"]


# ------------------------------------------------------------------ ERP
async def erp_scenario(service) -> None:
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as c:
        tag = uuid.uuid4().hex[:6].upper()
        order, twin = f"SO-{tag}-1", f"SO-{tag}-2"
        (main,) = await create_contracts(c, 1, erp_order_no=order)
        await create_contracts(c, 2, erp_order_no=twin)  # two active contracts on one ERP order
        cid = main["id"]
        lines = [
            {"erp_order_no": order, "milestone": "order_review", "percent": 50, "message": "credit check",
             "event_id": "e1"},
            {"erp_order_no": order, "milestone": "order_review", "percent": 100, "complete": True,
             "message": "reviewed", "event_id": "e2"},
            {"erp_order_no": order, "milestone": "production_scheduling", "percent": 30, "message": "slot booked",
             "event_id": "e3"},
            {"erp_order_no": order, "milestone": "production_scheduling", "percent": 30, "message": "slot booked",
             "event_id": "e3"},  # redelivered inside the batch
            {"erp_order_no": f"SO-{tag}-404", "milestone": "shipping", "percent": 10},
            {"erp_order_no": twin, "milestone": "order_review", "percent": 10},
            {"erp_order_no": order, "milestone": "shipping", "percent": 150},
            {"erp_order_no": order, "milestone": "no_such_step", "percent": 10},
            {"erp_order_no": order, "milestone": "shipping", "percent": 100, "complete": True},  # dependency open
            {"erp_order_no": order, "milestone": "shipping", "percent": 5, "event_id": "e1"},  # event id reused
        ]
        # The ERP posts with its own API key (integration:erp); the workflow records that key as the actor.
        r = await c.post("/api-keys", json={"name": "erp", "roles": ["integration:erp"]})
        assert r.status_code == 201, r.text
        erp_key, erp_actor = r.json()["key"], f"key:{r.json()['id']}"
        erp = httpx.AsyncClient(base_url=service.url, timeout=60, headers={"Authorization": f"Bearer {erp_key}"})
        assert (await erp.get(f"/contracts/{cid}")).status_code == 404  # it sees no contract, only its endpoint
        first, _ = await post(erp, ERP, {"lines": lines})
        outcomes = [r["outcome"] for r in first["lines"]]
        assert outcomes == ["applied", "applied", "applied", "duplicate", "unmatched", "rejected", "rejected",
                            "rejected", "rejected", "rejected"], first
        reasons = [r["reason"] or "" for r in first["lines"]]
        assert "ambiguous" in reasons[5]
        assert "percent" in reasons[6]
        assert "no_such_step" in reasons[7]
        assert "production_scheduling" in reasons[8]  # shipping depends on it
        assert "e1" in reasons[9]
        assert first["lines"][1]["milestone_status"] == "done"
        assert first["lines"][0]["contract_id"] == cid and first["lines"][4]["contract_id"] is None
        assert first["totals"] == {"lines": 10, "applied": 3, "duplicate": 1, "unmatched": 1, "rejected": 5}

        # The whole batch redelivered: nothing changes, the applied lines come back as duplicates.
        second, _ = await post(erp, ERP, {"lines": lines})
        await erp.aclose()
        assert [r["outcome"] for r in second["lines"]] == ["duplicate"] * 4 + outcomes[4:], second
        assert "superseded" in second["lines"][0]["reason"]

        state = (await c.get(f"/contracts/{cid}")).json()
        ms = {m["key"]: m for m in state["milestones"]}
        assert ms["order_review"]["status"] == "done" and ms["order_review"]["completed_by"] == erp_actor
        assert ms["production_scheduling"]["status"] == "in_progress"
        assert ms["production_scheduling"]["progress"] == 30
        assert ms["shipping"]["status"] == "pending" and ms["shipping"]["progress"] == 0

        async def progress_events():
            evs = (await c.get(f"/contracts/{cid}/events")).json()
            return evs if any(e["type"] == "milestone.completed" for e in evs) else None

        evs = await wait_for(progress_events)
        types = Counter((e["type"], e["data"].get("key")) for e in evs)
        assert types[("milestone.progress", "order_review")] == 1
        assert types[("milestone.progress", "production_scheduling")] == 1
        assert types[("milestone.completed", "order_review")] == 1

        # Envelope errors: 422 problem+json, nothing applied.
        body: dict[str, Any]
        for body in (
            {"lines": []},
            {"lines": [{"erp_order_no": order, "milestone": "shipping", "percent": "lots"}]},
            {"lines": [{"milestone": "shipping", "percent": 10}]},
            {"lines": [{"erp_order_no": order, "milestone": "shipping", "percent": 10}], "extra": 1},
        ):
            r = await c.post(ERP, json=body)
            assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
        state = (await c.get(f"/contracts/{cid}")).json()
        assert {m["key"]: m["progress"] for m in state["milestones"]}["shipping"] == 0


async def test_erp_progress_batch(api_service):
    await erp_scenario(api_service)


@pytest.mark.postgres
async def test_erp_progress_batch_on_postgres(api_service_pg):
    await erp_scenario(api_service_pg)
