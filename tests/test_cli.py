"""The operator CLI end to end against the real service (dev server, worker, uvicorn, SQLite).

The CLI is synchronous (httpx sync client, its own asyncio.run for Temporal) and the service
runs on this test session's event loop, so every CLI invocation runs in a thread.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import uuid
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from core.cli import app
from tests.helpers import login

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "goods_sale.json"
# Wide enough that Rich never folds an id or a status across lines.
ENV = {"COLUMNS": "250", "NO_COLOR": "1"}

pytestmark = pytest.mark.devserver


async def cli(service, *args: str, env: dict[str, str] | None = None):
    runner = CliRunner()
    return await asyncio.to_thread(
        runner.invoke, app, ["--api", service.base_url, *args], env={**ENV, **(env or {})}
    )


def request_file(tmp_path: Path, **overrides) -> tuple[Path, dict]:
    """A copy of the example with a unique external_id (each run creates a new contract)."""
    body = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    body["external_id"] = f"CLI-{uuid.uuid4().hex[:12]}"
    body["customer"]["external_id"] = f"CRM-CLI-{uuid.uuid4().hex[:8]}"
    body.update(overrides)
    path = tmp_path / "contract.json"
    path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    return path, body


async def create_contract(service, tmp_path: Path, **overrides) -> tuple[str, dict]:
    path, body = request_file(tmp_path, **overrides)
    result = await cli(service, "create", str(path))
    assert result.exit_code == 0, result.output
    assert "Contract created" in result.output
    async with httpx.AsyncClient(base_url=service.base_url) as c:
        r = await c.get("/contracts", params={"customer": body["customer"]["external_id"]})
    items = r.json()["items"]
    assert len(items) == 1, r.text
    contract_id = items[0]["id"]
    assert contract_id in result.output
    assert f"contract-{contract_id}" in result.output
    assert "active" in result.output
    return contract_id, body


async def wait_for_status(service, contract_id: str, key: str, status: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=service.base_url) as c:
        while True:
            live = (await c.get(f"/contracts/{contract_id}")).json()
            if any(m["key"] == key and m["status"] == status for m in live["milestones"]):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"milestone {key} not {status} in time: {live['milestones']}")
            await asyncio.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def doctor_env(service) -> dict[str, str]:
    return {
        "TEMPORAL_ADDRESS": service.settings.temporal_address,
        "TEMPORAL_NAMESPACE": service.settings.temporal_namespace,
        "TASK_QUEUE": service.settings.task_queue,
        "DATABASE_URL": service.settings.database_url,
    }


# ------------------------------------------------------------------ tests
async def test_create_is_idempotent_on_external_id(api_service, tmp_path):
    path, _ = request_file(tmp_path)
    first = await cli(api_service, "create", str(path))
    assert first.exit_code == 0, first.output
    assert "Contract created" in first.output
    again = await cli(api_service, "create", str(path))
    assert again.exit_code == 0, again.output
    assert "Already registered" in again.output
    ids = [line.split()[-1] for line in first.output.splitlines() if line.startswith("id ")]
    assert ids and ids[0] in again.output


async def test_create_from_yaml_keeps_money_as_strings(api_service, tmp_path):
    body = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    body["external_id"] = f"CLI-{uuid.uuid4().hex[:12]}"
    crm = f"CRM-CLI-{uuid.uuid4().hex[:8]}"
    # Unquoted YAML amounts and dates: a plain safe_load would make floats and dates of them.
    lines = [
        f"external_id: {body['external_id']}",
        f"title: {body['title']}",
        f"customer: {{name: {body['customer']['name']}, external_id: {crm}}}",
        "currency: CNY",
        "amount: 1200000.10",
        "effective_date: 2026-11-27",
        "end_date: 2027-11-26",
        "owner: li.wei",
        "playbook: goods_sale",
        "installments:",
        "  - {key: deposit, due_after: P7D, amount: 360000.10}",
        "  - {key: rest, due_after: P2M, amount: 840000.00}",
    ]
    path = tmp_path / "contract.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = await cli(api_service, "create", str(path))
    assert result.exit_code == 0, result.output
    listed = await cli(api_service, "list", "--customer", crm)
    assert listed.exit_code == 0, listed.output
    assert "1200000.10 CNY" in listed.output


async def test_list_shows_the_new_contract(api_service, tmp_path):
    contract_id, body = await create_contract(api_service, tmp_path)
    result = await cli(api_service, "list", "--owner", "li.wei", "--status", "active", "--limit", "500")
    assert result.exit_code == 0, result.output
    assert contract_id in result.output
    row = next(line for line in result.output.splitlines() if contract_id in line)
    assert "li.wei" in row and "active" in row
    assert "1200000.00 CNY" in row

    by_customer = await cli(api_service, "list", "--customer", body["customer"]["external_id"])
    assert by_customer.exit_code == 0, by_customer.output
    assert contract_id in by_customer.output
    assert "(1 of 1)" in by_customer.output

    # Piped (80 columns, no terminal), the ids are still whole: scripts take them from here; the
    # title keeps its room (before, Rich squeezed title and customer to nothing) and the columns
    # left out are named.
    narrow = await cli(api_service, "list", "--customer", body["customer"]["external_id"], env={"COLUMNS": "80"})
    assert narrow.exit_code == 0 and contract_id in narrow.output, narrow.output
    row = next(line for line in narrow.output.splitlines() if contract_id in line)
    assert body["title"].split()[0] in row and "active" in row and "1200000.00 CNY" in row, narrow.output
    assert max(len(line) for line in narrow.output.splitlines()) <= 80, narrow.output
    assert "amount, customer, owner left out in 80 columns" in " ".join(narrow.output.split()), narrow.output
    wide = await cli(api_service, "list", "--customer", body["customer"]["external_id"], env={"COLUMNS": "200"})
    row = next(line for line in wide.output.splitlines() if contract_id in line)
    assert body["customer"]["name"].split()[0] in row and "li.wei" in row, wide.output
    assert "left out" not in wide.output, wide.output

    nothing = await cli(api_service, "list", "--owner", f"nobody-{uuid.uuid4().hex[:6]}")
    assert nothing.exit_code == 0, nothing.output
    assert contract_id not in nothing.output
    assert "(0 of 0)" in nothing.output


async def test_show_prints_milestones_installments_and_statuses(api_service, tmp_path):
    # order_review falls due a second after creation; the rest of the playbook stays pending.
    contract_id, _ = await create_contract(
        api_service, tmp_path, milestones=[{"key": "order_review", "due_after": "PT1S"}]
    )
    await wait_for_status(api_service, contract_id, "order_review", "overdue")
    result = await cli(api_service, "show", contract_id)
    assert result.exit_code == 0, result.output
    out = result.output
    for key in ("order_review", "production_scheduling", "shipping", "customer_acceptance", "invoicing",
                "payment_collection"):
        assert key in out
    for key in ("deposit", "m2", "m3", "m4", "m5", "final"):
        assert key in out
    review = next(line for line in out.splitlines() if "order_review" in line)
    assert "overdue" in review
    shipping = next(line for line in out.splitlines() if line.startswith(" shipping "))
    assert "pending" in shipping
    assert "li.wei" in review and "sales" in review
    assert "outstanding 1200000.00 CNY" in out
    assert "credit 0.00 CNY" in out
    assert "Temporal UI: http" in out
    assert f"contract-{contract_id}" in out
    term = next(line for line in out.splitlines() if "term" in line)
    assert "(last day " in term, term  # the end is the instant after the term's last day

    # In 80 columns every milestone keeps its name (Rich squeezed the column to nothing before),
    # no line but the Temporal UI link (kept whole to stay clickable) is wider than the terminal,
    # and what was left out is said.
    narrow = (await cli(api_service, "show", contract_id, env={"COLUMNS": "80"})).output
    shipping = next(line for line in narrow.splitlines() if line.startswith(" shipping "))
    assert "Shipping" in shipping and "pending" in shipping, narrow
    assert max(len(line) for line in narrow.splitlines() if not line.startswith("Temporal UI:")) <= 80, narrow
    assert "department, progress left out in 80 columns" in " ".join(narrow.split()), narrow


async def test_pay_twice_is_applied_once(api_service, tmp_path):
    contract_id, _ = await create_contract(api_service, tmp_path)
    reference = f"BANK-{uuid.uuid4().hex[:10]}"
    first = await cli(api_service, "pay", contract_id, "--reference", reference, "--amount", "1000.50")
    assert first.exit_code == 0, first.output
    assert f"Payment {reference}: applied" in first.output
    assert "not applied" not in first.output
    assert "outstanding: 1198999.50 CNY" in first.output
    assert "deposit 1000.50" in first.output

    again = await cli(
        api_service, "pay", contract_id, "--reference", reference, "--amount", "1000.50", "--currency", "CNY",
        "--received-at", "2026-11-27T10:00:00+08:00",
    )
    assert again.exit_code == 0, again.output
    assert f"Payment {reference}: not applied" in again.output
    assert "duplicate" in again.output
    assert "outstanding: 1198999.50 CNY" in again.output

    shown = await cli(api_service, "show", contract_id)
    assert "paid 1000.50 CNY" in shown.output
    assert "outstanding 1198999.50 CNY" in shown.output


async def test_bad_payment_prints_the_problem_detail(api_service, tmp_path):
    contract_id, _ = await create_contract(api_service, tmp_path)
    result = await cli(api_service, "pay", contract_id, "--reference", "BAD-1", "--amount=-5.00")
    assert result.exit_code == 1, result.output
    assert "amount must be greater than zero" in result.output

    async with httpx.AsyncClient(base_url=api_service.base_url) as c:
        live = (await c.get(f"/contracts/{contract_id}")).json()
    assert live["outstanding"] == "1200000.00" and live["payments"] == []

    missing = await cli(api_service, "show", "no-such-contract")
    assert missing.exit_code == 1
    assert "no-such-contract" in missing.output


async def test_complete_and_events(api_service, tmp_path):
    contract_id, _ = await create_contract(api_service, tmp_path)
    done = await cli(api_service, "complete", contract_id, "order_review", "--by", "li.wei", "--note", "checked")
    assert done.exit_code == 0, done.output
    assert "milestone order_review: done" in done.output
    assert "contract: active" in done.output

    again = await cli(api_service, "complete", contract_id, "no_such_step", "--by", "li.wei")
    assert again.exit_code == 1
    assert "no_such_step" in again.output

    deadline = time.monotonic() + 20
    while True:
        log = await cli(api_service, "events", contract_id)
        assert log.exit_code == 0, log.output
        if "milestone.completed" in log.output:
            break
        assert time.monotonic() < deadline, log.output
        await asyncio.sleep(0.3)
    assert "contract.created" in log.output
    row = next(line for line in log.output.splitlines() if "milestone.completed" in line)
    assert "li.wei" in row


async def test_doctor_all_ok(api_service):
    result = await cli(api_service, "doctor", env=doctor_env(api_service))
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("│")]
    names = [r.split("│")[1].strip() for r in rows]
    assert names == ["API /healthz", "API /readyz", "Temporal reachable", "Search attributes", "Worker polling",
                     "Database"]
    assert all(r.split("│")[2].strip() == "ok" for r in rows), result.output
    assert "fail" not in result.output
    assert "All checks passed" in result.output


async def test_doctor_fails_on_a_wrong_api_port(api_service):
    runner = CliRunner()
    wrong = f"http://127.0.0.1:{free_port()}"
    result = await asyncio.to_thread(
        runner.invoke, app, ["--api", wrong, "doctor"], env={**ENV, **doctor_env(api_service)}
    )
    assert result.exit_code == 1, result.output
    rows = {r.split("│")[1].strip(): r.split("│")[2].strip()
            for r in result.output.splitlines() if r.startswith("│") and r.split("│")[1].strip()}
    assert rows["API /healthz"] == "fail"
    assert rows["API /readyz"] == "fail"
    assert rows["Temporal reachable"] == "ok"
    assert rows["Worker polling"] == "ok"
    assert rows["Database"] == "ok"
    assert "check(s) failed" in result.output


async def test_ids_are_checked_before_they_become_a_path(api_service, tmp_path):
    """An empty id, or one with a slash, named another resource (``ID/events`` printed a traceback,
    ``../../etc`` asked for /etc): refused with a usage error, nothing sent."""
    contract_id, _ = await create_contract(api_service, tmp_path)
    for bad in ("", f"{contract_id}/events", "../../etc", "..", "a b"):
        result = await cli(api_service, "show", bad)
        assert result.exit_code == 2, (bad, result.output)
        assert "is not a contract id" in result.output and "Traceback" not in result.output, result.output
    result = await cli(api_service, "complete", contract_id, "order_review/../x")
    assert result.exit_code == 2 and "is not a milestone key" in result.output, result.output


async def test_an_answer_that_is_not_json_is_a_clear_error(api_service, tmp_path):
    contract_id, _ = await create_contract(api_service, tmp_path)
    # A base URL one level off (the dashboard's /ui): the "contract" is an HTML page.
    result = await cli(api_service, "--api", f"{api_service.base_url}/ui", "show", contract_id)
    assert result.exit_code == 1, result.output
    assert "answered HTTP 200 without JSON (text/html" in result.output and "is --api right?" in result.output
    assert "Traceback" not in result.output


async def test_pay_and_complete_act_as_the_caller_by_default(api_service, tmp_path):
    """A finance person paying with the README's command was refused ("you cannot act as
    finance"): ``--by`` defaulted to the made-up actor "finance".  Now it defaults to the caller."""
    contract_id, _ = await create_contract(api_service, tmp_path)
    finance = (await login(api_service.base_url, "sun.li"))["Authorization"].removeprefix("Bearer ")
    reference = f"FIN-{uuid.uuid4().hex[:8]}"
    paid = await cli(api_service, "--api", api_service.url, "--token", finance,
                     "pay", contract_id, "--reference", reference, "--amount", "5.00")
    assert paid.exit_code == 0, paid.output
    assert f"Payment {reference}: applied" in paid.output
    owner = (await login(api_service.base_url, "li.wei"))["Authorization"].removeprefix("Bearer ")
    done = await cli(api_service, "--api", api_service.url, "--token", owner, "complete", contract_id, "order_review")
    assert done.exit_code == 0, done.output
    async with httpx.AsyncClient(base_url=api_service.base_url) as c:
        live = (await c.get(f"/contracts/{contract_id}")).json()
    assert [p["reference"] for p in live["payments"]] == [reference]
    review = next(m for m in live["milestones"] if m["key"] == "order_review")
    assert review["completed_by"] == "li.wei"
    deadline = time.monotonic() + 20
    while True:  # the event log (read model) names who acted
        log = await cli(api_service, "events", contract_id)
        if "payment." in log.output:
            break
        assert time.monotonic() < deadline, log.output
        await asyncio.sleep(0.3)
    row = next(line for line in log.output.splitlines() if "payment." in line)
    assert "sun.li" in row, row


async def test_report_csv_into_a_missing_folder_is_a_clear_error(api_service, tmp_path):
    result = await cli(api_service, "report", "--csv", str(tmp_path / "no" / "such" / "folder" / "q.csv"))
    assert result.exit_code == 1, result.output
    assert "cannot write the CSV to" in result.output and "Traceback" not in result.output


def test_report_cells_read_as_a_person_would_write_them():
    """Counts whole, money with separators and its decimals, changes never in scientific notation."""
    from core.cli import report_change, report_value

    assert report_value(35, "contracts") == "35" and report_value(35.0, "count") == "35"
    assert report_change(5, "contracts") == "+5" and report_change(-3.0, "count") == "-3"
    assert report_value("1234567.00", "CNY") == "1,234,567.00"
    assert report_change(1200000.0, "CNY") == "+1,200,000.00"
    assert report_change(-0.5, "days") == "-0.50" and report_value(12.345, "days") == "12.35"
    assert report_value(0.875, "ratio") == "87.5%" and report_change(-0.05, "ratio") == "-5.0 pp"
    assert report_value("shipping", "stage") == "shipping" and report_value(None, "days") == "-"


async def test_the_quarterly_report_reads_in_80_columns(api_service, tmp_path):
    # Eleven-figure amounts this quarter against nothing the last: three wide number columns.
    big = [{"key": "all", "due_after": "P1M", "amount": "12345678901.00"}]
    await create_contract(api_service, tmp_path, amount="12345678901.00", installments=big,
                          effective_date="2026-11-27", end_date="2027-11-27")
    result = await cli(api_service, "report", "--quarter", "2026-Q4", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, result.output
    # The metric's name keeps its words together (80 columns cut it to "contrac…" before).
    assert any("contracts signed" in line for line in lines), result.output
    # (other tests' contracts may add to the quarter's total)
    assert any("amount signed" in line and re.search(r"1\d,\d{3},\d{3},\d{3}\.\d\d", line) for line in lines), \
        result.output
