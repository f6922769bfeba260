"""``contracts import`` and ``contracts report`` against the real service (dev server, worker,
uvicorn, SQLite): good rows become contracts with running workflows, bad rows are reported with
their row number and reason, the rest of the file is imported all the same."""

from __future__ import annotations

import csv
import json
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_cli import cli

pytestmark = pytest.mark.devserver

HEADER = ["external_id", "title", "customer_name", "customer_external_id", "currency", "amount", "effective_date",
          "end_date", "owner", "playbook", "installments"]


def good_row(token: str, k: int) -> dict[str, str]:
    start = date.today() - timedelta(days=k % 20)
    return {
        "external_id": f"{token}-{k:03d}",
        "title": f"导入合同 Imported contract {k}",
        "customer_name": f"{token} 客户 Customer {k % 7}",
        "customer_external_id": f"{token}-C{k % 7}",
        "currency": "CNY",
        "amount": f"{10000 + 250 * k}.00",
        "effective_date": start.isoformat(),
        "end_date": (start + timedelta(days=365)).isoformat(),
        "owner": "li.wei",
        "playbook": "goods_sale",
        "installments": "",
    }


# Row index (0-based among the data rows) -> how to spoil it, and a word the reason must contain.
BAD: dict[int, tuple[dict[str, str | None], str]] = {
    3: ({"title": ""}, "missing title"),
    9: ({"amount": "12,5O0"}, "not a decimal"),
    14: ({"effective_date": "31/02/2026"}, "effective_date"),
    20: ({"currency": "RMB"}, "currency"),  # not ISO 4217 (CNY): refused by the API (422)
    27: ({"playbook": "no_such_playbook"}, "playbook"),  # refused by the API
    33: ({"amount": "-5.00"}, "greater than zero"),  # refused by the API
    41: ({"installments": "[{\"key\": \"a\""}, "not valid JSON"),
    48: ({"external_id": None}, "repeats row"),  # the same external_id as an earlier row of the file
    55: ({"installments": json.dumps([{"key": "all", "due_after": "P10D", "amount": "1.00"}])}, ""),  # plan ≠ amount
}


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=HEADER)
        w.writeheader()
        w.writerows(rows)


async def test_import_a_csv_with_bad_rows(api_service, tmp_path):
    token = f"IMP{uuid.uuid4().hex[:8]}"
    rows = []
    for k in range(60):
        row = good_row(token, k)
        if k in BAD:
            change, _ = BAD[k]
            row.update({c: (v if v is not None else f"{token}-{k - 1:03d}") for c, v in change.items()})
        rows.append(row)
    path, report = tmp_path / "contracts.csv", tmp_path / "report.csv"
    write_csv(path, rows)

    # One of the rows was registered before: a re-import finds it, it is not an error.
    async with httpx.AsyncClient(base_url=api_service.base_url, timeout=30) as c:
        first = rows[0]
        r = await c.post("/contracts", json={
            "external_id": first["external_id"], "title": first["title"],
            "customer": {"name": first["customer_name"], "external_id": first["customer_external_id"]},
            "currency": "CNY", "amount": first["amount"], "effective_date": first["effective_date"],
            "end_date": first["end_date"], "owner": "li.wei", "playbook": "goods_sale"})
        assert r.status_code == 201, r.text
        existing = r.json()["id"]

    result = await cli(api_service, "import", str(path), "--concurrency", "6", "--report", str(report))
    out = result.output
    assert result.exit_code == 1, out  # some rows failed; the good ones were imported anyway
    assert "Importing" in out and "━" in out  # the progress bar
    bad_rows = sorted(k + 2 for k in BAD)  # row numbers as a spreadsheet shows them (header = row 1)
    n_bad = len(BAD)
    assert f"60 rows: {60 - n_bad - 1} created, 1 already registered" in out, out
    assert f"{n_bad} invalid" in out or f"{n_bad} invalid, 0 failed" in out, out
    assert f"Rows not imported ({n_bad})" in out

    with report.open(encoding="utf-8") as fh:
        outcomes = {int(r["row"]): r for r in csv.DictReader(fh)}
    assert sorted(outcomes) == list(range(2, 62))
    assert sorted(n for n, r in outcomes.items() if r["status"] == "invalid") == bad_rows
    for k, (_, word) in BAD.items():
        reason = outcomes[k + 2]["reason"]
        assert reason and word.lower() in reason.lower(), (k + 2, reason)
        assert str(k + 2) in out  # the row number is printed
    assert outcomes[2]["status"] == "exists" and outcomes[2]["contract_id"] == existing

    # Every good row is a contract with a running workflow.
    created = {r["contract_id"] for r in outcomes.values() if r["status"] == "created"}
    assert len(created) == 60 - n_bad - 1
    async with httpx.AsyncClient(base_url=api_service.base_url, timeout=30) as c:
        page = (await c.get("/contracts", params={"customer": token, "limit": 500})).json()
        assert page["total"] == 60 - n_bad
        assert {x["id"] for x in page["items"]} == created | {existing}
        assert all(x["status"] == "active" for x in page["items"])
        live = await c.get(f"/contracts/{sorted(created)[0]}")  # answered by the workflow itself
        assert live.status_code == 200 and len(live.json()["milestones"]) == 6

    # The same file again: nothing new, every good row is found by its external_id.
    again = await cli(api_service, "import", str(path))
    assert f"0 created, {60 - n_bad} already registered" in again.output, again.output


async def test_import_excel_and_dry_run(api_service, tmp_path):
    import openpyxl

    token = f"XLS{uuid.uuid4().hex[:8]}"
    book = openpyxl.Workbook()
    ws = book.active
    ws.title = "合同"
    ws.append(HEADER)
    for k in range(4):
        row = good_row(token, k)
        values: list[Any] = [row[h] for h in HEADER]
        values[HEADER.index("amount")] = 10000 + k  # a number cell, as Excel keeps it
        values[HEADER.index("effective_date")] = date.today()  # a date cell
        values[HEADER.index("end_date")] = date.today() + timedelta(days=200)
        ws.append(values)
    ws.append([f"{token}-bad", "", "x", "", "CNY", "1.00", "2026-01-01", "2026-12-31", "li.wei", "goods_sale", ""])
    path = tmp_path / "contracts.xlsx"
    book.save(path)

    dry = await cli(api_service, "import", str(path), "--dry-run")
    assert dry.exit_code == 1 and "4 valid (dry run, nothing sent)" in dry.output and "missing title" in dry.output
    result = await cli(api_service, "import", str(path))
    assert "5 rows: 4 created" in result.output, result.output
    assert "6" in result.output and "missing title" in result.output  # row 6 of the sheet
    async with httpx.AsyncClient(base_url=api_service.base_url) as c:
        page = (await c.get("/contracts", params={"customer": token})).json()
        assert page["total"] == 4
        assert sorted(x["amount"] for x in page["items"]) == ["10000.00", "10001.00", "10002.00", "10003.00"]

    missing = tmp_path / "bad.csv"
    missing.write_text("title,amount\nx,1\n", encoding="utf-8")
    result = await cli(api_service, "import", str(missing))
    assert result.exit_code == 1 and "lacks column(s)" in result.output


async def test_report_command(api_service, tmp_path):
    out = tmp_path / "q.csv"
    result = await cli(api_service, "report", "--quarter", "2026-Q3", "--csv", str(out))
    assert result.exit_code == 0, result.output
    assert "Quarterly review 2026-Q3 (vs 2026-Q2)" in result.output
    assert "contracts signed" in result.output and "on-time rate" in result.output
    text = out.read_text(encoding="utf-8-sig")
    assert text.startswith("section,metric,unit,2026-Q3,2026-Q2,change")
    bad = await cli(api_service, "report", "--quarter", "2026-Q9")
    assert bad.exit_code == 1 and "quarter" in bad.output.lower()


def test_spreadsheet_numbers_become_plain_decimal_strings():
    """The API takes plain decimal strings only: a float cell never reaches it as '5e-05'."""
    from core.cli import cell_text

    assert [cell_text(v) for v in (1200000.0, 360000.5, 5e-05, 12)] == ["1200000", "360000.5", "0.00005", "12"]
