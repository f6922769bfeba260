"""``contracts``: the operator CLI.

Talks to the running service over HTTP (``--api`` / ``CONTRACTS_API``), and for ``doctor`` also
to Temporal and the database directly, to say what is wrong when the service is not healthy.

Money stays a decimal string end to end: files are read so that ``1200000.00`` is never a float,
and amounts are printed exactly as the API returns them.  API errors are RFC 9457 problem
details: their ``detail`` is printed in red and the command exits 1.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import httpx
import typer
import yaml
from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

DEFAULT_API = "http://127.0.0.1:8000"
# `contracts list`: every column from this terminal width; from MEDIUM_LIST all but the amount;
# below it the id, title, status, outstanding, overdue count and next due date (UTC date only
# in both narrower layouts).
WIDE_LIST, MEDIUM_LIST = 130, 100
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
DOCTOR_TIMEOUT = 5.0

app = typer.Typer(
    name="contracts",
    help="Operate the contract execution tracking service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


# ------------------------------------------------------------------ state and output
@dataclass
class State:
    api: str
    out: Console
    err: Console
    token: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def _state(ctx: typer.Context) -> State:
    return ctx.find_root().obj


@app.callback()
def _root(
    ctx: typer.Context,
    api: str = typer.Option(DEFAULT_API, "--api", envvar="CONTRACTS_API", help="Base URL of the contracts API."),
    token: str = typer.Option(None, "--token", envvar="CONTRACTS_TOKEN",
                              help="An API key (ck_...) or an access token from POST /auth/token."),
) -> None:
    # Consoles are made per invocation: they read the terminal width (COLUMNS) when created.
    ctx.obj = State(api=api.rstrip("/"), out=Console(highlight=False), err=Console(stderr=True, highlight=False),
                    token=token or None)


def _fail(st: State, message: str) -> NoReturn:
    st.err.print(Text(message, style="bold red"), soft_wrap=True)
    raise typer.Exit(1)


STATUS_STYLES = {
    "overdue": "bold red",
    "done": "green",
    "paid": "green",
    "completed": "green",
    "waived": "dim",
    "expired": "dim",
    "terminated": "red",
    "partial": "yellow",
    "in_progress": "yellow",
    "active": "cyan",
    "starting": "yellow",
}


def _status(value: str | None) -> Text:
    value = value or ""
    return Text(value, style=STATUS_STYLES.get(value, ""))


def _when(value: str | None, estimated: bool = False, *, day: bool = False) -> str:
    """An API date-time, shortened for a table (UTC kept explicit), or with ``day`` its UTC date
    (narrow tables); '~' marks an estimate."""
    if not value:
        return "-"
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if day:
        text = dt.astimezone(timezone.utc).strftime("%Y-%m-%d")
    elif dt.tzinfo is not None and dt.utcoffset() == timezone.utc.utcoffset(None):
        text = dt.strftime("%Y-%m-%d %H:%M:%S") + "Z"
    else:
        text = dt.isoformat(timespec="seconds")
    return ("~" + text) if estimated else text


def _day(value: str | None, estimated: bool = False) -> str:
    return _when(value, estimated, day=True)


def _compact_table(title: str, columns: dict[str, dict[str, Any]], left_out: Sequence[str] = ()) -> Table:
    """The tables of list, show and report: a rule under the header, one space between columns,
    and only the columns not ``left_out`` (those a narrow terminal has no room for)."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0))
    for name, options in columns.items():
        if name not in left_out:
            table.add_column(name, **options)
    return table


def _add_row(table: Table, cells: dict[str, Any], left_out: Sequence[str] = ()) -> None:
    """A row of a ``_compact_table``: its cells by column name, those left out skipped."""
    table.add_row(*(cell for name, cell in cells.items() if name not in left_out))


def _money(amount: str | None, currency: str | None = None) -> str:
    if amount is None:
        return "-"
    return f"{amount} {currency}" if currency else str(amount)


# ------------------------------------------------------------------ HTTP
def _problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, str) and detail:
            return detail
        if detail is not None:
            return json.dumps(detail, ensure_ascii=False)
        if body.get("title"):
            return str(body["title"])
    text = response.text.strip()
    return text or f"HTTP {response.status_code} {response.reason_phrase}"


def _request(st: State, method: str, path: str, **kwargs: Any) -> httpx.Response:
    try:
        with httpx.Client(base_url=st.api, timeout=TIMEOUT, headers=st.headers) as client:
            response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        _fail(st, f"cannot reach the API at {st.api}: {exc.__class__.__name__}: {exc}")
    if response.status_code >= 400:
        _fail(st, _problem_detail(response))
    return response


def _json(st: State, response: httpx.Response) -> Any:
    # parse_float=str: amounts never pass through a float, even if a server sent a number.
    try:
        return json.loads(response.text, parse_float=str)
    except ValueError:
        _fail(st, f"the API answered HTTP {response.status_code} without JSON "
                  f"({response.headers.get('content-type') or 'no content type'}): is --api right?")


_ID = re.compile(r"[A-Za-z0-9_.-]{1,60}")


def _segment(value: str, what: str) -> str:
    """A contract id or milestone key as one URL path segment.  Refused here, not sent: an empty
    id, or one with a slash, would name another resource (``ID/events``, ``../..``)."""
    if not _ID.fullmatch(value) or value in (".", ".."):
        raise typer.BadParameter(f"{value!r} is not a {what} (letters, digits, '_', '.' and '-')")
    return quote(value, safe="")


# ------------------------------------------------------------------ reading request files
class _MoneySafeLoader(yaml.SafeLoader):
    """YAML without implicit floats, ints or timestamps: ``1200000.00`` and ``2026-03-01`` stay strings."""


_MoneySafeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:float", "tag:yaml.org,2002:int", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _load_request(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return json.loads(text, parse_float=str, parse_int=str)
    if suffix in (".yaml", ".yml"):
        return yaml.load(text, Loader=_MoneySafeLoader)  # noqa: S506 - a SafeLoader subclass
    try:
        return json.loads(text, parse_float=str, parse_int=str)
    except ValueError:
        return yaml.load(text, Loader=_MoneySafeLoader)  # noqa: S506


# ------------------------------------------------------------------ commands
@app.command()
def create(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="Contract request, JSON or YAML (see examples/goods_sale.json)."),
) -> None:
    """Register a signed contract and start its workflow."""
    st = _state(ctx)
    try:
        body = _load_request(file)
    except OSError as exc:
        _fail(st, f"cannot read {file}: {exc.strerror or exc}")
    except (ValueError, yaml.YAMLError) as exc:
        _fail(st, f"{file} is not valid JSON or YAML: {exc}")
    if not isinstance(body, dict):
        _fail(st, f"{file} must hold one contract object")
    response = _request(st, "POST", "/contracts", json=body)
    created = _json(st, response)
    if response.status_code == 200:
        st.out.print(Text("Already registered (same external_id): nothing new was created.", style="yellow"))
    else:
        st.out.print(Text("Contract created.", style="green"))
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(no_wrap=True)
    table.add_row("id", created.get("id", ""))
    table.add_row("workflow id", created.get("workflow_id", ""))
    table.add_row("status", _status(created.get("status")))
    if created.get("external_id"):
        table.add_row("external id", created["external_id"])
    st.out.print(table)


@app.command("list")
def list_contracts(
    ctx: typer.Context,
    status: str | None = typer.Option(None, "--status", help="active, completed, terminated or expired."),
    owner: str | None = typer.Option(None, "--owner"),
    customer: str | None = typer.Option(None, "--customer", help="Customer name (substring) or CRM id."),
    overdue: bool | None = typer.Option(None, "--overdue/--not-overdue", help="Only contracts with (or without) overdue items."),
    limit: int = typer.Option(50, "--limit", min=1, max=500),
) -> None:
    """List contracts, newest first."""
    st = _state(ctx)
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    if owner:
        params["owner"] = owner
    if customer:
        params["customer"] = customer
    if overdue is not None:
        params["overdue"] = "true" if overdue else "false"
    page = _json(st, _request(st, "GET", "/contracts", params=params))
    items = page.get("items", [])
    # Narrower than a full row, the least needed columns go (Rich would squeeze the title and the
    # customer to nothing in 80 columns); the id is never shortened: scripts take it from here.
    width = st.out.width
    dropped = [] if width >= WIDE_LIST else ["amount"] if width >= MEDIUM_LIST else ["amount", "customer", "owner"]
    right = {"justify": "right", "no_wrap": True}
    table = _compact_table(f"Contracts ({len(items)} of {page.get('total', len(items))})", {
        "id": {"no_wrap": True, "min_width": max((len(c["id"]) for c in items), default=2)},
        "title": {"min_width": 12, "ratio": 3}, "customer": {"min_width": 10, "ratio": 2}, "owner": {"no_wrap": True},
        "status": {"no_wrap": True}, "amount": right, "outstanding": right, "overdue": right, "next due": {"no_wrap": True},
    }, dropped)
    for c in items:
        overdue_count = int(c.get("overdue_count") or 0)
        _add_row(table, {
            "id": c["id"],
            "title": c.get("title", ""),
            "customer": c.get("customer", ""),
            "owner": c.get("owner", ""),
            "status": _status(c.get("status")),
            "amount": _money(c.get("amount"), c.get("currency")),
            "outstanding": _money(c.get("outstanding"), c.get("currency") if "amount" in dropped else None),
            "overdue": Text(str(overdue_count), style="bold red" if overdue_count else ""),
            "next due": _when(c.get("next_due_at")) if not dropped else _day(c.get("next_due_at")),
        }, dropped)
    st.out.print(table)
    if dropped and items:
        st.out.print(Text(f"{', '.join(dropped)} left out in {width} columns, next due as its UTC date: widen the "
                          f"terminal to {WIDE_LIST} to see them, or `contracts show ID`", style="dim"))


@app.command()
def show(ctx: typer.Context, contract_id: str = typer.Argument(..., metavar="ID")) -> None:
    """One contract's live state: milestones, installments, money and the Temporal UI link."""
    st = _state(ctx)
    c = _json(st, _request(st, "GET", f"/contracts/{_segment(contract_id, 'contract id')}"))
    currency = c.get("currency", "")

    header = Table.grid(padding=(0, 2))
    header.add_column(style="bold")
    header.add_column()
    customer = c.get("customer") or {}
    header.add_row("id", c.get("id", ""))
    header.add_row("workflow id", c.get("workflow_id", ""))
    if c.get("external_id"):
        header.add_row("external id", c["external_id"])
    crm_id = f" ({customer['external_id']})" if customer.get("external_id") else ""
    header.add_row("customer", customer.get("name", "") + crm_id)
    header.add_row("owner", c.get("owner", ""))
    header.add_row("status", _status(c.get("status")))
    if c.get("close_reason"):
        header.add_row("closed", f"{_when(c.get('closed_at'))}: {c['close_reason']}")
    header.add_row("amount", _money(c.get("amount"), currency))
    term = f"{_when(c.get('effective_at'))} → {_when(c.get('end_at'))}"
    if c.get("end_at"):  # the end is the first instant after the term: say which day is its last
        try:
            last = datetime.fromisoformat(c["end_at"].replace("Z", "+00:00")) - timedelta(microseconds=1)
            term += f" (last day {last.date().isoformat()})"
        except ValueError:
            pass
    header.add_row("term", term)
    if c.get("playbook"):
        header.add_row("playbook", c["playbook"])
    overdue_count = int(c.get("overdue_count") or 0)
    header.add_row("overdue items", Text(str(overdue_count), style="bold red" if overdue_count else "green"))
    header.add_row("next due", _when(c.get("next_due_at")))
    header.add_row("version", str(c.get("version", "")))
    st.out.print(Panel(header, title=Text(c.get("title", ""), style="bold"), title_align="left", expand=False))

    # As in `contracts list`: narrower than a full row, dates lose their time and the least
    # needed columns go (Rich squeezed the milestone names to nothing in 80 columns).
    width = st.out.width
    when = _when if width >= WIDE_LIST else _day
    left_out = [] if width >= MEDIUM_LIST else ["department", "progress"]
    whole, right = {"no_wrap": True}, {"justify": "right", "no_wrap": True}
    milestones = _compact_table("Milestones", {
        "key": whole, "name": {"min_width": 12}, "owner": whole, "department": whole, "status": whole,
        "due at": whole, "progress": right,
    }, left_out)
    for m in c.get("milestones", []):
        _add_row(milestones, {
            "key": m["key"], "name": m.get("name", ""), "owner": m.get("owner", ""),
            "department": m.get("department", ""), "status": _status(m.get("status")),
            "due at": when(m.get("due_at"), bool(m.get("due_estimated"))), "progress": f"{m.get('progress', 0)}%",
        }, left_out)
    st.out.print(milestones)

    installments = _compact_table("Installments", {
        "key": whole, "due at": whole, "amount": right, "paid": right, "status": whole})
    for i in c.get("installments", []):
        installments.add_row(
            i["key"],
            when(i.get("due_at"), bool(i.get("due_estimated"))),
            _money(i.get("amount"), currency),
            _money(i.get("paid"), currency),
            _status(i.get("status")),
        )
    st.out.print(installments)
    if width < WIDE_LIST:
        st.out.print(Text("dates as their UTC day" + (f"; {', '.join(left_out)} left out" if left_out else "")
                          + f" in {width} columns: widen the terminal to {WIDE_LIST} for "
                          + ("them and " if left_out else "") + "the times", style="dim"))
    if any(x.get("due_estimated") for x in [*c.get("milestones", []), *c.get("installments", [])]):
        st.out.print(Text("~ estimated: waits on an open predecessor", style="dim"))

    money = Text()
    money.append("paid ", style="bold").append(_money(c.get("paid"), currency))
    money.append("   outstanding ", style="bold").append(
        _money(c.get("outstanding"), currency), style="bold" if c.get("outstanding") not in (None, "0", "0.00") else "green"
    )
    money.append("   credit ", style="bold").append(_money(c.get("credit"), currency))
    st.out.print(money, soft_wrap=True)
    if c.get("temporal_ui"):
        url = c["temporal_ui"]
        st.out.print(Text("Temporal UI: ", style="bold") + Text(url, style=f"link {url}"), soft_wrap=True)


@app.command()
def pay(
    ctx: typer.Context,
    contract_id: str = typer.Argument(..., metavar="ID"),
    reference: str = typer.Option(..., "--reference", help="Bank reference; a repeat is recognised and not applied twice."),
    amount: str = typer.Option(..., "--amount", help="Decimal string, e.g. 360000.00."),
    currency: str | None = typer.Option(None, "--currency", help="Defaults to the contract's currency."),
    received_at: str | None = typer.Option(None, "--received-at", help="ISO 8601 with a zone; defaults to now (UTC)."),
    by: str | None = typer.Option(None, "--by", help="Who records the payment (admins and machines only: the "
                                                   "person they act for); default: you."),
) -> None:
    """Record money received against a contract."""
    st = _state(ctx)
    if currency is None:
        currency = _json(st, _request(st, "GET", f"/contracts/{_segment(contract_id, 'contract id')}"))["currency"]
    if received_at is None:
        received_at = datetime.now(timezone.utc).isoformat()
    body = {"reference": reference, "amount": amount, "currency": currency, "received_at": received_at,
            **({"by": by} if by else {})}
    result = _json(st, _request(st, "POST", f"/contracts/{_segment(contract_id, 'contract id')}/payments", json=body))
    if result.get("applied"):
        st.out.print(Text(f"Payment {reference}: applied", style="green"), soft_wrap=True)
    else:
        st.out.print(
            Text(f"Payment {reference}: not applied (duplicate reference, already recorded)", style="yellow"),
            soft_wrap=True,
        )
    allocations = result.get("allocations") or {}
    if allocations:
        st.out.print("allocated: " + ", ".join(f"{k} {v}" for k, v in allocations.items()), soft_wrap=True)
    st.out.print(f"outstanding: {_money(result.get('outstanding'), currency)}", soft_wrap=True)
    st.out.print(f"credit: {_money(result.get('credit'), currency)}", soft_wrap=True)


@app.command()
def complete(
    ctx: typer.Context,
    contract_id: str = typer.Argument(..., metavar="ID"),
    key: str = typer.Argument(..., metavar="KEY", help="Milestone key, e.g. order_review."),
    by: str | None = typer.Option(None, "--by", help="Who completed it (admins and machines only: the person they "
                                                   "act for); default: you."),
    note: str = typer.Option("", "--note"),
) -> None:
    """Mark a milestone done."""
    st = _state(ctx)
    path = f"/contracts/{_segment(contract_id, 'contract id')}/milestones/{_segment(key, 'milestone key')}/complete"
    r = _json(st, _request(st, "POST", path, json={"note": note, **({"by": by} if by else {})}))
    line = Text(f"milestone {key}: ")
    line.append_text(_status(r.get("item_status")))
    line.append("   contract: ").append_text(_status(r.get("contract_status")))
    line.append(f"   version {r.get('version')}")
    st.out.print(line, soft_wrap=True)


@app.command()
def events(
    ctx: typer.Context,
    contract_id: str = typer.Argument(..., metavar="ID"),
    after_seq: int = typer.Option(0, "--after-seq", min=0),
    limit: int = typer.Option(500, "--limit", min=1, max=1000),
) -> None:
    """The contract's event log, oldest first."""
    st = _state(ctx)
    rows = _json(st, _request(st, "GET", f"/contracts/{_segment(contract_id, 'contract id')}/events",
                          params={"after_seq": after_seq, "limit": limit}))
    table = Table(title=f"Events of {contract_id}", title_justify="left")
    table.add_column("seq", justify="right", no_wrap=True)
    table.add_column("at", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("actor")
    for e in rows:
        kind = e.get("type", "")
        style = "red" if kind.endswith("overdue") else ("green" if kind.endswith(("completed", "paid")) else "")
        seq = e.get("seq")  # none for a reminder the outbox sent: it is no workflow event
        table.add_row("" if seq is None else str(seq), _when(e.get("at")), Text(kind, style=style), e.get("actor", ""))
    st.out.print(table)


# ------------------------------------------------------------------ import (CSV / Excel)
IMPORT_REQUIRED = ("title", "customer_name", "currency", "amount", "effective_date", "end_date", "owner")
IMPORT_OPTIONAL = ("external_id", "customer_external_id", "playbook", "erp_order_no", "installments", "milestones")
IMPORT_RETRIES = 3


@dataclass
class ImportRow:
    row: int  # the row number as a spreadsheet shows it (the header is row 1)
    external_id: str
    title: str
    status: str = "pending"  # created, exists, invalid, failed
    contract_id: str = ""
    reason: str = ""
    body: dict[str, Any] | None = None


def cell_text(value: Any) -> str:
    """A spreadsheet cell as text: dates as ISO dates, numbers without float noise."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == datetime.min.time() and value.tzinfo is None else value.isoformat()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        # Plain notation (5e-05 -> 0.00005): the API takes plain decimal strings only.
        return format(Decimal(repr(value)), "f") if not value.is_integer() else str(int(value))
    return str(value).strip()


def _read_table(path: Path, sheet: str | None) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (row number, cells) of a CSV (UTF-8, BOM allowed) or Excel (.xlsx) file."""
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xlsm"):
        import openpyxl

        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            ws = book[sheet] if sheet else book.worksheets[0]
            rows = [[cell_text(v) for v in r] for r in ws.iter_rows(values_only=True)]
        finally:
            book.close()
    else:
        import csv

        with path.open(encoding="utf-8-sig", newline="") as fh:
            rows = [[c.strip() for c in r] for r in csv.reader(fh)]
    if not rows:
        return [], []
    header = [h.strip().lower() for h in rows[0]]
    body = [(n, r) for n, r in enumerate(rows[1:], start=2) if any(c for c in r)]
    return header, body


def _row_request(cells: dict[str, str]) -> dict[str, Any]:
    """The POST /contracts body for one row; ValueError with the reason if the row is not usable."""
    from decimal import Decimal, InvalidOperation

    missing = [c for c in IMPORT_REQUIRED if not cells.get(c)]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    try:
        if not Decimal(cells["amount"]).is_finite():
            raise InvalidOperation
    except InvalidOperation:
        raise ValueError(f"amount {cells['amount']!r} is not a decimal number") from None
    for col in ("effective_date", "end_date"):
        text = cells[col]
        try:
            datetime.fromisoformat(text.replace("Z", "+00:00")) if "T" in text else datetime.strptime(text, "%Y-%m-%d")
        except ValueError:
            raise ValueError(f"{col} {text!r} is not a date (YYYY-MM-DD) or an ISO date-time") from None
    body: dict[str, Any] = {
        "title": cells["title"],
        "customer": {"name": cells["customer_name"]},
        "currency": cells["currency"].upper(),
        "amount": cells["amount"],
        "effective_date": cells["effective_date"],
        "end_date": cells["end_date"],
        "owner": cells["owner"],
    }
    if cells.get("customer_external_id"):
        body["customer"]["external_id"] = cells["customer_external_id"]
    for col in ("external_id", "playbook", "erp_order_no"):
        if cells.get(col):
            body[col] = cells[col]
    for col in ("installments", "milestones"):
        if cells.get(col):
            try:
                value = json.loads(cells[col], parse_float=str)
            except ValueError as exc:
                raise ValueError(f"{col} is not valid JSON: {exc}") from None
            if not isinstance(value, list):
                raise ValueError(f"{col} must be a JSON array")
            body[col] = value
    if "playbook" not in body and "milestones" not in body:
        raise ValueError("give a playbook or milestones")
    return body


async def _post_rows(st: State, rows: list[ImportRow], concurrency: int, progress: Any, task: Any) -> None:
    import hashlib

    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=st.api, timeout=TIMEOUT, limits=limits, headers=st.headers) as client:

        async def one(r: ImportRow) -> None:
            canonical = json.dumps(r.body, sort_keys=True, ensure_ascii=False).encode()
            headers = {"Idempotency-Key": "import-" + hashlib.sha256(canonical).hexdigest()[:40]}
            async with sem:
                for attempt in range(1, IMPORT_RETRIES + 1):
                    try:
                        resp = await client.post("/contracts", json=r.body, headers=headers)
                    except httpx.HTTPError as exc:
                        if attempt == IMPORT_RETRIES:
                            r.status, r.reason = "failed", f"{exc.__class__.__name__}: {exc}"
                            break
                        await asyncio.sleep(0.5 * 2 ** attempt)
                        continue
                    if resp.status_code in (429, 503) and attempt < IMPORT_RETRIES:
                        await asyncio.sleep(0.5 * 2 ** attempt)
                        continue
                    if resp.status_code in (200, 201):
                        data = resp.json()
                        r.contract_id = data.get("id", "")
                        # A replayed answer on the first attempt: an earlier import created it.
                        replayed = resp.headers.get("idempotent-replayed", "").lower() == "true" and attempt == 1
                        r.status = "created" if resp.status_code == 201 and not replayed else "exists"
                        if r.status == "exists":
                            r.reason = "already registered (same external_id)"
                    else:
                        r.status = "invalid" if resp.status_code in (400, 409, 422) else "failed"
                        r.reason = f"{resp.status_code}: {_problem_detail(resp)}"
                    break
            progress.advance(task)

        await asyncio.gather(*(one(r) for r in rows))


@app.command("import")
def import_contracts(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="CSV (UTF-8) or Excel (.xlsx) file, one contract per row, a header row first."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, max=64, help="Requests in flight at once."),
    report: Path | None = typer.Option(None, "--report", help="Write every row's outcome to this CSV file."),
    sheet: str | None = typer.Option(None, "--sheet", help="Excel: the worksheet (default: the first)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the rows, send nothing."),
) -> None:
    """Bulk-register contracts from CSV or Excel: each good row through POST /contracts (its workflow
    starts), bad rows reported with their row number and reason.  Exit 1 if any row failed.

    Columns: title, customer_name, currency, amount, effective_date, end_date, owner (required);
    external_id (makes a re-import safe), customer_external_id, playbook, erp_order_no, and
    installments / milestones as JSON arrays (optional)."""
    import csv

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    st = _state(ctx)
    try:
        header, table = _read_table(file, sheet)
    except OSError as exc:
        _fail(st, f"cannot read {file}: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - a broken spreadsheet: say so
        _fail(st, f"cannot read {file}: {exc.__class__.__name__}: {exc}")
    missing = [c for c in IMPORT_REQUIRED if c not in header]
    if missing:
        _fail(st, f"{file}: the header lacks column(s) {', '.join(missing)} (has: {', '.join(header) or 'nothing'})")
    unknown = [h for h in header if h and h not in IMPORT_REQUIRED + IMPORT_OPTIONAL]
    if unknown:
        st.err.print(Text(f"ignoring unknown column(s): {', '.join(unknown)}", style="yellow"), soft_wrap=True)

    rows: list[ImportRow] = []
    seen: dict[str, int] = {}
    for number, cells in table:
        values = {h: (cells[i] if i < len(cells) else "") for i, h in enumerate(header) if h}
        r = ImportRow(row=number, external_id=values.get("external_id", ""), title=values.get("title", ""))
        try:
            r.body = _row_request(values)
            if r.external_id and r.external_id in seen:
                raise ValueError(f"external_id {r.external_id!r} repeats row {seen[r.external_id]}")
            if r.external_id:
                seen[r.external_id] = number
        except ValueError as exc:
            r.status, r.reason, r.body = "invalid", str(exc), None
        rows.append(r)
    good = [r for r in rows if r.body is not None]

    if not dry_run and good:
        started = time.monotonic()
        with Progress(TextColumn("[bold]Importing"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                      TimeElapsedColumn(), console=st.out) as progress:
            task = progress.add_task("import", total=len(good))
            asyncio.run(_post_rows(st, good, concurrency, progress, task))
        elapsed = time.monotonic() - started
    else:
        elapsed = 0.0
        for r in good:
            r.status = "valid"

    counts = {k: sum(1 for r in rows if r.status == k) for k in ("created", "exists", "valid", "invalid", "failed")}
    bad = [r for r in rows if r.status in ("invalid", "failed")]
    if bad:
        table_out = Table(title=f"Rows not imported ({len(bad)})", title_justify="left")
        table_out.add_column("row", justify="right", no_wrap=True)
        table_out.add_column("external id", no_wrap=True)
        table_out.add_column("title")
        table_out.add_column("reason")
        for r in sorted(bad, key=lambda r: r.row)[:200]:
            table_out.add_row(str(r.row), r.external_id or "-", r.title or "-", Text(r.reason, style="red"))
        st.out.print(table_out)
        if len(bad) > 200:
            st.out.print(f"... and {len(bad) - 200} more" + (f" (all in {report})" if report else " (use --report FILE)"))
    summary = Text()
    summary.append(f"{len(rows)} rows: ")
    summary.append(f"{counts['created']} created", style="green")
    if counts["exists"]:
        summary.append(f", {counts['exists']} already registered", style="yellow")
    if counts["valid"]:
        summary.append(f", {counts['valid']} valid (dry run, nothing sent)", style="cyan")
    summary.append(f", {counts['invalid']} invalid", style="red" if counts["invalid"] else "")
    summary.append(f", {counts['failed']} failed", style="red" if counts["failed"] else "")
    if elapsed:
        summary.append(f" in {elapsed:.1f} s ({len(good) / elapsed:.1f} rows/s)")
    st.out.print(summary, soft_wrap=True)
    if report:
        with report.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["row", "status", "contract_id", "external_id", "title", "reason"])
            for r in sorted(rows, key=lambda r: r.row):
                writer.writerow([r.row, r.status, r.contract_id, r.external_id, r.title, r.reason])
        st.out.print(f"report: {report}", soft_wrap=True)
    if bad:
        raise typer.Exit(1)


# ------------------------------------------------------------------ report (quarterly review)
@app.command()
def report(
    ctx: typer.Context,
    quarter: str | None = typer.Option(None, "--quarter", help="e.g. 2026-Q3; default: the last complete quarter."),
    customer: str | None = typer.Option(None, "--customer"),
    owner: str | None = typer.Option(None, "--owner"),
    department: str | None = typer.Option(None, "--department"),
    playbook: str | None = typer.Option(None, "--playbook"),
    csv_out: Path | None = typer.Option(None, "--csv", help="Also save the report as CSV to this file."),
) -> None:
    """The quarterly review: each metric for the quarter and the one before, with the change."""
    st = _state(ctx)
    params = {k: v for k, v in {"quarter": quarter, "customer": customer, "owner": owner, "department": department,
                                "playbook": playbook}.items() if v}
    # Plain JSON numbers here (days, rates, counts); amounts come as decimal strings anyway.
    data = _request(st, "GET", "/analytics/reports/quarterly", params=params).json()
    cur, prev = data["quarter"], data["previous_quarter"]
    # Compact, with room for the metric's name: in 80 columns Rich cut it to 8 characters a line.
    right = {"justify": "right", "no_wrap": True}
    table = _compact_table(f"Quarterly review {cur} (vs {prev})", {
        "section": {"style": "dim", "no_wrap": True}, "metric": {"min_width": 18}, cur: right, prev: right,
        "change": right})
    last = None
    for r in data["rows"]:
        unit = r.get("unit")
        change = r.get("change")
        style = "" if change in (None, 0) else ("green" if change > 0 else "red")
        table.add_row(
            r["section"] if r["section"] != last else "",
            r["metric"],
            report_value(r.get("current"), unit),
            report_value(r.get("previous"), unit),
            Text(report_change(change, unit), style=style),
        )
        last = r["section"]
    st.out.print(table)
    if csv_out:
        response = _request(st, "GET", "/analytics/reports/quarterly.csv", params=params)
        try:
            csv_out.write_bytes(response.content)
        except OSError as exc:
            _fail(st, f"cannot write the CSV to {csv_out}: {exc.strerror or exc}")
        st.out.print(f"CSV: {csv_out}", soft_wrap=True)


_COUNT_UNITS = ("contracts", "count")


def report_value(value: Any, unit: str | None) -> str:
    """A report cell: counts whole, rates in %, money with its decimals and thousands separators."""
    if value is None:
        return "-"
    if unit == "ratio" and isinstance(value, (int, float)):
        return f"{value * 100:.1f}%"
    if unit in _COUNT_UNITS and isinstance(value, (int, float)):
        return f"{round(value):,}"
    if isinstance(value, (int, float)):
        return f"{value:,.2f}"
    if isinstance(value, str) and unit not in ("stage", "user"):
        try:
            return f"{Decimal(value):,}"  # an amount: "1234567.00" -> "1,234,567.00"
        except ArithmeticError:
            return value
    return str(value)


def report_change(value: Any, unit: str | None) -> str:
    """The change, signed; never in scientific notation (a money delta of 1.2 million is +1,200,000.00)."""
    if value is None:
        return ""
    if unit == "ratio":
        return f"{value * 100:+.1f} pp"
    if unit in _COUNT_UNITS:
        return f"{round(value):+,}"
    return f"{value:+,.2f}"


# ------------------------------------------------------------------ doctor
@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _check_http(api: str, path: str) -> Check:
    name = f"API {path}"
    try:
        r = httpx.get(f"{api}{path}", timeout=DOCTOR_TIMEOUT)
    except httpx.HTTPError as exc:
        return Check(name, False, f"{api}: {exc.__class__.__name__}: {exc}")
    if r.status_code == 200:
        return Check(name, True, f"{api}{path}: {r.status_code}")
    return Check(name, False, f"{r.status_code}: {_problem_detail(r)}")


async def _temporal_checks(settings: Any) -> list[Check]:
    from temporalio.api.enums.v1 import IndexedValueType, TaskQueueKind, TaskQueueType
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    from core.temporal import connect
    from workflows import search_attributes as sa

    target = f"{settings.temporal_address} (namespace {settings.temporal_namespace})"
    try:
        client = await asyncio.wait_for(connect(settings), timeout=DOCTOR_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        detail = f"{target}: {exc.__class__.__name__}: {exc}" if str(exc) else f"{target}: {exc.__class__.__name__}"
        return [
            Check("Temporal reachable", False, detail),
            Check("Search attributes", False, "skipped: Temporal not reachable"),
            Check("Worker polling", False, "skipped: Temporal not reachable"),
        ]
    checks = [Check("Temporal reachable", True, target)]

    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=settings.temporal_namespace), timeout=_td(DOCTOR_TIMEOUT)
        )
        registered = dict(listed.custom_attributes)
        problems = []
        keys: list[Any] = list(sa.ALL)  # search attribute keys of several value types
        for key in keys:
            want = "INDEXED_VALUE_TYPE_" + key.indexed_value_type.name
            have = registered.get(key.name)
            if have is None:
                problems.append(f"{key.name} missing")
            elif IndexedValueType.Name(have) != want:
                problems.append(f"{key.name} is {IndexedValueType.Name(have).removeprefix('INDEXED_VALUE_TYPE_')}, "
                                f"want {key.indexed_value_type.name}")
        if problems:
            checks.append(Check("Search attributes", False, "; ".join(problems)))
        else:
            checks.append(Check("Search attributes", True, f"{len(keys)} registered: " + ", ".join(k.name for k in keys)))
    except Exception as exc:  # noqa: BLE001
        checks.append(Check("Search attributes", False, f"{exc.__class__.__name__}: {exc}"))

    try:
        resp = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=settings.temporal_namespace,
                task_queue=TaskQueue(name=settings.task_queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            ),
            timeout=_td(DOCTOR_TIMEOUT),
        )
        pollers = list(resp.pollers)
        if pollers:
            who = ", ".join(sorted({p.identity for p in pollers if p.identity}))
            checks.append(Check("Worker polling", True,
                                f"task queue {settings.task_queue!r}: {len(pollers)} poller(s) {who}".rstrip()))
        else:
            checks.append(Check("Worker polling", False, f"no worker is polling task queue {settings.task_queue!r}"))
    except Exception as exc:  # noqa: BLE001
        checks.append(Check("Worker polling", False, f"{exc.__class__.__name__}: {exc}"))
    return checks


def _td(seconds: float):
    from datetime import timedelta

    return timedelta(seconds=seconds)


def _check_database(url: str) -> Check:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from models.db import make_engine

    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001
        return Check("Database", False, f"bad DATABASE_URL: {exc}")
    shown = parsed.render_as_string(hide_password=True)
    database = parsed.database
    sqlite_file = parsed.get_backend_name() == "sqlite" and database and database != ":memory:"
    # Connecting would silently create an empty file: a missing file is the finding.
    if sqlite_file and database and not Path(database).exists():
        return Check("Database", False, f"{shown}: no such SQLite file")
    engine = None
    try:
        engine = make_engine(url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return Check("Database", True, shown)
    except Exception as exc:  # noqa: BLE001
        return Check("Database", False, f"{shown}: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    finally:
        if engine is not None:
            engine.dispose()


@app.command()
def doctor(
    ctx: typer.Context,
    temporal_address: str = typer.Option(None, "--temporal-address", envvar="TEMPORAL_ADDRESS",
                                         help="Temporal's gRPC address, as the worker has it [default: localhost:7233]."),
    task_queue: str = typer.Option(None, "--task-queue", envvar="TASK_QUEUE",
                                   help="The task queue a worker must poll [default: contracts]."),
    database_url: str = typer.Option(None, "--database-url", envvar="DATABASE_URL",
                                     help="The contract repository, as the API has it [default: ./data/contracts.db]."),
) -> None:
    """Check the API, Temporal (search attributes, a polling worker) and the database.

    The API is reached at --api; Temporal and the database are checked from here, at the
    addresses above (a stack started with other ports or another data directory: the line
    `run.py dev` prints)."""
    from core.settings import Settings

    st = _state(ctx)
    given = {"temporal_address": temporal_address, "task_queue": task_queue, "database_url": database_url}
    settings = Settings.model_validate({k: v for k, v in given.items() if v is not None})
    checks = [_check_http(st.api, "/healthz"), _check_http(st.api, "/readyz")]
    checks += asyncio.run(_temporal_checks(settings))
    checks.append(_check_database(settings.database_url))

    table = Table(title="contracts doctor", title_justify="left")
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail")
    for c in checks:
        table.add_row(c.name, Text("ok", style="bold green") if c.ok else Text("fail", style="bold red"), c.detail)
    st.out.print(table)
    failed = [c.name for c in checks if not c.ok]
    if failed:
        _fail(st, f"{len(failed)} check(s) failed: {', '.join(failed)}")
    st.out.print(Text("All checks passed.", style="green"))


# ------------------------------------------------------------------ entry point
def main() -> None:
    """Console-script entry: run the app, then leave through hard_exit (see core.temporal)."""
    from core.temporal import hard_exit

    code = 0
    try:
        app()
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    hard_exit(code)


if __name__ == "__main__":
    main()
