"""Demo data: two years of contracts, so the dashboard and analytics show something real.

Two parts, chosen for what each costs:

* **History** (a few hundred contracts signed over the last two years and already closed) is
  written straight into the read model: contracts, milestones (planned and actual dates, late
  stages, costs, satisfaction), installments, payments (partial ones included) and their event
  log (completions, overdue items, escalations, amendments).  That history already happened: a
  workflow cannot replay the past (its clock is now), and a few hundred idle workflows would only
  cost the dev server.  These rows have no workflow: pages show them from the read model.
* **Live** contracts (a couple of dozen) go through the API (``POST /contracts``), so they are real
  workflows: absolute due dates in the past make some of them overdue at once (and escalate),
  milestones are completed late through the API, partial payments are recorded, and one change
  goes through an amendment with approval (which renders a supplementary agreement).

Idempotent: history is written once (its contracts' ids start with ``hist-``); live contracts carry
``external_id`` ``DEMO-LIVE-nn``, so a second run finds them, and repeated completions or payments
are refused or recognised by the API and ignored here.  ``python3 run.py`` seeds both when
``SEED_DEMO_DATA`` is on (the default in dev mode); by hand: ``python -m core.demo_data --api URL``.

The generator (``generate``) is also what the analytics tests and the benchmark insert: plain
rows, deterministic for a seed.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from models import Contract, ContractEvent, Customer, Installment, Milestone, Payment

log = logging.getLogger("demo")

HISTORY_PREFIX = "hist-"
LIVE_PREFIX = "DEMO-LIVE-"
DAY = timedelta(days=1)

CUSTOMERS = [
    ("宁波精密机械有限公司 Ningbo Precision Machinery", "CRM-C-1087"),
    ("苏州恒远电子 Suzhou Hengyuan Electronics", "CRM-C-1102"),
    ("杭州云帆科技 Hangzhou Yunfan Tech", "CRM-C-1145"),
    ("上海东方物流 Shanghai Oriental Logistics", "CRM-C-1178"),
    ("深圳华创智能 Shenzhen Huachuang Intelligent", "CRM-C-1203"),
    ("广州南粤建材 Guangzhou Nanyue Building Materials", "CRM-C-1219"),
    ("天津滨海重工 Tianjin Binhai Heavy Industry", "CRM-C-1240"),
    ("成都天府医疗 Chengdu Tianfu Medical", "CRM-C-1266"),
    ("武汉光谷激光 Wuhan Optics Valley Laser", "CRM-C-1281"),
    ("青岛海润食品 Qingdao Hairun Foods", "CRM-C-1302"),
    ("西安秦川汽配 Xi'an Qinchuan Auto Parts", "CRM-C-1327"),
    ("南京金陵化工 Nanjing Jinling Chemicals", "CRM-C-1349"),
    ("厦门鹭岛船舶 Xiamen Ludao Shipbuilding", "CRM-C-1360"),
    ("重庆山城电机 Chongqing Shancheng Motors", "CRM-C-1388"),
    ("长沙湘江装备 Changsha Xiangjiang Equipment", "CRM-C-1402"),
    ("Hanseatic Components GmbH", "CRM-C-2001"),
    ("Pacific Rim Trading Ltd.", "CRM-C-2017"),
    ("北京中关村数据 Beijing Zhongguancun Data", "CRM-C-1420"),
    ("合肥新能源电池 Hefei New Energy Battery", "CRM-C-1436"),
    ("大连港湾设备 Dalian Harbour Equipment", "CRM-C-1451"),
]
FOREIGN = {"CRM-C-2001": "EUR", "CRM-C-2017": "USD"}
PRODUCTS = ["数控主轴 CNC spindles", "伺服电机 servo motors", "工业机器人 industrial robots", "液压泵 hydraulic pumps",
            "激光切割机 laser cutters", "传感器模组 sensor modules", "变频器 frequency inverters",
            "输送线 conveyor lines", "检测设备 inspection rigs", "储能柜 battery cabinets"]
SERVICES = ["运维服务 O&M service", "数据平台运营 data platform operations", "设备维保 equipment maintenance",
            "驻场技术支持 on-site engineering support"]
SALES = ["li.wei", "li.wei", "zhang.min", "li.wei", "zhang.min", "chen.jing"]

# key, kind, department, owner ("$owner": the contract's), days after the predecessor,
# chance of being late, mean lateness in days (exponential), planned cost share of the amount.
STAGE_NAMES = {
    "order_review": "Order review / 订单审核", "production_scheduling": "Production scheduling / 生产排期",
    "shipping": "Shipping / 物流发货", "customer_acceptance": "Customer acceptance / 客户验收",
    "invoicing": "Invoicing / 开票", "payment_collection": "Payment collection / 回款",
    "kickoff": "Kick-off / 项目启动", "acceptance": "Service acceptance / 服务验收",
}
GOODS_STAGES = [
    ("order_review", "order_review", "sales", "$owner", 2, 0.10, 2.0, None),
    ("production_scheduling", "production_scheduling", "production", "$owner", 5, 0.30, 6.0, "0.55"),
    ("shipping", "shipping", "logistics", "zhao.lei", 10, 0.42, 9.0, "0.06"),
    ("customer_acceptance", "customer_acceptance", "delivery", "wang.fang", 7, 0.30, 7.0, "0.02"),
    ("invoicing", "invoicing", "finance", "sun.li", 3, 0.12, 2.5, None),
    ("payment_collection", "payment_collection", "finance", "sun.li", 30, None, None, None),
]


@dataclass
class ContractRows:
    contract: dict[str, Any]
    customer: tuple[str, str]  # name, CRM id (the contract's customer_id is resolved on insert)
    milestones: list[dict[str, Any]] = field(default_factory=list)
    installments: list[dict[str, Any]] = field(default_factory=list)
    payments: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def closed(self) -> bool:
        return self.contract["status"] in ("completed", "terminated", "expired")


def _money(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"))


class _Builder:
    """One contract's rows, from its plan and a random story of how it went."""

    def __init__(self, rng: random.Random, now: datetime, cid: str, effective_at: datetime, with_events: bool):
        self.rng, self.now, self.cid = rng, now, cid
        self.effective_at = effective_at
        self.with_events = with_events
        self.events: list[tuple[datetime, str, str, dict]] = []

    def event(self, at: datetime, type_: str, data: dict, actor: str = "system") -> None:
        if self.with_events and at <= self.now:
            self.events.append((at, type_, actor, data))

    def late_by(self, chance: float, mean_days: float, owner_factor: float = 1.0) -> float:
        if self.rng.random() < chance * owner_factor:
            return self.rng.expovariate(1.0 / (mean_days * owner_factor))
        return 0.0


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _goods(b: _Builder, amount: Decimal, owner: str, amend: bool) -> tuple[list[dict], list[dict], list[dict]]:
    rng, now = b.rng, b.now
    milestones: list[dict] = []
    prev_done: datetime | None = b.effective_at
    prev_due = b.effective_at
    amended_key = rng.choice(["shipping", "customer_acceptance"]) if amend else None
    amendment_shift = rng.randint(7, 14)
    done_at: dict[str, datetime | None] = {}
    for pos, (key, kind, dept, who, offset, late_p, late_mean, cost_share) in enumerate(GOODS_STAGES):
        person = owner if who == "$owner" else who
        base = prev_done if prev_done is not None else prev_due
        due = base + offset * DAY
        estimated = prev_done is None
        if key == amended_key and prev_done is not None:
            due += amendment_shift * DAY
            asked = base + rng.uniform(0.2, 0.8) * offset * DAY
            b.event(asked, "amendment.requested", {"amendment_id": f"{b.cid}-a1", "reason": "客户现场未就绪 / site not ready"},
                    owner)
            b.event(asked + rng.uniform(0.1, 1.5) * DAY, "amendment.applied",
                    {"amendment_id": f"{b.cid}-a1", "number": 1, "contract_version": 2,
                     "clauses": [{"clause": f"{key}.due", "old": _iso(due - amendment_shift * DAY), "new": _iso(due)}]})
        completed = None
        if prev_done is not None and kind != "payment_collection" and late_p is not None and late_mean is not None:
            # Logistics and acceptance are where this company loses time; zhao.lei's queue most.
            factor = 1.3 if person == "zhao.lei" else 1.0
            lateness = b.late_by(late_p, late_mean, factor)
            late = lateness > 0
            completed = due + lateness * DAY if late else base + rng.uniform(0.35, 1.0) * offset * DAY
        row: dict[str, Any] = {
            "contract_id": b.cid, "key": key, "position": pos, "name": STAGE_NAMES[key], "kind": kind,
            "owner": person, "department": dept, "standard": "", "due_rule": {"offset": f"P{offset}D"},
            "depends_on": [milestones[-1]["key"]] if milestones else [], "due_at": due, "due_estimated": estimated,
            "progress": 0, "completed_at": None, "completed_by": None, "overdue_since": None,
            "planned_cost": None, "actual_cost": None, "satisfaction": None, "status": "pending",
        }
        if cost_share is not None:
            row["planned_cost"] = _money(amount * Decimal(cost_share))
        milestones.append(row)
        if completed is not None and completed <= now:
            row.update(status="done", completed_at=completed, completed_by=person, progress=100)
            if cost_share is not None:
                row["actual_cost"] = _money(row["planned_cost"] * Decimal(str(round(rng.uniform(0.88, 1.3), 3))))
            late = completed > due
            if kind == "customer_acceptance":
                weights = [1, 2, 5, 9, 8] if not late else [3, 5, 8, 6, 2]
                row["satisfaction"] = rng.choices([1, 2, 3, 4, 5], weights=weights)[0]
            if late:
                b.event(due, "milestone.overdue", {"key": key, "owner": person, "due_at": _iso(due)})
                if (completed - due) > 3 * DAY:
                    b.event(due + 3 * DAY, "notification.escalation",
                            {"item_type": "milestone", "key": key, "level": 2, "to": [person], "cc": ["manager"]})
            b.event(completed, "milestone.completed", {"key": key, "late": late, "due_at": _iso(due)}, person)
            done_at[key] = completed
            prev_done = completed
        else:
            if not estimated and due < now and kind != "payment_collection":
                row.update(status="overdue", overdue_since=due)
                b.event(due, "milestone.overdue", {"key": key, "owner": person, "due_at": _iso(due)})
            done_at[key] = None
            prev_done = None
        prev_due = due

    deposit = _money(amount * Decimal("0.30"))
    installments = [
        {"key": "deposit", "amount": deposit, "base": done_at.get("order_review"), "offset": 7,
         "fallback": milestones[0]["due_at"]},
        {"key": "balance", "amount": amount - deposit, "base": done_at.get("invoicing"), "offset": 30,
         "fallback": milestones[4]["due_at"]},
    ]
    inst_rows, payments = _pay(b, installments)
    collection = milestones[-1]
    collection["due_at"] = (done_at["invoicing"] or milestones[4]["due_at"]) + 30 * DAY
    collection["due_estimated"] = done_at["invoicing"] is None
    if all(i["status"] == "paid" for i in inst_rows) and done_at["invoicing"] is not None:
        settled = max(i["paid_at"] for i in inst_rows)
        at = max(settled, done_at["invoicing"])
        collection.update(status="done", completed_at=at, completed_by="system", progress=100)
        b.event(at, "milestone.completed", {"key": "payment_collection", "late": at > collection["due_at"],
                                            "due_at": _iso(collection["due_at"])})
    elif not collection["due_estimated"] and collection["due_at"] < now:
        collection.update(status="overdue", overdue_since=collection["due_at"])
    return milestones, inst_rows, payments


def _pay(b: _Builder, plan: list[dict]) -> tuple[list[dict], list[dict]]:
    """Installments and the payments against them: most on time, some late, some in two parts."""
    rng, now = b.rng, b.now
    rows, payments = [], []
    for pos, inst in enumerate(plan):
        due = (inst["base"] + inst["offset"] * DAY) if inst["base"] is not None else inst["fallback"] + inst["offset"] * DAY
        row = {"contract_id": b.cid, "key": inst["key"], "position": pos, "amount": inst["amount"], "paid": Decimal(0),
               "status": "pending", "due_at": due, "due_estimated": inst["base"] is None, "paid_at": None}
        rows.append(row)
        if inst["base"] is None:
            continue
        r = rng.random()
        amount = inst["amount"]
        if r < 0.55:
            parts = [(amount, due + rng.uniform(-6, 4) * DAY)]
        elif r < 0.80:
            parts = [(amount, due + rng.expovariate(1 / 22) * DAY)]
        elif r < 0.95:
            first = _money(amount * Decimal(str(round(rng.uniform(0.3, 0.7), 2))))
            when = due + rng.uniform(-3, 10) * DAY
            parts = [(first, when), (amount - first, when + (5 + rng.expovariate(1 / 30)) * DAY)]
        else:
            first = _money(amount * Decimal("0.5"))
            parts = [(first, due + rng.uniform(0, 20) * DAY), (amount - first, due + (60 + rng.expovariate(1 / 60)) * DAY)]
        for n, (value, when) in enumerate(parts, start=1):
            if when > now:
                break
            when = max(when, b.effective_at + DAY)
            ref = f"BANK-{b.cid}-{inst['key']}-{n}"
            row["paid"] += value
            payments.append({"contract_id": b.cid, "reference": ref, "amount": value, "currency": None,
                             "received_at": when, "recorded_at": when + rng.uniform(0.01, 0.5) * DAY,
                             "recorded_by": "sun.li", "allocations": {inst["key"]: str(value)}, "excess": Decimal(0)})
            b.event(when, "payment.received", {"reference": ref, "amount": str(value), "received_at": _iso(when),
                                               "allocations": {inst["key"]: str(value)}}, "sun.li")
            if row["paid"] >= amount:
                row.update(status="paid", paid_at=when)
                b.event(when, "installment.paid", {"key": inst["key"], "amount": str(amount)})
        if row["status"] != "paid":
            if due < now:
                row["status"] = "overdue"
                b.event(due, "installment.overdue", {"key": inst["key"], "owed": str(amount - row["paid"]),
                                                      "due_at": _iso(due)})
            elif row["paid"] > 0:
                row["status"] = "partially_paid"
    return rows, payments


def _service_name(key: str) -> str:
    if key.startswith("report_"):
        return f"Monthly delivery report / 月度交付报告 {key[7:]}"
    if key.startswith("invoice_"):
        return f"Quarterly invoicing / 季度开票 Q{key[8:]}"
    return STAGE_NAMES.get(key, key)


def _service(b: _Builder, amount: Decimal, owner: str) -> tuple[list[dict], list[dict], list[dict]]:
    """Kick-off, a report each month, quarterly invoices with an installment 30 days after each,
    acceptance at the end of the 12-month term."""
    rng, now = b.rng, b.now
    items: list[tuple[datetime, str, str, str, str]] = [(b.effective_at + 7 * DAY, "kickoff", "custom", "delivery", owner)]
    for k in range(1, 13):
        items.append((b.effective_at + timedelta(days=30.4 * k + 5), f"report_{k}", "custom", "delivery", owner))
    for q in range(1, 5):
        items.append((b.effective_at + timedelta(days=91.3 * q), f"invoice_{q}", "invoicing", "finance", "sun.li"))
    items.append((b.effective_at + timedelta(days=365), "acceptance", "customer_acceptance", "delivery", "wang.fang"))
    items.sort(key=lambda x: x[0])
    milestones, invoice_done = [], {}
    for pos, (due, key, kind, dept, person) in enumerate(items):
        lateness = b.late_by(0.25 if kind == "custom" else 0.2, 4.0)
        completed = due + lateness * DAY if lateness else due - rng.uniform(0, 4) * DAY
        row: dict[str, Any] = {
            "contract_id": b.cid, "key": key, "position": pos, "name": _service_name(key), "kind": kind,
            "owner": person, "department": dept, "standard": "", "due_rule": {"at": _iso(due)}, "depends_on": [],
            "due_at": due, "due_estimated": False, "progress": 0, "completed_at": None, "completed_by": None,
            "overdue_since": None, "planned_cost": None, "actual_cost": None, "satisfaction": None, "status": "pending",
        }
        if kind == "custom":
            row["planned_cost"] = _money(amount * Decimal("0.05"))
        milestones.append(row)
        if completed <= now:
            row.update(status="done", completed_at=completed, completed_by=person, progress=100)
            if row["planned_cost"] is not None:
                row["actual_cost"] = _money(row["planned_cost"] * Decimal(str(round(rng.uniform(0.9, 1.2), 3))))
            if kind == "customer_acceptance":
                row["satisfaction"] = rng.choices([1, 2, 3, 4, 5], weights=[1, 1, 4, 9, 7])[0]
            if completed > due:
                b.event(due, "milestone.overdue", {"key": key, "owner": person, "due_at": _iso(due)})
            b.event(completed, "milestone.completed", {"key": key, "late": completed > due, "due_at": _iso(due)}, person)
        elif due < now:
            row.update(status="overdue", overdue_since=due)
        if kind == "invoicing":
            invoice_done[key] = row["completed_at"]
    share = _money(amount / 4)
    plan = [{"key": f"q{q}", "amount": share if q < 4 else amount - 3 * share, "base": invoice_done[f"invoice_{q}"],
             "offset": 30, "fallback": b.effective_at + timedelta(days=91.3 * q)} for q in range(1, 5)]
    inst_rows, payments = _pay(b, plan)
    return milestones, inst_rows, payments


def generate(
    n: int,
    *,
    now: datetime,
    years: float = 2.0,
    seed: int = 7,
    prefix: str = HISTORY_PREFIX,
    with_events: bool = True,
    service_share: float = 0.3,
    customers: list[tuple[str, str]] | None = None,
) -> Iterator[ContractRows]:
    """``n`` contracts signed over the ``years`` before ``now``, deterministic for ``seed``."""
    rng = random.Random(seed)
    customers = customers or CUSTOMERS
    span = years * 365.0
    for k in range(n):
        cid = f"{prefix}{k:06d}"
        effective_at = (now - timedelta(days=span * (1 - (k + rng.random()) / n))).replace(microsecond=0)
        customer = rng.choices(customers, weights=[1 / (i + 2) for i in range(len(customers))])[0]
        currency = FOREIGN.get(customer[1], "CNY")
        owner = rng.choice(SALES)
        b = _Builder(rng, now, cid, effective_at, with_events)
        is_service = rng.random() < service_share
        if is_service:
            amount = Decimal(rng.randrange(24, 480)) * 5000
            milestones, installments, payments = _service(b, amount, owner)
            title = f"{rng.choice(SERVICES)} 12个月 / 12 months"
            playbook, end_at = "service", effective_at + timedelta(days=365)
        else:
            amount = Decimal(int(math.exp(rng.uniform(math.log(60_000), math.log(6_000_000))) // 1000 * 1000))
            amend = rng.random() < 0.12
            milestones, installments, payments = _goods(b, amount, owner, amend)
            title = f"{rng.choice(PRODUCTS)} 供货合同 / supply of {rng.randint(2, 120)} units"
            playbook, end_at = "goods_sale", effective_at + timedelta(days=365)
        for item in (*payments, *milestones, *installments):  # items carry the contract's currency
            item["currency"] = currency
        paid = sum((p["amount"] for p in payments), Decimal(0))
        settled_at, running = None, Decimal(0)
        for p in sorted(payments, key=lambda p: (p["received_at"], p["reference"])):  # as the projection does
            running += p["amount"]
            if running >= amount:
                settled_at = p["received_at"]
                break
        outstanding = max(amount - paid, Decimal(0))
        open_items = [m for m in milestones if m["status"] not in ("done", "waived")]
        overdue = [m for m in milestones if m["status"] == "overdue"] + [i for i in installments if i["status"] == "overdue"]
        status, closed_at, reason = "active", None, None
        if not open_items and outstanding == 0:
            status = "completed"
            closed_at = max([m["completed_at"] for m in milestones] + [i["paid_at"] for i in installments if i["paid_at"]])
            reason = "all milestones done and fully paid"
        elif rng.random() < 0.08 and effective_at < now - 60 * DAY:
            status, closed_at, reason = "terminated", effective_at + rng.uniform(20, 60) * DAY, "客户取消订单 / order cancelled"
        if is_service and status == "active" and end_at < now and outstanding == 0:
            status, closed_at, reason = "expired", end_at, "term ended"
        open_due = [x["due_at"] for x in open_items + [i for i in installments if i["status"] != "paid"]
                    if x["due_at"] is not None]
        contract = {
            "id": cid, "external_id": None, "workflow_id": f"contract-{cid}", "erp_order_no": None, "title": title,
            "customer_name": customer[0], "currency": currency, "amount": amount, "paid_total": paid,
            "outstanding": outstanding, "credit": Decimal(0), "effective_at": effective_at, "end_at": end_at,
            "owner": owner, "playbook": playbook, "status": status,
            "overdue_count": len(overdue) if status == "active" else 0,
            "next_due_at": min(open_due) if open_due and status == "active" else None,
            "version": 0, "spec": {"contract_id": cid, "title": title, "minor_units": 2, "source": "demo history"},
            "created_at": effective_at, "updated_at": closed_at or now, "closed_at": closed_at, "close_reason": reason,
            "settled_at": settled_at,
        }
        b.event(effective_at, "contract.created", {"title": title, "customer": customer[0], "amount": str(amount),
                                                   "currency": currency, "playbook": playbook}, owner)
        if closed_at is not None:
            b.event(closed_at, f"contract.{status}", {"reason": reason, "outstanding": str(outstanding)})
        latest = None
        for m in milestones:  # the stage start, as the projection keeps it
            m["started_at"] = latest or effective_at
            if m["completed_at"] is not None and (latest is None or m["completed_at"] > latest):
                latest = m["completed_at"]
        rows = ContractRows(contract, customer, milestones, installments, payments)
        b.events.sort(key=lambda e: e[0])
        rows.events = [{"contract_id": cid, "seq": seq, "type": t, "at": at, "actor": actor, "data": data}
                       for seq, (at, t, actor, data) in enumerate(b.events, start=1)]
        contract["version"] = len(rows.events)
        yield rows


# ---------------------------------------------------------------- writing the read model
def customer_ids(session: Session, customers: set[tuple[str, str]], now: datetime) -> dict[str, int]:
    """Customer ids by CRM id, creating the missing customers."""
    wanted = {crm: name for name, crm in customers}
    rows = session.execute(select(Customer.external_id, Customer.id).where(Customer.external_id.in_(wanted))).all()
    found = {crm: cid for crm, cid in rows if crm is not None}
    for crm, name in wanted.items():
        if crm not in found:
            c = Customer(name=name, external_id=crm, created_at=now)
            session.add(c)
            session.flush()
            found[crm] = c.id
    return found


def insert_rows(session: Session, rows: list[ContractRows], now: datetime) -> None:
    """Insert generated contracts with their items, payments and events (executemany)."""
    ids = customer_ids(session, {r.customer for r in rows}, now)
    contracts = [{**r.contract, "customer_id": ids[r.customer[1]]} for r in rows]
    for model, items in (
        (Contract, contracts),
        (Milestone, [m for r in rows for m in r.milestones]),
        (Installment, [i for r in rows for i in r.installments]),
        (Payment, [p for r in rows for p in r.payments]),
        (ContractEvent, [e for r in rows for e in r.events]),
    ):
        for start in range(0, len(items), 2000):
            chunk = items[start:start + 2000]
            if chunk:
                session.execute(insert(model), chunk)


def seed_history(sessions: sessionmaker[Session], *, n: int = 400, now: datetime | None = None, seed: int = 2026) -> int:
    """Write the closed history once; returns how many contracts were written (0: already there)."""
    now = now or datetime.now(timezone.utc).replace(microsecond=0)
    with sessions.begin() as session:
        there = session.execute(
            select(func.count()).select_from(Contract).where(Contract.id.like(f"{HISTORY_PREFIX}%"))
        ).scalar_one()
        if there:
            return 0
        rows = [r for r in generate(n, now=now, seed=seed) if r.closed]
        insert_rows(session, rows, now)
    return len(rows)


# ---------------------------------------------------------------- live contracts, through the API
def _live_plans(now: datetime, count: int, seed: int) -> list[dict[str, Any]]:
    """What each live contract should look like: how far it got and where it is stuck."""
    rng = random.Random(seed)
    plans = []
    for k in range(count):
        name, crm = CUSTOMERS[k % len(CUSTOMERS)]
        # stuck_at: index of the first stage not done; the ones before were completed, some late.
        stuck_at = [0, 1, 1, 2, 2, 2, 3, 3, 4, 5][k % 10]
        overdue = k % 3 != 2  # two in three are past due on the stage they are stuck at
        plans.append({"k": k, "customer": name, "crm": crm, "currency": FOREIGN.get(crm, "CNY"),
                      "amount": f"{rng.randrange(12, 900) * 5000}.00", "owner": SALES[k % len(SALES)],
                      "stuck_at": stuck_at, "overdue": overdue, "late_days": rng.randint(2, 20),
                      "age_days": rng.randint(25, 70), "product": PRODUCTS[k % len(PRODUCTS)],
                      "partial": k % 4 == 1, "amend": k == 3})
    return plans


def _live_body(p: dict[str, Any], now: datetime) -> tuple[dict[str, Any], list[str]]:
    """The request and the keys of the stages to complete through the API."""
    effective = now - p["age_days"] * DAY
    # Absolute due dates, spread between signature and now, for the stages up to where it is stuck:
    # the workflow marks the ones in the past overdue at once.
    keys = [s[0] for s in GOODS_STAGES]
    span = (now - effective) - (p["late_days"] * DAY if p["overdue"] else -5 * DAY)
    milestones = []
    for i, key in enumerate(keys[: p["stuck_at"] + 1]):
        if key == "payment_collection":
            break
        due = effective + span * (i + 1) / (p["stuck_at"] + 1)
        milestones.append({"key": key, "due": due.isoformat()})
    deposit = (Decimal(p["amount"]) * Decimal("0.3")).quantize(Decimal("0.01"))
    body = {
        "external_id": f"{LIVE_PREFIX}{p['k']:02d}",
        "title": f"{p['product']} 供货合同 / supply contract {p['k'] + 1}",
        "customer": {"name": p["customer"], "external_id": p["crm"]},
        "currency": p["currency"],
        "amount": p["amount"],
        "effective_date": effective.isoformat(),
        "end_date": (effective + 365 * DAY).isoformat(),
        "owner": p["owner"],
        "playbook": "goods_sale",
        "milestones": milestones,
        "installments": [
            {"key": "deposit", "due": (effective + 10 * DAY).isoformat(), "amount": str(deposit)},
            {"key": "balance", "after": "invoicing", "due_after": "P30D", "amount": str(Decimal(p["amount"]) - deposit)},
        ],
    }
    return body, keys[: p["stuck_at"]]


def seed_live(api: str, *, count: int = 24, now: datetime | None = None, seed: int = 11, concurrency: int = 4,
              headers: dict[str, str] | None = None) -> int:
    """Create (or find) the live demo contracts through the API and play their story; returns how
    many were created now.  ``headers``: the credentials, when not in the URL's user info."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    now = now or datetime.now(timezone.utc).replace(microsecond=0)
    plans = _live_plans(now, count, seed)

    def one(p: dict[str, Any]) -> bool:
        body, complete = _live_body(p, now)
        with httpx.Client(base_url=api, timeout=60, headers=headers) as c:
            r = c.post("/contracts", json=body)
            if r.status_code not in (200, 201):
                log.warning("demo contract %s refused: %s %s", body["external_id"], r.status_code, r.text[:300])
                return False
            created, cid = r.status_code == 201, r.json()["id"]
            if not created:
                return False  # seeded on an earlier run: its story was played then
            for key in complete:
                extra: dict[str, Any] = {}
                if key in ("production_scheduling", "shipping"):
                    cost = Decimal(p["amount"]) * Decimal("0.05") * Decimal("1.1")
                    extra["actual_cost"] = str(cost.quantize(Decimal("0.01")))
                if key == "customer_acceptance":
                    extra["satisfaction"] = 3 + p["k"] % 3
                c.post(f"/contracts/{cid}/milestones/{key}/complete", json={"by": p["owner"], "note": "demo", **extra})
            if p["partial"] or p["stuck_at"] >= 2:
                deposit = Decimal(body["installments"][0]["amount"])
                part = deposit if not p["partial"] else (deposit / 2).quantize(Decimal("0.01"))
                c.post(f"/contracts/{cid}/payments", json={
                    "reference": f"DEMO-BANK-{p['k']:02d}-1", "amount": str(part), "currency": p["currency"],
                    "received_at": (now - 2 * DAY).isoformat(), "by": "sun.li"})
            if p["amend"]:
                r = c.post(f"/contracts/{cid}/amendments", json={
                    "requested_by": p["owner"], "reason": "客户现场未就绪 / customer site not ready",
                    "changes": [{"kind": "move_due", "key": "shipping", "shift": "P10D"}]})
                if r.status_code == 201:
                    a = r.json()
                    for role, person in a.get("approvers", {}).items():
                        c.post(f"/contracts/{cid}/amendments/{a['id']}/approve",
                               json={"by": person, "role": role, "comment": "同意 / agreed"})
            return True

    with ThreadPoolExecutor(concurrency) as pool:
        return sum(pool.map(one, plans))


def seed_demo_data(sessions: sessionmaker[Session], api: str | None, *, history: int = 400, live: int = 24,
                   headers: dict[str, str] | None = None) -> tuple[int, int]:
    written = seed_history(sessions, n=history)
    created = seed_live(api, count=live, headers=headers) if api and live else 0
    return written, created


def main() -> None:
    from core.settings import Settings
    from models.db import make_engine, make_session_factory

    parser = argparse.ArgumentParser(description="Seed the demo data set (idempotent).")
    parser.add_argument("--api", default="http://127.0.0.1:8000", help="the running API, for the live contracts")
    parser.add_argument("--database-url", default=None, help="defaults to DATABASE_URL")
    parser.add_argument("--history", type=int, default=400)
    parser.add_argument("--live", type=int, default=24)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    engine = make_engine(args.database_url or Settings().database_url)
    try:
        written, created = seed_demo_data(make_session_factory(engine), args.api, history=args.history, live=args.live)
    finally:
        engine.dispose()
    print(f"demo data: {written} historical contracts written, {created} live contracts created")


if __name__ == "__main__":
    main()
