"""`pipeline-project lake stats`: what a table holds per day, from its latest snapshot's log."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from pipeline_project.lake.location import TABLE_EVENTS, Lake
from pipeline_project.lake.table import PARTITION_COLUMN, lake_errors, open_table

MIB = 1024 * 1024
# Half the default compaction target: files below it are what compaction merges.
SMALL_FILE_BYTES = 64 * MIB


@dataclass
class TableStats:
    """Files, rows and bytes of a table, in all and per day."""

    table: str
    version: int | None = None
    files: int = 0
    rows: int = 0
    bytes: int = 0
    days: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        head = (
            f"{self.table}: version {self.version}, {self.files} files, {self.rows} rows, "
            f"{self.bytes / MIB:.1f} MiB"
        )
        lines = [head, "day         files  small  rows      MiB     avg file MiB"]
        for day in self.days:
            lines.append(
                f"{day['day']}  {day['files']:<5}  {day['small_files']:<5}  {day['rows']:<8}  "
                f"{day['bytes'] / MIB:<7.1f}  {day['bytes'] / MIB / max(day['files'], 1):.2f}"
            )
        return "\n".join(lines)


def table_stats(
    lake: Lake, table_name: str = TABLE_EVENTS, small_below: int = SMALL_FILE_BYTES
) -> TableStats:
    """Per-day files, rows, bytes and small files from the add actions (no data file is opened).

    A file is small below `small_below` bytes: what compaction would merge.
    """
    stats = TableStats(table_name)
    table = open_table(lake, table_name)
    if table is None:
        return stats
    with lake_errors(lake, f"reading {table_name}'s log"):
        adds = pl.DataFrame(table.get_add_actions(flatten=True))
    stats.version = table.version()
    if adds.height == 0:
        return stats
    day_column = f"partition.{PARTITION_COLUMN}"
    per_day = (
        adds.group_by(day_column)
        .agg(
            pl.len().alias("files"),
            pl.col("num_records").sum().alias("rows"),
            pl.col("size_bytes").sum().alias("bytes"),
            (pl.col("size_bytes") < small_below).sum().alias("small_files"),
        )
        .sort(day_column)
    )
    stats.files, stats.rows = adds.height, int(adds.get_column("num_records").sum())
    stats.bytes = int(adds.get_column("size_bytes").sum())
    stats.days = [
        {"day": str(d), "files": int(f), "rows": int(r), "bytes": int(b), "small_files": int(s)}
        for d, f, r, b, s in per_day.iter_rows()
    ]
    return stats
