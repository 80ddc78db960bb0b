"""One micro-batch end to end in memory: parse → validate → transform → filter, no I/O of its own.

The result accounts for every input record exactly once (lake row, reject or filtered offset), and
depends only on the arguments, so processing the same range twice gives identical frames.

Everything up to the filter is row-wise (`map_rows`), so the parts of a range are mapped apart
while the range is drained (`map_part`), and pandera judges their suspects once (`finish_parts`);
only the filter (duplicates across the whole range and against the lake) needs every row at once
(`finish_batch`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

import polars as pl

from pipeline_project.batch.parse import (
    parse_batch,
)
from pipeline_project.batch.records import BatchResult, RawBatch, Reject, SourceRecord
from pipeline_project.batch.transform import LakeRows, filter_rows, to_lake_rows
from pipeline_project.batch.validate import judge, screen
from pipeline_project.columns import DATE_COLUMN, OFFSET_COLUMN

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
class MappedPart:
    """One drained part of a range, parsed, screened and its clean rows transformed.

    `suspects` are the rows the screen found failing a rule, still to be judged by pandera once
    per range (`finish_parts`); `rejects` are the part's parse and transform rejects. `sources`
    holds the records of both as drained, for their DLQ copies: taken on the mapping thread, so
    the range's end waits for no per-record work.
    """

    rows: pl.DataFrame
    suspects: pl.DataFrame
    rejects: list[Reject]
    sources: dict[int, SourceRecord]


def map_part(raw: RawBatch, identity: Identity, *, native: bool = True) -> MappedPart:
    """Parse, screen and transform one part; parts of a range can be mapped while it is drained.

    The parsed frame (~100 MB for 200k records) is dropped as soon as its lake rows exist.
    """
    parsed = parse_batch(raw, native=native)  # in offset order
    rejects = list(parsed.rejects)
    screened = screen(parsed.frame, *_window(identity))
    del parsed
    lake = _transform(screened.clean, raw.topic, raw.partition, identity)
    rejects += lake.rejects
    suspects = screened.suspects.get_column(OFFSET_COLUMN).to_list()
    sources = raw.sources([*(r.offset for r in rejects), *suspects])
    return MappedPart(lake.rows, screened.suspects, rejects, sources)


@dataclass(frozen=True)
class GatheredRows:
    """A range's mapped parts put together, before pandera's verdict on their suspects.

    `rows` are the clean rows (LAKE_SCHEMA, offset order), `rejects` the parse and transform
    rejects, `suspects` the rows the screen found failing a rule, still to be judged, `sources`
    the drained records of the rejects and suspects.
    """

    rows: pl.DataFrame
    rejects: list[Reject]
    suspects: pl.DataFrame
    sources: dict[int, SourceRecord]


@dataclass(frozen=True)
class Verdict:
    """Pandera's judgement of a range's suspects.

    One reject per failing row, and the lake rows of any suspect it passed (none by design: the
    screen doubts only rows failing a rule).
    """

    rejects: list[Reject]
    passed: pl.DataFrame


def gather_parts(parts: Sequence[MappedPart]) -> GatheredRows:
    """The parts' clean rows, rejects and suspects, each in offset order.

    The rows stay one chunk a part: the filter and the file writer copy them anyway (a rechunk
    here cost ~25 ms a range on its critical path).
    """
    sources: dict[int, SourceRecord] = {}
    for part in parts:
        sources.update(part.sources)
    return GatheredRows(
        pl.concat([p.rows for p in parts]),
        [r for p in parts for r in p.rejects],
        pl.concat([p.suspects for p in parts], rechunk=True),
        sources,
    )


def judge_suspects(
    suspects: pl.DataFrame, topic: str, partition: int, identity: Identity
) -> Verdict:
    """One pandera call for a range's suspects: its checks cost a fixed ~0.1 s a call."""
    judged = judge(suspects, *_window(identity))
    if not judged.frame.height:
        return Verdict(judged.rejects, pl.DataFrame())
    kept = _transform(judged.frame, topic, partition, identity)
    return Verdict(judged.rejects + kept.rejects, kept.rows)


def with_verdict(rows: pl.DataFrame, rejects: list[Reject], verdict: Verdict) -> MappedRows:
    """`rows` with any suspect pandera passed among them, and every reject, by offset."""
    if verdict.passed.height:
        rows = pl.concat([rows, verdict.passed]).sort(OFFSET_COLUMN, maintain_order=True)
    return MappedRows(rows, sorted(rejects + verdict.rejects, key=lambda r: r.offset))


def finish_parts(
    parts: Sequence[MappedPart], topic: str, partition: int, identity: Identity
) -> MappedRows:
    """Pandera judges every part's suspects at once, then the range's rows in offset order."""
    gathered = gather_parts(parts)
    verdict = judge_suspects(gathered.suspects, topic, partition, identity)
    return with_verdict(gathered.rows, gathered.rejects, verdict)


def map_rows(raw: RawBatch, identity: Identity, *, native: bool = True) -> MappedRows:
    """Parse, validate and transform: every step looks at one record at a time."""
    part = map_part(raw, identity, native=native)
    return finish_parts([part], raw.topic, raw.partition, identity)


def _window(identity: Identity) -> tuple[datetime, int, int]:
    return identity.now, identity.max_lateness_days, identity.max_clock_skew_seconds


def _transform(frame: pl.DataFrame, topic: str, partition: int, identity: Identity) -> LakeRows:
    return to_lake_rows(
        frame,
        topic=topic,
        partition=partition,
        run_id=identity.run_id,
        ingested_at=identity.ingested_at,
    )


def finish_batch(mapped: MappedRows, committed_ids: CommittedIds | None) -> BatchResult:
    """Filters bots, test users and duplicates (in the range and against the lake's days).

    `committed_ids(days, ids)` returns the (event_date, event_id) pairs already in the lake for
    those UTC days, at least those whose id is among `ids` (the batch's, lower-cased): a day of
    the lake holds millions of ids, and a lookup only needs the few this batch repeats. It is
    called at most once, and only with the days this batch has rows for.
    """
    days = mapped.rows.get_column(DATE_COLUMN).unique().sort().to_list()
    ids = mapped.rows.get_column("event_id")  # the lookup keeps distinct ids (10 ms a range)
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
