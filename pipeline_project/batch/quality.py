"""Data-quality figures of the committed lake (read through the Delta log), for the `events` checks.

The share of events whose user agent enriched to nothing useful (device `unknown`, browser
`Other`): a jump means a new client or a broken UA rule, and every per-device report drifts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from pipeline_project.batch.sessions import read_day_events
from pipeline_project.lake.location import Lake, lake_of
from pipeline_project.lake.table import PARTITION_COLUMN, lake_errors, open_table
from pipeline_project.settings import Settings

UNKNOWN_DEVICE = "unknown"
UNKNOWN_BROWSER = "Other"


@dataclass(frozen=True)
class UnknownUserAgents:
    """Counts of one day's committed events whose device or browser was not recognised."""

    day: date | None
    rows: int
    unknown_device: int
    unknown_browser: int
    unknown_either: int

    @property
    def share(self) -> float:
        return round(self.unknown_either / self.rows, 6) if self.rows else 0.0


def latest_event_day(lake: Lake) -> date | None:
    """The newest UTC day with committed events (the snapshot's partition values), None if empty."""
    table = open_table(lake)
    if table is None:
        return None
    with lake_errors(lake, "listing the events files"):
        adds = pa.table(table.get_add_actions(flatten=True))
    key = f"partition.{PARTITION_COLUMN}"
    if key not in adds.column_names or adds.num_rows == 0:
        return None
    return pc.max(adds.column(key)).as_py()


def unknown_user_agents(settings: Settings, day: date | None = None) -> UnknownUserAgents:
    """Unknown device/browser counts of `day` (default: the latest committed day)."""
    lake = lake_of(settings)
    day = day or latest_event_day(lake)
    events = read_day_events(lake, day, ("device_type", "browser")) if day else None
    if day is None or events is None:
        return UnknownUserAgents(day, 0, 0, 0, 0)
    device = pl.col("device_type") == UNKNOWN_DEVICE
    browser = pl.col("browser") == UNKNOWN_BROWSER
    counts = events.collect(  # counted while reading: the day's rows are never in memory
        events.scan.select(
            device.sum().alias("device"),
            browser.sum().alias("browser"),
            (device | browser).sum().alias("either"),
        )
    ).row(0)
    return UnknownUserAgents(day, events.rows, *(int(c or 0) for c in counts))
