"""`make bench-multihost`: one worker host against two, draining one backlog on Dagster's engine.

The backlog: MULTIHOST_EVENTS (1,000,000) Faker events (5 % bad, 1 % duplicates) on a raw topic of
12 partitions. For each worker count, a fresh Dagster database on PostgreSQL and a fresh lake prefix
on versitygw: a control host (dagster-daemon: sensor, run queue) and N worker hosts (dagster-celery,
concurrency 1 each) as separate process trees with their own directories, sharing only Kafka,
PostgreSQL, Redis and the lake (pipeline_project_tests/multihost/hosts.py). Timed from the control
host's start to every partition committed; then the audit (`reconcile`) must find every offset
exactly once and the committed records must add up to the backlog.

Prints one JSON object: per worker count the wall time, per-run seconds, the runs per worker and
the audit; and what two separate machines would take, projected from the one-worker per-run
figures (on this 2-core machine two workers share the cores, so the measured speed-up is bounded).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dagster import DagsterRunStatus

from pipeline_project.batch.backlog import partition_states
from pipeline_project.lake.audit import audit
from pipeline_project.lake.history import read_history
from pipeline_project.lake.location import lake_of
from pipeline_project.lake.s3server import LocalS3
from pipeline_project.settings import Settings
from pipeline_project_tests.faults.fault_support import fresh_settings, some_broker
from pipeline_project_tests.multihost.flow import INGEST_JOB, caught_up, wait_until
from pipeline_project_tests.multihost.hosts import (
    Cluster,
    executed_by,
    runs_of,
    shared_env,
)
from pipeline_project_tests.multihost.services import LocalPostgres, LocalRedis
from pipeline_project_tests.support import env_for, free_port_pair, unique

PARTITIONS = 12
MONITORING = {"poll_interval_seconds": 10, "max_runtime_seconds": 3600}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events", type=int, default=int(os.environ.get("MULTIHOST_EVENTS", "1000000"))
    )
    parser.add_argument("--workers", default="1,2", help="worker counts to measure, in order")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-multihost-") as tmp:
        result = measure(Path(tmp), args.events, counts)
    print(json.dumps(result, indent=2))
    return 0 if all(r["audit_ok"] for r in result["runs"].values()) else 1


def measure(work: Path, events: int, counts: list[int]) -> dict:
    """Starts the shared services once, loads the backlog once, then drains it per worker count."""
    with contextlib.ExitStack() as stack:
        postgres, redis = LocalPostgres(), LocalRedis()
        s3 = LocalS3(home=work / "s3", port=free_port_pair())
        for service in (postgres, redis, s3):
            service.start()
            stack.callback(service.stop)
        bootstrap = stack.enter_context(some_broker(work))
        base = fresh_settings(bootstrap, work / "data", partitions=PARTITIONS)
        base = dataclasses.replace(base, min_backlog_events=1)
        loaded = load(base, events)
        ends = {p.partition: p.high for p in partition_states(base)}
        out = {"events": events, "partitions": PARTITIONS, "produced": loaded, "runs": {}}
        for count in counts:
            lake = f"s3://{s3.bucket}/{unique('bench')}"
            settings = dataclasses.replace(base, lake_uri=lake, consumer_group=unique("bench"))
            env = shared_env(postgres, redis, s3)
            os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
            out["runs"][f"{count}_workers"] = drain(work / f"w{count}", settings, env, count, ends)
        out["two_machines_projected_s"] = project(out["runs"]["1_workers"]) if 1 in counts else None
        return out


def load(settings: Settings, events: int) -> dict:
    """The producer CLI at full speed, keyed over every partition."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline_project.cli", "produce", "--count", str(events)]
        + ["--rate", "0", "--bad-ratio", "0.05", "--duplicate-ratio", "0.01", "--seed", "42"],
        env=env_for(settings),
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {"delivered": summary.get("delivered"), "events_per_s": summary.get("events_per_s")}


def drain(root: Path, settings: Settings, env: dict, count: int, ends: dict[int, int]) -> dict:
    """One drain of the whole backlog by `count` worker hosts; figures and the audit."""
    cluster = Cluster(root, settings, env, monitoring=MONITORING)
    try:
        cluster.migrate()
        workers = [cluster.start_worker(f"worker-{i}") for i in range(count)]
        cluster.wait_ready(*workers, timeout=300)
        started = time.monotonic()
        cluster.start_control()
        wait_until("the backlog to drain", caught_up(settings, ends), 3600, cluster.hosts)
        wall = time.monotonic() - started
        with cluster.observer() as instance:
            every = runs_of(instance, INGEST_JOB)
            runs = [r for r in every if r.start_time and r.end_time]  # started and finished
            failed = sum(r.dagster_run.status != DagsterRunStatus.SUCCESS for r in every)
            seconds = [r.end_time - r.start_time for r in runs]
            first_start = min(r.start_time for r in runs)
            by_worker = {
                w.name: sum(executed_by(r.dagster_run, workers) == w.name for r in runs)
                for w in workers
            }
            launch_to_end = max(r.end_time for r in runs) - first_start
    finally:
        cluster.stop()
    lake = lake_of(settings)
    problems = audit(lake).problems
    records = sum(r.records for r in read_history(lake).records)
    backlog = sum(ends.values())
    return {
        "wall_s": round(wall, 1),
        "first_run_start_to_last_run_end_s": round(launch_to_end, 1),
        "runs": len(runs),
        "runs_not_successful": failed,  # failed or given up (their ranges ran again)
        "runs_per_worker": by_worker,
        "run_s_mean": round(statistics.mean(seconds), 2),
        "run_s_sum": round(sum(seconds), 1),
        "run_s": sorted(round(s, 2) for s in seconds),
        "records_committed": records,
        "backlog": backlog,
        "audit_problems": [str(p) for p in problems[:5]],
        "audit_ok": not problems and records == backlog,
    }


def project(one: dict) -> float:
    """What two separate machines would take, from the one-worker figures.

    The same runs spread over two hosts that share nothing (each run as long as it took alone),
    plus the same dispatch gap between one host's runs.
    """
    durations = sorted(one["run_s"], reverse=True)
    gap = max(0.0, (one["first_run_start_to_last_run_end_s"] - one["run_s_sum"]) / one["runs"])
    hosts = [0.0, 0.0]
    for seconds in durations:  # longest first onto the host that frees up first
        hosts[hosts.index(min(hosts))] += seconds + gap
    startup = one["wall_s"] - one["first_run_start_to_last_run_end_s"]
    return round(startup + max(hosts), 1)


if __name__ == "__main__":
    sys.exit(main())
