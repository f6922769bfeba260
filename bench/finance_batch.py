"""Benchmark: a finance bank-statement batch posted twice through the real stack.

    .venv/bin/python -m bench.finance_batch --lines 1000
    .venv/bin/python -m bench.finance_batch --lines 1000 --database-url postgresql+psycopg2://postgres@127.0.0.1/bench

Starts its own Temporal dev server, a worker and the API (uvicorn) in this process, creates the
contracts, builds a statement with repeated lines (same bank line twice), unmatched lines and a
few rejected ones, posts it twice to ``POST /integrations/finance/payments``, checks that every
payment was applied exactly once (each contract's paid total is the sum of its distinct lines,
the second post applies nothing) and prints lines per second for both posts.  Results go to
bench/results/finance_batch.json.  Exit status 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import socket
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "finance_batch.json"
CONTRACT_AMOUNT = Decimal("1000000.00")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SmtpSink:
    """An SMTP server on a free port that accepts every message and keeps only a count."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.port = free_port()
        self.received = 0
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler hook
        self.received += 1
        return "250 OK"


def build_statement(contracts: list[dict], n_lines: int, seed: int) -> tuple[list[dict], list[str], dict]:
    """Lines, the expected first-post outcome of each, and the expected paid total per contract.

    Mix: ~75 % new lines (matched by contract_id, contract number or free-text reference), ~12 %
    repeats of an earlier line (same bank line id), ~10 % unmatched, ~2 % rejected (wrong currency,
    or an earlier line id with another amount).
    """
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:8]
    at = datetime(2026, 11, 27, 10, 0, tzinfo=timezone(timedelta(hours=8)))
    lines: list[dict] = []
    expected: list[str] = []
    paid: dict[str, Decimal] = defaultdict(Decimal)
    distinct: list[dict] = []
    while len(lines) < n_lines:
        k, roll = len(lines), rng.random()
        base = {"line_id": f"{tag}-{k}", "amount": "10.00", "currency": "CNY", "received_at": at.isoformat()}
        if roll < 0.12 and distinct:
            lines.append(dict(rng.choice(distinct)))
            expected.append("duplicate")
        elif roll < 0.17:
            lines.append({**base, "contract_number": f"UNKNOWN-{k}"})
            expected.append("unmatched")
        elif roll < 0.22:
            lines.append({**base, "reference": f"往来款 转账 第{k}笔", "payer": "Unknown Ltd"})
            expected.append("unmatched")
        elif roll < 0.23:
            lines.append({**base, "currency": "USD", "contract_id": rng.choice(contracts)["id"]})
            expected.append("rejected")
        elif roll < 0.24 and distinct:
            line = rng.choice(distinct)
            lines.append({**line, "amount": str(Decimal(line["amount"]) + 1)})
            expected.append("rejected")
        else:
            target = rng.choice(contracts)
            amount = Decimal(rng.randint(100, 50000)) / 100
            line = {**base, "amount": str(amount), "received_at": (at + timedelta(minutes=k)).isoformat(),
                    "payer": target["customer"]}
            how = k % 3
            if how == 0:
                line["contract_id"] = target["id"]
            elif how == 1:
                line["contract_number"] = target["external_id"]
            else:
                line["reference"] = f"货款 {target['external_id']} 发票INV-{k}"
            lines.append(line)
            expected.append("applied")
            distinct.append(line)
            paid[target["id"]] += amount
    return lines, expected, paid


async def create_contracts(c: httpx.AsyncClient, n: int) -> list[dict]:
    now = datetime.now(timezone.utc)
    tag = uuid.uuid4().hex[:6].upper()
    gate = asyncio.Semaphore(16)

    async def one(k: int) -> dict:
        body: dict[str, Any] = {
            "external_id": f"HT-{tag}-{k:04d}",
            "title": f"Supply of spindles, lot {k}",
            "customer": {"name": f"Customer {k}", "external_id": f"CRM-{tag}-{k}"},
            "currency": "CNY",
            "amount": str(CONTRACT_AMOUNT),
            "effective_date": now.isoformat(),
            "end_date": (now + timedelta(days=365)).isoformat(),
            "owner": "li.wei",
            "playbook": "goods_sale",
        }
        async with gate:
            r = await c.post("/contracts", json=body)
        r.raise_for_status()
        return {**r.json(), "external_id": body["external_id"], "customer": body["customer"]["name"]}

    return list(await asyncio.gather(*(one(k) for k in range(n))))


async def run(args: argparse.Namespace) -> dict:
    import uvicorn
    from temporalio.testing import WorkflowEnvironment

    from api.main import create_app
    from core.migrate import upgrade
    from core.settings import Settings
    from core.temporal import find_binary
    from models.db import make_engine, make_session_factory
    from worker import build_worker
    from workflows import search_attributes as sa

    tmp = tempfile.TemporaryDirectory(prefix="bench-finance-")
    database_url = args.database_url or f"sqlite:///{Path(tmp.name) / 'contracts.db'}"
    print(f"· database {database_url.split('@')[-1]}", flush=True)
    upgrade(database_url)
    print("· Temporal dev server ...", flush=True)
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_binary("temporal"),
        search_attributes=sa.ALL,
        dev_server_extra_args=[
            "--sqlite-pragma", "journal_mode=wal",
            "--sqlite-pragma", "synchronous=normal",
            "--log-level", "error",
        ],
    )
    # New contracts send catch-up reminders; a local SMTP sink accepts and drops them.
    smtp = SmtpSink()
    smtp.controller.start()
    settings = Settings(
        database_url=database_url,
        temporal_address=env.client.service_client.config.target_host,
        task_queue=f"bench-{uuid.uuid4().hex[:8]}",
        seed_demo_org=True,
        smtp_port=smtp.port,
        admin_api_key=ADMIN_KEY,
        jwt_secret="bench-jwt-secret-" + "b" * 32,
    )
    engine = make_engine(database_url)
    worker = build_worker(env.client, settings, make_session_factory(engine))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    try:
        async with worker:
            serving = asyncio.create_task(server.serve())
            while not server.started:
                if serving.done():
                    serving.result()
                await asyncio.sleep(0.05)
            try:
                # The finance feed's own credentials would be an integration:finance key; the
                # bootstrap admin key (HTTP Basic in the URL) also creates the contracts.
                return await measure(f"http://apikey:{ADMIN_KEY}@127.0.0.1:{port}", args)
            finally:
                server.should_exit = True
                await serving
    finally:
        engine.dispose()
        smtp.controller.stop()
        await env.shutdown()
        tmp.cleanup()


ADMIN_KEY = "bench-admin-key-" + "0" * 24


async def measure(base_url: str, args: argparse.Namespace) -> dict:
    load_before = round(os.getloadavg()[0], 2)  # the numbers mean little on a busy machine
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as c:
        started = time.perf_counter()
        contracts = await create_contracts(c, args.contracts)
        print(f"· {len(contracts)} contracts created in {time.perf_counter() - started:.1f}s", flush=True)
        lines, expected, paid = build_statement(contracts, args.lines, args.seed)
        body = {"statement_id": f"BENCH-{uuid.uuid4().hex[:6]}", "lines": lines}

        posts = []
        for attempt in (1, 2):
            t0 = time.perf_counter()
            r = await c.post("/integrations/finance/payments", json=body)
            seconds = time.perf_counter() - t0
            r.raise_for_status()
            out = r.json()
            posts.append({"post": attempt, "seconds": round(seconds, 3),
                          "lines_per_second": round(len(lines) / seconds, 1), "totals": out["totals"],
                          "outcomes": [x["outcome"] for x in out["lines"]]})
            print(f"· post {attempt}: {len(lines)} lines in {seconds:.2f}s = {len(lines) / seconds:.0f} lines/s  "
                  f"{out['totals']}", flush=True)

        gate = asyncio.Semaphore(16)

        async def live(contract: dict) -> dict:
            async with gate:
                return (await c.get(f"/contracts/{contract['id']}")).json()

        states = await asyncio.gather(*(live(x) for x in contracts))

    # ---- checks
    checks: dict[str, bool] = {}
    first, second = posts[0]["outcomes"], posts[1]["outcomes"]
    checks["every line has an outcome, both posts"] = len(first) == len(second) == len(lines)
    checks["first post outcomes as expected"] = first == expected
    checks["second post: applied lines are duplicates, the others unchanged"] = second == [
        "duplicate" if e == "applied" else e for e in expected
    ]
    checks["second post applies nothing"] = posts[1]["totals"]["applied"] == 0
    bad = []
    for contract, state in zip(contracts, states, strict=True):
        refs = [p["reference"] for p in state["payments"]]
        if len(refs) != len(set(refs)) or Decimal(state["paid"]) != paid.get(contract["id"], Decimal(0)):
            bad.append(contract["id"])
    checks["each contract's paid total is the sum of its distinct lines"] = not bad
    checks["total paid across contracts"] = sum(Decimal(s["paid"]) for s in states) == sum(paid.values())
    for p in posts:
        del p["outcomes"]
    return {
        "benchmark": "finance_batch",
        "at": datetime.now(timezone.utc).isoformat(),
        "lines": len(lines),
        "contracts": len(contracts),
        "expected": dict(Counter(expected)),
        "database": "postgresql" if args.database_url and args.database_url.startswith("postgres") else "sqlite",
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_1m": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        "posts": posts,
        "total_paid": str(sum(paid.values())),
        "checks": checks,
        "ok": all(checks.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--contracts", type=int, default=80)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--database-url", default=None, help="default: a SQLite file in a temporary directory")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from core.temporal import hard_exit

    try:
        result = asyncio.run(run(args))
    except Exception:  # noqa: BLE001 - report, then leave through hard_exit
        logging.exception("benchmark failed")
        hard_exit(2)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    for name, ok in result["checks"].items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    p1, p2 = result["posts"]
    print(f"{result['lines']} lines, {result['contracts']} contracts ({result['database']}): "
          f"first post {p1['lines_per_second']} lines/s, second post {p2['lines_per_second']} lines/s "
          f"-> {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    hard_exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
