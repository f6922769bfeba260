"""The deploy procedure of docs/versioning.md, shown on a small workflow with three versions:
``patched`` lets old and new runs coexist, ``deprecate_patch`` retires the old branch once no
run predates the patch, and skipping a step is caught by replay before it reaches production."""

from __future__ import annotations

import uuid

from temporalio import activity
from temporalio.worker import Replayer, Worker

from tests.versioning.invoice_v1 import InvoiceV1
from tests.versioning.invoice_v2 import InvoiceV2
from tests.versioning.invoice_v3 import InvoiceV3

CALLS: list[str] = []


@activity.defn(name="issue_invoice")
async def issue_invoice(amount: str) -> None:
    CALLS.append(f"invoice {amount}")


@activity.defn(name="check_credit")
async def check_credit(amount: str) -> None:
    CALLS.append(f"credit {amount}")


async def _run(env, workflow_cls, amount: str):
    tq = f"ver-{uuid.uuid4().hex[:6]}"
    async with Worker(env.client, task_queue=tq, workflows=[workflow_cls], activities=[issue_invoice, check_credit]):
        handle = await env.client.start_workflow(workflow_cls.run, amount, id=f"invoice-{uuid.uuid4().hex[:8]}",
                                                 task_queue=tq)
        assert await handle.result() == "issued"
        return await handle.fetch_history()


async def _replays(workflow_cls, history) -> bool:
    try:
        await Replayer(workflows=[workflow_cls]).replay_workflow(history)
        return True
    except Exception as exc:  # noqa: BLE001 - a nondeterminism error is the expected "no"
        assert "ondetermin" in str(exc) or "patch" in str(exc).lower(), exc
        return False


async def test_patched_then_deprecate_patch(ts_env):
    CALLS.clear()
    v1_history = await _run(ts_env, InvoiceV1, "100.00")
    v2_history = await _run(ts_env, InvoiceV2, "200.00")
    v3_history = await _run(ts_env, InvoiceV3, "300.00")
    assert CALLS == ["invoice 100.00", "credit 200.00", "invoice 200.00", "credit 300.00", "invoice 300.00"]

    # Step 1: v2 (patched) replays runs of v1 and of itself: safe to deploy while v1 runs live.
    assert await _replays(InvoiceV2, v1_history)
    assert await _replays(InvoiceV2, v2_history)
    # Step 2: v3 (deprecate_patch) replays v2 and v3 runs: deploy it once no v1 run is open.
    assert await _replays(InvoiceV3, v2_history)
    assert await _replays(InvoiceV3, v3_history)
    # Skipping step 1 breaks the runs that started under v1: replay says so before a deploy does.
    assert not await _replays(InvoiceV3, v1_history)
    # And v1 cannot take back runs that took the new branch (no rollback past a patch).
    assert not await _replays(InvoiceV1, v2_history)


def test_the_contract_workflows_patches_are_documented():
    """Every ``workflow.patched`` in the workflows is listed in docs/versioning.md."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = set()
    for path in (root / "workflows").rglob("*.py"):
        found |= set(re.findall(r'workflow\.(?:patched|deprecate_patch)\("([^"]+)"\)', path.read_text()))
    assert {"notifications-v1", "progress-dedupe-v1", "quiet-cancelled-escalation-v1", "lean-engine-v1"} <= found
    doc = (root / "docs" / "versioning.md").read_text()
    assert sorted(p for p in found if f"`{p}`" not in doc) == []
