"""Scripted contracts for the fault tests, and what "the same outcome" means.

``plan(k)`` is contract number ``k`` of the script: deterministic (seeded by ``k``), one of five
shapes — payments after an escalation, a late completion with its hand-off, an owner change by
amendment, a money amendment with two approvals and an over-payment, a termination after an
escalation.  Every scripted action either happens before any timer can compete with it (timers
that start only when a predecessor milestone completes) or after the escalation it waits for has
*fully* gone out (both levels, every channel, rows ``sent``), so the final outcome does not depend
on timing: a run with faults must end exactly as the run without them.

What may legitimately differ between two runs, and is left out of the comparison: timestamps,
due dates (relative ones follow the actual completion time), the workflow's event counter, and
two events that depended on whether the escalation child had already *returned* when its item
was resolved (after it had sent everything), a race in any run: ``escalation.stopped`` (emitted
whenever an escalation existed since the ``escalation-stopped-always-v1`` patch, so no longer
racy for new runs; still left out) and ``escalation.failed`` with "Child Workflow execution
cancelled" (before ``quiet-cancelled-escalation-v1`` the workflow reported a child it cancelled
itself as failed).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import text

from tests.faults.harness import (
    Api,
    HttpReceiver,
    MailCatcher,
    Observer,
    Worker,
    app_env,
    body_text,
    notification_key,
)

SHAPES = ["pay", "handoff", "amend_owner", "amend_money", "terminate"]
DEPARTMENTS = ["sales", "production", "logistics", "delivery", "finance", "legal"]
DEPT_SECRET = "whsec_faults_department_secret_0001"
SUB_SECRET = "whsec_faults_subscription_secret_01"
# Timing-dependent by nature (see the module docstring); everything else must match.
RACY_EVENTS = {"escalation.stopped"}


def racy(type_: str, data: dict | None) -> bool:
    """``escalation.stopped``; and ``escalation.failed`` when the "failure" is the child being
    cancelled because its item was resolved while the child was finishing (the workflow reports
    a cancelled escalation child as failed: a race in any run, see the report)."""
    if type_ in RACY_EVENTS:
        return True
    return type_ == "escalation.failed" and "cancel" in str((data or {}).get("error", "")).lower()
ESCALATION = [
    {"after": "PT0S", "to": ["owner"], "channels": ["email"]},
    {"after": "PT3S", "to": ["owner"], "cc": ["manager"], "channels": ["email", "webhook"]},
]
FAR = "PT10M"  # items completed or paid early: far enough that no timer competes
# One scripted wait: generous (killed activities time out first; CI machines are small).
STEP_TIMEOUT = float(os.environ.get("FAULTS_STEP_TIMEOUT", "600"))


# ====================================================================== the plan
@dataclass
class Plan:
    index: int
    shape: str
    amount: Decimal
    due_s: int
    body: dict
    payments: list[tuple[str, str]] = field(default_factory=list)  # (reference, amount) applied once each
    final_status: str = "completed"


def _money(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01")))


def plan(k: int) -> Plan:
    rng = random.Random(f"contract-faults-{k}")
    shape = SHAPES[k % len(SHAPES)]
    amount = Decimal(rng.randrange(1_000_000, 50_000_000)) / 100
    first = (amount * Decimal("0.3")).quantize(Decimal("0.01"))
    rest = amount - first
    due = rng.randint(5, 14)
    now = datetime.now(timezone.utc)
    body: dict[str, Any] = {
        "external_id": f"FAULTS-{k:04d}",
        "title": f"Fault script contract {k} ({shape})",
        "customer": {"name": f"Customer {k % 17}", "external_id": f"CRM-FAULTS-{k:04d}"},
        "currency": "CNY",
        "amount": _money(amount),
        "effective_date": now.isoformat(),
        "end_date": (now + timedelta(days=400)).isoformat(),
        "owner": "li.wei",
        "notifications": {"reminders": [], "escalation": ESCALATION},
    }
    p = Plan(k, shape, amount, due, body)
    if shape == "pay":
        # The installment's clock starts when delivery is done: nothing races the completion.
        body["milestones"] = [_m("delivery", "shipping", "li.wei", "sales", FAR)]
        body["installments"] = [
            {"key": "i1", "amount": _money(first), "after": "delivery", "due_after": f"PT{due}S"},
            {"key": "i2", "amount": _money(rest), "after": "delivery", "due_after": FAR},
        ]
        p.payments = [(f"PAY-{k}-1", _money(first)), (f"PAY-{k}-2", _money(rest))]
    elif shape == "handoff":
        body["milestones"] = [
            _m("production", "production_scheduling", "zhao.lei", "logistics", f"PT{due}S"),
            _m("acceptance", "customer_acceptance", "wang.fang", "delivery", FAR, after="production"),
        ]
        body["installments"] = [{"key": "i1", "amount": _money(amount), "due_after": FAR}]
        p.payments = [(f"PAY-{k}-1", _money(amount))]
    elif shape == "amend_owner":
        body["milestones"] = [
            _m("kickoff", "order_review", "li.wei", "sales", FAR),
            _m("shipping", "shipping", "li.wei", "sales", f"PT{due}S", after="kickoff"),
        ]
        body["installments"] = [{"key": "i1", "amount": _money(amount), "due_after": FAR}]
        p.payments = [(f"PAY-{k}-1", _money(amount))]
    elif shape == "amend_money":
        body["milestones"] = [_m("acceptance", "customer_acceptance", "wang.fang", "delivery", FAR)]
        body["installments"] = [
            {"key": "i1", "amount": _money(first), "due_after": FAR},
            {"key": "i2", "amount": _money(rest), "due_after": FAR},
        ]
        # The amendment adds 1000.00 to the last installment; the customer then pays 50.00 too much.
        p.payments = [(f"PAY-{k}-1", _money(first)), (f"PAY-{k}-2", _money(rest + 1000 + 50))]
    else:  # terminate
        body["milestones"] = [_m("review", "order_review", "li.wei", "sales", f"PT{due}S")]
        body["installments"] = [{"key": "i1", "amount": _money(amount), "due_after": FAR}]
        p.payments = [(f"PAY-{k}-1", _money(first))]
        p.final_status = "terminated"
    return p


def _m(key: str, kind: str, owner: str, department: str, due_after: str, after: str | None = None) -> dict:
    m: dict[str, Any] = {"key": key, "name": key.replace("_", " ").title(), "kind": kind, "owner": owner,
         "department": department, "due_after": due_after}
    if after:
        m["after"] = after
        m["depends_on"] = [after]
    return m


class StillFailing(AssertionError):
    """The API kept answering 503 (or not at all) until the deadline."""


# ====================================================================== one stack
class Stack:
    """One isolated deployment: a worker process, an API process, an SMTP catcher and an HTTP
    receiver (department chat webhooks under /dept/, the ``*`` subscription under /sub/all),
    on its own database and task queue."""

    def __init__(self, name: str, *, temporal_address: str, client, app_db_url: str, observe_db_url: str,
                 logdir, mail: MailCatcher | None = None, hooks: HttpReceiver | None = None,
                 env_extra: dict | None = None) -> None:
        self.name = name
        self.client = client
        self.mail = (mail or MailCatcher()).start()
        self.hooks = (hooks or HttpReceiver()).start()
        self.task_queue = f"faults-{name}-{uuid.uuid4().hex[:6]}"
        env = app_env(app_db_url, temporal_address, self.task_queue, self.mail.port, **(env_extra or {}))
        self.worker = Worker(env, logdir, name=f"{name}-worker")
        self.api = Api(env, logdir)
        self.api.name = f"{name}-api"
        self.observer = Observer(observe_db_url)
        self.cids: dict[int, str] = {}
        self.plans: dict[int, Plan] = {}
        self.done: set[int] = set()
        self.http: httpx.AsyncClient | None = None
        self._gate = asyncio.Semaphore(10)  # concurrent API calls (PostgreSQL is shared)
        self.retries: Counter = Counter()  # API answers that were retried, by status
        self.subscription_id: str | None = None
        self.escalation_failures: Counter = Counter()  # escalation.failed events by error, after collect()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.api.start()
        self.worker.start()
        await self.api.ready()
        await self.worker.ready()
        from tests.faults.harness import ADMIN_KEY

        self.http = httpx.AsyncClient(base_url=self.api.url, timeout=httpx.Timeout(120.0),
                                      headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        for key in DEPARTMENTS:
            dept = (await self.call("GET", f"/departments/{key}")).json()
            await self.call("PUT", f"/departments/{key}", {
                "name": dept["name"], "head_id": dept["head_id"], "default_assignee_id": dept["default_assignee_id"],
                "webhook_url": f"{self.hooks.url}/dept/{key}", "webhook_secret": DEPT_SECRET})
        sub = await self.call("POST", "/webhooks", {"url": f"{self.hooks.url}/sub/all", "event_types": ["*"],
                                                   "secret": SUB_SECRET, "description": "fault tests"},
                              expect=(201,))
        self.subscription_id = sub.json()["id"]
        self.observer.start()

    async def close(self) -> None:
        await self.observer.stop()
        if self.http is not None:
            await self.http.aclose()
        self.worker.stop()
        self.api.stop()
        self.mail.stop()
        self.hooks.stop()

    # ------------------------------------------------------------------ the API, at least once
    async def call(self, method: str, path: str, body: dict | None = None, *, expect=(200,),
                   conflict_ok_on_retry: bool = False, timeout: float = STEP_TIMEOUT,
                   retry: bool = True) -> httpx.Response:
        """Call the API; retry on 503 / connection errors (a fault is on) until ``timeout``.
        A retried non-idempotent call answering 409 means the first attempt did go through.
        ``retry=False``: one attempt, for requests that are not idempotent at all."""
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._gate:
                    r = await self.http.request(method, path, json=body)
            except httpx.TransportError as exc:
                self.retries[type(exc).__name__] += 1
                r = None
            if r is not None:
                if r.status_code in expect:
                    return r
                if r.status_code == 409 and attempt > 1 and conflict_ok_on_retry:
                    return r
                if r.status_code != 503:
                    facts = ""
                    if m := re.match(r"/contracts/([0-9a-f]+)/", path):
                        facts = await self.workflow_facts(m.group(1))
                    raise AssertionError(f"{method} {path} -> {r.status_code} {r.text}{facts}")
                self.retries[str(r.status_code)] += 1
            if not retry or time.monotonic() > deadline:
                facts = ""
                if retry and (m := re.match(r"/contracts/([0-9a-f]+)/", path)):
                    facts = await self.workflow_facts(m.group(1))  # what kept the contract from answering
                raise StillFailing(f"{method} {path}: still failing after {timeout:.0f}s "
                                   f"({r.status_code if r is not None else 'no answer'}: "
                                   f"{r.text[:300] if r is not None else ''}){facts}")
            await asyncio.sleep(1.0)

    # ------------------------------------------------------------------ the script
    async def run_contract(self, p: Plan) -> None:
        self.plans[p.index] = p
        r = await self.call("POST", "/contracts", p.body, expect=(200, 201))
        cid = r.json()["id"]
        self.cids[p.index] = cid
        await SCRIPTS[p.shape](self, p, cid)
        closed = f"contract.{p.final_status}"
        await self.wait_for(lambda: self.observer.has_event(cid, closed), f"{cid} {closed}", cid)
        self.done.add(p.index)

    async def run_script(self, indices: list[int], stagger: float = 0.1) -> float:
        started = time.monotonic()

        async def one(n: int, k: int):
            await asyncio.sleep(n * stagger)
            await self.run_contract(plan(k))

        await asyncio.gather(*(one(n, k) for n, k in enumerate(indices)))
        return time.monotonic() - started

    # ------------------------------------------------------------------ steps
    async def escalated(self, cid: str, item_type: str, key: str, owner: str, department: str) -> None:
        """Wait until both escalation levels of the item have gone out on every channel."""
        prefix = f"{cid}:{item_type}:{key}:"
        wanted = [f":escalation1:{owner}:email", f":escalation2:{owner}:email",
                  f":escalation2:dept:{department}:webhook"]
        await self.wait_for(lambda: self.observer.sent(cid, prefix, wanted), f"{prefix} escalations sent", cid)

    async def wait_for(self, predicate: Callable[[], bool], what: str, cid: str) -> None:
        """One scripted wait; a timeout says what the database and the workflow held."""
        try:
            await self.observer.wait(predicate, STEP_TIMEOUT, what, cid=cid)
        except AssertionError as exc:
            raise AssertionError(f"{exc}{await self.workflow_facts(cid)}") from None

    async def workflow_facts(self, cid: str) -> str:
        """The contract workflow's pending work, for a failure message; its history and its
        escalation children's are saved under test-artifacts/ for the post-mortem."""
        from tests.conftest import ARTIFACTS

        lines = []
        try:
            handle = self.client.get_workflow_handle(f"contract-{cid}")
            d = await handle.describe()
            raw = d.raw_description
            wft = raw.pending_workflow_task
            lines.append(f"workflow: {d.status.name if d.status else '?'}, history {d.history_length} events, "
                         f"pending workflow task: {f'state {wft.state} attempt {wft.attempt}' if wft.attempt else 'none'}")
            lines.append("pending activities: " + repr([
                f"{a.activity_type.name} attempt {a.attempt} state {a.state} last failure {a.last_failure.message!r}"
                for a in raw.pending_activities] or "none"))
            lines.append("pending children: " + repr([c.workflow_id for c in raw.pending_children] or "none"))
            ARTIFACTS.mkdir(exist_ok=True)
            out = ARTIFACTS / f"faults-stuck-{self.name}-{cid}.json"
            out.write_text((await handle.fetch_history()).to_json())
            lines.append(f"history saved to {out}")
            async for w in self.client.list_workflows(f"WorkflowId STARTS_WITH 'contract-{cid}/'"):
                child = self.client.get_workflow_handle(w.id, run_id=w.run_id)
                path = ARTIFACTS / f"faults-stuck-{self.name}-{w.id.replace('/', '_')}.json"
                path.write_text((await child.fetch_history()).to_json())
                lines.append(f"child {w.id}: {w.status.name if w.status else '?'}, history saved to {path}")
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            lines.append(f"(could not describe the workflow: {exc!r})")
        return "".join(f"\n  {line}" for line in lines)

    async def event(self, cid: str, type_: str) -> None:
        await self.wait_for(lambda: self.observer.has_event(cid, type_), f"{cid} {type_}", cid)

    async def complete(self, cid: str, key: str, by: str) -> None:
        r = await self.call("POST", f"/contracts/{cid}/milestones/{key}/complete", {"by": by, "note": "done"},
                            conflict_ok_on_retry=True)
        if r.status_code == 409:  # a retry: the 409 must mean "already done", nothing else
            m = next(m for m in (await self.call("GET", f"/contracts/{cid}")).json()["milestones"] if m["key"] == key)
            assert m["status"] == "done", f"{cid}: a retried completion of {key} answered {r.text}, yet it is {m['status']}"

    async def pay(self, cid: str, reference: str, amount: str, *, expect_applied: bool | None = None) -> dict:
        r = await self.call("POST", f"/contracts/{cid}/payments", {
            "reference": reference, "amount": amount, "currency": "CNY",
            "received_at": "2026-01-15T10:00:00+08:00"})
        out = r.json()
        # A payment retried after a 503 may find itself already applied: still exactly once.
        if expect_applied is False:
            assert out["applied"] is False, out
        return out

    async def amend(self, cid: str, k: int, reason: str, changes: list[dict], approvals: list[tuple[str, str]]) -> None:
        # A request is not idempotent (each gets a new id): after an ambiguous failure, look for it
        # by its reason before asking again.
        existing = None
        deadline = time.monotonic() + STEP_TIMEOUT
        while existing is None:
            listed = (await self.call("GET", f"/contracts/{cid}/amendments")).json()
            existing = next((a for a in listed if a["reason"] == reason), None)
            if existing is None:
                try:
                    existing = (await self.call("POST", f"/contracts/{cid}/amendments", {
                        "requested_by": "li.wei", "reason": reason, "changes": changes}, expect=(201,),
                        retry=False)).json()
                except StillFailing:  # 503 or no answer: it may or may not have been recorded
                    assert time.monotonic() < deadline, f"{cid}: amendment could not be requested"
                    await asyncio.sleep(1.0)
        aid = existing["id"]
        for by, role in approvals:
            r = await self.call("POST", f"/contracts/{cid}/amendments/{aid}/approve",
                                {"by": by, "role": role, "comment": f"ok {k}"}, conflict_ok_on_retry=True)
            if r.status_code == 409:  # a retry: the 409 must mean "already approved", nothing else
                a = (await self.call("GET", f"/contracts/{cid}/amendments/{aid}")).json()
                assert any(d["by"] == by and d["role"] == role and d["decision"] == "approved"
                           for d in a["decisions"]), f"{cid}: a retried approval answered {r.text}, yet: {a}"
        await self.event(cid, "document.created")


async def _pay_script(st: Stack, p: Plan, cid: str) -> None:
    await st.complete(cid, "delivery", "li.wei")
    await st.escalated(cid, "installment", "i1", "li.wei", "sales")
    (ref1, a1), (ref2, a2) = p.payments
    await st.pay(cid, ref1, a1)
    await st.pay(cid, ref1, a1, expect_applied=False)  # the bank statement again: no double count
    await st.pay(cid, ref2, a2)


async def _handoff_script(st: Stack, p: Plan, cid: str) -> None:
    await st.escalated(cid, "milestone", "production", "zhao.lei", "logistics")
    await st.complete(cid, "production", "zhao.lei")  # hands acceptance to wang.fang
    await st.complete(cid, "acceptance", "wang.fang")
    (ref, amount), = p.payments
    await st.pay(cid, ref, amount)


async def _amend_owner_script(st: Stack, p: Plan, cid: str) -> None:
    await st.amend(cid, p.index, f"shipping moves to logistics ({p.index})",
                   [{"kind": "change_owner", "key": "shipping", "owner": "zhao.lei", "department": "logistics"}],
                   [("zhang.min", "manager")])
    await st.complete(cid, "kickoff", "li.wei")  # starts shipping's clock, hands it to zhao.lei
    await st.escalated(cid, "milestone", "shipping", "zhao.lei", "logistics")
    await st.complete(cid, "shipping", "zhao.lei")
    (ref, amount), = p.payments
    await st.pay(cid, ref, amount)


async def _amend_money_script(st: Stack, p: Plan, cid: str) -> None:
    await st.amend(cid, p.index, f"extra training days ({p.index})",
                   [{"kind": "change_amount", "amount": _money(p.amount + 1000)}],
                   [("sun.li", "finance"), ("liu.yang", "legal")])
    await st.complete(cid, "acceptance", "wang.fang")
    (ref1, a1), (ref2, a2) = p.payments
    await st.pay(cid, ref1, a1)
    # The same reference with another amount is refused (409) and changes nothing.
    await st.call("POST", f"/contracts/{cid}/payments", {
        "reference": ref1, "amount": "1.00", "currency": "CNY", "received_at": "2026-01-15T10:00:00+08:00"},
        expect=(409,))
    await st.pay(cid, ref2, a2)


async def _terminate_script(st: Stack, p: Plan, cid: str) -> None:
    await st.escalated(cid, "milestone", "review", "li.wei", "sales")
    (ref, amount), = p.payments
    await st.pay(cid, ref, amount)
    await st.call("POST", f"/contracts/{cid}/terminate", {"reason": f"customer cancelled ({p.index})",
                                                          "by": "li.wei"}, conflict_ok_on_retry=True)


SCRIPTS: dict[str, Callable[[Stack, Plan, str], Awaitable[None]]] = {
    "pay": _pay_script,
    "handoff": _handoff_script,
    "amend_owner": _amend_owner_script,
    "amend_money": _amend_money_script,
    "terminate": _terminate_script,
}


# ====================================================================== outcomes
def _normalizer(cid: str, state) -> Callable[[str], str]:
    subs = [(cid, "C")] + [(a.id, f"A{a.number}") for a in state.amendments]

    def n(value: str) -> str:
        for old, new in subs:
            value = value.replace(old, new)
        # Due epochs follow actual completion times; a notice sent at once is named by its event's
        # number (n<seq>), which racy events (left out of the comparison) may shift.
        return re.sub(r":(\d{9,11}|n\d+):", ":T:", value)

    return n


def _d(value) -> str:
    return str(Decimal(str(value)).quantize(Decimal("0.01"))) if value is not None else "None"


def normal_state(state) -> dict:
    """The final workflow state without timestamps, due dates, run counters or ids."""
    return {
        "status": state.status,
        "close_reason": state.close_reason,
        "amount": _d(state.spec.amount),
        "paid": _d(state.paid_total),
        "outstanding": _d(state.outstanding),
        "credit": _d(state.credit),
        "contract_version": state.contract_version,
        "overdue_count": state.overdue_count,
        "escalation_level": state.escalation_level,
        "milestones": [[m.key, m.status, m.owner, m.department, m.progress, m.completed_by, list(m.depends_on)]
                       for m in state.milestones],
        "installments": [[i.key, _d(i.amount), _d(i.paid), i.status] for i in state.installments],
        "payments": [[p.reference, _d(p.amount), p.currency, p.by, sorted((k, _d(v)) for k, v in p.allocations.items()),
                      _d(p.excess)] for p in state.payments],
        "amendments": [[a.number, a.status, list(a.required_roles), sorted(a.approvers.items()),
                        [[d.by, d.role, d.decision] for d in a.decisions], a.contract_version]
                       for a in state.amendments],
        "versions": [[v.version, v.summary, [[c.clause, c.old, c.new] for c in v.clauses]] for v in state.versions],
        "open": [len(state.approvals), len(state.pending_documents), len(state.pending_renewals)],
    }


@dataclass
class Outcome:
    """One contract's end: its normalized workflow state and database projection."""

    state: dict
    db: dict
    events: int  # events in the log (all types)
    notifications: list  # normalized rows
    payments_refs: list[str]
    racy: int = 0  # racy events left out of the comparison
    cid: str = ""
    log: list = field(default_factory=list)  # every event as "seq:type" (racy ones too), for a failure message


async def final_state(client, cid: str):
    from workflows.contract import ContractWorkflow

    handle = client.get_workflow_handle_for(ContractWorkflow.run, f"contract-{cid}")
    await asyncio.wait_for(handle.result(), timeout=STEP_TIMEOUT)  # closed (the result is its outcome)
    # The whole final state: the query of the closed run, which a worker answers by replaying its
    # history (under a backlog of such queries the server may give up on one: ask again).
    from datetime import timedelta

    from temporalio.service import RPCError

    for attempt in range(5):
        try:
            return await handle.query(ContractWorkflow.state_query, rpc_timeout=timedelta(seconds=60))
        except RPCError:
            if attempt == 4:
                raise
            await asyncio.sleep(1 + attempt)


def _db_rows(conn, cid: str) -> dict:
    q = lambda sql: conn.execute(text(sql), {"c": cid}).all()  # noqa: E731
    contract = q("SELECT status, close_reason, amount, paid_total, outstanding, credit, overdue_count, version "
                 "FROM contracts WHERE id = :c")
    return {
        "contract": contract,
        "milestones": q("SELECT key, position, status, owner, department, progress, completed_by "
                        "FROM milestones WHERE contract_id = :c ORDER BY position"),
        "installments": q("SELECT key, position, amount, paid, status FROM installments WHERE contract_id = :c "
                          "ORDER BY position"),
        "payments": q("SELECT reference, amount, currency, recorded_by, allocations, excess FROM payments "
                      "WHERE contract_id = :c ORDER BY reference"),
        "events": q("SELECT seq, type, data FROM contract_events WHERE contract_id = :c ORDER BY id"),
        "notifications": q("SELECT key, status, role, recipient, channel FROM notifications WHERE contract_id = :c"),
        "tasks": q("SELECT key, assignee, status FROM tasks WHERE contract_id = :c"),
        # Notices due and not yet sent (a killed worker's dispatcher may hold one until its lease ends).
        "outbox_due": q("SELECT key FROM notification_outbox WHERE contract_id = :c AND status = 'pending' "
                        "AND send_at <= CURRENT_TIMESTAMP"),
        "documents": q("SELECT kind, version FROM documents WHERE contract_id = :c ORDER BY version"),
    }


def converged(rows: dict, state) -> list[str]:
    """Why the projection does not (yet) equal the final workflow state; [] when it does."""
    problems = []
    if not rows["contract"]:
        return ["no contract row"]
    status, _reason, _amount, paid, outstanding, credit, overdue, version = rows["contract"][0]
    if status != state.status or version != state.version:
        problems.append(f"row {status} v{version} vs workflow {state.status} v{state.version}")
    if [_d(paid), _d(outstanding), _d(credit), overdue] != [_d(state.paid_total), _d(state.outstanding),
                                                          _d(state.credit), state.overdue_count]:
        problems.append("money/overdue differ")
    if [(r[0], r[2]) for r in rows["milestones"]] != [(m.key, m.status) for m in state.milestones]:
        problems.append("milestones differ")
    if [(r[0], _d(r[3]), r[4]) for r in rows["installments"]] != [(i.key, _d(i.paid), i.status)
                                                                   for i in state.installments]:
        problems.append("installments differ")
    if sorted(r[0] for r in rows["payments"]) != sorted(p.reference for p in state.payments):
        problems.append("payments differ")
    seqs = [r[0] for r in rows["events"] if r[0] is not None]  # reminders the outbox logged have no seq
    if seqs != list(range(1, state.version + 1)):
        problems.append(f"events {len(seqs)} of {state.version}")
    if any(r[1] == "decided" for r in rows["notifications"]):
        problems.append("notifications still 'decided'")
    if rows["outbox_due"]:
        problems.append(f"{len(rows['outbox_due'])} outbox notices due and not yet sent")
    if len(rows["documents"]) != sum(1 for a in state.amendments if a.status == "applied"):
        problems.append("documents missing")
    return problems


def outcome(rows: dict, state, cid: str) -> Outcome:
    n = _normalizer(cid, state)
    c = rows["contract"][0]
    db = {
        "contract": [c[0], c[1], _d(c[2]), _d(c[3]), _d(c[4]), _d(c[5]), c[6]],
        "milestones": [list(r) for r in rows["milestones"]],
        "installments": [[r[0], r[1], _d(r[2]), _d(r[3]), r[4]] for r in rows["installments"]],
        "payments": [[r[0], _d(r[1]), r[2], r[3], sorted((k, _d(v)) for k, v in (r[4] or {}).items()), _d(r[5])]
                     for r in rows["payments"]],
        # The workflow's events in their order; the reminders the outbox logged (no seq) as a set:
        # where they fall among the workflow's events is a matter of timing.
        "events": [t for seq, t, data in rows["events"] if seq is not None and not racy(t, data)]
        + sorted(t for seq, t, _data in rows["events"] if seq is None),
        "tasks": sorted([n(k), a, s] for k, a, s in rows["tasks"]),
        "documents": [list(r) for r in rows["documents"]],
    }
    notes = sorted([n(k), s, role, recipient, channel] for k, s, role, recipient, channel in rows["notifications"])
    return Outcome(normal_state(state), db, len(rows["events"]), notes, [p.reference for p in state.payments],
                   sum(1 for _s, t, data in rows["events"] if racy(t, data)), cid,
                   [f"{seq}:{t}" for seq, t, _data in rows["events"]])


async def collect(stack: Stack, db_url: str, timeout: float = 240.0) -> dict[int, Outcome]:
    """Every scripted contract's outcome, once its projection has caught up with its final state."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    gate = asyncio.Semaphore(8)

    async def one(cid: str):
        async with gate:
            return await final_state(stack.client, cid)

    keys = list(stack.cids)
    states = dict(zip(keys, await asyncio.gather(*(one(stack.cids[k]) for k in keys)), strict=True))
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with engine.connect() as conn:
                rows = {k: _db_rows(conn, cid) for k, cid in stack.cids.items()}
            lagging = {k: converged(rows[k], states[k]) for k in rows}
            lagging = {k: v for k, v in lagging.items() if v}
            if not lagging:
                break
            if time.monotonic() > deadline:
                sample = dict(list(lagging.items())[:5])
                raise AssertionError(f"{stack.name}: {len(lagging)} projections never converged: {sample}")
            await asyncio.sleep(1.0)
    finally:
        engine.dispose()
    stack.escalation_failures = Counter(
        str((data or {}).get("error", ""))[:100] for r in rows.values() for _s, t, data in r["events"]
        if t == "escalation.failed")
    return {k: outcome(rows[k], states[k], stack.cids[k]) for k in stack.cids}


# ====================================================================== deliveries
@dataclass
class Deliveries:
    emails: int = 0  # messages accepted by the SMTP server
    email_keys: int = 0  # distinct notification keys (Message-IDs) among them
    email_redeliveries: int = 0  # same key again, same content (at-least-once; receivers drop it)
    chat_webhooks: int = 0
    chat_ids: int = 0
    chat_redeliveries: int = 0
    events: int = 0  # distinct subscription event ids delivered
    event_requests: int = 0
    event_redeliveries: int = 0
    duplicates: int = 0  # a notification/event delivered under two ids, or one id with two contents
    problems: list[str] = field(default_factory=list)

    def report(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "problems"}


async def deliveries(stack: Stack, db_url: str, timeout: float = 240.0) -> Deliveries:
    """Count what reached the SMTP server and the HTTP receivers, against the database's record:
    every sent notification arrived under its key, every event under its id, nothing twice as two."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine(db_url, poolclass=NullPool)
    cids = set(stack.cids.values())
    try:
        with engine.connect() as conn:
            notes = conn.execute(text("SELECT key, channel, status, contract_id FROM notifications")).all()
            events = conn.execute(text("SELECT contract_id, seq FROM contract_events")).all()
    finally:
        engine.dispose()
    sent_email = {k for k, ch, st, c in notes if ch == "email" and st == "sent" and c in cids}
    sent_chat = {k for k, ch, st, c in notes if ch == "webhook" and st == "sent" and c in cids}
    event_ids = {f"{c}:{s}" for c, s in events if c in cids}

    # The subscription delivers the whole log, one event at a time: let it catch up.
    def delivered_ids() -> set[str]:
        return {r["id"] for r in stack.hooks.at("/sub/all") if r["status"] == 200}

    deadline = time.monotonic() + timeout
    while not event_ids <= delivered_ids() and time.monotonic() < deadline:
        await asyncio.sleep(1.0)

    d = Deliveries()
    by_key: dict[str, list] = defaultdict(list)
    for rcpts, msg in stack.mail.messages:
        key = notification_key(msg)
        if key.split(":", 1)[0] in cids:
            by_key[key].append((tuple(sorted(rcpts)), str(msg["Subject"]), body_text(msg), str(msg["Message-ID"])))
    d.emails = sum(len(v) for v in by_key.values())
    d.email_keys = len(by_key)
    d.email_redeliveries = d.emails - d.email_keys
    for key, copies in by_key.items():
        if len(set(copies)) > 1:
            d.duplicates += 1
            d.problems.append(f"email {key} arrived with different contents")
    if set(by_key) != sent_email:
        d.problems.append(f"emails vs sent rows: missing {sorted(sent_email - set(by_key))[:5]}, "
                          f"unexpected {sorted(set(by_key) - sent_email)[:5]}")
        d.duplicates += len(set(by_key) - sent_email)

    chats: dict[str, set[bytes]] = defaultdict(set)
    for r in stack.hooks.at("/dept/"):
        if r["status"] == 200 and r["id"].split(":", 1)[0] in cids:
            chats[r["id"]].add(r["body"])
            d.chat_webhooks += 1
    d.chat_ids = len(chats)
    d.chat_redeliveries = d.chat_webhooks - d.chat_ids
    for key, bodies in chats.items():
        if len(bodies) > 1:
            d.duplicates += 1
            d.problems.append(f"chat webhook {key} arrived with different contents")
    if set(chats) != sent_chat:
        d.problems.append(f"chat webhooks vs sent rows: missing {sorted(sent_chat - set(chats))[:5]}, "
                          f"unexpected {sorted(set(chats) - sent_chat)[:5]}")
        d.duplicates += len(set(chats) - sent_chat)

    subs: dict[str, set[bytes]] = defaultdict(set)
    for r in stack.hooks.at("/sub/all"):
        if r["status"] == 200 and r["id"].rsplit(":", 1)[0] in cids:
            subs[r["id"]].add(r["body"])
            d.event_requests += 1
    d.events = len(subs)
    d.event_redeliveries = d.event_requests - d.events
    for key, bodies in subs.items():
        if len(bodies) > 1:
            d.duplicates += 1
            d.problems.append(f"event {key} arrived with different contents")
    if set(subs) != event_ids:
        d.problems.append(f"subscription vs event log: missing {len(event_ids - set(subs))} "
                          f"{sorted(event_ids - set(subs))[:5]}, unexpected {sorted(set(subs) - event_ids)[:5]}")
        d.duplicates += len(set(subs) - event_ids)
    return d


def payment_duplicates(outcomes: dict[int, Outcome]) -> int:
    """References recorded more than once, plus money counted twice (paid beyond the plan)."""
    dup = 0
    for k, o in outcomes.items():
        refs = o.payments_refs
        dup += len(refs) - len(set(refs))
        intended = plan(k).payments
        if sorted(refs) != sorted(r for r, _a in intended):
            dup += abs(len(refs) - len(intended)) or 1
        paid = sum((Decimal(a) for _r, a in intended), Decimal(0))
        if Decimal(o.state["paid"]) != paid.quantize(Decimal("0.01")):
            dup += 1
    return dup


def compare(golden: dict[int, Outcome], faulty: dict[int, Outcome]) -> list[str]:
    """Differences between two runs of the same script, contract by contract ([] when equal)."""
    diffs = []
    for k in sorted(faulty):
        g, f = golden[k], faulty[k]
        for part in ("state", "db", "notifications"):
            a, b = getattr(g, part), getattr(f, part)
            if a != b:
                if isinstance(a, dict):
                    keys = [x for x in a if a.get(x) != b.get(x)]
                    diffs.append(f"contract #{k} ({plan(k).shape}, {f.cid}) {part}: " + "; ".join(
                        f"{x}: golden={a.get(x)!r} faulty={b.get(x)!r}" for x in keys)
                        + (f"; whole logs: golden={g.log} faulty={f.log}" if "events" in keys else ""))
                else:
                    diffs.append(f"contract #{k} ({plan(k).shape}, {f.cid}) {part}: golden={a!r} faulty={b!r}")
    return diffs
