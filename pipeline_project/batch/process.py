"""One micro-batch end to end in memory: parse → validate → transform → filter, no I/O of its own.

The result accounts for every input record exactly once (lake row, reject or filtered offset), and
depends only on the arguments, so processing the same range twice gives identical frames.

Everything up to the filter is row-wise (`map_rows`), so the parts of a range can be mapped apart,
in different processes, and concatenated; only the filter (duplicates across the whole range and
against the lake) needs every row at once (`finish_batch`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime

import polars as pl

from pipeline_project.batch.parse import (
    ParsedBatch,
    native_split,
    parse_batch,
    parse_records,
)
from pipeline_project.batch.records import BatchResult, RawBatch, Reject
from pipeline_project.batch.transform import filter_rows, to_lake_rows
from pipeline_project.batch.validate import validate_frame
from pipeline_project.columns import DATE_COLUMN, OFFSET_COLUMN
from pipeline_project.perf import quick_gil_handoff

# (days, the batch's event ids) -> the (event_date, event_id) pairs among them already committed.
CommittedIds = Callable[[list[date], pl.Series], pl.DataFrame]


@dataclass(frozen=True)
class Identity:
    """What a range's rows are stamped and judged with; fixed by its intent, so retries agree."""

    run_id: str
    ingested_at: datetime
    now: datetime
    max_lateness_days: int
    max_clock_skew_seconds: int


@dataclass(frozen=True)
class MappedRows:
    """Lake rows before the filter (LAKE_SCHEMA, offset order) and the rejects, by offset."""

    rows: pl.DataFrame
    rejects: list[Reject]


@dataclass(frozen=True)
class ParsedPart:
    """One drained part of a range, parsed: the native decoder's rows and the Python path's.

    `native` is None when the native decoder did not run (not built, switched off, no records).
    """

    native: pl.DataFrame | None
    python: ParsedBatch


def parse_part(raw: RawBatch, *, native: bool = True) -> ParsedPart:
    """Parses one part of a range; parts of a range can be parsed apart, while it is drained."""
    split = native_split(raw) if native else None
    if split is None:
        return ParsedPart(None, parse_batch(raw, native=False))
    frame, deferred = split.frame, split.deferred
    del split
    return ParsedPart(frame, parse_records(*deferred))


def map_rows(raw: RawBatch, identity: Identity, *, native: bool = True) -> MappedRows:
    """Parse, validate and transform: every step looks at one record at a time."""
    return map_parts([parse_part(raw, native=native)], raw.topic, raw.partition, identity)


def map_parts(
    parts: Sequence[ParsedPart], topic: str, partition: int, identity: Identity
) -> MappedRows:
    """Validates and transforms the parsed parts of one range, as one batch per parse path.

    The native decoder's rows are validated and transformed on a worker thread (polars and
    pandera, mostly outside the GIL) while this thread maps the Python path's; the two are then
    merged in offset order. One validation per path, not per part: pandera's checks cost a fixed
    ~0.2 s a call, whatever the rows.
    """
    frames = [p.native for p in parts if p.native is not None]
    python = ParsedBatch(
        pl.concat([p.python.frame for p in parts], rechunk=True),
        sorted((r for p in parts for r in p.python.rejects), key=lambda r: r.offset),
    )
    if not frames:
        return _map_parsed(python, topic, partition, identity)
    # One worker: pandera then never runs on two threads at once, and more threads would only
    # compete for the same two cores.
    with (
        quick_gil_handoff(),
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="map-rows") as pool,
    ):
        native = ParsedBatch(pl.concat(frames, rechunk=True), [])
        del frames
        fast = pool.submit(_map_parsed, native, topic, partition, identity)
        del native
        slow_rows = _map_parsed(python, topic, partition, identity)
        fast_rows = fast.result()
    rows = fast_rows.rows.merge_sorted(slow_rows.rows, OFFSET_COLUMN)
    return MappedRows(rows, sorted(fast_rows.rejects + slow_rows.rejects, key=lambda r: r.offset))


def _map_parsed(parsed: ParsedBatch, topic: str, partition: int, identity: Identity) -> MappedRows:
    """Validate and transform parsed rows (the frames are dropped as soon as the next exists).

    A 200k batch's frames are ~100 MB each, and the run's peak memory is what the last three
    alive at once add up to.
    """
    rejects = list(parsed.rejects)
    validated = validate_frame(
        parsed.frame,
        now=identity.now,
        max_lateness_days=identity.max_lateness_days,
        max_clock_skew_seconds=identity.max_clock_skew_seconds,
    )
    del parsed
    rejects += validated.rejects
    lake = to_lake_rows(
        validated.frame,
        topic=topic,
        partition=partition,
        run_id=identity.run_id,
        ingested_at=identity.ingested_at,
    )
    del validated
    rejects += lake.rejects
    return MappedRows(lake.rows, sorted(rejects, key=lambda r: r.offset))


def finish_batch(mapped: MappedRows, committed_ids: CommittedIds | None) -> BatchResult:
    """Filters bots, test users and duplicates (in the range and against the lake's days).

    `committed_ids(days, ids)` returns the (event_date, event_id) pairs already in the lake for
    those UTC days, at least those whose id is among `ids` (the batch's, lower-cased): a day of
    the lake holds millions of ids, and a lookup only needs the few this batch repeats. It is
    called at most once, and only with the days this batch has rows for.
    """
    days = mapped.rows.get_column(DATE_COLUMN).unique().sort().to_list()
    ids = mapped.rows.get_column("event_id").unique()
    known = committed_ids(days, ids) if committed_ids is not None and days else None
    kept = filter_rows(mapped.rows, known)
    return BatchResult(good=kept.good, rejects=mapped.rejects, filtered=kept.filtered)


def process_batch(
    raw: RawBatch,
    *,
    run_id: str,
    ingested_at: datetime,
    now: datetime,
    max_lateness_days: int,
    max_clock_skew_seconds: int,
    committed_ids: CommittedIds | None,
) -> BatchResult:
    """Lake rows (LAKE_SCHEMA, sorted by kafka_offset), rejects (by offset) and filtered offsets."""
    identity = Identity(run_id, ingested_at, now, max_lateness_days, max_clock_skew_seconds)
    return finish_batch(map_rows(raw, identity), committed_ids)
