"""`make bench` (whole backlog): one `dagster job execute -j ingest_events` over 6 partitions.

The backlog: BACKLOG_EVENTS (1,000,000) Faker events (5 % bad, 1 % duplicates) on a raw topic of 6
partitions, as a team finds it after an outage. Each of BACKLOG_RUNS (3) drains it with the
command a user types, on a fresh data dir and a fresh DAGSTER_HOME:

- **end to end**: from starting the CLI to its exit (Python and Dagster start-up, loading the code
  location, the run, its events written to the instance);
- **ingest**: the run's own time for its ranges (its summary line, `... in X s`);
- **peak RSS** of that process (the op runs in it: the in-process executor), and its **CPU
  seconds** (all threads, start-up included): the work a faster run would have to spread over
  the machine's cores.

After each, the audit (`reconcile`'s checks) must find every offset exactly once. Beside the
median: raw consume of the same backlog (every partition read and dropped: the ceiling), the
share of it reached, and the per-event baseline of benchmarks/bench.py on partition 0's range.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.multihost import load
from pipeline_project.batch.backlog import partition_states
from pipeline_project.batch.ranges import Range
from pipeline_project.kafka.drain import drain_range, make_consumer
from pipeline_project.lake.audit import audit
from pipeline_project.lake.location import lake_of
from pipeline_project.settings import Settings
from pipeline_project_tests.faults.fault_support import fresh_settings, some_broker
from pipeline_project_tests.support import env_for

PARTITIONS = 6
RUNS = int(os.environ.get("BACKLOG_RUNS", "3"))
DAGSTER = str(Path(sys.executable).with_name("dagster"))
REPO_ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"(\d+) range\(s\) committed.*?: (\d+) records .*? in ([\d.]+) s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events", type=int, default=int(os.environ.get("BACKLOG_EVENTS", "1000000"))
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-backlog-") as tmp:
        result = measure(Path(tmp), args.events)
    print(json.dumps(result, indent=2))
    return 0 if all(r["audit_ok"] for r in result["runs"]) else 1


def measure(work: Path, events: int) -> dict:
    with contextlib.ExitStack() as stack:
        bootstrap = stack.enter_context(some_broker(work))
        settings = fresh_settings(bootstrap, work / "data", partitions=PARTITIONS)
        produced = load(settings, events)
        ends = {p.partition: p.high for p in partition_states(settings)}
        raw = raw_consume(settings, ends)
        runs = [execute(work / f"run-{i}", settings) for i in range(RUNS + 1)][1:]  # 1 warm-up
        e2e = statistics.median(r["end_to_end_eps"] for r in runs)
        own = statistics.median(r["ingest_eps"] for r in runs)
        return {
            "events": sum(ends.values()),
            "partitions": PARTITIONS,
            "produced": produced,
            "raw_consume_eps": raw,
            "end_to_end_eps_median": round(e2e),
            "ingest_eps_median": round(own),
            "ingest_share_of_raw_consume": round(own / raw, 3),
            "peak_rss_mib_max": max(r["peak_rss_mib"] for r in runs),
            "cpu_s_median": statistics.median(r["cpu_s"] for r in runs),
            "per_event_baseline_eps": baseline(settings, ends[0], work / "baseline"),
            "runs": runs,
        }


def raw_consume(settings: Settings, ends: dict[int, int]) -> int:
    """Every partition read and dropped, one after another, with the pipeline's consumer."""
    consumer = make_consumer(settings)
    try:
        started = time.perf_counter()
        records = sum(
            len(drain_range(consumer, Range(settings.raw_topic, p, 0, end), timeout_s=300))
            for p, end in sorted(ends.items())
        )
        return round(records / (time.perf_counter() - started))
    finally:
        consumer.close()


def execute(root: Path, base: Settings) -> dict:
    """One `dagster job execute -j ingest_events` as a user runs it, on a fresh lake and DB."""
    settings = dataclasses.replace(base, data_dir=root / "data", consumer_group=f"{root.name}-g")
    home = root / "dagster"
    home.mkdir(parents=True)
    env = {**env_for(settings), "DAGSTER_HOME": str(home)}
    argv = [DAGSTER, "job", "execute", "-m", "pipeline_project.definitions", "-j", "ingest_events"]
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = proc.stdout.read() if proc.stdout else ""
    _pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"dagster job execute failed ({proc.returncode}): {output[-3000:]}")
    found = SUMMARY.search(output)
    if found is None:
        raise RuntimeError(f"no run summary in the output: {output[-3000:]}")
    records, ingest_s = int(found.group(2)), float(found.group(3))
    problems = audit(lake_of(settings)).problems
    return {
        "ranges": int(found.group(1)),
        "records": records,
        "end_to_end_s": round(seconds, 2),
        "end_to_end_eps": round(records / seconds),
        "ingest_s": ingest_s,
        "ingest_eps": round(records / ingest_s),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),
        # CPU of all the process's threads, start-up included: over 2 x end_to_end_s, the
        # process alone would need more than two cores.
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "audit_ok": not problems,
        "audit_problems": [str(p) for p in problems[:5]],
    }


def baseline(settings: Settings, end: int, out: Path) -> int:
    """benchmarks/bench.py's per-event pure-Python baseline over partition 0's range."""
    from benchmarks.bench import _baseline

    return round(_baseline(settings, end, out)["events_per_s"])


if __name__ == "__main__":
    sys.exit(main())
