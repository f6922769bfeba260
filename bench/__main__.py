"""Every benchmark, with modest sizes, one after the other:  ``.venv/bin/python -m bench``

Each runs as its own process (its own Temporal server, its own exit status) and writes
bench/results/<name>.json; this prints one summary line per benchmark with its ratio to the
bare-Temporal floor and exits non-zero if any benchmark's correctness checks failed (a missed
target is reported, not a failure).  ``--full`` uses the issue's sizes instead (10,000 contracts
in the scale run, a burst of 1,000 reminders): that takes much longer, see docs/benchmarks.md.
Extra arguments after ``--`` go to every benchmark (e.g. ``-- --pg``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

QUICK = {
    "creation": ["--n1", "20", "--n16", "160", "--rounds", "2", "--warmup", "8"],
    "payment": ["--n", "150", "--n16", "160"],
    "reminders": ["--samples", "5", "--burst", "100", "--burst-offset", "30"],
    "scale": ["--contracts", "300", "--touch", "50"],
    "history": ["--years", "5"],
}
FULL = {
    "creation": [],
    "payment": ["--n", "1000", "--n16", "960"],
    "reminders": ["--samples", "10", "--burst", "1000"],
    "scale": ["--contracts", "10000"],
    "history": ["--years", "5"],
}


def line(name: str, r: dict) -> str:
    t = "; ".join(f"{'met' if v.get('met') else 'MISSED'}: {k} = {v.get('value')}" for k, v in r.get("targets", {}).items())
    if name == "creation":
        fig = ", ".join(f"c={lv['concurrency']}: {lv['project']['per_second']}/s vs bare {lv['floor_start']['per_second']}/s"
                        f" (x{lv['ratio_to_bare_start']})" for lv in r.get("levels", []))
    elif name == "payment":
        lv = r["levels"][0]
        fig = (f"p50 {lv['project_latency_ms']['p50']} ms vs bare {lv['floor_latency_ms']['p50']} ms (x{lv['ratio_p50']}),"
               f" p99 {lv['project_latency_ms']['p99']} ms")
    elif name == "reminders":
        lat = r["latency"]
        fig = f"latency max {lat['reminder_latency_ms'].get('max')} ms (x{lat['ratio_max']} of bare)"
        if r.get("burst"):
            b = r["burst"]
            fig += (f"; burst {b['contracts']}: all in {b['reminders'].get('all_s')} s vs bare {b['floor'].get('all_s')} s"
                    f" (x{b['ratio_all']}), {b['reminders']['duplicates']} duplicates")
    elif name == "scale":
        p = r["project"]
        fig = (f"{r['contracts']} contracts: worker {p['worker_peak_rss_mb']} MB peak (x{r['ratio_worker_rss']} of bare),"
               f" start {p['start_seconds']} s (x{r['ratio_start_time']}), {r['storage']['contracts_db_bytes_per_contract']}"
               f" B/contract read model")
    else:
        s = r["summary"]
        fig = (f"{s['runs']} runs, max {s['max_events_per_run']} events/run, largest payload "
               f"{s['largest_payload_bytes'] / 1024:.0f} KiB (x{r['ratio_events']} events of bare)")
    return f"{name:<10} {fig}\n{'':<10} {t}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the issue's sizes (long)")
    parser.add_argument("--only", nargs="*", choices=list(QUICK), help="run only these")
    parser.add_argument("extra", nargs="*", help="after --: passed to every benchmark")
    args = parser.parse_args()
    if "--output" in args.extra:
        parser.error("--output cannot be passed to every benchmark: each writes bench/results/<name>.json")
    sizes = FULL if args.full else QUICK
    names = args.only or list(sizes)
    codes: dict[str, int] = {}
    started = time.perf_counter()
    for name in names:
        print(f"\n===== bench.{name} {' '.join(sizes[name] + args.extra)}", flush=True)
        t0 = time.perf_counter()
        codes[name] = subprocess.call([sys.executable, "-m", f"bench.{name}", *sizes[name], *args.extra], cwd=ROOT)
        print(f"===== bench.{name}: exit {codes[name]} in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\n===== summary ({time.perf_counter() - started:.0f} s)")
    for name in names:
        path = RESULTS / f"{name}.json"
        try:
            r = json.loads(path.read_text())
            if "error" in r:
                print(f"{name:<10} broke: {r['error']}")
            else:
                print(line(name, r) + ("" if codes[name] == 0 else f"\n{'':<10} CHECKS FAILED (exit {codes[name]})"))
        except (OSError, KeyError, TypeError, ValueError) as exc:
            print(f"{name:<10} no figures ({exc.__class__.__name__}: {exc}); exit {codes[name]}")
    bad = {k: v for k, v in codes.items() if v != 0}
    if bad:
        print(f"failed: {bad}")
    sys.stdout.flush()
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
