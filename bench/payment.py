"""Benchmark: a payment over HTTP (workflow update round trip, balance returned) against a bare
``execute_update``.

    .venv/bin/python -m bench.payment                  # SQLite, concurrency 1 (and 16 for throughput)
    .venv/bin/python -m bench.payment --n 2000 --pg    # fresh PostgreSQL database, dropped after

One Temporal dev server; worker and API in this process (``--split``: separate processes), the
floor worker beside them.  ``--contracts`` goods-sale contracts are created over the API (and as
many open ``LedgerWorkflow``s for the floor), then, after a warm-up:

* **project** -- ``POST /contracts/{id}/payments`` with a new reference and 1.00 CNY, spread
  round-robin over the contracts; the answer (``applied``, ``outstanding``) comes from the
  contract workflow's ``record_payment`` update, validated and applied in one workflow task.
  Latency = request sent -> response read.
* **floor** -- ``handle.execute_update(LedgerWorkflow.pay, 1)`` on an open workflow that
  returns the new balance.

At concurrency 1 the two alternate request by request (the machine's noise hits both alike);
at concurrency 16 they alternate in rounds.  Prints p50/p90/p99 and the ratio project / floor;
targets: p50 <= 2x the bare p50 and p99 <= 50 ms at concurrency 1.  Checks: every payment
answered 200 and ``applied``, the returned balance always went down by exactly 1.00 per
contract, and each contract's paid total (read live from its workflow) is the sum of its
payments; the floor's balances likewise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import say, summary_ms

NAME = "payment"


class Payer:
    """The project's operation and the floor's, each timed; results kept for the checks."""

    def __init__(self, c, client, contracts: list[str], ledgers: list) -> None:
        self.c = c
        self.session: Any = None  # aiohttp.ClientSession for the payments (lean_session); None: httpx
        self.floor_session: Any = None  # the HTTP floor's (bench/floor_api.py), with --split
        self.client = client
        self.contracts = contracts
        self.ledgers = ledgers
        self.tag = uuid.uuid4().hex[:6]
        self.n_project = 0
        self.n_floor = 0
        self.failures: list[str] = []
        self.paid: dict[str, int] = defaultdict(int)  # contract -> payments applied
        self.outstanding_seen: dict[str, list[Decimal]] = defaultdict(list)
        self.floor_paid: dict[int, int] = defaultdict(int)
        self.floor_seen: dict[int, list[int]] = defaultdict(list)

    async def project(self) -> float:
        k = self.n_project
        self.n_project += 1
        cid = self.contracts[k % len(self.contracts)]
        body = {"reference": f"BENCH-{self.tag}-{k}", "amount": "1.00", "currency": "CNY",
                "received_at": datetime.now(timezone.utc).isoformat()}
        t0 = time.perf_counter()
        if self.session is not None:
            async with self.session.post(f"/contracts/{cid}/payments", json=body) as resp:
                status, text = resp.status, await resp.text()
        else:
            r = await self.c.post(f"/contracts/{cid}/payments", json=body)
            status, text = r.status_code, r.text
        dt = time.perf_counter() - t0
        answer = json.loads(text) if status == 200 else {}
        if status != 200 or not answer.get("applied"):
            self.failures.append(f"{cid}: {status} {text[:200]}")
        else:
            self.paid[cid] += 1
            self.outstanding_seen[cid].append(Decimal(answer["outstanding"]))
        return dt

    async def direct(self) -> float:
        """The same payment as an update sent straight to the contract's workflow (no HTTP, no API,
        no read-model version: the workflow writes the read model through its local activity, as
        for any caller but the API)."""
        from workflows.contract.workflow import ContractWorkflow, workflow_id_for
        from workflows.types import PaymentInput

        k = self.n_project
        self.n_project += 1
        cid = self.contracts[k % len(self.contracts)]
        p = PaymentInput(f"BENCH-{self.tag}-{k}", "1.00", "CNY", datetime.now(timezone.utc), "bench")
        t0 = time.perf_counter()
        r = await self.client.get_workflow_handle(workflow_id_for(cid)).execute_update(ContractWorkflow.record_payment, p)
        dt = time.perf_counter() - t0
        if not r.applied:
            self.failures.append(f"{cid}: direct update not applied")
        else:
            self.paid[cid] += 1
            self.outstanding_seen[cid].append(Decimal(r.outstanding))
        return dt

    async def http_floor(self) -> float:
        """The bare update behind the least FastAPI front door (bench/floor_api.py), on the same
        ledgers as ``floor``: its balances are checked with theirs."""
        k = self.n_floor
        self.n_floor += 1
        i = k % len(self.ledgers)
        body = {"reference": f"FLOOR-{self.tag}-{k}", "amount": "1.00", "currency": "CNY",
                "received_at": datetime.now(timezone.utc).isoformat()}
        t0 = time.perf_counter()
        async with self.floor_session.post(f"/ledgers/{self.ledgers[i].id}/pay", json=body) as resp:
            status, text = resp.status, await resp.text()
        dt = time.perf_counter() - t0
        if status != 200:
            self.failures.append(f"HTTP floor: {status} {text[:200]}")
        else:
            self.floor_paid[i] += 1
            self.floor_seen[i].append(json.loads(text)["balance"])
        return dt

    async def floor(self) -> float:
        from bench.floor import LedgerWorkflow

        k = self.n_floor
        self.n_floor += 1
        i = k % len(self.ledgers)
        t0 = time.perf_counter()
        balance = await self.ledgers[i].execute_update(LedgerWorkflow.pay, 1)
        dt = time.perf_counter() - t0
        self.floor_paid[i] += 1
        self.floor_seen[i].append(balance)
        return dt


@contextlib.asynccontextmanager
async def lean_session(base_url: str) -> AsyncIterator[Any]:
    """The payments' HTTP client: aiohttp, whose parser is in C.  The load generator shares the
    machine's two cores with the service it measures: httpx spends about 2 ms of CPU per payment
    here, aiohttp about 0.6 ms (the floor's Temporal client: about 0.7 ms per bare update)."""
    import aiohttp
    from yarl import URL

    url = URL(base_url)  # carries the bench's API key as user info (common.with_key)
    key = {"Authorization": "Basic " + base64.b64encode(f"{url.user}:{url.password}".encode()).decode()}
    async with aiohttp.ClientSession(base_url=str(url.with_user(None)), headers=key,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


def _consecutive(values: list, step) -> bool:
    xs = sorted(values, reverse=True)
    return len(set(xs)) == len(xs) and all(a - b == step for a, b in zip(xs, xs[1:], strict=False))


async def sequential(payer: Payer, n: int, direct: list[float] | None = None) -> tuple[list[float], list[float]]:
    """Concurrency 1, alternating: floor, project, floor, project... (and, given ``direct``, the
    same payment sent straight to the workflow, every other round)"""
    async def straight() -> None:
        assert direct is not None
        direct.append(await payer.direct())

    flo, proj = await alternating(payer.floor, payer.project, n, after_even=straight if direct is not None else None)
    return proj, flo


async def alternating(first, second, n: int, after_even=None) -> tuple[list[float], list[float]]:
    """Concurrency 1: ``first`` and ``second`` n times each, which goes first alternating;
    ``after_even`` (if given) after every other round."""
    a: list[float] = []
    b: list[float] = []
    for k in range(n):
        if k % 2 == 0:
            a.append(await first())
            b.append(await second())
        else:
            b.append(await second())
            a.append(await first())
        if after_even is not None and k % 2 == 0:
            await after_even()
    return a, b


async def concurrent(op, n: int, concurrency: int) -> tuple[list[float], float]:
    lat: list[float] = []

    async def one(_k: int) -> None:
        lat.append(await op())

    t0 = time.perf_counter()
    await common.gather_limited(n, concurrency, one)
    return lat, time.perf_counter() - t0


async def body(args: argparse.Namespace, result: dict) -> None:
    import httpx

    from bench.floor import LedgerInput, LedgerWorkflow

    tmp = common.new_tmp(NAME)
    tmp_path = Path(tmp.name)
    result["layout"] = "split processes" if args.split else "one process"
    with common.database(args, tmp_path) as db, common.SmtpCatcher() as smtp:
        result["database"] = db.kind
        say(f"· database {db.kind}, {result['layout']}; Temporal dev server ...")
        async with common.DevServer(tmp_path) as server:
            settings = common.bench_settings(db.url, server.address, f"bench-{uuid.uuid4().hex[:8]}", smtp.port)
            async with common.project_stack(server, settings, tmp_path, args.split) as project, \
                    common.floor_stack(server, tmp_path, args.split) as floor, \
                    common.VisibilityWatch(db.url) as watch, httpx.AsyncClient(base_url=project["base_url"], timeout=60) as c, \
                    contextlib.AsyncExitStack() as stack:
                # ---- set-up: contracts (visible in the read model) and floor ledgers
                tag = uuid.uuid4().hex[:6].upper()
                now = datetime.now(timezone.utc)

                async def create(k: int) -> str:
                    r = await c.post("/contracts", json=common.goods_sale_request(tag, k, now, installments=12))
                    r.raise_for_status()
                    cid = r.json()["id"]
                    await asyncio.wait_for(watch.expect(cid), 120)
                    return cid

                contracts = await common.gather_limited(args.contracts, 8, create)
                ledgers = []
                for k in range(args.contracts):
                    ledgers.append(await server.client.start_workflow(
                        LedgerWorkflow.run, LedgerInput(1_000_000), id=f"ledger-{tag}-{k}",
                        task_queue=floor["task_queue"]))
                say(f"· {len(contracts)} contracts and {len(ledgers)} floor ledgers open")
                payer = Payer(c, server.client, contracts, ledgers)
                if args.client == "aiohttp":
                    payer.session = await stack.enter_async_context(lean_session(project["base_url"]))
                http_floor = None
                if args.split and args.client == "aiohttp":  # the HTTP floor: FastAPI + the bare update
                    http_floor = common.FloorApiProcess(server.address, tmp_path / "floor-api.log")
                    stack.callback(http_floor.stop)
                    await http_floor.wait_ready()
                    payer.floor_session = await stack.enter_async_context(lean_session(http_floor.base_url))
                await sequential(payer, args.warmup)
                await asyncio.sleep(1)

                # ---- concurrency 1, request by request alternating
                say(f"· concurrency 1: {args.n} payments and {args.n} bare updates, alternating ...")
                direct: list[float] = []
                proj, flo = await sequential(payer, args.n, direct)
                p, f, d = summary_ms(proj), summary_ms(flo), summary_ms(direct)
                level1 = {
                    "concurrency": 1, "project_latency_ms": p, "floor_latency_ms": f,
                    "ratio_p50": common.ratio(p["p50"], f["p50"]), "ratio_p99": common.ratio(p["p99"], f["p99"]),
                    "direct_update_latency_ms": d, "load_1m": common.load_average()[0],
                }
                if http_floor is not None:
                    # Its own pass after the measured one (which stays as it was): the HTTP floor
                    # against bare updates taken alongside it.
                    http, bare = await alternating(payer.http_floor, payer.floor, args.n)
                    h, b = summary_ms(http), summary_ms(bare)
                    level1["http_floor_latency_ms"], level1["http_floor_pass_bare_latency_ms"] = h, b
                    level1["http_floor_ratio_p50"] = common.ratio(h["p50"], b["p50"])
                    # (payment / bare) / (HTTP floor / bare), each pair from its own pass
                    level1["ratio_p50_to_http_floor"] = common.ratio(p["p50"] * b["p50"], f["p50"] * h["p50"])
                say(f"c= 1: payment p50 {p['p50']} ms, p90 {p['p90']} ms, p99 {p['p99']} ms | bare update "
                    f"p50 {f['p50']} ms, p99 {f['p99']} ms -> p50 ratio {level1['ratio_p50']}, "
                    f"p99 ratio {level1['ratio_p99']}")
                say(f"      the same update sent straight to the workflow (no API; its local activity writes the "
                    f"read model) p50 {d['p50']} ms, p99 {d['p99']} ms")
                if http_floor is not None:
                    say(f"      HTTP floor (FastAPI route: key check, validation, the bare update; its own pass) p50 "
                        f"{h['p50']} ms against bare {b['p50']} ms there ({level1['http_floor_ratio_p50']}x) -> "
                        f"payment p50 against it {level1['ratio_p50_to_http_floor']} (not a target)")
                result["levels"] = [level1]

                # ---- concurrency 16, alternating rounds
                if args.n16:
                    per_round = max(1, args.n16 // args.rounds)
                    pl, fl, pt, ft = [], [], 0.0, 0.0
                    procs = {"api": project["api"], "worker": project["worker"], "floor worker": floor["worker"]}
                    if args.split:  # only the clients run here: the load generator's own share of the two cores
                        procs["bench client"] = common.Self()
                    if http_floor is not None:
                        procs["floor api"] = http_floor
                    cpu_project: dict[str, float] = defaultdict(float)
                    cpu_floor: dict[str, float] = defaultdict(float)
                    cpu_http: dict[str, float] = defaultdict(float)
                    hl, ht = [], 0.0
                    for _ in range(args.rounds):
                        with common.cpu_used(procs, server, cpu_floor):
                            lat, secs = await concurrent(payer.floor, per_round, 16)
                        fl += lat
                        ft += secs
                        with common.cpu_used(procs, server, cpu_project):
                            lat, secs = await concurrent(payer.project, per_round, 16)
                        pl += lat
                        pt += secs
                        if http_floor is not None:  # after the measured pair, as it was before
                            with common.cpu_used(procs, server, cpu_http):
                                lat, secs = await concurrent(payer.http_floor, per_round, 16)
                            hl += lat
                            ht += secs
                    p16, f16 = summary_ms(pl), summary_ms(fl)
                    level16 = {
                        "concurrency": 16, "project_latency_ms": p16, "floor_latency_ms": f16,
                        "project_per_second": round(len(pl) / pt, 1), "floor_per_second": round(len(fl) / ft, 1),
                        "ratio_rate": common.ratio(len(pl) / pt, len(fl) / ft),
                        "ratio_p50": common.ratio(p16["p50"], f16["p50"]),
                        "load_1m": common.load_average()[0],
                    }
                    if args.split:  # CPU per operation, by process
                        level16["cpu_ms_per_payment"] = {k: round(v * 1000 / len(pl), 2) for k, v in cpu_project.items()}
                        level16["cpu_ms_per_bare_update"] = {k: round(v * 1000 / len(fl), 2) for k, v in cpu_floor.items()}
                    if hl:
                        level16["http_floor_per_second"] = round(len(hl) / ht, 1)
                        level16["ratio_rate_to_http_floor"] = common.ratio(len(pl) / pt, len(hl) / ht)
                        level16["cpu_ms_per_http_floor_payment"] = {k: round(v * 1000 / len(hl), 2)
                                                                    for k, v in cpu_http.items()}
                    result["levels"].append(level16)
                    say(f"c=16: payments {level16['project_per_second']}/s (p50 {p16['p50']} ms, p99 {p16['p99']} ms)"
                        f" | bare updates {level16['floor_per_second']}/s (p50 {f16['p50']} ms) -> rate ratio "
                        f"{level16['ratio_rate']}")
                    if args.split:
                        say(f"      CPU per payment, ms: {level16['cpu_ms_per_payment']} | per bare update: "
                            f"{level16['cpu_ms_per_bare_update']}")
                    if hl:
                        say(f"      HTTP floor {level16['http_floor_per_second']}/s -> payments against it "
                            f"{level16['ratio_rate_to_http_floor']} (not a target); CPU per HTTP-floor payment, ms: "
                            f"{level16['cpu_ms_per_http_floor_payment']}")

                # ---- checks
                states = [(await c.get(f"/contracts/{cid}")).json() for cid in contracts]
                checks = result["checks"]
                checks["every payment answered 200 and applied"] = not payer.failures
                # Answers to concurrent payments arrive in any order, but each one saw its own
                # balance: all distinct, 1.00 apart.
                checks["each payment's answer is a distinct balance, 1.00 apart"] = all(
                    _consecutive(seen, Decimal("1.00")) for seen in payer.outstanding_seen.values())
                checks["each bare update's answer is a distinct balance, 1 apart"] = all(
                    _consecutive(seen, 1) for seen in payer.floor_seen.values())
                checks["each contract's paid total is the sum of its payments (live state)"] = all(
                    Decimal(st["paid"]) == Decimal(payer.paid[cid]) for cid, st in zip(contracts, states, strict=True))
                balances = [await h.query(LedgerWorkflow.balance_query) for h in ledgers]
                checks["each floor ledger's balance matches its updates"] = all(
                    b == 1_000_000 - payer.floor_paid[i] for i, b in enumerate(balances))
                if payer.failures:
                    result["failures"] = payer.failures[:20]
                result["payments"] = sum(payer.paid.values())
                for h in ledgers:
                    await h.signal(LedgerWorkflow.close)
    tmp.cleanup()
    lv = result["levels"][0]
    result["targets"]["payment p50 <= 2x bare update p50 (concurrency 1)"] = {
        "value": lv["ratio_p50"], "target": "<= 2", "met": lv["ratio_p50"] is not None and lv["ratio_p50"] <= 2}
    result["targets"]["payment p99 <= 50 ms (concurrency 1)"] = {
        "value": f"{lv['project_latency_ms']['p99']} ms", "target": "<= 50 ms",
        "met": lv["project_latency_ms"]["p99"] <= 50}
    # Issue #12's targets (the lean engine).
    result["targets"]["#12: payment p50 <= 1.5x bare update p50 (concurrency 1)"] = {
        "value": lv["ratio_p50"], "target": "<= 1.5", "met": lv["ratio_p50"] is not None and lv["ratio_p50"] <= 1.5}
    if len(result["levels"]) > 1:
        rate = result["levels"][1]["ratio_rate"]
        result["targets"]["#12: payment rate >= 0.5x bare update rate (concurrency 16)"] = {
            "value": rate, "target": ">= 0.5", "met": rate is not None and rate >= 0.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300, help="payments (and bare updates) at concurrency 1")
    parser.add_argument("--n16", type=int, default=320, help="payments (and bare updates) at concurrency 16; 0: skip")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp",
                        help="the payments' HTTP client (the set-up and checks use httpx)")
    parser.add_argument("--contracts", type=int, default=16, help="contracts (and floor ledgers) paid round-robin")
    parser.add_argument("--warmup", type=int, default=30)
    common.add_database_args(parser)
    common.add_split_arg(parser)
    common.run_main(NAME, parser, body)


if __name__ == "__main__":
    main()
