"""Benchmark: the history budget of a long contract, on Temporal's time-skipping test server.

    .venv/bin/python -m bench.history                    # 5-year service contract
    .venv/bin/python -m bench.history --years 10
    .venv/bin/python -m bench.history --continue-as-new-after 4096   # force continue-as-new there

A service contract from the ``service`` playbook (kick-off, a delivery report each month,
quarterly invoicing with an installment 30 days after each invoice, acceptance at the end) runs
its whole term in seconds on the time-skipping server, with the real worker (projection into a
SQLite read model, notifications to an SMTP catcher) and the workflow's real code paths:

* each monthly report: ``report_progress`` (50 %) ten days before it is due, then
  ``complete_milestone`` a day before;
* each quarterly invoice completed a day before it is due; each installment paid
  (``record_payment``) an hour before it falls due;
* a few amendments (``request_amendment`` then ``decide_amendment`` by every required role):
  two reports moved by ten days (manager), the amount raised by 10 % (finance and legal);
* reminders, hand-offs and supplementary agreements as the policy produces them.

Then it follows the continue-as-new chain from the first run and, for each run, counts the
events and measures the history's bytes, the largest payload (a ``Payloads`` blob: an activity's
input, an update's result, the continue-as-new input...) and the largest event.  Budget:
every run under 10,240 events (Temporal's history-length warning) and every payload under
256 KB.  The floor: a bare ``LedgerWorkflow`` taking the same number of updates, its events per
update and its largest payload.  Results: bench/results/history.json.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import say

NAME = "history"
EVENTS_BUDGET = 10_240
PAYLOAD_BUDGET = 256 * 1024


async def register_search_attributes(env) -> None:
    """The time-skipping server knows no custom search attributes until told (as tests/conftest.py)."""
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest

    from workflows import search_attributes as sa

    types = {
        "KEYWORD": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        "DATETIME": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
        "INT": IndexedValueType.INDEXED_VALUE_TYPE_INT,
        "DOUBLE": IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE,
    }
    await env.client.operator_service.add_search_attributes(AddSearchAttributesRequest(
        namespace=env.client.namespace,
        search_attributes={k.name: types[k.indexed_value_type.name] for k in sa.ALL},
    ))


def delta_sizes_interceptor(sizes: list[tuple[int, int]]):
    """A worker interceptor recording each projection delta's size: (JSON bytes, bytes as sent).
    A local activity's input is not in the history, but Temporal's core keeps it with the cached
    run (the data converter compresses a large one: workflows/converter.py)."""
    from temporalio import activity
    from temporalio.converter import ActivitySerializationContext
    from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

    from workflows.converter import data_converter

    class Inbound(ActivityInboundInterceptor):
        async def execute_activity(self, input: ExecuteActivityInput) -> Any:
            info = activity.info()
            if info.activity_type == "project_delta":
                plain = data_converter.payload_converter.to_payloads(input.args)[0]
                sent = plain
                if info.is_local:
                    sent = data_converter.with_context(ActivitySerializationContext(
                        namespace=info.namespace, activity_id=info.activity_id, activity_type=info.activity_type,
                        activity_task_queue=info.task_queue, workflow_id=info.workflow_id,
                        workflow_type=info.workflow_type, is_local=True)).payload_converter.to_payloads(input.args)[0]
                sizes.append((len(plain.data), len(sent.data)))
            return await self.next.execute_activity(input)

    class Sizes(Interceptor):
        def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
            return Inbound(next)

    return Sizes()


# ------------------------------------------------------------------ history measurements
def _payloads(msg, path: str = ""):
    """(path, bytes) of every Payloads blob and every free-standing Payload inside a proto message."""
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        name = fd.message_type.full_name
        if fd.message_type.GetOptions().map_entry:
            for k, v in value.items():
                if hasattr(v, "ListFields"):
                    if v.DESCRIPTOR.full_name == "temporal.api.common.v1.Payload":
                        yield f"{path}{fd.name}[{k}]", v.ByteSize()
                    else:
                        yield from _payloads(v, f"{path}{fd.name}[{k}].")
            continue
        items = [value] if hasattr(value, "ListFields") else list(value)  # a message, or a repeated field
        for v in items:
            if name == "temporal.api.common.v1.Payloads" or name == "temporal.api.common.v1.Payload":
                yield f"{path}{fd.name}", v.ByteSize()
            else:
                yield from _payloads(v, f"{path}{fd.name}.")


def measure_history(history) -> dict:
    from temporalio.api.enums.v1 import EventType

    events = history.events
    largest = (0, "", "")
    largest_event = (0, "")
    by_type: Counter = Counter()
    projection_inputs: list[int] = []
    for e in events:
        etype = EventType.Name(e.event_type).replace("EVENT_TYPE_", "")
        by_type[etype] += 1
        size = e.ByteSize()
        if size > largest_event[0]:
            largest_event = (size, etype)
        attrs = getattr(e, e.WhichOneof("attributes"))
        for path, n in _payloads(attrs):
            if n > largest[0]:
                detail = etype
                if etype == "ACTIVITY_TASK_SCHEDULED":
                    detail += f" ({attrs.activity_type.name})"
                largest = (n, detail, path)
        if etype == "ACTIVITY_TASK_SCHEDULED" and attrs.activity_type.name == "project_contract":
            projection_inputs.append(attrs.input.ByteSize())
    return {
        "events": len(events),
        "history_bytes": sum(e.ByteSize() for e in events),
        "largest_payload_bytes": largest[0],
        "largest_payload_in": f"{largest[1]} {largest[2]}".strip(),
        "largest_event_bytes": largest_event[0],
        "largest_event_type": largest_event[1],
        "projection_input_bytes": {"count": len(projection_inputs),
                                   "first": projection_inputs[0] if projection_inputs else None,
                                   "last": projection_inputs[-1] if projection_inputs else None,
                                   "max": max(projection_inputs) if projection_inputs else None},
        "updates": by_type.get("WORKFLOW_EXECUTION_UPDATE_ACCEPTED", 0),
        "timers": by_type.get("TIMER_STARTED", 0),
        "activities": by_type.get("ACTIVITY_TASK_SCHEDULED", 0),
        "workflow_tasks": by_type.get("WORKFLOW_TASK_COMPLETED", 0),
        "ends_with": EventType.Name(events[-1].event_type).replace("EVENT_TYPE_", "") if events else None,
    }


def state_breakdown(state) -> dict:
    """JSON bytes of each top-level field of the final ContractState (what every projection
    input and continue-as-new input carries), largest first."""
    import json

    from workflows.converter import data_converter

    payload = data_converter.payload_converter.to_payloads([state])[0]
    whole = json.loads(payload.data)
    sizes = {k: len(json.dumps(v, separators=(",", ":"))) for k, v in whole.items()}
    out = {"total": len(payload.data)}
    out.update(dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:12]))
    return out


async def run_chain(client, workflow_id: str, first_run_id: str | None) -> list[dict]:
    """Every run of the workflow, first to last, following continue-as-new."""
    from temporalio.api.enums.v1 import EventType

    runs = []
    run_id: str | None = first_run_id
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        m = measure_history(history)
        m["run_id"] = run_id
        runs.append(m)
        last = history.events[-1]
        if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
        else:
            run_id = None
    return runs


# ------------------------------------------------------------------ the contract's life
class Driver:
    def __init__(self, env, handle, years: int, sessions, settings) -> None:
        from api.contracts.service import ContractService

        self.env = env
        self.sessions = sessions  # the read model: the outbox's notices are sent as time passes
        # Updates go as the API sends them (its service layer, without HTTP): with the read-model
        # version, and the delta they answer with written back.
        self.service = ContractService(env.client, sessions, settings)
        self.handle = handle
        self.years = years
        self.counts: Counter = Counter()
        self.pay_n = 0
        self.amendment_plan: list[tuple[datetime, str]] = []

    async def advance_to(self, when: datetime) -> None:
        from core.outbox import advance_sending

        await advance_sending(self.env, when, self.sessions)

    async def state(self):
        from workflows.contract import ContractWorkflow

        for attempt in range(5):
            try:
                return await self.handle.query(ContractWorkflow.state_query)
            except Exception:  # noqa: BLE001 - right after continue-as-new a query can time out
                if attempt == 4:
                    raise
                await asyncio.sleep(0.5)

    async def update(self, update, arg):
        # By contract id: after continue-as-new the update goes to the latest run.
        return await self.service.send_update(self.handle.id.removeprefix("contract-"), update, arg)

    async def amend(self, k: int, st) -> None:
        from workflows.contract import ContractWorkflow
        from workflows.types import AmendmentChange, DecideAmendmentInput, RequestAmendmentInput

        approvers = {"manager": "zhang.min", "finance": "sun.li", "legal": "liu.yang"}
        if k % 3 == 2:  # money: finance and legal
            new_total = (Decimal(st.spec.amount) * Decimal("1.10")).quantize(Decimal("0.01"))
            changes = [AmendmentChange(kind="change_amount", amount=str(new_total))]
            reason = "Scope extension: additional site"
        else:  # schedule: manager
            later = [m for m in st.milestones if m.key.startswith("report_") and m.status == "pending" and m.due_at
                     and m.due_at > await self.env.get_current_time() + timedelta(days=40)]
            if not later:
                return
            changes = [AmendmentChange(kind="move_due", key=later[0].key, item_type="milestone", shift="P10D")]
            reason = f"Customer asked to move {later[0].key}"
        aid = f"AMD-{k + 1}"
        result = await self.update(ContractWorkflow.request_amendment,
                                   RequestAmendmentInput(aid, "li.wei", reason, changes, approvers))
        self.counts["request_amendment"] += 1
        await self.advance_to(await self.env.get_current_time() + timedelta(hours=20))
        for role in result.amendment.required_roles:
            await self.update(ContractWorkflow.decide_amendment,
                              DecideAmendmentInput(aid, "approve", approvers.get(role, role), role, "agreed"))
            self.counts["decide_amendment"] += 1

    async def run(self) -> None:
        from workflows.contract import ContractWorkflow
        from workflows.types import CompleteMilestoneInput, PaymentInput, ProgressInput

        start = await self.env.get_current_time()
        # Amendments at roughly a quarter, half and three quarters of the term.
        total_days = 365 * self.years
        amend_at = [start + timedelta(days=int(total_days * f), hours=5) for f in (0.27, 0.52, 0.77)]
        amended = 0
        for _ in range(5000):
            st = await self.state()
            if st.status != "active":
                return
            now = await self.env.get_current_time()
            actions: list[tuple[datetime, str, Any]] = []
            if amended < len(amend_at):
                actions.append((amend_at[amended], "amend", amended))
            for m in st.milestones:
                if m.status in ("done", "waived") or m.due_at is None:
                    continue
                deps_done = all(next(x for x in st.milestones if x.key == d).status in ("done", "waived")
                                for d in m.depends_on)
                if not deps_done:
                    continue
                if m.key.startswith("report_") and m.progress == 0:
                    actions.append((max(now, m.due_at - timedelta(days=10, hours=1)), "progress", m.key))
                actions.append((max(now, m.due_at - timedelta(days=1, hours=1)), "complete", m.key))
            for i in st.installments:
                if i.status != "paid" and not i.due_estimated and i.due_at is not None:
                    actions.append((max(now, i.due_at - timedelta(hours=1)), "pay", i))
            if not actions:
                await self.advance_to(now + timedelta(days=30))
                continue
            when, what, item = min(actions, key=lambda a: a[0])
            await self.advance_to(when)
            if what == "amend":
                await self.amend(item, st)
                amended += 1
            elif what == "progress":
                await self.update(ContractWorkflow.report_progress, ProgressInput(item, 50, "half done", "erp"))
                self.counts["report_progress"] += 1
            elif what == "complete":
                await self.update(ContractWorkflow.complete_milestone, CompleteMilestoneInput(item, "li.wei", "done"))
                self.counts["complete_milestone"] += 1
            else:
                self.pay_n += 1
                owed = str(Decimal(item.amount) - Decimal(item.paid))
                await self.update(ContractWorkflow.record_payment,
                                  PaymentInput(f"BANK-{self.pay_n}", owed, st.spec.currency,
                                               await self.env.get_current_time()))
                self.counts["record_payment"] += 1
        raise RuntimeError("the contract did not finish in 5000 steps")


async def body(args: argparse.Namespace, result: dict) -> None:
    from temporalio.testing import WorkflowEnvironment

    from api.contracts.builder import build_spec
    from api.contracts.schemas import ContractCreate
    from bench.floor import LedgerInput, LedgerWorkflow, floor_worker
    from core.temporal import find_binary
    from workflows.contract import ContractWorkflow, ContractWorkflowInput, initial_search_attributes, workflow_id_for

    tmp = common.new_tmp(NAME)
    tmp_path = Path(tmp.name)
    with common.database(args, tmp_path) as db, common.SmtpCatcher() as smtp:
        common.seed_org(db.url)
        say("· Temporal time-skipping test server ...")
        from workflows.converter import data_converter

        env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=find_binary("temporal-test-server"),
                                                            data_converter=data_converter)
        try:
            await register_search_attributes(env)
            tq = f"history-{uuid.uuid4().hex[:8]}"
            settings = common.bench_settings(db.url, "unused", tq, smtp.port)
            now = await env.get_current_time()
            req = ContractCreate.model_validate({
                "external_id": f"SVC-{uuid.uuid4().hex[:6]}",
                "title": "IT operations and maintenance service",
                "customer": {"name": "Hangzhou Metro Operations", "external_id": "CRM-HZM"},
                "currency": "CNY",
                "amount": "6000000.00",
                "effective_date": now.isoformat(),
                "end_date": (now + timedelta(days=365 * args.years)).isoformat(),
                "owner": "li.wei",
                "playbook": "service",
            })
            spec = build_spec(req, contract_id=uuid.uuid4().hex[:16], now=now)
            result["contract"] = {"years": args.years, "milestones": len(spec.milestones),
                                  "installments": len(spec.installments)}
            say(f"· {args.years}-year service contract: {len(spec.milestones)} milestones, "
                f"{len(spec.installments)} installments")
            wall = time.perf_counter()
            deltas: list[tuple[int, int]] = []
            async with common.running_worker(env.client, settings, clock=env.get_current_time,
                                             interceptors=[delta_sizes_interceptor(deltas)]):
                handle = await env.client.start_workflow(
                    ContractWorkflow.run,
                    ContractWorkflowInput(spec=spec, continue_as_new_after_events=args.continue_as_new_after),
                    id=workflow_id_for(spec.contract_id), task_queue=tq,
                    search_attributes=initial_search_attributes(spec),
                    memo={"title": spec.title, "customer": spec.customer_name},
                )
                first_run = handle.result_run_id or handle.first_execution_run_id
                from models.db import make_engine, make_session_factory

                engine = make_engine(db.url)
                driver = Driver(env, handle, args.years, make_session_factory(engine), settings)
                await driver.run()
                outcome = await handle.result()  # follows continue-as-new to the last run
                final = await driver.state()  # the whole final state (the result is the outcome)
                result["final_status"] = outcome.status
                result["final_state_bytes_by_field"] = state_breakdown(final)
                result["operations"] = dict(driver.counts)
                result["driven_seconds"] = round(time.perf_counter() - wall, 1)
                plain = [p for p, _ in deltas]
                result["projection_deltas"] = {
                    "count": len(deltas), "first_bytes": plain[0] if plain else None,
                    "p50_bytes": sorted(plain)[len(plain) // 2] if plain else None,
                    "max_bytes": max(plain) if plain else None,
                    "max_sent_bytes": max(s for _, s in deltas) if deltas else None,
                    "total_sent_bytes": sum(s for _, s in deltas),
                }
                runs = await run_chain(env.client, handle.id, first_run)
                engine.dispose()
                # Escalation children, if any late item made one (the diligent driver makes none).
            # ---- floor: a bare workflow taking as many updates
            floor_tq = f"floor-{uuid.uuid4().hex[:8]}"
            n_updates = sum(r["updates"] for r in runs)
            async with floor_worker(env.client, floor_tq):
                fh = await env.client.start_workflow(LedgerWorkflow.run, LedgerInput(1_000_000, 365 * args.years),
                                                     id=f"ledger-{uuid.uuid4().hex[:6]}", task_queue=floor_tq)
                for _ in range(n_updates):
                    await fh.execute_update(LedgerWorkflow.pay, 1)
                await fh.signal(LedgerWorkflow.close)
                await fh.result()
                floor = measure_history(await fh.fetch_history())
        finally:
            await env.shutdown()
        result["emails"] = len(smtp.mails)
        result["email_duplicates"] = smtp.duplicates()
    tmp.cleanup()

    result["runs"] = runs
    total_events = sum(r["events"] for r in runs)
    max_events = max(r["events"] for r in runs)
    max_payload = max(r["largest_payload_bytes"] for r in runs)
    result["summary"] = {
        "runs": len(runs),
        "total_events": total_events,
        "max_events_per_run": max_events,
        "max_history_bytes_per_run": max(r["history_bytes"] for r in runs),
        "largest_payload_bytes": max_payload,
        "largest_payload_in": max(runs, key=lambda r: r["largest_payload_bytes"])["largest_payload_in"],
        "updates": sum(r["updates"] for r in runs),
        "events_per_update": round(total_events / max(1, sum(r["updates"] for r in runs)), 1),
        "events_per_month": round(total_events / (12 * args.years), 1),
    }
    result["floor"] = floor
    result["floor"]["events_per_update"] = round(floor["events"] / max(1, floor["updates"]), 1)
    d = result.get("projection_deltas") or {}
    if d.get("count"):
        say(f"projection deltas: {d['count']}, first {d['first_bytes'] / 1024:.1f} KiB, p50 {d['p50_bytes']} B, "
            f"largest {d['max_bytes'] / 1024:.1f} KiB ({d['max_sent_bytes'] / 1024:.1f} KiB as sent)")
    result["ratio_events"] = common.ratio(total_events, floor["events"])
    result["ratio_largest_payload"] = common.ratio(max_payload, floor["largest_payload_bytes"])
    s = result["summary"]
    for i, r in enumerate(runs, 1):
        say(f"  run {i}: {r['events']} events, {r['history_bytes'] / 1024:.0f} KiB, largest payload "
            f"{r['largest_payload_bytes'] / 1024:.1f} KiB ({r['largest_payload_in']}), projection input "
            f"{(r['projection_input_bytes']['first'] or 0) / 1024:.1f} -> {(r['projection_input_bytes']['last'] or 0) / 1024:.1f}"
            f" KiB, ends {r['ends_with']}")
    say(f"history: {s['runs']} run(s), {s['total_events']} events ({s['events_per_month']}/month, "
        f"{s['events_per_update']} per update), max {s['max_events_per_run']} events per run, largest payload "
        f"{s['largest_payload_bytes'] / 1024:.1f} KiB | floor: {floor['events']} events for {floor['updates']} updates "
        f"({floor['events_per_update']} per update), largest payload {floor['largest_payload_bytes']} B "
        f"-> events x{result['ratio_events']}, payload x{result['ratio_largest_payload']}; driven in "
        f"{result['driven_seconds']} s")
    checks = result["checks"]
    checks["the contract completed"] = result["final_status"] == "completed"
    checks["no duplicate notification email"] = result["email_duplicates"] == 0
    checks["the chain of runs ends with the completion"] = runs[-1]["ends_with"] == "WORKFLOW_EXECUTION_COMPLETED"
    result["targets"]["every run < 10,240 events"] = {
        "value": max_events, "target": f"< {EVENTS_BUDGET}", "met": max_events < EVENTS_BUDGET}
    result["targets"]["every payload < 256 KB"] = {
        "value": f"{max_payload / 1024:.1f} KiB", "target": "< 256 KiB", "met": max_payload < PAYLOAD_BUDGET}
    per_update = s["events_per_update"]
    result["targets"]["#12: <= 8 events per update"] = {"value": per_update, "target": "<= 8", "met": per_update <= 8}
    result["targets"]["#12: largest payload <= 32 KB"] = {
        "value": f"{max_payload / 1024:.1f} KiB", "target": "<= 32 KB", "met": max_payload <= 32_000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--years", type=int, default=5)
    parser.add_argument("--continue-as-new-after", type=int, default=0,
                        help="force continue-as-new at this history length (0: when Temporal suggests it)")
    common.add_database_args(parser)
    common.run_main(NAME, parser, body)


if __name__ == "__main__":
    main()
