"""C9, the seeded random-kill loop (`make chaos`; not part of `make test`).

While the producer writes, ingest runs are started one after another and SIGKILLed at random
moments (`timeout -s KILL <seeded random>`); then runs continue without kills until every partition
is caught up, and the oracle must hold with lake count == distinct count. A reader thread scans the
lake the whole time (duckdb and pyarrow full scans): it must never fail and never see a row twice.

    python -m pipeline_project_tests.faults.chaos [--iterations 50] [--seed 7] [--rate 2000]

Uses PIPELINE_KAFKA_BOOTSTRAP when it answers, else starts a broker of its own. Prints a JSON
summary last; exit 0 only when the oracle holds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow.dataset as ds

from pipeline_project.batch.backlog import partition_states
from pipeline_project.settings import Settings
from pipeline_project_tests.faults import oracle
from pipeline_project_tests.faults.fault_support import (
    DRIVER,
    driver_env,
    fresh_settings,
    read_truth,
    run_driver,
    some_broker,
    start_producer,
    stop_producer,
)
from pipeline_project_tests.support import PYTHON, REPO_ROOT

MAX_CATCH_UP_RUNS = 40


@dataclass
class Tally:
    """What the loop did, for the JSON summary."""

    runs: Counter[str] = field(default_factory=Counter)
    kill_after_s: list[float] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)


class LakeReader(threading.Thread):
    """I2 during the storm: full scans never raise and never see a (partition, offset) twice."""

    def __init__(self, lake_dir: Path) -> None:
        super().__init__(daemon=True)
        self.lake_dir = lake_dir
        self.stop = threading.Event()
        self.scans = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.wait(0.3):
            try:
                self.scan()
            except Exception as exc:  # noqa: BLE001 - every reader failure is a finding
                self.errors.append(f"{type(exc).__name__}: {exc}"[:300])

    def scan(self) -> None:
        root = self.lake_dir / "events"
        if not any(root.glob("date=*/*.parquet")):
            return
        pattern = str(root / "**" / "*.parquet")
        rows, distinct = duckdb.execute(
            "select count(*), count(distinct (kafka_partition, kafka_offset)) "
            "from read_parquet(?, hive_partitioning = true)",
            [pattern],
        ).fetchone()
        if rows != distinct:
            self.errors.append(f"duckdb saw {rows} rows but {distinct} distinct offsets")
        ds.dataset(root, format="parquet", partitioning="hive").to_table(columns=["kafka_offset"])
        self.scans += 1


def killed_run(settings: Settings, seconds: float, env: dict[str, str]) -> str:
    """One planned run under `timeout -s KILL`; returns killed / ok / failed / crashed."""
    done = subprocess.run(
        ["timeout", "-s", "KILL", f"{seconds:.3f}", PYTHON, "-m", DRIVER],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    if done.returncode in (137, -9):
        return "killed"
    if done.returncode == 0:
        return "ok"
    if done.returncode == 1:
        return "failed"
    return "crashed:" + done.stderr[-800:]


def caught_up(settings: Settings) -> bool:
    states = partition_states(settings)
    return all((s.committed_end or s.low) >= s.high for s in states)


def storm(settings: Settings, args: argparse.Namespace, tally: Tally) -> None:
    rng = random.Random(args.seed)  # noqa: S311 - reproducible chaos, not secrets
    env = driver_env(settings, PIPELINE_MAX_RANGE_EVENTS=str(args.range_events))
    for _ in range(args.iterations):
        seconds = rng.uniform(args.min_kill, args.max_kill)
        outcome = killed_run(settings, seconds, env)
        tally.runs[outcome.split(":")[0]] += 1
        if outcome == "killed":
            tally.kill_after_s.append(round(seconds, 3))
        elif outcome.startswith("crashed"):
            tally.crashes.append(outcome)


def catch_up(settings: Settings, args: argparse.Namespace, tally: Tally) -> bool:
    for _ in range(MAX_CATCH_UP_RUNS):
        done = run_driver(settings, PIPELINE_MAX_RANGE_EVENTS=str(args.range_events))
        tally.runs["catch_up"] += 1
        if not done.ok:
            tally.crashes.append(f"catch-up run failed: {done}")
            return False
        if not done.result["committed"] and caught_up(settings):
            return True
    return False


def chaos(args: argparse.Namespace, work: Path) -> dict:
    started = time.monotonic()
    tally = Tally()
    with some_broker(work) as bootstrap:
        settings = fresh_settings(bootstrap, work / "data", partitions=args.partitions)
        truth_path = work / "truth.jsonl"
        producer = start_producer(
            settings,
            truth_path,
            args.rate,
            "--bad-ratio", "0.05", "--duplicate-ratio", "0.02", "--late-ratio", "0.02",
            "--seed", str(args.seed),
            log=work / "producer.log",
        )  # fmt: skip
        reader = LakeReader(settings.lake_dir)
        reader.start()
        try:
            storm(settings, args, tally)
        finally:
            produced = stop_producer(producer)
        complete = catch_up(settings, args, tally)
        reader.stop.set()
        reader.join(timeout=30)
        truth = read_truth(truth_path)
        report = oracle.check(settings, truth)
        if report.ok:
            oracle.assert_rerun_is_noop(settings)
    problems = report.problems + tally.crashes + reader.errors
    if produced != 0:
        problems.append(f"the producer exited with {produced}")
    if not complete:
        problems.append("runs never caught up with the producer")
    return {
        "iterations": args.iterations,
        "seed": args.seed,
        "kills": len(tally.kill_after_s),
        "runs": dict(tally.runs),
        "seconds": round(time.monotonic() - started, 1),
        "produced": len(truth),
        "lake_rows": report.counts["lake_rows"],
        "lake_distinct": report.counts["lake_distinct"],
        "dlq_records": report.counts["dlq_records"],
        "manifests": report.counts["manifests"],
        "reader_scans": reader.scans,
        "oracle": "ok" if not problems else "FAILED",
        "problems": problems[:20],
        "data_dir": str(work),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=int(env.get("CHAOS_ITERATIONS", "50")))
    parser.add_argument("--seed", type=int, default=int(env.get("CHAOS_SEED", "7")))
    parser.add_argument("--rate", type=float, default=2000.0, help="producer events per second")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--range-events", type=int, default=3000, help="max offsets per range")
    parser.add_argument("--min-kill", type=float, default=0.1, help="earliest kill, seconds")
    parser.add_argument("--max-kill", type=float, default=4.0, help="latest kill, seconds")
    parser.add_argument("--keep", action="store_true", help="keep the data dir even when ok")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pipeline-chaos-"))
    summary = chaos(args, work)
    if summary["oracle"] == "ok" and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary, indent=2))
    return 0 if summary["oracle"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
