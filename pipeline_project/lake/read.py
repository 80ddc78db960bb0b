"""Reading the lake's tables through the Delta log, and replacing derived tables' days.

Readers never list directories: a Delta snapshot names exactly the committed files, so files of a
crashed writer or of a compaction in progress are never read, and a reader's snapshot stays valid
while commits go on. Derived tables (sessions, the DLQ report) are rewritten a day (or whole) at a
time as one overwrite commit, so a reader sees the old day or the new one.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from datetime import date

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, write_deltalake

from pipeline_project.columns import DATE_COLUMN, EVENT_ID_COLUMN
from pipeline_project.errors import LakeError
from pipeline_project.lake.files import storage
from pipeline_project.lake.id_cache import IdCache, day_files
from pipeline_project.lake.location import TABLE_EVENTS, Lake
from pipeline_project.lake.table import PARTITION_COLUMN, lake_errors, open_table

ID_COLUMNS = (DATE_COLUMN, EVENT_ID_COLUMN)


def scan_table(lake: Lake, table: str = TABLE_EVENTS) -> pl.LazyFrame | None:
    """A lazy scan of the table's latest snapshot, or None when the table does not exist yet."""
    if open_table(lake, table) is None:
        return None
    with lake_errors(lake, f"reading {table}"):
        return pl.scan_delta(lake.table_uri(table), storage_options=lake.polars_options())


def read_days(
    lake: Lake,
    days: Iterable[date],
    columns: Sequence[str] | None = None,
    table: str = TABLE_EVENTS,
) -> pl.DataFrame | None:
    """Rows of the given UTC days (partition pruning: other days' files are never opened)."""
    scan = scan_table(lake, table)
    if scan is None:
        return None
    wanted = sorted(set(days))
    query = scan.filter(pl.col(PARTITION_COLUMN).is_in(wanted))
    if columns is not None:
        query = query.select(list(columns))
    with lake_errors(lake, f"reading {table}"):
        return query.collect()


def committed_ids(
    lake: Lake,
    days: Iterable[date],
    among: pl.Series | None = None,
    cache: IdCache | None = None,
) -> pl.DataFrame:
    """Distinct (event_date, event_id) already committed on these days, for the duplicate filter.

    With `among` (a batch's ids) only those ids are kept while reading, so a lookup holds the
    batch's matches, not the day's millions of ids. With a `cache` too, only files this host has
    not seen are read whole (lake/id_cache.py); the answer is the same.
    """
    schema = {"event_date": pl.Date, "event_id": pl.String}
    wanted = sorted(set(days))
    table = open_table(lake) if wanted else None
    if table is None:
        return pl.DataFrame(schema=schema)
    try:
        with lake_errors(lake, "reading committed event ids"):
            if cache is not None and among is not None and not deletes_rows(table):
                found = cache.committed(table, storage(lake, TABLE_EVENTS), wanted, among)
            else:
                found = _scan_ids(lake, table, wanted, among)
    except LakeError as exc:
        broken = unreadable_files(lake, wanted)
        if not broken:
            raise
        raise LakeError(
            f"committed file(s) {', '.join(broken)} of {lake.describe()} cannot be read, so the "
            "events of their day cannot be deduplicated; `pipeline-project reconcile` lists "
            "them: restore them before ingesting more events of that day"
        ) from exc
    return found.cast(schema).sort(list(schema))  # type: ignore[arg-type]


def _scan_ids(
    lake: Lake, table: DeltaTable, days: list[date], among: pl.Series | None
) -> pl.DataFrame:
    scan = pl.scan_delta(
        lake.table_uri(TABLE_EVENTS), version=table.version(), storage_options=lake.polars_options()
    )
    query = scan.filter(pl.col(PARTITION_COLUMN).is_in(days))
    if among is not None:
        query = query.filter(pl.col("event_id").is_in(among.cast(pl.String).implode()))
    return query.select(list(ID_COLUMNS)).unique().collect()


def deletes_rows(table: DeltaTable) -> bool:
    """Deletion vectors hide rows of a file without rewriting it: then only a scan is exact."""
    return "deletionVectors" in (table.protocol().reader_features or [])


def unreadable_files(lake: Lake, days: Iterable[date], table: str = TABLE_EVENTS) -> list[str]:
    """The table's files of these days whose Parquet footer cannot be read (a damaged lake)."""
    opened = open_table(lake, table)
    if opened is None:
        return []
    where = storage(lake, table)
    broken = []
    for _, path in day_files(opened, sorted(set(days))):
        try:
            with where.fs.open_input_file(f"{where.root}/{path}") as handle:
                pq.ParquetFile(handle).metadata  # noqa: B018 - reading the footer is the check
        except (OSError, pa.ArrowException):
            broken.append(path)
    return broken


def replace_day(
    lake: Lake, table: str, day: date, rows: pl.DataFrame | Iterable[pl.DataFrame]
) -> None:
    """Replaces one day of a derived table (partitioned by `date`) in one overwrite commit.

    `rows` may come as frames one after another (a day's sessions, a bucket at a time): they are
    written as they come, so the day is never whole in memory, and still land in one commit. An
    error while producing them is raised as it is, and nothing is committed.
    """
    frames = iter([rows] if isinstance(rows, pl.DataFrame) else rows)
    first = next(frames, None)
    if first is None:
        return
    failed: list[BaseException] = []

    def batches(head: pl.DataFrame = first) -> Iterator[pa.RecordBatch]:
        try:
            for frame in itertools.chain([head], frames):
                data = frame.with_columns(pl.lit(day, pl.Date).alias(PARTITION_COLUMN))
                yield from data.to_arrow(compat_level=pl.CompatLevel.newest()).to_batches()
        except BaseException as exc:
            failed.append(exc)
            raise

    schema = (
        first.head(0)
        .with_columns(pl.lit(day, pl.Date).alias(PARTITION_COLUMN))
        .to_arrow(compat_level=pl.CompatLevel.newest())
        .schema
    )
    try:
        with lake_errors(lake, f"writing {table} {day.isoformat()}"):
            write_deltalake(
                lake.table_uri(table),
                pa.RecordBatchReader.from_batches(schema, batches()),
                partition_by=[PARTITION_COLUMN],
                mode="overwrite",
                predicate=f"{PARTITION_COLUMN} = '{day.isoformat()}'",
                schema_mode="merge",
                storage_options=lake.options(),
            )
    except LakeError:
        if failed:
            raise failed[0] from None
        raise


def replace_table(lake: Lake, table: str, rows: pl.DataFrame) -> None:
    """Replaces a small derived table whole (the DLQ report's tables) in one overwrite commit."""
    with lake_errors(lake, f"writing {table}"):
        write_deltalake(
            lake.table_uri(table),
            rows.to_arrow(compat_level=pl.CompatLevel.newest()),
            mode="overwrite",
            schema_mode="overwrite",
            storage_options=lake.options(),
        )
