"""Benchmark: contract creation over HTTP, end to end, against a bare ``start_workflow``.

    .venv/bin/python -m bench.creation                     # SQLite, concurrency 1 and 16
    .venv/bin/python -m bench.creation --n16 1000 --pg     # fresh PostgreSQL database, dropped after

One Temporal dev server; the worker and the API run in this process (as bench/finance_batch.py
runs them), the floor worker beside them on its own task queue.  For each concurrency C, in
alternating rounds (floor, project, floor, project...: the machine's noise hits both alike):

* **project** -- C loops, each ``POST /contracts`` (goods sale from the playbook: 6 milestones,
  2 installments) and then waits until the contract is *visible*: its read-model row has
  ``version >= 1`` (written by the ``project_contract`` activity together with its milestones,
  installments and first events; from then on ``GET /contracts`` lists it with its next due
  date).  Rate = contracts / wall time from the first POST to the last contract visible.
* **floor** -- C loops of a bare ``client.start_workflow`` of a trivial workflow (returns when
  the server has recorded the start); and, for reference, ``execute_workflow`` (started *and*
  completed by a worker: the floor's equivalent of "visible").

Prints rates and latencies, the ratio project / floor (target: >= 0.5 of the bare start rate)
and writes bench/results/creation.json.  Checks: every POST answered 201, every contract became
visible and is ``active``, and each got exactly one catch-up reminder email (no duplicates).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import say, summary_ms

NAME = "creation"
VISIBLE_TIMEOUT = 120.0


async def measure_project(c, watch: common.VisibilityWatch, tag: str, start_k: int, n: int, concurrency: int,
                          statuses: list[int], created: list[str]) -> dict:
    now = datetime.now(timezone.utc)
    post_lat: list[float] = []
    e2e_lat: list[float] = []

    async def one(k: int) -> None:
        body = common.goods_sale_request(tag, start_k + k, now)
        t0 = time.perf_counter()
        r = await c.post("/contracts", json=body)
        t1 = time.perf_counter()
        statuses.append(r.status_code)
        if r.status_code != 201:
            say(f"  POST /contracts -> {r.status_code} {r.text[:200]}")
            return
        cid = r.json()["id"]
        created.append(cid)
        post_lat.append(t1 - t0)
        seen = await asyncio.wait_for(watch.expect(cid), VISIBLE_TIMEOUT)
        e2e_lat.append(seen - t0)

    t0 = time.perf_counter()
    await common.gather_limited(n, concurrency, one)
    wall = time.perf_counter() - t0
    return {"n": n, "seconds": wall, "post": post_lat, "e2e": e2e_lat}


async def measure_floor(client, task_queue: str, n: int, concurrency: int, complete: bool) -> dict:
    from bench.floor import TrivialWorkflow

    lat: list[float] = []
    prefix = f"floor-{uuid.uuid4().hex[:8]}"

    async def one(k: int) -> None:
        t0 = time.perf_counter()
        if complete:
            await client.execute_workflow(TrivialWorkflow.run, id=f"{prefix}-{k}", task_queue=task_queue)
        else:
            await client.start_workflow(TrivialWorkflow.run, id=f"{prefix}-{k}", task_queue=task_queue)
        lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await common.gather_limited(n, concurrency, one)
    return {"n": n, "seconds": time.perf_counter() - t0, "lat": lat}


def _combine(batches: list[dict], key: str) -> dict:
    n = sum(b["n"] for b in batches)
    seconds = sum(b["seconds"] for b in batches)
    lat = [x for b in batches for x in b[key]]
    return {"n": n, "seconds": round(seconds, 3), "per_second": round(n / seconds, 2) if seconds else None,
            "latency_ms": summary_ms(lat),
            "rounds_per_second": [round(b["n"] / b["seconds"], 2) for b in batches]}


async def settle(smtp: common.SmtpCatcher, created: list[str], timeout: float = 120) -> None:
    """Wait until every contract created so far has had its catch-up reminder accepted: the
    project's work for a creation is then done and will not spill into the next phase."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reminded = {m.key.split(":")[0] for m in smtp.matching(lambda m: ":reminder" in m.key)}
        if reminded >= set(created):
            return
        await asyncio.sleep(0.2)


async def body(args: argparse.Namespace, result: dict) -> None:
    import httpx

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
                    common.VisibilityWatch(db.url) as watch:
                floor_tq = floor["task_queue"]
                procs = {"api": project["api"], "worker": project["worker"], "floor worker": floor["worker"]}
                limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
                async with httpx.AsyncClient(base_url=project["base_url"], timeout=120, limits=limits) as c:
                    tag = uuid.uuid4().hex[:6].upper()
                    statuses: list[int] = []
                    created: list[str] = []
                    # Warm-up (not measured): connections, caches, template compilation.
                    say("· warm-up ...")
                    await measure_project(c, watch, tag, 0, args.warmup, 4, statuses, created)
                    await measure_floor(server.client, floor_tq, args.warmup, 4, complete=False)
                    await measure_floor(server.client, floor_tq, args.warmup, 4, complete=True)
                    await settle(smtp, created)
                    next_k = args.warmup
                    result["levels"] = []
                    for concurrency, total in ((1, args.n1), (16, args.n16)):
                        per_round = max(1, total // args.rounds)
                        project_b, floor_start, floor_done = [], [], []
                        cpu_project: dict[str, float] = defaultdict(float)
                        cpu_floor: dict[str, float] = defaultdict(float)
                        for r in range(args.rounds):
                            floor_start.append(await measure_floor(server.client, floor_tq, per_round, concurrency, False))
                            with common.cpu_used(procs, server, cpu_floor):
                                floor_done.append(await measure_floor(server.client, floor_tq, per_round, concurrency,
                                                                      True))
                            with common.cpu_used(procs, server, cpu_project):  # the catch-up email included
                                project_b.append(await measure_project(c, watch, tag, next_k, per_round, concurrency,
                                                                       statuses, created))
                                await settle(smtp, created)
                            next_k += per_round
                            say(f"  c={concurrency} round {r + 1}: project {per_round / project_b[-1]['seconds']:.1f}/s, "
                                f"bare start {per_round / floor_start[-1]['seconds']:.1f}/s, "
                                f"bare start+complete {per_round / floor_done[-1]['seconds']:.1f}/s  "
                                f"(load {common.load_average()[0]})")
                        p = _combine(project_b, "e2e")
                        p["post_latency_ms"] = summary_ms([x for b in project_b for x in b["post"]])
                        fs = _combine(floor_start, "lat")
                        fd = _combine(floor_done, "lat")
                        level = {
                            "concurrency": concurrency,
                            "project": p,
                            "floor_start": fs,
                            "floor_start_and_complete": fd,
                            "ratio_to_bare_start": common.ratio(p["per_second"], fs["per_second"], 3),
                            "ratio_to_bare_start_and_complete": common.ratio(p["per_second"], fd["per_second"], 3),
                            "load_1m": common.load_average()[0],
                        }
                        if args.split:  # CPU per contract, by process (bench process and its SMTP server excluded)
                            n = per_round * args.rounds
                            level["cpu_ms_per_contract"] = {k: round(v * 1000 / n, 2) for k, v in cpu_project.items()}
                            level["cpu_ms_per_bare_start_and_complete"] = {
                                k: round(v * 1000 / n, 2) for k, v in cpu_floor.items()}
                        result["levels"].append(level)
                        say(f"c={concurrency:>2}: project {p['per_second']:.1f} contracts/s "
                            f"(POST p50 {p['post_latency_ms']['p50']} ms, visible p50 {p['latency_ms']['p50']} ms, "
                            f"p99 {p['latency_ms']['p99']} ms) | bare start {fs['per_second']:.1f}/s "
                            f"(p50 {fs['latency_ms']['p50']} ms) | bare start+complete {fd['per_second']:.1f}/s "
                            f"-> ratio {level['ratio_to_bare_start']} of bare start, "
                            f"{level['ratio_to_bare_start_and_complete']} of start+complete")
                        if args.split:
                            say(f"      CPU per contract, ms: {level['cpu_ms_per_contract']} | per bare start+complete: "
                                f"{level['cpu_ms_per_bare_start_and_complete']}")

                    # ---- checks
                    from sqlalchemy import text

                    await settle(smtp, created)
                    with watch.engine.connect() as conn:
                        rows: dict[str, str] = dict(conn.execute(text("SELECT id, status FROM contracts")).all())
                    reminded = {m.key.split(":")[0] for m in smtp.matching(lambda m: ":reminder" in m.key)}
                    checks = result["checks"]
                    checks["every POST /contracts answered 201"] = all(s == 201 for s in statuses)
                    checks["every contract became visible in the read model"] = all(cid in watch.seen_at for cid in created)
                    checks["every contract row is active"] = all(rows.get(cid) == "active" for cid in created)
                    checks["every contract got its catch-up reminder email"] = reminded >= set(created)
                    checks["no duplicate reminder emails"] = smtp.duplicates() == 0
                    result["contracts_created"] = len(created)
                    result["emails"] = len(smtp.mails)
    tmp.cleanup()
    for level in result.get("levels", []):
        c = level["concurrency"]
        result["targets"][f"creation rate >= 0.5x bare start_workflow rate, concurrency {c}"] = {
            "value": level["ratio_to_bare_start"], "target": ">= 0.5", "met": (level["ratio_to_bare_start"] or 0) >= 0.5,
        }
        if c == 16:  # issue #12's target: against the floor's equivalent of "visible"
            r = level["ratio_to_bare_start_and_complete"]
            result["targets"]["#12: creation rate >= 0.6x bare start+complete rate, concurrency 16"] = {
                "value": r, "target": ">= 0.6", "met": (r or 0) >= 0.6,
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n1", type=int, default=40, help="contracts at concurrency 1 (split over the rounds)")
    parser.add_argument("--n16", type=int, default=320, help="contracts at concurrency 16 (split over the rounds)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating floor/project rounds per concurrency")
    parser.add_argument("--warmup", type=int, default=16)
    common.add_database_args(parser)
    common.add_split_arg(parser)
    common.run_main(NAME, parser, body)


if __name__ == "__main__":
    main()
