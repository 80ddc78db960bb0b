"""Sessions: one row per (session, UTC day), derived from the day's committed `events` rows.

Events are read through the Delta log (`lake.read.read_days`, pruned to the day's `date`
partition), so only committed rows count: files of a crashed writer or of a compaction in progress
are never read. The result is the Delta table `<lake>/sessions`, partitioned by `date`; each day is
replaced by one overwrite commit, so readers see the old day or the new one.

Concurrent materializations of one day need no lock: two overwrites of the same day that overlap
conflict, and the loser recomputes from a fresh read. One case slips past Delta's check (it only
compares commits made while a write is in flight): a run that read the events earlier but commits
after a run that read them later would put back older rows. So after its commit a run looks at the
day's commits since it started reading; if another run committed the day meanwhile, it reads and
writes again. The last commit of a day is therefore always computed from the latest read.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from pipeline_project.batch.transform import UTC_US
from pipeline_project.columns import DATE_COLUMN, SOURCE_COLUMNS
from pipeline_project.errors import LakeError
from pipeline_project.lake.derived import (
    MAX_ATTEMPTS,
    RETRY_PAUSE_SECONDS,
    ensure_table,
    is_conflict,
)
from pipeline_project.lake.location import TABLE_EVENTS, TABLE_SESSIONS, Lake, lake_of
from pipeline_project.lake.read import read_days, replace_day
from pipeline_project.lake.table import PARTITION_COLUMN, lake_errors, open_table
from pipeline_project.settings import Settings

log = logging.getLogger(__name__)

# Funnel stages in order; a session's stage is the furthest one any of its events reached.
FUNNEL_STAGES: tuple[str, ...] = ("visit", "product_view", "add_to_cart", "checkout", "purchase")

# Columns read from the events table (projection pushdown: the rest is never decoded).
EVENT_COLUMNS: tuple[str, ...] = (
    "session_id",
    "user_id",
    "event_type",
    "timestamp",
    "page_path",
    "product_id",
    "device_type",
    "browser",
    "os",
    "country",
    "revenue",
    "currency",
    *SOURCE_COLUMNS,
)
# Event order within a session: time, then Kafka coordinates, so ties resolve the same every run.
EVENT_ORDER: tuple[str, ...] = (
    "session_id",
    "timestamp",
    *SOURCE_COLUMNS,
)

# The sessions schema, defined once: every sessions file has exactly these columns, in this order.
SESSIONS_SCHEMA: dict[str, pl.DataType] = {
    "session_id": pl.String(),
    DATE_COLUMN: pl.Date(),
    "user_id": pl.String(),
    "session_start": UTC_US,
    "session_end": UTC_US,
    "duration_s": pl.Float64(),
    "event_count": pl.Int64(),
    "page_views": pl.Int64(),
    "distinct_pages": pl.Int64(),
    "entry_page": pl.String(),
    "exit_page": pl.String(),
    "device_type": pl.String(),
    "browser": pl.String(),
    "os": pl.String(),
    "country": pl.String(),
    "converted": pl.Boolean(),
    "purchases": pl.Int64(),
    "revenue": pl.Float64(),
    "currency": pl.String(),
    "funnel_step": pl.Int64(),
    "funnel_stage": pl.String(),
}


@dataclass(frozen=True)
class SessionsOutput:
    """What one day's materialization read and wrote."""

    day: date
    table_uri: str | None  # None when the day has no committed events (nothing is written)
    rows: int
    event_rows: int
    source_files: int  # the day's events files in the snapshot opened before reading
    events_version: int | None = None  # that snapshot's version (the read sees it or a later one)
    version: int | None = None  # the sessions table version of this day's commit
    converted: int = 0
    funnel: dict[str, int] = field(default_factory=dict)

    @property
    def conversion_rate(self) -> float:
        return round(self.converted / self.rows, 4) if self.rows else 0.0


@dataclass(frozen=True)
class DayEvents:
    """One day's committed events as read, and the snapshot they were read from."""

    rows: pl.DataFrame
    version: int  # the events version opened just before reading (the read sees it or later)
    files: int


def read_day_events(
    lake: Lake, day: date, columns: tuple[str, ...] = EVENT_COLUMNS
) -> DayEvents | None:
    """The day's committed events (the given columns), or None before the first commit.

    Columns the table does not have yet (no event ever carried them) come back as nulls, so a
    young lake gives the same frame shape as an old one.
    """
    table = open_table(lake, TABLE_EVENTS)
    if table is None:
        return None
    names = set(table.schema().to_arrow().names)
    present = [c for c in columns if c in names]
    frame = read_days(lake, [day], present) if present else None
    if frame is None or not frame.columns:
        frame = pl.DataFrame(schema=list(columns))
    frame = frame.select(
        pl.col(c) if c in frame.columns else pl.lit(None).alias(c) for c in columns
    )
    return DayEvents(frame, table.version(), _day_files(lake, table, day))


def _day_files(lake: Lake, table: DeltaTable, day: date) -> int:
    """How many of the snapshot's files hold the day (the log's add actions, no listing)."""
    with lake_errors(lake, "listing the events files"):
        adds = pa.table(table.get_add_actions(flatten=True))
    key = f"partition.{PARTITION_COLUMN}"
    if key not in adds.column_names or adds.num_rows == 0:
        return 0
    return int(pc.sum(pc.equal(adds.column(key), pa.scalar(day, pa.date32()))).as_py() or 0)


def _funnel_step() -> pl.Expr:
    """Index into FUNNEL_STAGES of the stage one event proves."""
    kind = pl.col("event_type")
    return (
        pl.when(kind == "purchase")
        .then(4)
        .when(kind == "begin_checkout")
        .then(3)
        .when(kind == "add_to_cart")
        .then(2)
        .when((kind == "page_view") & pl.col("product_id").is_not_null())
        .then(1)
        .otherwise(0)
    )


def build_sessions(events: pl.DataFrame, day: date) -> pl.DataFrame:
    """Aggregates one day's events into SESSIONS_SCHEMA rows, ordered by (session_start, id).

    Pure and deterministic: the same events give the same rows whatever order they arrive in.
    Entry/exit page, device, browser and OS come from the session's first and last event of the
    day; country is the first one known; revenue sums the purchases (in the session's currency).
    """
    if events.height == 0:
        return pl.DataFrame(schema=SESSIONS_SCHEMA)
    purchase = pl.col("event_type") == "purchase"
    grouped = (
        events.sort(list(EVENT_ORDER))
        .group_by("session_id", maintain_order=True)
        .agg(
            pl.col("user_id").first(),
            pl.col("timestamp").first().alias("session_start"),
            pl.col("timestamp").last().alias("session_end"),
            pl.len().alias("event_count"),
            (pl.col("event_type") == "page_view").sum().alias("page_views"),
            pl.col("page_path").n_unique().alias("distinct_pages"),
            pl.col("page_path").first().alias("entry_page"),
            pl.col("page_path").last().alias("exit_page"),
            pl.col("device_type").first(),
            pl.col("browser").first(),
            pl.col("os").first(),
            pl.col("country").drop_nulls().first(),
            purchase.any().alias("converted"),
            purchase.sum().alias("purchases"),
            pl.col("revenue").filter(purchase).sum().alias("revenue"),
            pl.col("currency").filter(purchase).drop_nulls().first(),
            _funnel_step().max().alias("funnel_step"),
        )
    )
    duration = (pl.col("session_end") - pl.col("session_start")).dt.total_microseconds() / 1e6
    stages = dict(enumerate(FUNNEL_STAGES))
    rows = grouped.with_columns(
        pl.lit(day, dtype=pl.Date).alias(DATE_COLUMN),
        duration.alias("duration_s"),
        pl.col("funnel_step").replace_strict(stages, return_dtype=pl.String).alias("funnel_stage"),
    )
    rows = rows.select(pl.col(name).cast(dtype) for name, dtype in SESSIONS_SCHEMA.items())
    return rows.sort("session_start", "session_id")


def sessions_arrow_schema() -> pa.Schema:
    """The sessions table's schema: SESSIONS_SCHEMA plus the partition column `date`."""
    empty = pl.DataFrame(schema={**SESSIONS_SCHEMA, PARTITION_COLUMN: pl.Date()})
    return empty.to_arrow(compat_level=pl.CompatLevel.newest()).schema


def materialize_day(settings: Settings, day: date) -> SessionsOutput:
    """Recomputes one day's sessions from the committed events and replaces that day in one commit.

    A day without committed events writes nothing (no empty partitions for days before the lake).
    A commit conflict or a concurrent commit of the same day means: read again, write again.
    """
    lake = lake_of(settings)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        current = open_table(lake, TABLE_SESSIONS)
        before = current.version() if current is not None else -1
        events = read_day_events(lake, day)
        if events is None or events.rows.height == 0:
            return SessionsOutput(day, None, 0, 0, 0, events.version if events else None)
        rows = build_sessions(events.rows, day)
        ensure_table(lake, TABLE_SESSIONS, sessions_arrow_schema(), [PARTITION_COLUMN])
        try:
            replace_day(lake, TABLE_SESSIONS, day, rows)
        except LakeError as exc:
            if not is_conflict(exc):
                raise
            log.info("sessions %s: commit conflict (attempt %d), reading again", day, attempt)
            time.sleep(RETRY_PAUSE_SECONDS * attempt)
            continue
        commits = day_commits_since(lake, day, before)
        if len(commits) == 1:
            return _output(lake, day, rows, events, commits[0])
        log.info("sessions %s: another run committed the day meanwhile, reading again", day)
    raise LakeError(
        f"lake {lake.describe()}: sessions of {day} kept changing under {MAX_ATTEMPTS} attempts "
        "(other runs of the same day); the next materialization tries again"
    )


def day_commits_since(lake: Lake, day: date, version: int) -> list[int]:
    """Versions after `version` (-1: all) that overwrote the day in the sessions table."""
    table = open_table(lake, TABLE_SESSIONS)
    if table is None or table.version() <= version:
        return []
    wanted = f"{PARTITION_COLUMN} = '{day.isoformat()}'"
    with lake_errors(lake, "reading the sessions table's history"):
        entries = table.history(limit=table.version() - version)
    return [
        int(e["version"])
        for e in entries
        if int(e["version"]) > version
        and str((e.get("operationParameters") or {}).get("predicate", "")).startswith(wanted)
    ]


def _output(
    lake: Lake, day: date, rows: pl.DataFrame, events: DayEvents, version: int
) -> SessionsOutput:
    funnel = dict(rows.get_column("funnel_stage").value_counts().iter_rows())
    return SessionsOutput(
        day=day,
        table_uri=lake.table_uri(TABLE_SESSIONS),
        rows=rows.height,
        event_rows=events.rows.height,
        source_files=events.files,
        events_version=events.version,
        version=version,
        converted=int(rows.get_column("converted").sum()),
        funnel={stage: int(funnel.get(stage, 0)) for stage in FUNNEL_STAGES},
    )
