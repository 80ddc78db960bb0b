"""Table upkeep: compaction, vacuum, checkpoints and the lake's retention (`pipeline-project lake`).

Micro-batches make small files: one per range and day. Compaction rewrites a day's small files
into files near the target size with Delta's optimize, as one commit per day that removes the old
files and adds the new ones with `dataChange=false`. It runs while ingestion commits to the same
day: ingestion's appends read no files, so delta-rs rebases either commit over the other, and a
reader's snapshot holds either the small files or the compacted ones, never both. A compaction
killed before its commit leaves only files no commit references (vacuum removes them); the next
compaction starts over from the table as it is.

Vacuum deletes files no commit references any more (compacted-away files, files of crashed
writers, expired days) once they are older than the retention, so a reader still scanning an older
snapshot keeps its files. Checkpoints let a run start read one Parquet file instead of the JSON
tail. The events table's commit JSONs are never cleaned up: each range's accounting lives in its
commit's metadata and reconcile reads it back (docs/lake.md, "Upkeep").

Retention deletes whole days older than N as one Delta commit that carries its facts (cutoff, rows
per day) under `pipeline_retention`; reconcile reads them and reports those rows as expired.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow.fs as pafs
from deltalake import CommitProperties, DeltaTable

from pipeline_project.lake.files import storage
from pipeline_project.lake.location import TABLE_EVENTS, TABLE_NAME_RE, TABLE_SESSIONS, Lake
from pipeline_project.lake.record import RETENTION_KEY
from pipeline_project.lake.stats import MIB, TableStats, table_stats
from pipeline_project.lake.table import (
    PARTITION_COLUMN,
    lake_errors,
    open_table,
    writer_properties,
)
from pipeline_project.settings import MIN_VACUUM_RETENTION_HOURS

# A day is compacted (again) once it holds this many small files: late events keep landing in old
# days, and one more pass over a day of a few files would rewrite it for little gain.
COMPACT_MIN_SMALL_FILES = 8
# The `events` check warns above this many small files in one day: hourly compaction keeps a day
# far below it, so more means compaction is not running or not keeping up.
SMALL_FILES_WARN_PER_DAY = 1_000
# Tables whose days retention deletes: the ledger's table and the one derived from it per day.
RETAINED_TABLES = (TABLE_EVENTS, TABLE_SESSIONS)


def small_file_bytes(target_mb: int) -> int:
    """Files below half the compaction target count as small."""
    return target_mb * MIB // 2


@dataclass
class CompactResult:
    """What one compaction did, per day: files and bytes before and after."""

    table: str
    days: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def total(self, key: str) -> int:
        """A column summed over the compacted days (files_before, bytes_after, ...)."""
        return sum(int(day[key]) for day in self.days)

    def render(self) -> str:
        lines = [f"{self.table}: compacted {len(self.days)} day(s) in {self.seconds:.1f} s"]
        for day in self.days:
            lines.append(
                f"  {day['day']}: {day['files_before']} -> {day['files_after']} files "
                f"({day['bytes_before'] / MIB:.1f} -> {day['bytes_after'] / MIB:.1f} MiB)"
            )
        return "\n".join(lines)


def small_file_days(stats: TableStats, limit: int = SMALL_FILES_WARN_PER_DAY) -> list[str]:
    """The days holding more than `limit` small files (the `events` check's warning)."""
    return [d["day"] for d in stats.days if d["small_files"] > limit]


def days_to_compact(
    lake: Lake,
    target_mb: int,
    table_name: str = TABLE_EVENTS,
    min_small_files: int = COMPACT_MIN_SMALL_FILES,
) -> list[str]:
    """The days holding at least `min_small_files` small files, oldest first."""
    stats = table_stats(lake, table_name, small_below=small_file_bytes(target_mb))
    return [d["day"] for d in stats.days if d["small_files"] >= min_small_files]


def compact(
    lake: Lake,
    *,
    day: date | None = None,
    target_mb: int = 128,
    table_name: str = TABLE_EVENTS,
    min_small_files: int = COMPACT_MIN_SMALL_FILES,
) -> CompactResult:
    """Compacts `day` of a table, or every day with at least `min_small_files` small files.

    One optimize commit per day, so a day's commit conflicts with as little as possible and a
    kill loses at most the day in progress. Then a checkpoint: without it every reader replays
    the compaction's thousands of remove actions from JSON (measured: on a day of 2,000 files,
    half of what compaction saves a polars query).
    """
    result = CompactResult(table_name)
    started = time.perf_counter()
    small_below = small_file_bytes(target_mb)
    table = open_table(lake, table_name)
    if table is None:
        return result
    before = {d["day"]: d for d in table_stats(lake, table_name, small_below).days}
    if day is not None:
        days = [day.isoformat()] if day.isoformat() in before else []
    else:
        days = [d for d, s in before.items() if s["small_files"] >= min_small_files]
    properties = writer_properties([f.name for f in table.schema().fields])
    for name in days:
        with lake_errors(lake, f"compacting {table_name} {name}"):
            table.update_incremental()
            table.optimize.compact(
                partition_filters=[(PARTITION_COLUMN, "=", name)],
                target_size=target_mb * MIB,
                writer_properties=properties,
            )
    if days:  # readers then load the compacted file list from one checkpoint, not the JSON tail
        with lake_errors(lake, f"checkpointing {table_name}"):
            table.create_checkpoint()
    after = {d["day"]: d for d in table_stats(lake, table_name, small_below).days}
    for name in days:
        result.days.append(
            {
                "day": name,
                "files_before": before[name]["files"],
                "files_after": after.get(name, {}).get("files", 0),
                "bytes_before": before[name]["bytes"],
                "bytes_after": after.get(name, {}).get("bytes", 0),
            }
        )
    result.seconds = round(time.perf_counter() - started, 3)
    return result


@dataclass
class VacuumResult:
    """Files vacuum deleted (or would delete) and the bytes they held."""

    table: str
    removed: list[str] = field(default_factory=list)
    bytes_reclaimed: int = 0
    seconds: float = 0.0
    dry_run: bool = False

    def render(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return (
            f"{self.table}: {verb} {len(self.removed)} unreferenced file(s), "
            f"{self.bytes_reclaimed / MIB:.1f} MiB, in {self.seconds:.1f} s"
        )


def vacuum(
    lake: Lake, *, retention_hours: int = 168, table_name: str = TABLE_EVENTS, dry_run: bool = False
) -> VacuumResult:
    """Deletes files no commit references that are older than the retention.

    Their sizes are read first (a dry run, then one stat per file): the log no longer lists them.
    """
    if retention_hours < MIN_VACUUM_RETENTION_HOURS:
        raise ValueError(f"vacuum retention below {MIN_VACUUM_RETENTION_HOURS} h is refused")
    result = VacuumResult(table_name, dry_run=dry_run)
    started = time.perf_counter()
    table = open_table(lake, table_name)
    if table is None:
        return result
    with lake_errors(lake, f"vacuuming {table_name}"):
        sizes = _sizes(lake, table_name, _vacuum(table, retention_hours, dry_run=True))
        if sizes:
            result.removed = (
                list(sizes) if dry_run else _vacuum(table, retention_hours, dry_run=False)
            )
    result.bytes_reclaimed = sum(sizes.get(path, 0) for path in result.removed)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _vacuum(table: DeltaTable, retention_hours: int, *, dry_run: bool) -> list[str]:
    return table.vacuum(
        retention_hours=retention_hours,
        dry_run=dry_run,
        enforce_retention_duration=False,
        full=True,
    )


def _sizes(lake: Lake, table_name: str, paths: list[str]) -> dict[str, int]:
    """Each path's size in bytes (0 for one already gone)."""
    if not paths:
        return {}
    where = storage(lake, table_name)
    infos = where.fs.get_file_info([f"{where.root}/{path}" for path in paths])
    return {path: max(info.size or 0, 0) for path, info in zip(paths, infos, strict=True)}


def lake_tables(lake: Lake) -> list[str]:
    """The Delta tables under the lake's root (directories with a `_delta_log`), sorted.

    Found, not listed in code: vacuum and checkpoints then cover every table an asset writes
    (events, sessions, the DLQ report's), including ones added later.
    """
    where = storage(lake, TABLE_EVENTS)
    root = where.root.rsplit("/", 1)[0]
    with lake_errors(lake, "listing the lake's tables"):
        found = where.fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        dirs = [info.base_name for info in found if info.type == pafs.FileType.Directory]
        logs = where.fs.get_file_info([f"{root}/{name}/_delta_log" for name in dirs])
    return sorted(
        name
        for name, log in zip(dirs, logs, strict=True)
        if log.type == pafs.FileType.Directory and TABLE_NAME_RE.fullmatch(name)
    )


def checkpoint(lake: Lake, table_name: str = TABLE_EVENTS) -> int | None:
    """Writes a checkpoint at the latest version (run starts then read it, not the JSON tail)."""
    table = open_table(lake, table_name)
    if table is None:
        return None
    with lake_errors(lake, f"checkpointing {table_name}"):
        table.create_checkpoint()
    return table.version()


@dataclass
class RetentionResult:
    """What retention deleted from one table: the days before `cutoff`, their rows and files."""

    table: str
    cutoff: str
    days: dict[str, int] = field(default_factory=dict)  # rows per deleted day
    files: int = 0
    version: int | None = None  # the delete commit, None when there was nothing to delete

    @property
    def rows(self) -> int:
        return sum(self.days.values())

    def render(self) -> str:
        if self.version is None:
            return f"{self.table}: nothing before {self.cutoff}"
        return (
            f"{self.table}: deleted {len(self.days)} day(s) before {self.cutoff} "
            f"({self.rows} rows, {self.files} files) in commit {self.version}"
        )


def retention_cutoff(retention_days: int, today: date | None = None) -> date:
    """The first day kept: days before it are older than `retention_days`."""
    return (today or datetime.now(UTC).date()) - timedelta(days=retention_days)


def expire_days(lake: Lake, cutoff: date, table_name: str = TABLE_EVENTS) -> RetentionResult:
    """Deletes every day before `cutoff` as one Delta commit recording what it deleted.

    A partition-only predicate: delta-rs removes whole files, it rewrites none. The commit's
    `pipeline_retention` metadata (cutoff, rows per day) is what reconcile reads to report those
    rows' offsets as expired, not missing. The files stay until vacuum.
    """
    result = RetentionResult(table_name, cutoff.isoformat())
    table = open_table(lake, table_name)
    if table is None:
        return result
    old = [d for d in table_stats(lake, table_name).days if d["day"] < result.cutoff]
    if not old:
        return result
    result.days = {d["day"]: d["rows"] for d in old}
    result.files = sum(d["files"] for d in old)
    facts = {"cutoff": result.cutoff, "days": result.days, "files": result.files}
    with lake_errors(lake, f"deleting {table_name} days before {result.cutoff}"):
        table.delete(
            predicate=f"{PARTITION_COLUMN} < '{result.cutoff}'",
            commit_properties=CommitProperties(custom_metadata={RETENTION_KEY: facts}),
        )
    result.version = table.version()
    return result
