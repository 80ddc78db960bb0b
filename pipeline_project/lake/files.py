"""A range's data files: written by us, durable before the commit that references them.

delta-rs's own writer never fsyncs on a local disk (traced: no fsync at all, data files and the log
entry alike), so a power loss after a commit could leave a log entry naming empty files. Here each
day's file is written with pyarrow under the table (zstd, page checksums, statistics only where
they prune), fsynced with its directory on a local lake, and described by an add action with its
row count and statistics; the commit (commit.py) then references exactly these files. On S3 a
completed PUT is durable, so there is nothing to sync.

Names: `date=YYYY-MM-DD/part-<range id>-<attempt token>.parquet` — the range that wrote a file is in
its name, and two attempts at one range never write the same object. A day of more rows than one
row group holds is split into files of one row group each (`-1`, `-2`, ... after the token), and
a range's files are written two at a time: Parquet encoding is one thread's work per file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson
import polars as pl
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake.transaction import AddAction

from pipeline_project.batch.faults import fault_point
from pipeline_project.columns import OFFSET_COLUMN
from pipeline_project.lake.location import Lake
from pipeline_project.lake.table import (
    DATE_COLUMN,
    PARTITION_COLUMN,
    ROW_GROUP_ROWS,  # noqa: F401 - the writer's row group size, used here and by the bench
    UNIQUE_COLUMNS,
    UNPRUNABLE_COLUMNS,
)

# Columns whose min/max go into the add action: what readers filter on (the log stays small).
STATS_COLUMNS = (
    "event_date",
    "kafka_partition",
    "kafka_offset",
    "kafka_topic",
    "event_type",
    "event_category",
    "dlq_partition",
    "dlq_offset",
)
FILE_WRITERS = 2  # files encoded at once: one per core here
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 1,  # level 1, not 3: faster and no larger on event files (measured)
    "write_page_checksum": True,
    "store_schema": False,  # Parquet's own types only: every reader sees plain strings
}


@dataclass(frozen=True)
class Storage:
    """A pyarrow filesystem and the table's root path on it."""

    fs: pafs.FileSystem
    root: str
    local: bool


def storage(lake: Lake, table: str) -> Storage:
    """The filesystem the table's data files are written to (local disk or S3)."""
    uri = lake.table_uri(table)
    if not lake.is_s3:
        return Storage(pafs.LocalFileSystem(), uri, True)
    options = lake.storage_options
    endpoint = (
        urlparse(options.get("AWS_ENDPOINT_URL", "")) if "AWS_ENDPOINT_URL" in options else None
    )
    fs = pafs.S3FileSystem(
        access_key=options.get("AWS_ACCESS_KEY_ID"),
        secret_key=options.get("AWS_SECRET_ACCESS_KEY"),
        session_token=options.get("AWS_SESSION_TOKEN"),
        region=options.get("AWS_REGION", "us-east-1"),
        endpoint_override=endpoint.netloc if endpoint else None,
        scheme=endpoint.scheme if endpoint else "https",
        connect_timeout=5,
        request_timeout=30,
    )
    return Storage(fs, uri.removeprefix("s3://"), False)


def write_range_files(
    where: Storage, range_id: str, token: str, rows: pl.DataFrame, *, now: float | None = None
) -> list[AddAction]:
    """The range's files (see `range_files`), written two at a time; their add actions, in order.

    `token` is the commit's (RangeRecord.token): the file names carry it, so two attempts at one
    range never write the same object.
    """
    files = range_files(range_id, token, rows)
    if len(files) <= 1:
        return [_write_file(where, name, day, part, now) for name, day, part in files]

    def write(index: int) -> AddAction:
        name, day, part = files[index]
        action = _write_file(where, name, day, part, now)
        if index == 0:
            fault_point("K4")  # a crash with some of the range's files written, none committed
        return action

    with ThreadPoolExecutor(max_workers=FILE_WRITERS, thread_name_prefix="write-files") as pool:
        return list(pool.map(write, range(len(files))))


def range_files(
    range_id: str, token: str, rows: pl.DataFrame
) -> list[tuple[str, date, pl.DataFrame]]:
    """(name, day, rows) of each of the range's files, in day order.

    One file per UTC day, or as many as the day needs so that each holds at most one row group
    (ROW_GROUP_ROWS), the day's rows shared evenly between them. A 200k-event range of one day
    is two files of ~88k rows, encoded on two threads at once (the writer is single-threaded per
    file); a reader reads each row group as before.
    """
    files = []
    for day, part in by_day(rows) if rows.height else []:
        count = -(-part.height // ROW_GROUP_ROWS)
        size = -(-part.height // count)
        for n in range(count):
            name = f"part-{range_id}-{token[:12]}{f'-{n}' if n else ''}.parquet"
            files.append((name, day, part.slice(n * size, size)))
    return files


def file_rows(action: AddAction, rows: pl.DataFrame) -> tuple[date, pl.DataFrame]:
    """The day of a file `write_range_files` wrote from `rows`, and the rows it holds.

    A file holds an offset-contiguous slice of its day's rows (`range_files`), so for the rows of
    one partition's range (offsets unique) its rows are the day's within its statistics' offsets.
    """
    day = date.fromisoformat(action.partition_values[PARTITION_COLUMN])
    stats = json.loads(action.stats or "{}")
    low = stats.get("minValues", {}).get(OFFSET_COLUMN)
    high = stats.get("maxValues", {}).get(OFFSET_COLUMN)
    held = pl.col(DATE_COLUMN) == day
    if low is not None and high is not None:
        held = held & pl.col(OFFSET_COLUMN).is_between(low, high)
    return day, rows.filter(held)


def by_day(frame: pl.DataFrame) -> list[tuple[date, pl.DataFrame]]:
    """The frame's rows per UTC day, in day order; a frame of one day as it is, not copied.

    Live ranges hold one day most of the time, and splitting copies every row (~0.05 s a range).
    """
    days = frame.get_column(DATE_COLUMN).unique()
    if len(days) == 1:
        return [(days[0], frame)]
    return [
        (day, part)
        for (day,), part in sorted(frame.partition_by(DATE_COLUMN, as_dict=True).items())
    ]


def _write_file(
    where: Storage, name: str, day: date, part: pl.DataFrame, now: float | None
) -> AddAction:
    rel = f"{PARTITION_COLUMN}={day.isoformat()}/{name}"
    # One chunk, made by polars (on its threads: pyarrow's combine_chunks of the range's
    # filtered parts cost 2-3x more on the writer's own).
    part = part.drop(PARTITION_COLUMN, strict=False).rechunk()
    table = part.to_arrow(compat_level=pl.CompatLevel.newest()).replace_schema_metadata(None)
    path = f"{where.root}/{rel}"
    if where.local:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with where.fs.open_output_stream(path) as sink:
        writer = pq.ParquetWriter(sink, table.schema, **parquet_options(table.column_names))
        try:
            for offset in range(0, table.num_rows, ROW_GROUP_ROWS):
                writer.write_table(
                    table.slice(offset, ROW_GROUP_ROWS), row_group_size=ROW_GROUP_ROWS
                )
                if offset == 0:
                    fault_point("K2")  # a crash mid-file: a partial file no commit names
        finally:
            writer.close()
    size = where.fs.get_file_info(path).size
    if where.local:
        fsync(path)
        fsync(str(Path(path).parent))
    return AddAction(
        path=rel,
        size=int(size or 0),
        partition_values={PARTITION_COLUMN: day.isoformat()},
        modification_time=int((now or time.time()) * 1000),
        data_change=True,
        stats=json.dumps(file_stats(part)),
    )


def parquet_options(columns: Sequence[str]) -> dict[str, Any]:
    """Dictionaries only where values repeat, min/max statistics only where they can prune."""
    return PARQUET_OPTIONS | {
        "use_dictionary": [c for c in columns if c not in UNIQUE_COLUMNS],
        "write_statistics": [c for c in columns if c not in UNPRUNABLE_COLUMNS],
    }


def file_stats(part: pl.DataFrame) -> dict[str, Any]:
    """Delta add-action statistics: row count, null counts, min/max of the pruning columns."""
    columns = [c for c in STATS_COLUMNS if c in part.columns]
    minimum = part.select(columns).min().row(0, named=True) if columns else {}
    maximum = part.select(columns).max().row(0, named=True) if columns else {}
    return {
        "numRecords": part.height,
        "minValues": {k: _json_value(v) for k, v in minimum.items() if v is not None},
        "maxValues": {k: _json_value(v) for k, v in maximum.items() if v is not None},
        "nullCount": {c: part.get_column(c).null_count() for c in columns},
    }


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def log_entry(where: Storage, version: int) -> bytes | None:
    """The raw JSON lines of one commit of the table's log, or None when it does not exist."""
    try:
        with where.fs.open_input_stream(f"{where.root}/_delta_log/{version:020d}.json") as entry:
            return entry.read()
    except FileNotFoundError:
        return None


def commit_info(text: bytes) -> dict[str, Any]:
    """The commitInfo action of a log entry (empty when it has none).

    orjson first: a history read parses every commit's record, tens of KB each (0.46 vs 0.81 ms
    on one of 2,000 DLQ entries); the standard parser takes what orjson refuses (NaN, huge ints).
    """
    for line in text.splitlines():
        if b'"commitInfo"' in line:
            try:
                action = orjson.loads(line)
            except orjson.JSONDecodeError:
                action = json.loads(line)
            return dict(action.get("commitInfo") or {})
    return {}


def find_commit(where: Storage, read_version: int, token: str, lookahead: int = 64) -> int | None:
    """The version of the log entry carrying `token`, committed after `read_version`.

    Reads the entries after the snapshot the commit was built on, in order (ours is among the
    first few: others' commits can only land before it or after it). Cheaper than reloading the
    table's state, which on a table of 50k files costs more than the commit itself.
    """
    for version in range(read_version + 1, read_version + 1 + lookahead):
        text = log_entry(where, version)
        if text is None:
            return None
        if token.encode() in text:
            return version
    return None


def sync_log(where: Storage, version: int) -> None:
    """Makes a committed log entry durable on a local lake (delta-rs links it without a sync)."""
    if not where.local:
        return
    log_dir = Path(where.root) / "_delta_log"
    entry = log_dir / f"{version:020d}.json"
    if entry.exists():
        fsync(str(entry))
    fsync(str(log_dir))
