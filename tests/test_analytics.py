"""Analytics: the SQL (api/analytics/service.py) against an independent computation in Python.

A generated data set (core.demo_data.generate: a few hundred contracts over two years, active and
closed, late stages, partial payments, costs, scores, several currencies) is inserted straight into
the read model, on SQLite and on PostgreSQL.  Every metric is then recomputed here, from the same
rows, with plain Python loops following docs/analytics.md, and the two must agree: counts and money
exactly, days and rates to 1e-6.  The HTTP endpoints are checked the same way on the running
service (scoped to this test's customers), plus their problem answers and OpenAPI entries.
"""

from __future__ import annotations

import csv
import io
import math
import uuid
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from api.analytics import service as a
from core.demo_data import generate, insert_rows
from models.db import make_engine, make_session_factory
from tests.conftest import IN_CI

TZ = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 20, 3, 30, tzinfo=timezone.utc)
TOL = 1e-6
STAGE_KINDS = set(a.STAGE_ORDER)


def dataset(n: int = 160, seed: int = 5, prefix: str = "an-", customers=None):
    rows = list(generate(n, now=NOW, seed=seed, prefix=prefix, customers=customers))
    # A terminated contract with a stage left open and late: its delay stops when it closed.
    t = next(r for r in rows if r.contract["status"] == "active" and any(m["status"] == "overdue" for m in r.milestones))
    t.contract.update(status="terminated", closed_at=NOW - timedelta(days=3), close_reason="cancelled")
    # A waived milestone: left out of every stage metric.
    w = next(r for r in rows if r.contract["playbook"] == "goods_sale" and r.milestones[1]["status"] == "done")
    w.milestones[1]["status"] = "waived"
    return rows


def reproject(rows) -> None:
    """Dates and payments were edited: derive started_at and settled_at again, as the projection does."""
    for r in rows:
        for i, m in enumerate(r.milestones):
            done = [x["completed_at"] for x in r.milestones[:i] if x["completed_at"] is not None]
            m["started_at"] = max(done) if done else r.contract["effective_at"]
        total, r.contract["settled_at"] = Decimal(0), None
        for p in sorted(r.payments, key=lambda p: (p["received_at"], p["reference"])):
            total += p["amount"]
            if total >= r.contract["amount"]:
                r.contract["settled_at"] = p["received_at"]
                break


# ---------------------------------------------------------------- the reference, in Python
def days(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() / 86400


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    xs = sorted(values)
    pos = p * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (pos - lo) * (xs[hi] - xs[lo])


def in_period(t: datetime | None, f: a.Filters) -> bool:
    return t is not None and (f.start is None or t >= f.start) and (f.end is None or t < f.end)


def contract_ok(c: dict, crm: str, f: a.Filters, *, owner: bool) -> bool:
    if f.customer and f.customer.lower() not in c["customer_name"].lower() and crm != f.customer:
        return False
    if f.playbook and c["playbook"] != f.playbook:
        return False
    return not (owner and f.owner and c["owner"] != f.owner)


def milestone_ok(m: dict, f: a.Filters) -> bool:
    return (m["status"] != "waived" and (not f.department or m["department"] == f.department)
            and (not f.owner or m["owner"] == f.owner))


def ref_cycle(rows, f):
    values: list[float] = []
    by_pb: defaultdict[str, list[float]] = defaultdict(list)
    bars: defaultdict[int, int] = defaultdict(int)
    for r in rows:
        c = r.contract
        if not contract_ok(c, r.customer[1], f, owner=True) or c["amount"] <= 0:
            continue
        total, settled = Decimal(0), None
        for p in sorted(r.payments, key=lambda p: (p["received_at"], p["reference"])):
            total += p["amount"]
            if total >= c["amount"]:
                settled = p["received_at"]
                break
        if settled is None or not in_period(settled, f):
            continue
        x = days(settled, c["effective_at"])
        values.append(x)
        by_pb[c["playbook"]].append(x)
        bars[math.floor(x / a.CYCLE_HISTOGRAM_DAYS)] += 1
    return values, by_pb, dict(bars)


def ref_stages(rows, f):
    times: defaultdict[str, list[float]] = defaultdict(list)
    on_time: defaultdict[str, int] = defaultdict(int)
    with_due: defaultdict[str, int] = defaultdict(int)
    due: defaultdict[str, int] = defaultdict(int)
    late: defaultdict[str, int] = defaultdict(int)
    for r in rows:
        c = r.contract
        if not contract_ok(c, r.customer[1], f, owner=False):
            continue
        ms = sorted(r.milestones, key=lambda m: m["position"])
        for i, m in enumerate(ms):
            if not milestone_ok(m, f):
                continue
            if m["status"] == "done" and in_period(m["completed_at"], f):
                earlier = [x["completed_at"] for x in ms[:i] if x["completed_at"] is not None]
                start = max(earlier) if earlier else c["effective_at"]
                times[m["kind"]].append(max(0.0, days(m["completed_at"], start)))
                if m["due_at"] is not None:
                    with_due[m["kind"]] += 1
                    on_time[m["kind"]] += m["completed_at"] <= m["due_at"]
            if fell_due(m, c, f):
                due[m["kind"]] += 1
                late[m["kind"]] += m["completed_at"] is None or m["completed_at"] > m["due_at"]
    return times, on_time, with_due, due, late


def open_until(c: dict, as_of: datetime) -> datetime:
    return min(as_of, c["closed_at"] or as_of)


def fell_due(m: dict, c: dict, f: a.Filters) -> bool:
    d = m["due_at"]
    if d is None or d >= f.as_of or not in_period(d, f):
        return False
    return m["completed_at"] is not None or d < open_until(c, f.as_of)


def ref_receivables(rows, f):
    as_of = f.as_of
    out: defaultdict[str, dict[str, Any]] = defaultdict(
        lambda: {"buckets": defaultdict(lambda: [Decimal(0), 0]), "billed": Decimal(0)})
    for r in rows:
        c = r.contract
        if not contract_ok(c, r.customer[1], f, owner=True):
            continue
        cur = out[c["currency"]]
        for i in r.installments:
            if i["due_at"] is None:
                continue
            if i["due_at"] <= as_of and in_period(i["due_at"], f):
                cur["billed"] += i["amount"]
            if i["paid_at"] is not None and i["paid_at"] <= as_of:
                continue
            owed = i["amount"] - i["paid"] if i["paid_at"] is None else i["amount"]
            if i["due_at"] > as_of:
                bucket = "not_due"
            else:
                age = days(as_of, i["due_at"])
                bucket = "0-30" if age <= 30 else "31-60" if age <= 60 else "61-90" if age <= 90 else "90+"
            cur["buckets"][bucket][0] += owed
            cur["buckets"][bucket][1] += owed > 0
    return out


def ref_costs(rows, f):
    out: defaultdict[str, defaultdict[str, list[Any]]] = defaultdict(
        lambda: defaultdict(lambda: [0, Decimal(0), Decimal(0), 0]))
    for r in rows:
        if not contract_ok(r.contract, r.customer[1], f, owner=False):
            continue
        for m in r.milestones:
            if (m["planned_cost"] is None or m["actual_cost"] is None or not milestone_ok(m, f)
                    or not in_period(m["completed_at"], f)):
                continue
            acc = out[r.contract["currency"]][m["kind"]]
            acc[0] += 1
            acc[1] += m["planned_cost"]
            acc[2] += m["actual_cost"]
            acc[3] += m["actual_cost"] > m["planned_cost"]
    return out


def ref_satisfaction(rows, f):
    scores = []
    for r in rows:
        if not contract_ok(r.contract, r.customer[1], f, owner=False):
            continue
        scores += [m["satisfaction"] for m in r.milestones
                   if m["kind"] == "customer_acceptance" and m["satisfaction"] is not None and milestone_ok(m, f)
                   and in_period(m["completed_at"], f)]
    return scores


def ref_bottlenecks(rows, f):
    as_of = f.as_of
    per: defaultdict[str, dict[str, Any]] = defaultdict(
        lambda: {"due": 0, "late": 0, "open_late": 0, "delay": 0.0, "owners": defaultdict(float)})
    for r in rows:
        c = r.contract
        if not contract_ok(c, r.customer[1], f, owner=False):
            continue
        for m in r.milestones:
            if not milestone_ok(m, f) or not fell_due(m, c, f):
                continue
            done = m["completed_at"]
            end = done if done is not None and done < as_of else open_until(c, as_of)
            delay = max(0.0, days(end, m["due_at"]))
            s = per[m["kind"]]
            s["due"] += 1
            s["late"] += delay > 0
            s["open_late"] += delay > 0 and (done is None or done >= as_of)
            s["delay"] += delay
            s["owners"][m["owner"]] += delay
    return per


def money(value: Decimal, places: int = 2) -> str:
    return str(value.quantize(Decimal(1).scaleb(-places)))


# ---------------------------------------------------------------- comparing
def close(x, y) -> bool:
    if x is None or y is None:
        return x is None and y is None
    return abs(x - y) <= TOL * max(1.0, abs(y))


def check_all(conn, rows, f: a.Filters) -> dict[str, int]:
    """Every metric under ``f``, SQL against the reference; returns how many items were compared."""
    seen = {}
    cyc = a.cycle(conn, f)
    values, by_pb, bars = ref_cycle(rows, f)
    assert cyc.overall.count == len(values)
    assert close(cyc.overall.avg_days, sum(values) / len(values) if values else None)
    assert close(cyc.overall.p50_days, pct(values, 0.5)) and close(cyc.overall.p90_days, pct(values, 0.9))
    assert {x.playbook: x.count for x in cyc.by_playbook} == {k: len(v) for k, v in by_pb.items()}
    for x in cyc.by_playbook:
        assert close(x.p50_days, pct(by_pb[x.playbook], 0.5)) and close(x.p90_days, pct(by_pb[x.playbook], 0.9))
    assert {h.from_days // a.CYCLE_HISTOGRAM_DAYS: h.count for h in cyc.histogram} == bars
    seen["settled contracts"] = len(values)

    st = a.stages(conn, f)
    times, on_time, with_due, due, late = ref_stages(rows, f)
    kinds = set(times) | set(due)
    assert [s.stage for s in st.stages] == sorted(kinds, key=a.STAGE_ORDER.index)
    for s in st.stages:
        xs = times.get(s.stage, [])
        assert s.completed == len(xs), s.stage
        assert close(s.avg_days, sum(xs) / len(xs) if xs else None), s.stage
        assert close(s.p50_days, pct(xs, 0.5)) and close(s.p90_days, pct(xs, 0.9)), s.stage
        assert (s.on_time, s.with_due_date, s.due, s.late) == (on_time[s.stage], with_due[s.stage], due[s.stage],
                                                               late[s.stage]), s.stage
    assert close(st.on_time_rate, sum(on_time.values()) / sum(with_due.values()) if sum(with_due.values()) else None)
    assert close(st.late_rate, sum(late.values()) / sum(due.values()) if sum(due.values()) else None)
    seen["completed milestones"] = sum(len(v) for v in times.values())
    seen["late milestones"] = sum(late.values())

    rec = a.receivables(conn, f)
    ref = ref_receivables(rows, f)
    assert [c.currency for c in rec.currencies] == sorted(k for k, v in ref.items() if v["buckets"] or v["billed"])
    for c in rec.currencies:
        b = ref[c.currency]["buckets"]
        for bucket in c.ageing:
            assert (bucket.amount, bucket.installments) == (money(b[bucket.bucket][0]), b[bucket.bucket][1]), \
                (c.currency, bucket.bucket)
        overdue = sum((b[k][0] for k in ("0-30", "31-60", "61-90", "90+")), Decimal(0))
        assert c.overdue == money(overdue) and c.not_due == money(b["not_due"][0])
        billed = ref[c.currency]["billed"]
        assert c.billed == money(billed)
        if f.start is not None and billed:
            assert close(c.dso_days, float(overdue) / float(billed) * days(f.as_of, f.start))
        else:
            assert c.dso_days is None
    seen["receivable currencies"] = len(rec.currencies)

    co = a.costs(conn, f)
    ref = ref_costs(rows, f)
    assert [c.currency for c in co.currencies] == sorted(ref)
    for cost in co.currencies:
        per = ref[cost.currency]
        tp, ta = sum(v[1] for v in per.values()), sum(v[2] for v in per.values())
        assert (cost.milestones, cost.planned, cost.actual, cost.over_budget) == (
            sum(v[0] for v in per.values()), money(tp), money(ta), sum(v[3] for v in per.values()))
        assert close(cost.overrun, float(ta) / float(tp) - 1)
        for sc in cost.stages:
            n, p, ac, over = per[sc.stage]
            assert (sc.milestones, sc.planned, sc.actual, sc.over_budget) == (n, money(p), money(ac), over)
            assert close(sc.overrun, float(ac) / float(p) - 1)
    seen["costed milestones"] = sum(cost.milestones for cost in co.currencies)

    sat = a.satisfaction(conn, f)
    scores = ref_satisfaction(rows, f)
    assert sat.count == len(scores)
    assert close(sat.average, sum(scores) / len(scores) if scores else None)
    assert [d.count for d in sat.distribution] == [scores.count(k) for k in range(1, 6)]
    seen["scores"] = len(scores)

    bn = a.bottlenecks(conn, f)
    ref = ref_bottlenecks(rows, f)
    order = sorted(ref, key=lambda k: (-ref[k]["delay"], a.STAGE_ORDER.index(k)))
    assert [s.stage for s in bn.stages] == order
    for b in bn.stages:
        r = ref[b.stage]
        assert (b.due, b.late, b.open_late) == (r["due"], r["late"], r["open_late"]), b.stage
        assert close(b.total_delay_days, r["delay"])
        assert close(b.mean_delay_days, r["delay"] / r["due"])
        if r["delay"] > 0:
            top = min(r["owners"].items(), key=lambda kv: (-kv[1], kv[0]))
            assert b.top_owner == top[0], b.stage
            assert close(b.top_owner_delay_days, top[1]) and close(b.top_owner_share, top[1] / r["delay"])
        else:
            assert b.top_owner is None
    assert [s.rank for s in bn.stages] == list(range(1, len(bn.stages) + 1))
    seen["bottleneck stages"] = len(bn.stages)
    return seen


FILTERS: list[dict[str, Any]] = [
    dict(period="all"),
    dict(),  # the last 12 months
    dict(period="2026-Q2"),
    dict(period="2025"),
    dict(period="2026-09"),
    dict(date_from=date(2025, 6, 10), date_to=date(2026, 2, 3)),
    dict(period="all", owner="li.wei"),
    dict(period="all", department="logistics"),
    dict(period="last-12-months", playbook="service"),
    dict(period="all", customer="ningbo"),
    dict(period="all", customer="CRM-C-2017"),  # by CRM id: a USD customer
    dict(period="2026-Q3", owner="zhao.lei", department="logistics", playbook="goods_sale"),
]


@pytest.fixture
def loaded(sessions):
    rows = dataset()
    with sessions.begin() as session:
        insert_rows(session, rows, NOW)
    return sessions, rows


def test_metrics_match_an_independent_computation(loaded):
    sessions, rows = loaded
    totals: dict[str, int] = defaultdict(int)
    with sessions() as session:
        conn = session.connection()
        for kw in FILTERS:
            f = a.make_filters(tz=TZ, now=NOW, **kw)
            for k, v in check_all(conn, rows, f).items():
                totals[k] += v
        print(conn.dialect.name, dict(totals))
    # The data set is not trivial: every metric was compared on real numbers.
    assert totals["settled contracts"] > 100 and totals["completed milestones"] > 1000
    assert totals["late milestones"] > 100 and totals["costed milestones"] > 200 and totals["scores"] > 50
    assert totals["receivable currencies"] >= 10 and totals["bottleneck stages"] >= 30


def test_percentiles_and_ageing_boundaries_on_a_small_hand_made_set(sessions):
    """Known answers: percentile interpolation, an even and an odd count, bucket edges."""
    rows = list(generate(1, now=NOW, seed=1, prefix="pc-"))
    base = rows[0]
    base.contract.update(effective_at=NOW - timedelta(days=200), amount=Decimal("100.00"), status="completed")
    base.payments.clear()
    base.installments.clear()
    made = [base]
    # Cycles of 10, 20, 30, 40 days: p50 = 25, p90 = 37; average 25.
    for k, cycle_days in enumerate([10, 20, 30, 40]):
        r = list(generate(1, now=NOW, seed=1, prefix=f"pc{k}-"))[0]
        eff = NOW - timedelta(days=100)
        r.contract.update(effective_at=eff, amount=Decimal("100.00"), playbook="goods_sale")
        pay = {"contract_id": r.contract["id"], "currency": "CNY", "recorded_by": "t", "allocations": {},
               "excess": Decimal(0), "recorded_at": eff}
        r.payments[:] = [
            {**pay, "reference": "A", "amount": Decimal("60.00"), "received_at": eff + timedelta(days=cycle_days / 2)},
            {**pay, "reference": "B", "amount": Decimal("40.00"), "received_at": eff + timedelta(days=cycle_days)},
            # Money after it was settled (an over-payment) does not move the settling moment.
            {**pay, "reference": "C", "amount": Decimal("5.00"), "received_at": eff + timedelta(days=cycle_days + 30)},
        ]
        # Ageing: installments exactly 30, 30.5, 60, 90 and 91 days past due, 25.00 owed each.
        r.installments[:] = [{"contract_id": r.contract["id"], "key": "x", "position": 0, "amount": Decimal("25.00"),
                              "paid": Decimal(0), "status": "overdue",
                              "due_at": NOW - timedelta(days=[30, 30.5, 60, 90][k]), "due_estimated": False,
                              "paid_at": None, "currency": r.contract["currency"]}]
        made.append(r)
    reproject(made)
    with sessions.begin() as session:
        insert_rows(session, made, NOW)
    f = a.make_filters(tz=TZ, now=NOW, period="all", customer=None)
    with sessions() as session:
        conn = session.connection()
        cyc = a.cycle(conn, f)
        assert cyc.overall.count == 4
        assert cyc.overall.avg_days == pytest.approx(25) and cyc.overall.p50_days == pytest.approx(25)
        assert cyc.overall.p90_days == pytest.approx(37)
        assert [(h.from_days, h.count) for h in cyc.histogram] == [(0, 1), (15, 1), (30, 2)]
        rec = a.receivables(conn, f)
        ageing = {b.bucket: (b.amount, b.installments) for b in rec.currencies[0].ageing}
        assert ageing == {"0-30": ("25.00", 1), "31-60": ("50.00", 2), "61-90": ("25.00", 1), "90+": ("0.00", 0)}
        check_all(conn, made, f)


def test_filters_and_periods():
    import typing

    from api.contracts.schemas import MilestoneKind

    assert set(a.STAGE_ORDER) == set(typing.get_args(MilestoneKind))  # every stage the API accepts
    f = a.make_filters(tz=TZ, now=NOW, period="2026-Q1")
    assert f.start == datetime(2025, 12, 31, 16, tzinfo=timezone.utc)  # 2026-01-01 00:00 in Beijing
    assert f.end == datetime(2026, 3, 31, 16, tzinfo=timezone.utc) and f.as_of == f.end
    f = a.make_filters(tz=TZ, now=NOW, date_from=date(2026, 11, 1), date_to=date(2026, 12, 31))
    assert f.as_of == NOW  # the period is not over: open items are measured now
    assert a.previous_quarter("2026-Q1") == "2025-Q4" and a.last_complete_quarter(NOW, TZ) == "2026-Q3"
    assert a.make_filters(tz=TZ, now=NOW).label == "last-12-months"
    for bad in (dict(period="2026-Q5"), dict(period="2026", date_from=date(2026, 1, 1)),
                dict(date_from=date(2026, 2, 1), date_to=date(2026, 1, 1))):
        with pytest.raises(a.Problem) as exc:
            a.make_filters(tz=TZ, now=NOW, **bad)
        assert exc.value.status == 422


def test_quarterly_report_compares_with_the_previous_quarter(loaded):
    sessions, rows = loaded
    with sessions() as session:
        conn = session.connection()
        f = a.make_filters(tz=TZ, now=NOW)
        report = a.quarterly_report(conn, f, "2026-Q3", TZ)
        q3 = a.make_filters(tz=TZ, now=NOW, period="2026-Q3")
        q2 = a.make_filters(tz=TZ, now=NOW, period="2026-Q2")
        by = {r.metric: r for r in report.rows}
        signed_q3 = sum(1 for r in rows if in_period(r.contract["effective_at"], q3))
        signed_q2 = sum(1 for r in rows if in_period(r.contract["effective_at"], q2))
        assert (by["contracts signed"].current, by["contracts signed"].previous) == (signed_q3, signed_q2)
        assert by["contracts signed"].change == signed_q3 - signed_q2
        v3, v2 = ref_cycle(rows, q3)[0], ref_cycle(rows, q2)[0]
        assert close(by["fulfilment cycle, p50"].current, pct(v3, 0.5))
        assert close(by["fulfilment cycle, p50"].previous, pct(v2, 0.5))
        bn = ref_bottlenecks(rows, q3)
        top = max(bn, key=lambda k: (bn[k]["delay"], -a.STAGE_ORDER.index(k)))
        assert by["stage with the most delay"].current == top
        text = a.report_csv(report)
        table = list(csv.reader(io.StringIO(text)))
        assert table[0] == ["section", "metric", "unit", "2026-Q3", "2026-Q2", "change"]
        assert len(table) == len(report.rows) + 1
        assert ["new business", "contracts signed", "contracts", str(signed_q3), str(signed_q2),
                str(float(signed_q3 - signed_q2))][:5] == table[1][:5]


# ---------------------------------------------------------------- over HTTP, on the running service
@pytest.mark.devserver
async def test_endpoints_answer_the_same_numbers(api_service):
    token = f"zz{uuid.uuid4().hex[:8]}"
    customers = [(f"{token} Alpha 精密", f"CRM-{token}-1"), (f"{token} Beta", f"CRM-{token}-2")]
    rows = dataset(n=60, seed=9, prefix=f"{token}-", customers=customers)
    engine = make_engine(api_service.settings.database_url)
    try:
        with make_session_factory(engine).begin() as session:
            insert_rows(session, rows, NOW)
    finally:
        engine.dispose()
    async with httpx.AsyncClient(base_url=api_service.base_url, timeout=30) as c:
        params = {"period": "all", "customer": token}
        f = a.make_filters(tz=TZ, period="all", customer=token)
        cyc = (await c.get("/analytics/cycle", params=params)).json()
        values = ref_cycle(rows, f)[0]
        assert cyc["overall"]["count"] == len(values) > 10
        assert close(cyc["overall"]["p90_days"], pct(values, 0.9))
        st = (await c.get("/analytics/stages", params=params)).json()
        times = ref_stages(rows, f)[0]
        assert {s["stage"]: s["completed"] for s in st["stages"] if s["completed"]} == {k: len(v) for k, v in times.items()}
        sat = (await c.get("/analytics/satisfaction", params=params)).json()
        assert sat["count"] == len(ref_satisfaction(rows, f))
        for path in ("/analytics/receivables", "/analytics/costs", "/analytics/bottlenecks"):
            r = await c.get(path, params={**params, "owner": "li.wei"})
            assert r.status_code == 200, r.text
        r = await c.get("/analytics/reports/quarterly", params={"quarter": "2026-Q3", "customer": token})
        assert r.status_code == 200 and r.json()["previous_quarter"] == "2026-Q2"
        r = await c.get("/analytics/reports/quarterly.csv", params={"quarter": "2026-Q3", "customer": token})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        assert "quarterly-review-2026-Q3.csv" in r.headers["content-disposition"]
        assert r.text.lstrip("\ufeff").startswith("section,metric,unit,2026-Q3,2026-Q2,change")

        # Bad filters: problem details, 422, with the field named.
        for bad in ({"period": "2026-Q5"}, {"from": "2026-03-01", "to": "2026-02-01"},
                    {"period": "2026", "from": "2026-01-01"}, {"from": "yesterday"}, {"customer": ""}):
            r = await c.get("/analytics/stages", params=bad)
            assert r.status_code == 422, (bad, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["errors"], r.text
        r = await c.get("/analytics/reports/quarterly", params={"quarter": "2026-Q7"})
        assert r.status_code == 422

        doc = (await c.get("/openapi.json")).json()
        for path in ("/analytics/cycle", "/analytics/stages", "/analytics/receivables", "/analytics/costs",
                     "/analytics/satisfaction", "/analytics/bottlenecks", "/analytics/reports/quarterly",
                     "/analytics/reports/quarterly.csv"):
            op = doc["paths"][path]["get"]
            assert "422" in op["responses"], path
            assert "application/problem+json" in op["responses"]["422"]["content"]
        assert doc["paths"]["/analytics/stages"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert not [p for p in doc["paths"] if p.startswith("/ui")]


def test_the_service_computes_reports_in_parallel_and_keeps_closed_quarters(loaded):
    sessions, rows = loaded
    service = a.AnalyticsService(sessions, TZ)
    f = a.make_filters(tz=TZ, now=NOW)
    with sessions() as session:
        expected = a.quarterly_report(session.connection(), f, "2026-Q2", TZ)
    first = service.quarterly(f, "2026-Q2")
    assert first == expected  # two connections at once give what one gives
    assert service.quarterly(f, "2026-Q2") is first  # a closed quarter: kept
    # A contract signed in the quarter arrives: the next request sees it.
    extra = list(generate(1, now=NOW, seed=77, prefix="late-"))[0]
    extra.contract["effective_at"] = datetime(2026, 5, 5, tzinfo=timezone.utc)
    reproject([extra])
    with sessions.begin() as session:
        insert_rows(session, [extra], NOW)
    again = service.quarterly(f, "2026-Q2")
    signed = {r.metric: r for r in again.rows}["contracts signed"]
    assert signed.current == {r.metric: r for r in first.rows}["contracts signed"].current + 1
    # The quarter still running is never kept.
    running = a.make_filters(tz=TZ, now=NOW)
    assert service.quarterly(running, "2026-Q4") is not service.quarterly(running, "2026-Q4")


def test_migration_0007_backfills_stage_starts_and_settlements(request, tmp_path):
    """A database projected before 0007 gets started_at and settled_at computed by the migration,
    equal to what the projection keeps, and (0012) each item the currency of its contract (on
    SQLite and PostgreSQL)."""
    from sqlalchemy import insert, select

    from core.migrate import upgrade
    from models import Contract, Installment, Milestone, Payment
    from tests.conftest import drop_pg_database, new_pg_database

    urls: list[tuple[str, str, tuple[str, str] | None]] = [("sqlite", f"sqlite:///{tmp_path / 'old.db'}", None)]
    try:
        admin = request.getfixturevalue("pg_server")
        name, url = new_pg_database(admin)
        urls.append(("postgres", url, (admin, name)))
    except pytest.skip.Exception:
        if IN_CI:
            raise
    rows = dataset(n=40, seed=13, prefix="old-")
    try:
        for _, url, _ in urls:
            upgrade(url, "0006")
            engine = make_engine(url)
            try:
                with make_session_factory(engine).begin() as session:
                    from core.demo_data import customer_ids

                    ids = customer_ids(session, {r.customer for r in rows}, NOW)
                    strip = lambda d, *keys: {k: v for k, v in d.items() if k not in keys}  # noqa: E731
                    for model, items in (
                        (Contract, [strip({**r.contract, "customer_id": ids[r.customer[1]]}, "settled_at") for r in rows]),
                        (Milestone, [strip(m, "started_at", "currency") for r in rows for m in r.milestones]),
                        (Installment, [strip(i, "currency") for r in rows for i in r.installments]),
                        (Payment, [p for r in rows for p in r.payments]),
                    ):
                        session.execute(insert(model.__table__), items)  # type: ignore[arg-type]  # a Table
                upgrade(url)
                with engine.connect() as conn:
                    started = dict(((c, k), v) for c, k, v in conn.execute(
                        select(Milestone.contract_id, Milestone.key, Milestone.started_at)))
                    settled = dict(conn.execute(select(Contract.id, Contract.settled_at)).all())
                    currencies = {model.__tablename__: dict(((c, k), v) for c, k, v in conn.execute(
                        select(model.contract_id, model.key, model.currency))) for model in (Milestone, Installment)}
            finally:
                engine.dispose()
            for r in rows:
                assert settled[r.contract["id"]] == r.contract["settled_at"], r.contract["id"]
                for m in r.milestones:
                    assert started[(r.contract["id"], m["key"])] == m["started_at"], (r.contract["id"], m["key"])
                for table, items in (("milestones", r.milestones), ("installments", r.installments)):
                    for item in items:
                        assert currencies[table][(r.contract["id"], item["key"])] == r.contract["currency"]
    finally:
        for _, _, pg in urls:
            if pg:
                drop_pg_database(*pg)


def test_the_database_keeps_each_stage_time(loaded):
    """milestones.stage_days (a generated column, migration 0010): completed_at - started_at in
    days, 0 if negative, NULL while not completed; written by every insert and update."""
    from sqlalchemy import select, update

    from models import Milestone

    sessions, rows = loaded
    with sessions() as session:
        kept = {(c, k): v for c, k, v in session.execute(
            select(Milestone.contract_id, Milestone.key, Milestone.stage_days))}
    checked = 0
    for r in rows:
        for m in r.milestones:
            value = kept[(r.contract["id"], m["key"])]
            if m["completed_at"] is None:
                assert value is None
                continue
            start = m["started_at"] or m["completed_at"]
            assert close(value, max(0.0, days(m["completed_at"], start))), (r.contract["id"], m["key"])
            checked += 1
    assert checked > 1000
    # Written on update too: a stage completed before its start counts 0; reopened, nothing.
    cid, key = next((r.contract["id"], m["key"]) for r in rows for m in r.milestones if m["completed_at"])
    with sessions.begin() as session:
        where = (Milestone.contract_id == cid) & (Milestone.key == key)
        session.execute(update(Milestone).where(where).values(started_at=NOW, completed_at=NOW - timedelta(days=2)))
        assert session.execute(select(Milestone.stage_days).where(where)).scalar_one() == 0
        session.execute(update(Milestone).where(where).values(completed_at=NOW + timedelta(days=1, hours=12)))
        assert close(session.execute(select(Milestone.stage_days).where(where)).scalar_one(), 1.5)
        session.execute(update(Milestone).where(where).values(completed_at=None))
        assert session.execute(select(Milestone.stage_days).where(where)).scalar_one() is None


def test_models_and_migration_agree_on_the_analytics_schema(database_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from models import Base

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    mine = [d for d in diff if any(w in repr(d) for w in ("started_at", "settled_at", "stage_days",
                                                           "ix_milestones_completed_at", "ix_milestones_due_at",
                                                           "ix_milestones_kind_completed_at", "ix_milestones_open_due",
                                                           "ix_milestones_kind_due_at",
                                                           "ix_installments_", "ix_payments_",
                                                           "ix_contracts_effective_at", "ix_contracts_settled_at",
                                                           "ix_contracts_id_analytics"))]
    assert mine == []


@pytest.mark.devserver
async def test_the_projection_keeps_stage_starts_and_settlement(api_service):
    """A real workflow: the read model's started_at and settled_at are what analytics expect."""
    from sqlalchemy import select

    from models import Contract, Milestone
    from tests.helpers import contract_request, wait_for

    now = datetime.now(timezone.utc)
    async with httpx.AsyncClient(base_url=api_service.base_url, timeout=30) as c:
        r = await c.post("/contracts", json=contract_request(now, amount="1000.00", installments=[
            {"key": "deposit", "due_after": "P7D", "amount": "300.00"},
            {"key": "balance", "due_after": "P60D", "amount": "700.00"}]))
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        for key in ("order_review", "production_scheduling"):
            r = await c.post(f"/contracts/{cid}/milestones/{key}/complete", json={"by": "li.wei"})
            assert r.status_code == 200, r.text
        # Recorded first but received later: the running total follows received_at.
        for ref, amount, day in (("A", "700.00", 20), ("B", "300.00", 10)):
            r = await c.post(f"/contracts/{cid}/payments", json={
                "reference": ref, "amount": amount, "currency": "CNY",
                "received_at": f"2026-11-{day}T10:00:00+08:00"})
            assert r.status_code == 200 and r.json()["applied"], r.text
        live = (await c.get(f"/contracts/{cid}")).json()
    done = {m["key"]: datetime.fromisoformat(m["completed_at"]) for m in live["milestones"] if m["completed_at"]}
    engine = make_engine(api_service.settings.database_url)
    sessions = make_session_factory(engine)

    async def projected():
        with sessions() as session:
            row = session.get(Contract, cid)
            return row if row is not None and row.settled_at is not None else None

    try:
        row = await wait_for(projected, timeout=30)
        assert row.settled_at == datetime(2026, 11, 20, 2, tzinfo=timezone.utc)  # payment A
        with sessions() as session:
            starts = dict(session.execute(select(Milestone.key, Milestone.started_at)
                                          .where(Milestone.contract_id == cid)).all())
        assert starts["order_review"] == row.effective_at
        assert starts["production_scheduling"] == done["order_review"]
        assert starts["shipping"] == done["production_scheduling"]
        assert starts["payment_collection"] == done["production_scheduling"]  # the latest earlier completion
    finally:
        engine.dispose()
