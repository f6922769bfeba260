"""Small builders shared by the tests."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from api.contracts.builder import build_spec
from api.contracts.schemas import ContractCreate
from workflows.contract import ContractWorkflow, ContractWorkflowInput, initial_search_attributes, workflow_id_for
from workflows.types import (
    CompleteMilestoneInput,
    ContractSpec,
    ContractState,
    PaymentInput,
)


def contract_request(now: datetime, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "title": "Supply of 40 CNC spindles",
        "customer": {"name": "Ningbo Precision Machinery", "external_id": f"CRM-{uuid.uuid4().hex[:8]}"},
        "currency": "CNY",
        "amount": "120000.00",
        "effective_date": now.isoformat(),
        "end_date": (now + timedelta(days=365)).isoformat(),
        "owner": "li.wei",
        "playbook": "goods_sale",
    }
    body.update(overrides)
    return body


def monthly_installments(total: str, months: int = 12) -> list[dict[str, str]]:
    each = (Decimal(total) / months).quantize(Decimal("0.01"))
    items = [{"key": f"m{k}", "due_after": f"P{k}M", "amount": str(each)} for k in range(1, months + 1)]
    items[-1]["amount"] = str(Decimal(total) - each * (months - 1))
    return items


def make_spec(now: datetime, department_assignee=None, **overrides: Any) -> ContractSpec:
    req = ContractCreate.model_validate(contract_request(now, **overrides))
    return build_spec(req, contract_id=uuid.uuid4().hex[:16], now=now, department_assignee=department_assignee)


# Every workflow a test starts, so the test can end them: on the time-skipping server an
# orphaned workflow whose timer fires with no worker polling blocks time skipping for all.
STARTED: list[WorkflowHandle] = []


async def end_started_workflows() -> None:
    while STARTED:
        handle = STARTED.pop()
        try:
            await handle.terminate("test finished")
        except Exception as exc:  # noqa: BLE001 - already closed is fine
            print("terminate:", exc)


HISTORIES = Path(__file__).parent / "histories"


async def save_history(handle: WorkflowHandle, name: str) -> None:
    """With RECORD_HISTORIES=1, keep this run's history for the replay tests (tests/histories)."""
    if os.environ.get("RECORD_HISTORIES") != "1":
        return
    history = await handle.fetch_history()
    HISTORIES.mkdir(exist_ok=True)
    # The workflow id travels with the history: child workflow ids are derived from it.
    wrapped = {"workflow_id": history.workflow_id, "history": json.loads(history.to_json())}
    (HISTORIES / f"{name}.json").write_text(json.dumps(wrapped))


async def start_contract(
    client: Client, spec: ContractSpec, task_queue: str, *, continue_as_new_after_events: int = 0
) -> WorkflowHandle:
    handle = await client.start_workflow(
        ContractWorkflow.run,
        ContractWorkflowInput(spec=spec, continue_as_new_after_events=continue_as_new_after_events),
        id=workflow_id_for(spec.contract_id),
        task_queue=task_queue,
        search_attributes=initial_search_attributes(spec),
        memo={"title": spec.title, "customer": spec.customer_name},
    )
    STARTED.append(handle)
    return handle


async def state_of(handle: WorkflowHandle) -> ContractState:
    # Right after a continue-as-new the new run may not have had its first task yet: a query
    # then waits for it and can time out on a loaded machine; ask again.
    for attempt in range(3):
        try:
            return await handle.query(ContractWorkflow.state_query)
        except RPCError as exc:
            if attempt == 2 or not any(w in str(exc).lower() for w in ("deadline", "timeout")):
                raise
    raise AssertionError("unreachable: the third attempt answers or raises")


async def pay(handle: WorkflowHandle, reference: str, amount: str, at: datetime, currency: str = "CNY"):
    return await handle.execute_update(ContractWorkflow.record_payment, PaymentInput(reference, amount, currency, at))


async def complete(handle: WorkflowHandle, key: str, by: str = "owner"):
    return await handle.execute_update(ContractWorkflow.complete_milestone, CompleteMilestoneInput(key, by))


async def advance_to(env, when, sessions=None) -> None:
    """Let the time-skipping server's clock reach ``when`` (no-op if it is already past).  With
    ``sessions`` (the contract database) it stops at each notice the outbox holds and lets it be
    sent at its time, as real time would (reminders do not wake the contract)."""
    if sessions is not None:
        from core.outbox import advance_sending

        await advance_sending(env, when, sessions)
        return
    now = await env.get_current_time()
    if when > now:
        await env.sleep(when - now)


def mails_about(mailbox, contract_id: str) -> list:
    """(recipients, message) of every mail the test mailbox received about the contract."""
    return [(rcpts, m) for rcpts, m in mailbox.messages if contract_id in m["X-Contracts-Notification"]]


async def wait_for(predicate, timeout: float = 15.0, interval: float = 0.1):
    """Poll an async predicate until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


DEMO_PASSWORD = "demo"  # Settings.demo_password: the demo people's password in dev and tests


async def login(base_url: str, user: str, password: str = DEMO_PASSWORD) -> dict[str, str]:
    """Log in as a person (OAuth2 password flow) and return the Authorization header to send.
    ``base_url`` may carry the admin key (it is not sent here: the form posts to /auth/token)."""
    import httpx

    async with httpx.AsyncClient(base_url=strip_credentials(base_url), timeout=30) as c:
        r = await c.post("/auth/token", data={"username": user, "password": password})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}


def strip_credentials(base_url: str) -> str:
    """The URL without user info (the admin key the test service's base_url carries)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(base_url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc))


async def outbox_idle(sessions, env, timeout: float = 15.0) -> None:
    """Wait (real time) until the notification outbox holds nothing due by the server's clock."""
    from core.outbox import due_now

    async def idle():
        return due_now(sessions, await env.get_current_time()) == 0

    await wait_for(idle, timeout=timeout, interval=0.05)


async def closed_state(handle: WorkflowHandle) -> ContractState:
    """Wait for the contract's workflow to close (its result is the outcome), then read its whole
    final state with the query (a closed workflow still answers it)."""
    outcome = await handle.result()  # follows continue-as-new to the last run
    state = await state_of(handle._client.get_workflow_handle(handle.id))  # the last run, not the first
    assert state.status == outcome.status and state.version == outcome.version
    return state


async def projected(sessions, contract_id: str, version: int = 1) -> None:
    """Wait until the read model holds the contract at ``version`` or later (its first projection,
    with its reminder plans, by default): before moving the clock past those reminders."""
    from models import Contract

    async def there():
        with sessions() as s:
            row = s.get(Contract, contract_id)
            return row is not None and row.version >= version

    await wait_for(there)
