"""Sessions: one row per (session, UTC day), derived from the day's committed `events` files.

Only manifest-listed files are read (never strays, never in-flight files), so a day's sessions are
always computed from a committed state of the lake. Each day is one Parquet file,
`<lake>/sessions/date=YYYY-MM-DD/sessions.parquet`, replaced atomically (temp file under the state
dir, fsync, rename, directory fsync) under a per-day lock: readers see the old file or the new one,
and two materializations of one day run one after the other, the later one reading the later lake.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from pipeline_project.batch import lake, ledger
from pipeline_project.batch.transform import DATE_COLUMN, UTC_US
from pipeline_project.errors import LedgerError, LockBusyError
from pipeline_project.settings import Settings

TABLE_SESSIONS = "sessions"
FILE_NAME = "sessions.parquet"
TEMP_DIR_NAME = "sessions-tmp"
LOCK_TIMEOUT_S = 300.0
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
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
)
# Event order within a session: time, then Kafka coordinates, so ties resolve the same every run.
EVENT_ORDER: tuple[str, ...] = (
    "session_id",
    "timestamp",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
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
    path: Path | None  # None when the day has no committed events (nothing is written)
    rows: int
    event_rows: int
    source_files: int
    converted: int = 0
    funnel: dict[str, int] = field(default_factory=dict)

    @property
    def conversion_rate(self) -> float:
        return round(self.converted / self.rows, 4) if self.rows else 0.0


def committed_event_files(lake_dir: Path, state_dir: Path, day: date) -> list[Path]:
    """The `events` files of `day` that a manifest lists, of every topic: the committed day.

    A listed file that is missing raises LedgerError: sessions from a damaged day would be wrong
    without saying so (reconcile and recovery report the damage).
    """
    wanted = lake.validate_day(day)
    paths = sorted(
        lake.resolve(lake_dir, item.path)
        for manifest in ledger.load_manifests(state_dir)
        for item in manifest.files
        if item.table == lake.TABLE_EVENTS and item.day == wanted
    )
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise LedgerError(f"committed events files are missing (run reconcile): {missing[:5]}")
    return paths


def read_events(paths: list[Path], columns: tuple[str, ...] = EVENT_COLUMNS) -> pl.DataFrame:
    """The given columns of the listed files, as one frame (empty with the right names if none).

    Files of rows recovered from the DLQ carry extra lineage columns; only `columns` are read.
    """
    if not paths:
        return pl.DataFrame(schema=list(columns))
    scan = pl.scan_parquet(
        [str(p) for p in paths], extra_columns="ignore", missing_columns="insert"
    )
    return scan.select(columns).collect()


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


def sessions_path(lake_dir: Path, day: date) -> Path:
    """`<lake>/sessions/date=YYYY-MM-DD/sessions.parquet`."""
    return Path(lake_dir) / TABLE_SESSIONS / lake.day_dir_name(day) / FILE_NAME


def write_atomically(frame: pl.DataFrame, target: Path, state_dir: Path) -> None:
    """Replaces `target` so that readers see the old file or the new one, never a part.

    The temp file lives under the state dir (inside the lake root, readers would see it); it is
    fsynced, renamed over `target`, and the directory is fsynced.
    """
    temp_dir = Path(state_dir) / TEMP_DIR_NAME
    lake.ensure_dir(temp_dir)
    lake.ensure_dir(target.parent)
    temp = temp_dir / f"{target.parent.name}.{os.getpid()}.{secrets.token_hex(4)}.parquet"
    try:
        table = frame.to_arrow(compat_level=pl.CompatLevel.oldest()).combine_chunks()
        pq.write_table(table.replace_schema_metadata(None), str(temp), **lake.PARQUET_OPTIONS)
        lake.fsync_file(temp)
        os.replace(temp, target)
        lake.fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


@contextlib.contextmanager
def day_lock(state_dir: Path, day: date, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Serializes materializations of one day (flock; the kernel drops it if the process dies)."""
    path = Path(state_dir) / ledger.LOCKS_DIR / f"{TABLE_SESSIONS}-{lake.validate_day(day)}.lock"
    lake.ensure_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockBusyError(
                        f"sessions of {day} locked by another run for {timeout_s:.0f} s ({path})"
                    ) from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


def materialize_day(settings: Settings, day: date) -> SessionsOutput:
    """Recomputes one day's sessions from the committed lake and replaces its file atomically.

    A day without committed events writes nothing (no empty files for the days before the lake).
    """
    with day_lock(settings.state_dir, day):
        paths = committed_event_files(settings.lake_dir, settings.state_dir, day)
        events = read_events(paths)
        if not paths:
            return SessionsOutput(day, None, 0, 0, 0)
        rows = build_sessions(events, day)
        target = sessions_path(settings.lake_dir, day)
        write_atomically(rows, target, settings.state_dir)
    funnel = dict(rows.get_column("funnel_stage").value_counts().iter_rows())
    return SessionsOutput(
        day=day,
        path=target,
        rows=rows.height,
        event_rows=events.height,
        source_files=len(paths),
        converted=int(rows.get_column("converted").sum()),
        funnel={stage: int(funnel.get(stage, 0)) for stage in FUNNEL_STAGES},
    )
