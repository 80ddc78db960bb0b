"""One micro-batch end to end in memory: parse → validate → transform → filter, no I/O of its own.

The result accounts for every input record exactly once (lake row, reject or filtered offset), and
depends only on the arguments, so processing the same range twice gives identical frames.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime

import polars as pl

from pipeline_project.batch.parse import parse_batch
from pipeline_project.batch.records import BatchResult, RawBatch
from pipeline_project.batch.transform import filter_rows, to_lake_rows
from pipeline_project.batch.validate import validate_frame

CommittedIds = Callable[[list[date]], pl.DataFrame]


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
    """Lake rows (LAKE_SCHEMA, sorted by kafka_offset), rejects (by offset) and filtered offsets.

    `committed_ids(days)` returns the (event_date, event_id) pairs already in the lake for those
    UTC days; it is called at most once, and only with the days this batch has rows for.
    """
    parsed = parse_batch(raw)
    validated = validate_frame(
        parsed.frame,
        now=now,
        max_lateness_days=max_lateness_days,
        max_clock_skew_seconds=max_clock_skew_seconds,
    )
    lake = to_lake_rows(
        validated.frame,
        topic=raw.topic,
        partition=raw.partition,
        run_id=run_id,
        ingested_at=ingested_at,
    )
    days = lake.dates()
    known = committed_ids(days) if committed_ids is not None and days else None
    kept = filter_rows(lake.rows, known)
    rejects = sorted([*parsed.rejects, *validated.rejects, *lake.rejects], key=lambda r: r.offset)
    return BatchResult(good=kept.good, rejects=rejects, filtered=kept.filtered)
