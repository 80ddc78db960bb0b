"""Compaction of one day built from many small range commits: files, time, and a query before/after.

Builds a day of `events` from --commits range commits of --rows realistic rows each (a pool of
200,000 generator events through the batch pipeline, taken in turn, offsets and ids made unique
per commit: no row group of the compacted files holds a row twice, so they compress as real
data would), each through
the one commit protocol (`commit_range`: a file per range, an app transaction, a range record), on
a local disk. Then times one aggregate over that day (events per type, revenue) with polars and
with DuckDB, compacts the day (`lake.upkeep.compact`: Delta optimize to PIPELINE_COMPACT_TARGET_MB's
default, then a checkpoint), times the same aggregates again (median of 3, each after one warm-up)
and checks that the answers and the rows are unchanged and that reconcile passes. Prints JSON.

    python -m benchmarks.compaction [--commits 2000] [--rows 1000] [--s3]

--s3 puts the lake on a local versitygw (loopback) instead: every file is a GET there, and only
polars is timed (DuckDB would need its httpfs extension, a download).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import polars as pl
from deltalake import DeltaTable

from benchmarks.process_bench import NOW_EPOCH, make_batch
from pipeline_project.batch.process import process_batch
from pipeline_project.batch.ranges import Range
from pipeline_project.lake.audit import audit
from pipeline_project.lake.commit import commit_range
from pipeline_project.lake.location import Lake, parse_lake_uri
from pipeline_project.lake.record import RangeRecord, offsets_digest
from pipeline_project.lake.s3server import LocalS3
from pipeline_project.lake.stats import table_stats
from pipeline_project.lake.upkeep import compact
from pipeline_project.local_server import free_port_pair

DAY = date(2025, 3, 1)
TOPIC = "bench-compaction"
QUERY_RUNS = 3
POOL_ROWS = 200_000  # above the writer's row group (131,072 rows): compression sees no repeats


def sample_rows(rows: int) -> pl.DataFrame:
    """`rows` valid events of DAY as the transform makes them (generator, then process_batch)."""
    now = datetime.fromtimestamp(NOW_EPOCH, UTC)
    result = process_batch(
        make_batch(rows * 2, bad_ratio=0.0),
        run_id="bench",
        ingested_at=now,
        now=now,
        max_lateness_days=7,
        max_clock_skew_seconds=300,
        committed_ids=None,
    )
    good = result.good.head(rows)
    if good.height != rows:
        raise SystemExit(f"the generator gave {good.height} valid events, {rows} wanted")
    return good.with_columns(pl.lit(DAY).alias("event_date"))


def build(lake: Lake, commits: int, rows: int) -> float:
    """`commits` range commits of `rows` rows each into DAY; returns the commits' seconds."""
    pool = sample_rows(min(POOL_ROWS, commits * rows) // rows * rows)
    moment = datetime.now(UTC)
    began = time.perf_counter()
    for index in range(commits):
        start = index * rows
        base = pool.slice(start % pool.height, rows)
        frame = base.with_columns(
            (pl.int_range(0, rows, dtype=pl.Int64) + start).alias("kafka_offset"),
            pl.lit(TOPIC).alias("kafka_topic"),
            pl.lit(0, pl.Int32).cast(base.schema["kafka_partition"]).alias("kafka_partition"),
            (pl.col("event_id") + f"-{index}").alias("event_id"),
        )
        offsets = range(start, start + rows)
        record = RangeRecord(
            Range(TOPIC, 0, start, start + rows),
            "ingest",
            "bench",
            moment,
            moment,
            rows,
            offsets_digest(offsets),
            days={DAY.isoformat(): rows},
        )
        commit_range(lake, record, frame)
    return time.perf_counter() - began


def aggregate_seconds(lake: Lake) -> tuple[dict[str, float], list[tuple]]:
    """Median seconds of one aggregate over DAY per engine (after one untimed warm-up each).

    Each query pays what a reader pays: reading the table's log for the day's files, then the
    files. polars through `scan_delta`; DuckDB through `read_parquet` over the snapshot's files.
    """
    uri = lake.table_uri("events")

    def with_polars() -> list[tuple]:
        return (
            pl.scan_delta(uri, storage_options=lake.polars_options())
            .filter(pl.col("date") == DAY)
            .group_by("event_type")
            .agg(pl.len().alias("events"), pl.col("revenue").sum().alias("revenue"))
            .sort("event_type")
            .collect()
            .rows()
        )

    connection = duckdb.connect()

    def with_duckdb() -> list[tuple]:
        files = DeltaTable(uri).file_uris(file_pruning_predicate=f"date = '{DAY}'")
        return connection.execute(
            "SELECT event_type, count(*) AS events, sum(revenue) AS revenue "
            "FROM read_parquet($files) GROUP BY 1 ORDER BY 1",
            {"files": files},
        ).fetchall()

    answer = with_polars()
    seconds = {}
    # DuckDB reads S3 only through its httpfs extension, which it downloads: not here.
    engines = [("polars", with_polars)] + ([] if lake.is_s3 else [("duckdb", with_duckdb)])
    for name, query in engines:
        if not same_answer(answer, query()):
            raise SystemExit(f"{name} disagrees with polars")
        times = []
        for _ in range(QUERY_RUNS):
            began = time.perf_counter()
            query()
            times.append(time.perf_counter() - began)
        seconds[name] = statistics.median(times)
    return seconds, answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=2_000)
    parser.add_argument("--rows", type=int, default=1_000)
    parser.add_argument("--s3", action="store_true", help="the lake on a local versitygw")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="lake-compaction-"))
    server = None
    try:
        if args.s3:
            server = LocalS3(home=root / "s3", port=free_port_pair())
            server.start()
            lake = Lake(f"s3://{server.bucket}/bench", server.storage_options())
        else:
            lake = parse_lake_uri(str(root / "lake"), {})
        figures = run(lake, args.commits, args.rows)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"lake": "versitygw" if args.s3 else "local disk", **figures}, indent=2))
    return 0 if figures["same_aggregate"] and figures["reconcile_ok"] else 1


def run(lake: Lake, commits: int, rows: int) -> dict:
    """Build, time the aggregates, compact, time them again; the figures."""
    built = build(lake, commits, rows)
    before = table_stats(lake).days[0]
    query_before, answer_before = aggregate_seconds(lake)
    result = compact(lake, day=DAY)
    (day,) = result.days
    query_after, answer_after = aggregate_seconds(lake)
    after = table_stats(lake).days[0]
    return {
        "commits": commits,
        "rows_per_commit": rows,
        "build_s": round(built, 1),
        "files_before": day["files_before"],
        "files_after": day["files_after"],
        "mib_before": round(before["bytes"] / 2**20, 1),
        "mib_after": round(after["bytes"] / 2**20, 1),
        "compaction_s": result.seconds,
        **{
            f"{engine}_aggregate_s": {
                "before": round(query_before[engine], 3),
                "after": round(query_after[engine], 3),
                "speedup": round(query_before[engine] / query_after[engine], 1),
            }
            for engine in query_before
        },
        "same_aggregate": same_answer(answer_before, answer_after)
        and after["rows"] == before["rows"],
        "reconcile_ok": audit(lake).ok,
    }


def same_answer(before: list[tuple], after: list[tuple]) -> bool:
    """Equal counts per event type, and revenue equal up to float summation order."""
    return len(before) == len(after) and all(
        b[:2] == a[:2] and math.isclose(b[2] or 0.0, a[2] or 0.0, rel_tol=1e-9)
        for b, a in zip(before, after, strict=True)
    )


if __name__ == "__main__":
    sys.exit(main())
