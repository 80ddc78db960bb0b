"""The soak run (`make soak`; not in CI): the real scheduler under a steady load for a while.

A producer writes at a fixed rate (SOAK_RATE, default 5000 events/s) for SOAK_SECONDS (default 600)
while `dagster-daemon run` (DAGSTER_HOME in a temp dir, the repo's dagster.yaml run queue) runs
`kafka_backlog_sensor` and the ingest runs it launches. Every few seconds it prints the lag; at the
end it waits for the backlog to drain, stops everything, runs reconcile and the oracle, and prints a
JSON summary: lag over time, p50/p99 freshness (produce → committed: kafka_timestamp against the
manifest's committed_at), runs and failures, RSS of the daemon and of the runs at start and end.

    SOAK_RATE=2000 SOAK_SECONDS=60 python -m pipeline_project_tests.faults.soak

Uses PIPELINE_KAFKA_BOOTSTRAP when it answers, else starts a broker of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import polars as pl

from pipeline_project.batch.backlog import partition_states
from pipeline_project.errors import PipelineError
from pipeline_project.lake.audit import audit
from pipeline_project.lake.history import read_history
from pipeline_project.lake.location import lake_of
from pipeline_project.lake.read import scan_table
from pipeline_project.settings import Settings
from pipeline_project_tests.faults import oracle
from pipeline_project_tests.faults.fault_support import (
    fresh_settings,
    some_broker,
    start_producer,
    stop_producer,
)
from pipeline_project_tests.support import PYTHON, REPO_ROOT, env_for

PAGE = os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------------ processes


def _proc_table() -> dict[int, tuple[int, str, float]]:
    """pid → (ppid, cmdline, RSS in MB) for every process we can read."""
    table: dict[int, tuple[int, str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            rss = int((entry / "statm").read_text().split()[1]) * PAGE / 2**20
            table[int(entry.name)] = (ppid, cmd, rss)
    return table


@dataclass
class ProcSample:
    """RSS (MB) of the daemon, its code servers and the ingest runs alive at one moment."""

    daemon: float = 0.0
    code_servers: float = 0.0
    runs: list[float] = field(default_factory=list)


def sample_processes(root: int) -> ProcSample:
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    sample = ProcSample(daemon=table.get(root, (0, "", 0.0))[2])
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        ppid, cmd, rss = table[pid]
        # The code server starts each run as a multiprocessing child ("spawn_main"), the
        # repo's PrewarmedRunLauncher forks it from its fork server (same command line as its
        # parent); the watch_orphans and resource_tracker helpers are tiny and not counted.
        forked = "forkserver" in cmd and "forkserver" in table.get(ppid, (0, "", 0.0))[1]
        if "spawn_main" in cmd or "execute_run" in cmd or forked:
            sample.runs.append(round(rss, 1))
        elif "api grpc" in cmd or "code-server" in cmd:
            sample.code_servers += rss
    return sample


# ----------------------------------------------------------------------------------------- soak


@dataclass
class Timeline:
    """One line per sample: seconds since start, lag, committed offsets, processes."""

    rows: list[dict] = field(default_factory=list)
    first_runs: list[float] = field(default_factory=list)
    last_runs: list[float] = field(default_factory=list)

    def add(self, t: float, settings: Settings, daemon: int) -> dict:
        states = partition_states(settings)
        committed = sum((s.committed_end or s.low) - s.low for s in states)
        lag = sum(s.high - (s.committed_end or s.low) for s in states)
        procs = sample_processes(daemon)
        row = {
            "t": round(t, 1),
            "high": sum(s.high for s in states),
            "committed": committed,
            "lag": lag,
            "runs_alive": len(procs.runs),
            "daemon_rss_mb": round(procs.daemon, 1),
            "code_server_rss_mb": round(procs.code_servers, 1),
        }
        if procs.runs:
            self.first_runs = self.first_runs or procs.runs
            self.last_runs = procs.runs
        self.rows.append(row)
        return row


def sample(timeline: Timeline, t: float, settings: Settings, daemon: int) -> dict | None:
    """One timeline row, printed; None when Kafka did not answer this time (a leader move)."""
    try:
        row = timeline.add(t, settings, daemon)
    except PipelineError as exc:
        print(f"sample at {t:.0f} s skipped: {exc}", file=sys.stderr)
        return None
    print(json.dumps(row), file=sys.stderr)
    return row


def start_daemon(settings: Settings, home: Path, log: Path) -> subprocess.Popen[bytes]:
    """`dagster-daemon run` on the repo's workspace, in its own session (killed as a group)."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = env_for(settings, DAGSTER_HOME=str(home))
    daemon = Path(PYTHON).parent / "dagster-daemon"
    return subprocess.Popen(
        [str(daemon), "run", "-w", str(REPO_ROOT / "workspace.yaml")],
        env=env,
        stdout=open(log, "wb"),  # noqa: SIM115 - owned by the child
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
        start_new_session=True,
    )


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def freshness(settings: Settings, produced_until_ms: float) -> dict[str, float]:
    """p50/p99 seconds from produce (kafka_timestamp) to commit (the range commit's time)."""
    lake = lake_of(settings)
    records = [
        r
        for r in read_history(lake).records
        if r.range.topic == settings.raw_topic and r.committed_at is not None
    ]
    scan = scan_table(lake)
    if scan is None or not records:
        return {}
    rows = scan.filter(pl.col("dlq_offset").is_null()).select(
        "kafka_partition", "kafka_offset", "kafka_timestamp"
    )
    spans = pl.DataFrame(
        [
            {
                "kafka_partition": r.range.partition,
                "start": r.range.start,
                "end": r.range.end,
                "committed_ms": r.committed_at.timestamp() * 1000,
            }
            for r in records
        ]
    ).sort("start")
    rows = rows.with_columns(pl.col("kafka_partition").cast(pl.Int64))  # the lake's is Int32
    joined = (
        rows.collect()
        .sort("kafka_offset")
        .join_asof(
            spans,
            left_on="kafka_offset",
            right_on="start",
            by="kafka_partition",
            check_sortedness=False,
        )
    )
    df = joined.select(
        produced_ms=pl.col("kafka_timestamp").dt.epoch("ms"), committed_ms=pl.col("committed_ms")
    ).with_columns(lag_s=(pl.col("committed_ms") - pl.col("produced_ms")) / 1000)
    steady = df.filter(pl.col("produced_ms") <= produced_until_ms)

    def q(frame: pl.DataFrame, quantile: float) -> float:
        value = frame.get_column("lag_s").quantile(quantile) if frame.height else None
        return round(float(value), 1) if value is not None else float("nan")

    return {
        "p50_s": q(df, 0.5),
        "p99_s": q(df, 0.99),
        "max_s": round(float(df.get_column("lag_s").max() or 0.0), 1),
        "steady_p50_s": q(steady, 0.5),
        "steady_p99_s": q(steady, 0.99),
    }


def run_counts(home: Path) -> tuple[dict[str, int], dict[str, dict[str, float]]]:
    """Runs by status, and where the ingest runs' time went, from the soak's Dagster instance."""
    os.environ["DAGSTER_HOME"] = str(home)
    from dagster import DagsterInstance

    with DagsterInstance.get() as instance:
        counts: dict[str, int] = {}
        for run in instance.get_runs(limit=100_000):
            counts[run.status.value] = counts.get(run.status.value, 0) + 1
        phases = run_phases(instance)
    return counts, phases


# Phases of a sensor-launched run, between two of its events: queued (the run queue held it until
# the daemon dequeued and launched it), launch (the code server started a run process that loaded
# the code), work (its ranges, until it ended).
PHASES = {
    "queued_s": ("RUN_ENQUEUED", "RUN_STARTING"),
    "launch_s": ("RUN_STARTING", "RUN_START"),
    "work_s": ("RUN_START", "RUN_SUCCESS"),
}


def run_phases(instance) -> dict[str, dict[str, float]]:
    """p50 / p90 / max of each phase over the ingest runs that succeeded.

    Freshness is these phases plus the wait for the sensor tick that plans a partition's next range.
    """
    from dagster import DagsterEventType, DagsterRunStatus, RunsFilter

    wanted = {DagsterEventType[a] for pair in PHASES.values() for a in pair}
    runs = instance.get_runs(
        filters=RunsFilter(job_name="ingest_events", statuses=[DagsterRunStatus.SUCCESS]),
        limit=100_000,
    )
    rows: dict[str, list[float]] = {name: [] for name in PHASES}
    for run in runs:
        at = {  # by name: Dagster stores some under older values (RUN_START is PIPELINE_START)
            entry.dagster_event.event_type.name: entry.timestamp
            for entry in instance.all_logs(run.run_id, of_type=wanted)
            if entry.dagster_event is not None
        }
        for name, (first, last) in PHASES.items():
            if first in at and last in at:
                rows[name].append(at[last] - at[first])
    return {
        name: {
            "p50": round(statistics.median(values), 2),
            "p90": round(statistics.quantiles(values, n=10)[-1], 2) if len(values) > 1 else 0.0,
            "max": round(max(values), 2),
        }
        for name, values in rows.items()
        if values
    }


def wait_caught_up(
    settings: Settings,
    timeline: Timeline,
    start: float,
    args: argparse.Namespace,
    daemon: subprocess.Popen[bytes],
) -> bool:
    """Samples until every partition is committed to its high watermark and no run is alive."""
    deadline = time.monotonic() + args.drain_seconds
    while time.monotonic() < deadline:
        row = sample(timeline, time.monotonic() - start, settings, daemon.pid)
        if row and row["lag"] == 0 and row["runs_alive"] == 0:
            return True
        time.sleep(args.sample)
    return False


def rss_summary(timeline: Timeline) -> dict:
    """RSS at start (first sample with the code server up) and at the end, in MB."""
    rows = timeline.rows
    if not rows:
        return {}
    up = next((r for r in rows if r["code_server_rss_mb"]), rows[0])
    return {
        "daemon_start": up["daemon_rss_mb"],
        "daemon_end": rows[-1]["daemon_rss_mb"],
        "code_server_start": up["code_server_rss_mb"],
        "code_server_end": rows[-1]["code_server_rss_mb"],
        "runs_first_seen": timeline.first_runs,
        "runs_last_seen": timeline.last_runs,
    }


def soak(args: argparse.Namespace, work: Path) -> dict:
    timeline = Timeline()
    with some_broker(work) as bootstrap:
        settings = fresh_settings(bootstrap, work / "data", partitions=args.partitions)
        daemon = start_daemon(settings, work / "dagster_home", work / "daemon.log")
        start = time.monotonic()
        producer = start_producer(
            settings,
            work / "truth.jsonl",
            args.rate,
            "--duration", str(args.seconds), "--bad-ratio", "0.03",
            "--duplicate-ratio", "0.01", "--late-ratio", "0.02",
            log=work / "producer.log",
        )  # fmt: skip
        try:
            while producer.poll() is None:
                sample(timeline, time.monotonic() - start, settings, daemon.pid)
                time.sleep(args.sample)
            produced_until_ms = time.time() * 1000
            producer_exit = stop_producer(producer)
            drained = wait_caught_up(settings, timeline, start, args, daemon)
        finally:
            stop_producer(producer)
            stop_group(daemon)
        fresh = freshness(settings, produced_until_ms)  # the figures first, whatever follows
        print(json.dumps({"freshness": fresh}), file=sys.stderr)
        report = audit(lake_of(settings))
        truth = oracle.read_truth_frame(work / "truth.jsonl")
        verdict = oracle.check(settings, truth, reconciled=report)
    runs, phases = run_counts(work / "dagster_home")
    lags = [r["lag"] for r in timeline.rows]
    return {
        "rate": args.rate,
        "seconds": args.seconds,
        "partitions": args.partitions,
        "produced": truth.height,
        "producer_exit": producer_exit,
        "caught_up": drained,
        "wall_seconds": round(time.monotonic() - start, 1),
        "lag_max": max(lags, default=0),
        "lag_over_time": [(r["t"], r["lag"]) for r in timeline.rows],
        "freshness": fresh,
        "runs": runs,
        "failures": runs.get("FAILURE", 0),
        "ingest_run_phases": phases,
        "rss_mb": rss_summary(timeline),
        "reconcile_ok": report.ok,
        "oracle": "ok" if verdict.ok else "FAILED",
        "problems": ([str(p) for p in report.problems] + verdict.problems)[:20],
        "work_dir": str(work),
        "finished_at": datetime.now().isoformat(timespec="seconds"),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=float(env.get("SOAK_RATE", "5000")))
    parser.add_argument("--seconds", type=float, default=float(env.get("SOAK_SECONDS", "600")))
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument(
        "--drain-seconds", type=float, default=180.0, help="bound on the final catch-up"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir even when ok")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pipeline-soak-"))
    summary = soak(args, work)
    ok = summary["oracle"] == "ok" and summary["reconcile_ok"] and summary["caught_up"]
    if ok and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
