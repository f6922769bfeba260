"""Analytics at scale: 100,000 contracts (about 1,000,000 milestones) in PostgreSQL, and the p50
latency of every ``GET /analytics/...`` endpoint.

    .venv/bin/python -m bench.analytics                      # seed (once) and measure
    .venv/bin/python -m bench.analytics --contracts 20000    # smaller
    .venv/bin/python -m bench.analytics --reseed             # drop and seed again

The data set is core.demo_data.generate (two years of goods-sale and service contracts: late
stages, partial payments, costs, scores, three currencies), written into the read-model tables
with COPY (not through workflows: analytics only read the read model), in a database of its own
(``contracts_bench_analytics``, kept between runs so the seeding is paid once; ``--reseed`` drops it).
Then ``VACUUM ANALYZE``, and each endpoint is called ``--repeat`` times in process (FastAPI's
TestClient over the real app routes, problem handlers and response models; no network, no
Temporal: these routes need neither) after one warm-up call.  Printed and written to
``bench/results/analytics.json``: p50 / p90 / max per endpoint and query, the row counts, the
machine and its load average.  Target: p50 under 200 ms for each.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "analytics.json"
ADMIN_DSN = os.environ.get("BENCH_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
DB_NAME = "contracts_bench_analytics"
TARGET_MS = 200.0
# Fixed "now" so a kept data set and the periods asked for stay consistent between runs.
NOW = datetime(2026, 11, 20, 4, 0, tzinfo=timezone.utc)

COLUMNS = {
    "contracts": ["id", "external_id", "workflow_id", "erp_order_no", "title", "customer_id", "customer_name",
                  "currency", "amount", "paid_total", "outstanding", "credit", "effective_at", "end_at", "owner",
                  "playbook", "status", "overdue_count", "next_due_at", "version", "spec", "created_at",
                  "updated_at", "closed_at", "close_reason", "settled_at"],
    "milestones": ["contract_id", "key", "position", "name", "kind", "owner", "department", "standard", "due_rule",
                   "depends_on", "due_at", "due_estimated", "status", "progress", "completed_at", "completed_by",
                   "overdue_since", "planned_cost", "actual_cost", "satisfaction", "started_at", "currency"],
    "installments": ["contract_id", "key", "position", "amount", "paid", "status", "due_at", "due_estimated",
                     "paid_at", "currency"],
    "payments": ["contract_id", "reference", "amount", "currency", "received_at", "recorded_at", "recorded_by",
                 "allocations", "excess"],
}


def _cell(value: Any) -> str:
    """One value in COPY's text format."""
    if value is None:
        return r"\N"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False)
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _line(values: list[Any]) -> str:
    return "\t".join(_cell(v) for v in values) + "\n"


def _admin():
    import psycopg2

    conn = psycopg2.connect(ADMIN_DSN)
    conn.autocommit = True
    return conn


def database_url() -> str:
    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{DB_NAME}"


def existing_counts() -> dict[str, int] | None:
    import psycopg2

    admin = _admin()
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
            if cur.fetchone() is None:
                return None
    finally:
        admin.close()
    try:
        conn = psycopg2.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={DB_NAME}")
    except psycopg2.OperationalError:
        return None
    try:
        with conn.cursor() as cur:
            counts = {}
            for table in COLUMNS:
                cur.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 - fixed names
                counts[table] = cur.fetchone()[0]
            return counts
    except psycopg2.Error:
        return None
    finally:
        conn.close()


def _has_stage_days() -> bool:
    import psycopg2

    conn = psycopg2.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={DB_NAME}")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM information_schema.columns WHERE table_name = 'milestones' "
                        "AND column_name = 'stage_days'")
            return cur.fetchone() is not None
    finally:
        conn.close()


def seed(n: int) -> dict[str, Any]:
    import psycopg2

    from core.demo_data import CUSTOMERS, generate
    from core.migrate import upgrade

    admin = _admin()
    try:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
            cur.execute(f'CREATE DATABASE "{DB_NAME}"')
    finally:
        admin.close()
    upgrade(database_url())
    started = time.perf_counter()
    conn = psycopg2.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={DB_NAME}")
    # Secondary indexes are dropped for the load and built again after it (much faster than
    # maintaining them row by row); their definitions come from the migrated schema itself.
    with conn.cursor() as cur:
        cur.execute(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i JOIN pg_class c ON c.relname = i.indexname "
            "JOIN pg_index x ON x.indexrelid = c.oid WHERE i.schemaname = 'public' AND i.tablename = ANY(%s) "
            "AND NOT x.indisprimary AND NOT x.indisunique", (list(COLUMNS),))
        secondary = cur.fetchall()
        for name, _ in secondary:
            cur.execute(f'DROP INDEX "{name}"')
    conn.commit()
    counts = dict.fromkeys(COLUMNS, 0)
    gen_seconds = copy_seconds = 0.0
    try:
        with conn.cursor() as cur:
            ids = {}
            for name, crm in CUSTOMERS:
                cur.execute("INSERT INTO customers (name, external_id, created_at) VALUES (%s, %s, %s) RETURNING id",
                            (name, crm, NOW))
                ids[crm] = cur.fetchone()[0]
            buffers = {t: io.StringIO() for t in COLUMNS}

            def flush() -> None:
                nonlocal copy_seconds
                t0 = time.perf_counter()
                for table, buf in buffers.items():
                    buf.seek(0)
                    cur.copy_expert(f"COPY {table} ({', '.join(COLUMNS[table])}) FROM STDIN", buf)
                    buf.seek(0)
                    buf.truncate()
                copy_seconds += time.perf_counter() - t0

            t0 = time.perf_counter()
            # A third are 12-month service contracts (18 milestones), the rest goods sales (6): ~10 each.
            for k, rows in enumerate(generate(n, now=NOW, seed=42, prefix="b", with_events=False,
                                              service_share=1 / 3), start=1):
                c = rows.contract
                buffers["contracts"].write(_line([c.get(col) if col != "customer_id" else ids[rows.customer[1]]
                                                  for col in COLUMNS["contracts"]]))
                for table, items in (("milestones", rows.milestones), ("installments", rows.installments),
                                     ("payments", rows.payments)):
                    for item in items:
                        buffers[table].write(_line([item.get(col) for col in COLUMNS[table]]))
                    counts[table] += len(items)
                counts["contracts"] += 1
                if k % 5000 == 0:
                    gen_seconds += time.perf_counter() - t0
                    flush()
                    conn.commit()
                    print(f"  {k:,} contracts, {counts['milestones']:,} milestones", flush=True)
                    t0 = time.perf_counter()
            gen_seconds += time.perf_counter() - t0
            flush()
        conn.commit()
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            for _, definition in secondary:
                cur.execute(definition)
        conn.commit()
        index_seconds = time.perf_counter() - t0
        conn.autocommit = True
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE")
        vacuum_seconds = time.perf_counter() - t0
    finally:
        conn.close()
    return {"counts": counts, "seconds": round(time.perf_counter() - started, 1),
            "generate_seconds": round(gen_seconds, 1), "copy_seconds": round(copy_seconds, 1),
            "index_seconds": round(index_seconds, 1), "vacuum_analyze_seconds": round(vacuum_seconds, 1)}


def make_client():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from api.analytics import routes
    from api.platform import problems
    from core.settings import Settings
    from models.db import make_engine, make_session_factory

    settings = Settings(database_url=database_url())
    app = FastAPI()
    problems.install(app)
    app.include_router(routes.router)
    engine = make_engine(settings.database_url)
    app.state.settings = settings
    app.state.sessions = make_session_factory(engine)
    return TestClient(app), engine


def _renice(engine, niceness: int) -> None:
    """Raise this process's and its PostgreSQL backends' CPU priority (root only): on a shared
    machine this measures the queries rather than the neighbours' load.  Recorded in the results."""
    from sqlalchemy import text

    pids = [os.getpid()]
    with engine.connect() as conn:
        pids += [r[0] for r in conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"))]
    for pid in pids:
        with contextlib.suppress(OSError):  # a backend that ended meanwhile
            os.setpriority(os.PRIO_PROCESS, pid, niceness)


def _backend_pids(engine) -> list[int]:
    from sqlalchemy import text

    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"))]


def _cpu_ns(pids: list[int]) -> int:
    """CPU time used so far by this process (all threads) and the given PostgreSQL backends, in ns
    (/proc/<pid>/schedstat: time on a CPU).  Unlike wall-clock time it does not grow when the machine
    is busy with other work, so it tells what a request costs."""
    total = time.process_time_ns()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def measure(client, repeat: int, engine=None, niceness: int = 0) -> list[dict[str, Any]]:
    from unittest import mock

    from api.analytics import service as a

    # The data set's "now" is fixed: freeze the filters' clock to it.
    real = a.make_filters

    def frozen(**kw):
        kw.setdefault("now", NOW)
        return real(**kw)

    cases = []
    for path in ("/analytics/cycle", "/analytics/stages", "/analytics/receivables", "/analytics/costs",
                 "/analytics/satisfaction", "/analytics/bottlenecks"):
        cases.append((path, {"period": "2026-Q3"}))
        cases.append((path, {}))  # the default: the last 12 months
    cases.append(("/analytics/stages", {"period": "2026-Q3", "owner": "zhao.lei", "department": "logistics"}))
    cases.append(("/analytics/cycle", {"period": "2026-Q3", "customer": "ningbo"}))
    report_cases = [("/analytics/reports/quarterly", {"quarter": "2026-Q3"}),
                    ("/analytics/reports/quarterly.csv", {"quarter": "2026-Q3"})]
    out = []
    app = client.app
    tz = ZoneInfo(app.state.settings.business_timezone)
    with mock.patch.object(a, "make_filters", frozen):
        # The report of a closed quarter is kept under the read model's change marker: measured
        # computed every time (cold: both quarters, six metrics each, on two connections) and kept (warm).
        for path, params, cache in ([(p, q, None) for p, q in cases] + [(p, q, False) for p, q in report_cases]
                                    + [(p, q, True) for p, q in report_cases]):
            if cache is not None:
                app.state.analytics = a.AnalyticsService(app.state.sessions, tz, cache_reports=cache)
            r = client.get(path, params=params)
            if niceness and engine is not None:
                _renice(engine, niceness)
            assert r.status_code == 200, (path, r.status_code, r.text[:500])
            times, cpu = [], []
            pids = _backend_pids(engine) if engine is not None else []
            for _ in range(repeat):
                c0, t0 = _cpu_ns(pids), time.perf_counter()
                r = client.get(path, params=params)
                times.append((time.perf_counter() - t0) * 1000)
                cpu.append((_cpu_ns(pids) - c0) / 1e6)
                assert r.status_code == 200
            times.sort()
            p50 = statistics.median(times)
            cpu_p50 = statistics.median(cpu)
            row = {"endpoint": path, "params": params, "report_cache": cache, "p50_ms": round(p50, 1),
                   "cpu_p50_ms": round(cpu_p50, 1),
                   "p90_ms": round(times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))], 1),
                   "max_ms": round(times[-1], 1), "under_target": p50 < TARGET_MS}
            q = "&".join(f"{k}={v}" for k, v in params.items()) or "(default: last 12 months)"
            if cache is not None:
                q += " (kept)" if cache else " (computed)"
            print(f"  {path:34s} {q:52s} p50 {row['p50_ms']:7.1f} ms  p90 {row['p90_ms']:7.1f} ms  "
                  f"cpu p50 {cpu_p50:7.1f} ms  {'ok' if row['under_target'] else 'SLOW'}", flush=True)
            out.append(row)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contracts", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--reseed", action="store_true", help="drop the benchmark database and seed it again")
    parser.add_argument("--nice", type=int, default=0,
                        help="run this process and its PostgreSQL backends at this niceness (e.g. -10, root only)")
    args = parser.parse_args()

    counts = None if args.reseed else existing_counts()
    seeding = None
    if counts is None or counts.get("contracts") != args.contracts:
        print(f"seeding {args.contracts:,} contracts into {DB_NAME} (COPY) ...", flush=True)
        seeding = seed(args.contracts)
        counts = seeding["counts"]
        print(f"  seeded in {seeding['seconds']} s: {counts}", flush=True)
    else:
        print(f"reusing {DB_NAME}: {counts}", flush=True)
        from core.migrate import upgrade

        upgrade(database_url())  # new indexes, if any
        if not _has_stage_days():
            # Seeded while migration 0010 was still a placeholder: the version says done, the
            # generated column is not there.  Seed again.
            print("  milestones.stage_days missing (migration 0010): seeding again ...", flush=True)
            seeding = seed(args.contracts)
            counts = seeding["counts"]

    client, engine = make_client()
    print(f"measuring ({args.repeat} calls each after a warm-up; load average {os.getloadavg()[0]:.2f}) ...",
          flush=True)
    try:
        rows = measure(client, args.repeat, engine, args.nice)
    finally:
        engine.dispose()
    slow = [r for r in rows if not r["under_target"]]
    result = {
        "benchmark": "analytics",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.analytics " + " ".join(sys.argv[1:]),
        "data_now": NOW.isoformat(),
        "rows": counts,
        "seeding": seeding,
        "target_p50_ms": TARGET_MS,
        "endpoints": rows,
        "all_under_target": not slow,
        "niceness": args.nice,
        "machine": {"nproc": os.cpu_count(), "os": f"{platform.system()} {platform.release()}",
                    "python": platform.python_version(), "load_average": [round(x, 2) for x in os.getloadavg()]},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}; "
          + ("every p50 under 200 ms" if not slow else f"{len(slow)} over 200 ms"), flush=True)
    return 0 if not slow else 1


if __name__ == "__main__":
    sys.exit(main())
