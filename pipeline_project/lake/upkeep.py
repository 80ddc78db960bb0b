"""Table upkeep: compaction of small files, vacuum, checkpoints (`pipeline-project lake ...`).

Micro-batches make small files: one per range and day. Compaction rewrites a day's small files
into files near the target size with Delta's optimize, as one commit that removes the old files
and adds the new ones with `dataChange=false`. It runs while ingestion commits to the same day:
ingestion's appends read no files, so neither commit conflicts with the other, and a reader's
snapshot holds either the small files or the compacted ones, never both. Vacuum deletes files no
commit references any more (compacted-away files, files of crashed writers) once they are older
than the retention, so a reader still scanning an older snapshot keeps its files.

The log is never cleaned up here: each range's accounting lives in its commit's metadata.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from pipeline_project.lake.location import TABLE_EVENTS, Lake
from pipeline_project.lake.stats import table_stats
from pipeline_project.lake.table import PARTITION_COLUMN, lake_errors, open_table

MIB = 1024 * 1024
# A reader's longest query must finish within this; vacuum never goes below it.
MIN_VACUUM_RETENTION_HOURS = 1


@dataclass
class CompactResult:
    """What one compaction did, per day: files and bytes before and after."""

    table: str
    days: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        lines = [f"{self.table}: compacted {len(self.days)} day(s) in {self.seconds:.1f} s"]
        for day in self.days:
            lines.append(
                f"  {day['day']}: {day['files_before']} -> {day['files_after']} files "
                f"({day['bytes_before'] / MIB:.1f} -> {day['bytes_after'] / MIB:.1f} MiB)"
            )
        return "\n".join(lines)


def compact(
    lake: Lake,
    *,
    day: date | None = None,
    target_mb: int = 128,
    table_name: str = TABLE_EVENTS,
) -> CompactResult:
    """Compacts `day` of a table, or every day that has several files well below the target."""
    result = CompactResult(table_name)
    started = time.perf_counter()
    table = open_table(lake, table_name)
    if table is None:
        return result
    before = {d["day"]: d for d in table_stats(lake, table_name).days}
    target = target_mb * MIB
    days = [day.isoformat()] if day else [d for d, s in before.items() if _small(s, target)]
    for name in days:
        if name not in before:
            continue
        with lake_errors(lake, f"compacting {table_name} {name}"):
            table.optimize.compact(
                partition_filters=[(PARTITION_COLUMN, "=", name)], target_size=target
            )
            table.update_incremental()
    after = {d["day"]: d for d in table_stats(lake, table_name).days}
    for name in days:
        if name in before:
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


def _small(day: dict[str, Any], target: int, min_files: int = 2) -> bool:
    """A day worth compacting: several files whose average is well below the target size."""
    return day["files"] >= min_files and day["bytes"] < target * (day["files"] - 1)


def vacuum(
    lake: Lake, *, retention_hours: int = 168, table_name: str = TABLE_EVENTS, dry_run: bool = False
) -> list[str]:
    """Deletes files no commit references that are older than the retention; returns them."""
    if retention_hours < MIN_VACUUM_RETENTION_HOURS:
        raise ValueError(f"vacuum retention below {MIN_VACUUM_RETENTION_HOURS} h is refused")
    table = open_table(lake, table_name)
    if table is None:
        return []
    with lake_errors(lake, f"vacuuming {table_name}"):
        return table.vacuum(
            retention_hours=retention_hours,
            dry_run=dry_run,
            enforce_retention_duration=False,
            full=True,
        )


def checkpoint(lake: Lake, table_name: str = TABLE_EVENTS) -> int | None:
    """Writes a checkpoint at the latest version (run starts then read it, not the JSON tail)."""
    table = open_table(lake, table_name)
    if table is None:
        return None
    with lake_errors(lake, f"checkpointing {table_name}"):
        table.create_checkpoint()
    return table.version()
