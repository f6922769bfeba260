"""Benchmark: many open contracts on one worker -- memory, storage and start-up time.

    .venv/bin/python -m bench.scale                       # 10,000 contracts (takes a while, see docs)
    .venv/bin/python -m bench.scale --contracts 500       # quick
    .venv/bin/python -m bench.scale --pg                  # read model on a fresh PostgreSQL database

Production layout: one Temporal dev server (SQLite file, WAL), ``python worker.py`` and
``uvicorn api.main:app`` as separate processes (so the worker's RSS is its own), the floor worker
(``python -m bench.floor``) as another.  Steps:

1. **floor** -- N bare ``LedgerWorkflow``s started (each stays open on a timer a year ahead, like
   a contract waiting for its next due date) on the floor worker; time to start them; the
   floor worker's RSS once it is idle.
2. **project** -- N goods-sale contracts (6 milestones, 12 monthly installments) created over
   ``POST /contracts`` at concurrency 16, with at most ``--max-pending`` (64) created but not yet
   taken on by the worker (visible in the read model); time until every POST answered and until every
   contract is visible in the read model (and its catch-up reminder sent); worker, API and
   dev server RSS (current and peak) once the worker is idle; database size per contract (the
   contract read model, and the growth of Temporal's own SQLite file per workflow, floor and
   project).
3. **touch** -- ``--touch`` payments to random contracts and as many bare updates to random
   ledgers, alternating at concurrency 1: with N above the worker's sticky cache
   (``MAX_CACHED_WORKFLOWS``, 2000) most hit a workflow that must be replayed from history first.

Target: worker RSS <= 500 MB (bounded sticky cache).  Checks: every POST answered 201, every
contract visible and active, every touch payment applied.  Results: bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import say

NAME = "scale"


async def idle(proc: common.ChildProcess, quiet_for: float = 3.0, below: float = 0.05, timeout: float = 900) -> float:
    """Wait until ``proc`` uses less than ``below`` CPU for ``quiet_for`` seconds; returns the
    ``time.perf_counter()`` at which it went quiet."""
    deadline = time.perf_counter() + timeout
    quiet_since = None
    last = proc.cpu_seconds() or 0.0
    while time.perf_counter() < deadline:
        await asyncio.sleep(0.5)
        now_cpu = proc.cpu_seconds() or 0.0
        busy = (now_cpu - last) / 0.5
        last = now_cpu
        if busy < below:
            quiet_since = quiet_since or time.perf_counter() - 0.5
            if time.perf_counter() - quiet_since >= quiet_for:
                return quiet_since
        else:
            quiet_since = None
    return time.perf_counter()


class RssWatch:
    """Samples the RSS of a few processes every second; keeps the highest."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {k: v for k, v in pids.items() if v}
        self.max: dict[str, float] = {}
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            for name, pid in self.pids.items():
                rss = common.rss_mb(pid)
                if rss is not None:
                    self.max[name] = max(self.max.get(name, 0.0), rss)
            await asyncio.sleep(1)

    def __enter__(self) -> RssWatch:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc) -> None:
        if self._task:
            self._task.cancel()


def count_visible(engine) -> int:
    from sqlalchemy import text

    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM contracts WHERE version >= 1")).scalar_one())


async def body(args: argparse.Namespace, result: dict) -> None:
    import httpx

    from bench.floor import LedgerInput, LedgerWorkflow
    from models.db import make_engine

    n = args.contracts
    tmp = common.new_tmp(NAME)
    tmp_path = Path(tmp.name)
    result["contracts"] = n
    with common.database(args, tmp_path) as db, common.SmtpCatcher() as smtp:
        result["database"] = db.kind
        say(f"· {n} contracts; database {db.kind}; Temporal dev server ...")
        async with common.DevServer(tmp_path) as server:
            settings = common.bench_settings(db.url, server.address, f"bench-{uuid.uuid4().hex[:8]}", smtp.port,
                                             max_cached_workflows=args.cache)
            result["max_cached_workflows"] = args.cache
            mem: dict = {"server_start_mb": server.rss_mb()}
            storage: dict = {"temporal_db_start_bytes": server.db_bytes()}
            async with common.floor_stack(server, tmp_path, True, max_cached_workflows=args.cache) as floor, \
                    common.project_stack(server, settings, tmp_path, True) as project:
                fw: common.ChildProcess = floor["worker"]
                worker: common.ChildProcess = project["worker"]
                api: common.ChildProcess = project["api"]
                mem["floor_worker_start_mb"] = fw.rss_mb()
                mem["worker_start_mb"] = worker.rss_mb()
                mem["api_start_mb"] = api.rss_mb()
                tag = uuid.uuid4().hex[:6].upper()

                # ---- 1. floor: N open bare workflows
                say(f"· floor: starting {n} open LedgerWorkflows ...")
                ledgers: list = [None] * n
                t0 = time.perf_counter()

                async def start_ledger(k: int) -> None:
                    ledgers[k] = await server.client.start_workflow(
                        LedgerWorkflow.run, LedgerInput(1_000_000), id=f"ledger-{tag}-{k}", task_queue=floor["task_queue"])

                with RssWatch({"floor_worker": fw.pid, "server": server.pid}) as watch_f:
                    await common.gather_limited(n, 16, start_ledger)
                    floor_started = time.perf_counter() - t0
                    settled = await idle(fw)
                    floor_settled = settled - t0
                floor_res = {
                    "start_seconds": round(floor_started, 1),
                    "per_second": round(n / floor_started, 1),
                    "settled_seconds": round(max(floor_settled, floor_started), 1),
                    "worker_rss_mb": fw.rss_mb(),
            "worker_peak_rss_mb": max(fw.peak_rss_mb() or 0, watch_f.max.get("floor_worker", 0)),
                    "worker_cpu_seconds": fw.cpu_seconds(),
                }
                mem["server_after_floor_mb"] = server.rss_mb()
                storage["temporal_db_after_floor_bytes"] = server.db_bytes()
                say(f"  floor: {n} started in {floor_started:.1f} s ({floor_res['per_second']}/s); floor worker "
                    f"{floor_res['worker_rss_mb']} MB (peak {floor_res['worker_peak_rss_mb']}), server "
                    f"{mem['server_after_floor_mb']} MB")

                # ---- 2. project: N contracts over the API
                say(f"· project: creating {n} contracts over the API at concurrency {args.concurrency} ...")
                engine = make_engine(db.url)
                limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
                statuses: list[int] = []
                ids: list[str] = [""] * n
                now = datetime.now(timezone.utc)
                progress = {"done": 0, "t": time.perf_counter()}
                async with httpx.AsyncClient(base_url=project["base_url"], timeout=300, limits=limits) as c:

                    # At most --max-pending contracts answered but not yet visible: the API takes
                    # contracts faster than one worker can, and an unbounded backlog pushes the worker
                    # into workflow-task timeouts and replays (see docs/benchmarks.md).
                    pending = asyncio.Semaphore(args.max_pending)
                    watch = common.VisibilityWatch(db.url, interval=0.2)
                    await watch.__aenter__()
                    waiters: list[asyncio.Task] = []

                    async def release_when_visible(cid: str) -> None:
                        try:
                            await watch.expect(cid)
                        finally:
                            pending.release()

                    async def create(k: int) -> None:
                        body = common.goods_sale_request(tag, k, now, installments=12)
                        await pending.acquire()
                        for attempt in range(3):
                            try:
                                r = await c.post("/contracts", json=body)
                                break
                            except httpx.TransportError:  # retried: external_id makes it idempotent
                                if attempt == 2:
                                    raise
                                await asyncio.sleep(1)
                        statuses.append(r.status_code)
                        if r.status_code in (200, 201):
                            ids[k] = r.json()["id"]
                            waiters.append(asyncio.create_task(release_when_visible(ids[k])))
                        else:
                            pending.release()
                        progress["done"] += 1
                        if progress["done"] % max(1, n // 10) == 0:
                            el = time.perf_counter() - t0
                            say(f"  {progress['done']}/{n} in {el:.0f} s ({progress['done'] / el:.1f}/s); worker "
                                f"{worker.rss_mb()} MB, server {server.rss_mb()} MB, load {common.load_average()[0]}")

                    t0 = time.perf_counter()
                    with RssWatch({"worker": worker.pid, "server": server.pid, "api": api.pid}) as watch_p:
                        await common.gather_limited(n, args.concurrency, create)
                        created_s = time.perf_counter() - t0
                        # every contract visible in the read model and its catch-up reminder sent
                        deadline = time.monotonic() + 1800
                        while time.monotonic() < deadline:
                            vis = await asyncio.to_thread(count_visible, engine)
                            mails = len(smtp.mails)
                            if vis >= n and mails >= n:
                                break
                            await asyncio.sleep(1)
                        visible_s = time.perf_counter() - t0
                        settled = await idle(worker)
                        settled_s = max(settled - t0, visible_s)
                    await watch.__aexit__(None, None, None)
                    for w in waiters:
                        w.cancel()
                    project_res = {
                        "start_seconds": round(created_s, 1),
                        "per_second": round(n / created_s, 2),
                        "all_visible_seconds": round(visible_s, 1),
                        "settled_seconds": round(settled_s, 1),
                        "worker_rss_mb": worker.rss_mb(),
                        "worker_peak_rss_mb": max(worker.peak_rss_mb() or 0, watch_p.max.get("worker", 0)),
                        "api_rss_mb": api.rss_mb(), "api_peak_rss_mb": api.peak_rss_mb(),
                        "worker_cpu_seconds": worker.cpu_seconds(), "api_cpu_seconds": api.cpu_seconds(),
                        "worker_cpu_ms_per_contract": round(1000 * (worker.cpu_seconds() or 0) / n, 1),
                        "api_cpu_ms_per_contract": round(1000 * (api.cpu_seconds() or 0) / n, 1),
                    }
                    mem["server_after_project_mb"] = server.rss_mb()
                    mem["server_peak_mb"] = server.peak_rss_mb()
                    storage["temporal_db_after_project_bytes"] = server.db_bytes()
                    say(f"  project: {n} POSTs answered in {created_s:.1f} s ({project_res['per_second']}/s), all "
                        f"visible at {visible_s:.1f} s; worker {project_res['worker_rss_mb']} MB (peak "
                        f"{project_res['worker_peak_rss_mb']}), API {project_res['api_rss_mb']} MB, server "
                        f"{mem['server_after_project_mb']} MB")

                    # ---- 3. touch: random payments (mostly cache misses) vs random bare updates
                    touch: dict = {}
                    if args.touch:
                        rng = random.Random(7)
                        ref = uuid.uuid4().hex[:6]
                        proj_lat, floor_lat, failures = [], [], []
                        for k in range(args.touch):
                            i = rng.randrange(n)
                            t1 = time.perf_counter()
                            r = await c.post(f"/contracts/{ids[i]}/payments", json={
                                "reference": f"TOUCH-{ref}-{k}", "amount": "1.00", "currency": "CNY",
                                "received_at": datetime.now(timezone.utc).isoformat()})
                            proj_lat.append(time.perf_counter() - t1)
                            if r.status_code != 200 or not r.json().get("applied"):
                                failures.append(f"{r.status_code} {r.text[:120]}")
                            j = rng.randrange(n)
                            t1 = time.perf_counter()
                            await ledgers[j].execute_update(LedgerWorkflow.pay, 1)
                            floor_lat.append(time.perf_counter() - t1)
                        touch = {"n": args.touch, "payment_latency_ms": common.summary_ms(proj_lat),
                                 "floor_latency_ms": common.summary_ms(floor_lat), "failures": failures[:10]}
                        touch["ratio_p50"] = common.ratio(touch["payment_latency_ms"]["p50"], touch["floor_latency_ms"]["p50"])
                        touch["worker_rss_after_mb"] = worker.rss_mb()
                        touch["worker_peak_rss_mb"] = worker.peak_rss_mb()
                        say(f"  touch: {args.touch} payments to random contracts p50 "
                            f"{touch['payment_latency_ms']['p50']} ms, p99 {touch['payment_latency_ms']['p99']} ms | bare "
                            f"updates to random ledgers p50 {touch['floor_latency_ms']['p50']} ms -> ratio "
                            f"{touch['ratio_p50']}; worker {touch['worker_rss_after_mb']} MB")
                    from sqlalchemy import text

                    with engine.connect() as conn:
                        active = int(conn.execute(text("SELECT count(*) FROM contracts WHERE status = 'active'")).scalar_one())
                    engine.dispose()
            db.checkpoint()
            storage["contracts_db_bytes"] = db.size_bytes()

    tmp.cleanup()
    floor_db = storage["temporal_db_after_floor_bytes"] - storage["temporal_db_start_bytes"]
    project_db = storage["temporal_db_after_project_bytes"] - storage["temporal_db_after_floor_bytes"]
    storage["contracts_db_bytes_per_contract"] = round(storage["contracts_db_bytes"] / n)
    storage["temporal_db_bytes_per_floor_workflow"] = round(floor_db / n)
    storage["temporal_db_bytes_per_contract"] = round(project_db / n)
    storage["ratio_temporal_bytes_project_to_floor"] = common.ratio(project_db, floor_db)
    result.update({
        "floor": floor_res, "project": project_res, "touch": touch, "memory": mem, "storage": storage,
        "ratio_start_time": common.ratio(project_res["start_seconds"], floor_res["start_seconds"]),
        # POSTs answered is not the end: the worker may still be taking the contracts on.
        "ratio_ready_time": common.ratio(project_res["all_visible_seconds"], floor_res["settled_seconds"]),
        "ratio_worker_rss": common.ratio(project_res["worker_rss_mb"], floor_res["worker_rss_mb"]),
        "server_mb_per_1000_open": round(1000 * ((mem["server_after_project_mb"] or 0) - (mem["server_start_mb"] or 0))
                                         / (2 * n), 1),
    })
    say(f"scale {n}: start {project_res['start_seconds']} s vs floor {floor_res['start_seconds']} s (x"
        f"{result['ratio_start_time']}), all visible {project_res['all_visible_seconds']} s vs floor settled "
        f"{floor_res['settled_seconds']} s (x{result['ratio_ready_time']}); worker RSS {project_res['worker_rss_mb']} MB (peak "
        f"{project_res['worker_peak_rss_mb']}) vs floor worker {floor_res['worker_rss_mb']} MB (x{result['ratio_worker_rss']});"
        f" server {mem['server_after_project_mb']} MB; read model {storage['contracts_db_bytes_per_contract']} B/contract, "
        f"Temporal {storage['temporal_db_bytes_per_contract']} B/contract vs {storage['temporal_db_bytes_per_floor_workflow']}"
        f" B/floor workflow")
    checks = result["checks"]
    checks["every POST /contracts answered 201"] = len(statuses) == n and all(s == 201 for s in statuses)
    checks["every contract visible in the read model and active"] = active == n
    if touch:
        checks["every touch payment applied"] = not touch["failures"]
    peak = project_res["worker_peak_rss_mb"]
    result["targets"][f"worker RSS <= 500 MB with {n} open contracts (peak)"] = {
        "value": f"{peak} MB", "target": "<= 500 MB", "met": peak <= 500}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contracts", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16, help="POSTs in flight")
    parser.add_argument("--max-pending", type=int, default=64,
                        help="contracts answered but not yet visible (taken on by the worker), at most")
    parser.add_argument("--touch", type=int, default=200, help="random payments after start-up (0: skip)")
    parser.add_argument("--cache", type=int, default=2000, help="MAX_CACHED_WORKFLOWS for both workers")
    common.add_database_args(parser)
    common.run_main(NAME, parser, body)


if __name__ == "__main__":
    main()
