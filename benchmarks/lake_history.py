"""Run start plus commit on a long history: a table of N commits holding M files (checkpoints on).

Then the history readers on it (a full read, health's tail of the last 15 minutes, the DLQ
report's ledger), the commits spread evenly over the last day.

Builds the history fast (one tiny Parquet file hard-linked M times, add actions committed in
bulk with the app transaction and a range record each, as ingestion does), then times, in a fresh
process each, what a run pays before and at its commit: opening the table, reading the partition's
txn version, and committing one small range. Prints JSON.

    python -m benchmarks.lake_history [--commits 10000] [--files 50000] [--lake DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from deltalake import DeltaTable

from pipeline_project.batch.ranges import Range
from pipeline_project.dlq.resolution import load_book
from pipeline_project.health import read_lake
from pipeline_project.lake.commit import commit_range, create_table
from pipeline_project.lake.history import read_history
from pipeline_project.lake.location import parse_lake_uri
from pipeline_project.lake.record import METADATA_KEY, RangeRecord, offsets_digest

TOPIC = "bench-history"
RUNS = 3
DAY_S = 86_400
HEALTH_WINDOW = timedelta(minutes=15)  # PIPELINE_HEALTH_WINDOW_SECONDS' default


def filtered_range(rng: Range, moment: datetime) -> RangeRecord:
    """A 10-offset range whose records were all filtered: a commit with no rows, only its record."""
    offsets = tuple(range(rng.start, rng.end))
    return RangeRecord(
        rng,
        "ingest",
        "bench",
        moment,
        moment,
        len(offsets),
        offsets_digest(offsets),
        filtered={"duplicate": offsets},
    )


def build(root: Path, commits: int, files: int) -> None:
    """A table at `root`/events with `commits` range commits over `files` files, then a checkpoint.

    The log entries are written as the Delta protocol defines them (add, txn, commitInfo with the
    range record), which takes seconds where committing them one by one takes many minutes.
    """
    lake = parse_lake_uri(str(root), {})
    frame = pl.DataFrame(
        {
            "event_id": ["x"],
            "kafka_topic": [TOPIC],
            "kafka_partition": [0],
            "kafka_offset": [0],
            "event_date": [datetime(2026, 1, 1).date()],
        }
    )
    schema = frame.with_columns(pl.col("event_date").alias("date")).to_arrow().schema
    create_table(lake, "events", schema)
    seed = root / "seed.parquet"
    pq.write_table(frame.to_arrow(), seed)
    day_dir = root / "events" / "date=2026-01-01"
    day_dir.mkdir(parents=True, exist_ok=True)
    log_dir = root / "events" / "_delta_log"
    per_commit = max(files // commits, 1)
    now = datetime.now(UTC)
    now_ms = int(time.time() * 1000)
    for index in range(commits):
        # The commits of one day, evenly spaced, the last one now (the tail readers' case).
        moment = now - timedelta(seconds=DAY_S * (commits - 1 - index) / commits)
        rng = Range(TOPIC, 0, index * 10, index * 10 + 10)
        record = filtered_range(rng, moment)
        lines = [
            {
                "commitInfo": {
                    "timestamp": int(moment.timestamp() * 1000),
                    "operation": "WRITE",
                    METADATA_KEY: record.to_metadata(moment),
                }
            },
            {"txn": {"appId": record.app_id, "version": rng.end, "lastUpdated": now_ms}},
        ]
        for k in range(per_commit):
            name = f"part-{index:06d}-{k:03d}.parquet"
            os.link(seed, day_dir / name)
            lines.append(
                {
                    "add": {
                        "path": f"date=2026-01-01/{name}",
                        "partitionValues": {"date": "2026-01-01"},
                        "size": seed.stat().st_size,
                        "modificationTime": now_ms,
                        "dataChange": True,
                        "stats": json.dumps({"numRecords": 1}),
                    }
                }
            )
        entry = log_dir / f"{index + 1:020d}.json"
        entry.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    DeltaTable(lake.table_uri("events")).create_checkpoint()


def timed_start_and_commit(root: str, start: int) -> dict:
    """In this (fresh) process: open, read the txn version, commit one 10-offset range."""
    began = time.perf_counter()
    lake = parse_lake_uri(root, {})
    table = DeltaTable(lake.table_uri("events"))
    done = table.transaction_version(f"{TOPIC}-0")
    opened = time.perf_counter()
    moment = datetime.now(UTC)
    record = filtered_range(Range(TOPIC, 0, start, start + 10), moment)
    rows = pl.DataFrame(schema={"event_id": pl.String})
    result = commit_range(lake, record, rows, table=table)  # as a run does: its start's snapshot
    ended = time.perf_counter()
    return {
        "txn_version": done,
        "status": result.status,
        "open_s": round(opened - began, 3),
        "commit_s": round(ended - opened, 3),
        "total_s": round(ended - began, 3),
    }


def timed_reads(root: str) -> dict:
    """The history readers on this table: a full read, health's tail, the DLQ report's ledger."""
    lake = parse_lake_uri(root, {})
    table = DeltaTable(lake.table_uri("events"))
    figures = {}
    for name, read in (
        ("full_history_s", lambda: read_history(lake, table)),
        ("health_tail_s", lambda: read_lake(lake, TOPIC, datetime.now(UTC) - HEALTH_WINDOW)),
        ("dlq_ledger_s", lambda: load_book(lake)),
    ):
        began = time.perf_counter()
        read()
        figures[name] = round(time.perf_counter() - began, 3)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(timed_start_and_commit(args.child[0], int(args.child[1]))))
        return 0
    root = Path(tempfile.mkdtemp(prefix="lake-history-"))
    try:
        began = time.perf_counter()
        build(root, args.commits, args.files)
        built = time.perf_counter() - began
        runs = []
        for run in range(RUNS):
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.lake_history",
                    "--child",
                    str(root),
                    str((args.commits + run) * 10),
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            )
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(
            json.dumps(
                {
                    "commits": args.commits,
                    "files": args.files,
                    "build_s": round(built, 1),
                    "start_plus_commit_s_median": statistics.median(r["total_s"] for r in runs),
                    "runs": runs,
                    "history_reads": timed_reads(str(root)),
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
