"""Updates from the API answer with their delta and the API writes it (api-projection-v1).

Real uvicorn, real dev server and worker, real SQLite and PostgreSQL.  What is shown:
* a payment or a completion through the API runs no local activity in its workflow task, and the
  read model has it when the request answers;
* a delta the API never wrote (the API died between the answer and its write, played here by
  sending the update straight to the workflow, as the API does, and writing nothing) is found
  missing by the next request or by the workflow's next write, and every item is written again:
  nothing of it is lost, no event number is skipped;
* two deltas written out of order: the later one waits for the earlier one.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select, text
from temporalio.api.enums.v1 import EventType

from activities.projection import ProjectionActivities
from models import Contract, ContractEvent, Payment
from models.db import make_engine, make_session_factory
from tests.helpers import contract_request, save_history, wait_for
from workflows.contract import ContractWorkflow, workflow_id_for
from workflows.contract.workflow import REFRESH_ONCE
from workflows.types import PaymentInput


@pytest.fixture(params=["sqlite", "postgres"])
def service(request):
    return request.getfixturevalue("api_service" if request.param == "sqlite" else "api_service_pg")


async def _keep(service, request, cid: str, name: str) -> None:
    """Its history for the replay tests (RECORD_HISTORIES=1; the SQLite run's)."""
    if request.node.callspec.params["service"] == "sqlite":
        await save_history(service.client.get_workflow_handle(workflow_id_for(cid)), name)


@pytest.fixture
def read_model(service):
    """Sessions on the service's database (the read model the API and the worker write)."""
    engine = make_engine(service.settings.database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _when(check):
    """``wait_for`` polls an async predicate: a synchronous check, wrapped."""
    async def predicate():
        return check()
    return predicate


async def _contract(c: httpx.AsyncClient, read_model) -> str:
    r = await c.post("/contracts", json=contract_request(datetime.now(timezone.utc), amount="1000.00"))
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    await wait_for(_when(lambda: _row(read_model, cid) is not None and _row(read_model, cid).version >= 1))
    return cid


def _row(read_model, cid: str) -> Contract:
    with read_model() as s:
        return s.get(Contract, cid)


def _paid_in_read_model(read_model, cid: str) -> tuple[Decimal, set[str]]:
    with read_model() as s:
        paid = s.get(Contract, cid).paid_total
        refs = set(s.execute(select(Payment.reference).where(Payment.contract_id == cid)).scalars())
    return Decimal(paid), refs


def _event_seqs(read_model, cid: str) -> list[int]:
    with read_model() as s:
        return sorted(s.execute(select(ContractEvent.seq).where(ContractEvent.contract_id == cid,
                                                                 ContractEvent.seq.is_not(None))).scalars())


async def _pay_api(c, cid: str, ref: str, amount: str = "10.00") -> dict:
    r = await c.post(f"/contracts/{cid}/payments", json={"reference": ref, "amount": amount, "currency": "CNY",
                                                          "received_at": datetime.now(timezone.utc).isoformat()})
    assert r.status_code == 200, r.text
    return r.json()


async def _pay_without_writing(service, read_model, cid: str, ref: str, amount: str = "10.00"):
    """What the API does, up to the write it never made: the update with the version it read."""
    handle = service.client.get_workflow_handle(workflow_id_for(cid))
    return await handle.execute_update(ContractWorkflow.record_payment, PaymentInput(
        ref, amount, "CNY", datetime.now(timezone.utc), "finance", read_model_version=_row(read_model, cid).version))


async def _markers_after_last_update(service, cid: str) -> int:
    history = await service.client.get_workflow_handle(workflow_id_for(cid)).fetch_history()
    events = list(history.events)
    last = max(i for i, e in enumerate(events)
               if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED)
    return sum(1 for e in events[last:] if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
               and e.marker_recorded_event_attributes.marker_name != "core_patch")


async def _patches(service, cid: str) -> list[bytes]:
    history = await service.client.get_workflow_handle(workflow_id_for(cid)).fetch_history()
    return [p.data for e in history.events if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
            and e.marker_recorded_event_attributes.marker_name == "core_patch"
            for v in e.marker_recorded_event_attributes.details.values() for p in v.payloads]


async def test_a_payment_through_the_api_is_written_by_the_api_and_read_at_once(service, read_model, request):
    async with httpx.AsyncClient(base_url=service.base_url) as c:
        cid = await _contract(c, read_model)
        before = _row(read_model, cid).version
        answer = await _pay_api(c, cid, "API-1")
        assert answer["applied"] and "projection" not in answer
        # Read straight after the answer: the read model already has it.
        assert _paid_in_read_model(read_model, cid) == (Decimal("10.00"), {"API-1"})
        assert _row(read_model, cid).version > before
        assert await _markers_after_last_update(service, cid) == 0, "the payment's task ran a local activity"

        r = await c.post(f"/contracts/{cid}/milestones/order_review/complete", json={"by": "li.wei"})
        assert r.status_code == 200, r.text
        page = (await c.get("/contracts", params={"owner": "li.wei", "limit": 500})).json()
        assert next(i for i in page["items"] if i["id"] == cid)["outstanding"] == "990.00"
        assert await _markers_after_last_update(service, cid) == 0
        seqs = _event_seqs(read_model, cid)
        assert seqs == list(range(1, len(seqs) + 1))
        # The run loop took the handlers' refresh as its own (REFRESH_ONCE): recorded in the history.
        assert REFRESH_ONCE.encode() in b"".join(await _patches(service, cid))
        # (api_projection_paid_and_completed.json is this run before REFRESH_ONCE: kept for replay.)
        await _keep(service, request, cid, "api_projection_refresh_once_paid_and_completed")


@pytest.mark.postgres
async def test_a_payments_read_model_write_and_its_audit_entry_commit_as_one_transaction(api_service_pg):
    """One commit, not two, before the answer (on PostgreSQL one WAL flush fewer per update):
    rows a transaction inserts carry its id (``xmin``)."""
    engine = make_engine(api_service_pg.settings.database_url)
    try:
        async with httpx.AsyncClient(base_url=api_service_pg.base_url) as c:
            cid = await _contract(c, make_session_factory(engine))
            await _pay_api(c, cid, "ONE-TXN")
        with engine.connect() as conn:
            paid = conn.execute(text("SELECT xmin::text FROM payments WHERE contract_id = :c AND reference = "
                                     "'ONE-TXN'"), {"c": cid}).scalar_one()
            entries = conn.execute(text("SELECT xmin::text FROM audit_log WHERE contract_id = :c AND path = :p"),
                                   {"c": cid, "p": f"/contracts/{cid}/payments"}).scalars().all()
    finally:
        engine.dispose()
    assert entries == [paid]


async def test_a_delta_the_api_never_wrote_is_written_again_at_the_next_request(service, read_model, request):
    async with httpx.AsyncClient(base_url=service.base_url) as c:
        cid = await _contract(c, read_model)
        lost = await _pay_without_writing(service, read_model, cid, "LOST-1")
        assert lost.applied and lost.projection is not None  # handed over, never written
        assert _paid_in_read_model(read_model, cid) == (Decimal("0.00"), set())
        await asyncio.sleep(5.2)  # past the grace a write in flight is given (HANDED_GRACE)
        await _pay_api(c, cid, "API-2")
        assert _paid_in_read_model(read_model, cid) == (Decimal("20.00"), {"LOST-1", "API-2"})
        seqs = _event_seqs(read_model, cid)
        assert seqs == list(range(1, len(seqs) + 1)), "an event of the lost delta is missing"
        live = (await c.get(f"/contracts/{cid}")).json()
        assert live["paid"] == "20.00" and _row(read_model, cid).version == live["version"]
        await _keep(service, request, cid, "api_projection_lost_delta_written_again")


async def test_a_delta_the_api_never_wrote_is_written_again_by_the_workflows_next_write(service, read_model, request):
    async with httpx.AsyncClient(base_url=service.base_url) as c:
        cid = await _contract(c, read_model)
        await _pay_without_writing(service, read_model, cid, "LOST-2")
        assert _paid_in_read_model(read_model, cid) == (Decimal("0.00"), set())
        # No request from the API follows: a signal (finance's fire-and-forget feed) makes the
        # workflow write, and its write finds the read model behind.
        handle = service.client.get_workflow_handle(workflow_id_for(cid))
        await handle.signal(ContractWorkflow.record_payment_signal,
                            PaymentInput("SIG-1", "5.00", "CNY", datetime.now(timezone.utc), "finance"))
        await wait_for(_when(lambda: _paid_in_read_model(read_model, cid) == (Decimal("15.00"), {"LOST-2", "SIG-1"})))
        seqs = _event_seqs(read_model, cid)
        assert seqs == list(range(1, len(seqs) + 1))
        await _keep(service, request, cid, "api_projection_lost_delta_found_by_the_workflow")


async def test_deltas_written_out_of_order_wait_for_each_other(service, read_model):
    async with httpx.AsyncClient(base_url=service.base_url) as c:
        cid = await _contract(c, read_model)
        first = (await _pay_without_writing(service, read_model, cid, "OOO-1")).projection
        second = (await _pay_without_writing(service, read_model, cid, "OOO-2")).projection
        assert second.requires_version == first.version
        writer = ProjectionActivities(read_model)
        assert writer.write_handed(second) is False  # builds on the first, which is not there yet
        assert _paid_in_read_model(read_model, cid) == (Decimal("0.00"), set())
        assert writer.write_handed(first) is True
        assert writer.write_handed(second) is True
        assert writer.write_handed(first) is True  # a late copy changes nothing
        assert _paid_in_read_model(read_model, cid) == (Decimal("20.00"), {"OOO-1", "OOO-2"})
        assert _row(read_model, cid).version == second.version
        # The API's next request shows the workflow the read model has both: no rewrite of every item.
        await _pay_api(c, cid, "OOO-3")
        assert _paid_in_read_model(read_model, cid)[0] == Decimal("30.00")
        assert await _markers_after_last_update(service, cid) == 0


async def test_handed_deltas_are_confirmed_before_continue_as_new_and_nothing_is_lost(service, read_model):
    """A contract that continues as new every ~40 events, paid through the API's service layer,
    one delta of which the API never wrote: the new runs carry on, the read model ends equal to the
    live state, every event number once."""
    from api.contracts.service import ContractService
    from tests.helpers import make_spec, start_contract

    spec = make_spec(datetime.now(timezone.utc), amount="1000.00")
    handle = await start_contract(service.client, spec, service.settings.task_queue, continue_as_new_after_events=40)
    cid = spec.contract_id
    await wait_for(_when(lambda: _row(read_model, cid) is not None and _row(read_model, cid).version >= 1))
    api = ContractService(service.client, read_model, service.settings)
    for k in range(12):
        if k == 5:
            await _pay_without_writing(service, read_model, cid, f"CAN-{k}")
            continue
        await api.send_update(cid, ContractWorkflow.record_payment,
                              PaymentInput(f"CAN-{k}", "10.00", "CNY", datetime.now(timezone.utc), "finance"))
    latest = service.client.get_workflow_handle(handle.id)
    assert (await latest.describe()).run_id != handle.first_execution_run_id, "it was meant to continue as new"
    live = await latest.query(ContractWorkflow.state_query)
    await wait_for(_when(lambda: _paid_in_read_model(read_model, cid)[0] == Decimal(live.paid_total)))
    assert _paid_in_read_model(read_model, cid) == (Decimal("120.00"), {f"CAN-{k}" for k in range(12)})
    seqs = _event_seqs(read_model, cid)
    assert seqs == list(range(1, len(seqs) + 1))
    await latest.terminate("test finished")
