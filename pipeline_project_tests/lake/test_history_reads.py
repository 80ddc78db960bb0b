"""Partial history reads hold exactly what a full read holds of the records they keep.

read_tail: the log's recent commits, read backwards. read_history(kinds=...): only records of
those kinds, the rest not even parsed.

The table is real (delta-rs opens it and reads its log), on local disk and on versitygw; its 200
commits are written as the Delta protocol defines them, with commit timestamps a minute apart
ending now, as three hours of runs would leave them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from deltalake import DeltaTable

from pipeline_project.batch.ranges import Range
from pipeline_project.lake.commit import create_table
from pipeline_project.lake.files import storage
from pipeline_project.lake.history import TAIL_CHUNK, read_history, read_tail
from pipeline_project.lake.location import TABLE_EVENTS, Lake
from pipeline_project.lake.record import METADATA_KEY, RangeRecord, offsets_digest

COMMITS = 200
NOW = datetime.now(UTC)


def stamp(version: int) -> datetime:
    """Commit `version` was made (COMMITS - version) minutes ago."""
    return NOW - timedelta(minutes=COMMITS - version)


def history_table(
    lake: Lake, topic_of: dict[int, str], kind_of: dict[int, str] | None = None
) -> DeltaTable:
    """A table whose commits 1..COMMITS each hold one 10-offset range of topic_of[v] (else 't'),
    of kind kind_of[v] (else "ingest"); its log entries written through the lake's filesystem."""
    frame = pl.DataFrame(
        {
            "event_id": ["x"],
            "kafka_topic": ["t"],
            "kafka_partition": [0],
            "kafka_offset": [0],
            "event_date": [NOW.date()],
            "date": [NOW.date()],
        }
    )
    create_table(lake, TABLE_EVENTS, frame.to_arrow().schema)
    where = storage(lake, TABLE_EVENTS)
    for version in range(1, COMMITS + 1):
        at = stamp(version)
        topic = topic_of.get(version, "t")
        rng = Range(topic, 0, version * 10, version * 10 + 10)
        offsets = tuple(range(rng.start, rng.end))
        kind = (kind_of or {}).get(version, "ingest")
        record = RangeRecord(
            rng, kind, "run", at, at, 10, offsets_digest(offsets), filtered={"bot": offsets}
        )
        lines = [
            {
                "commitInfo": {
                    "timestamp": int(at.timestamp() * 1000),
                    "operation": "WRITE",
                    METADATA_KEY: record.to_metadata(at),
                }
            },
            {"txn": {"appId": record.app_id, "version": rng.end}},
        ]
        entry = f"{where.root}/_delta_log/{version:020d}.json"
        with where.fs.open_output_stream(entry) as out:
            out.write(("\n".join(map(json.dumps, lines)) + "\n").encode())
    return DeltaTable(lake.table_uri(TABLE_EVENTS), storage_options=lake.options())


def versions(records: list[RangeRecord]) -> list[int | None]:
    return [r.version for r in records]


def test_the_tail_holds_the_window_and_stops_a_chunk_past_it(lake: Lake) -> None:
    table = history_table(lake, {})
    full = read_history(lake, table)
    since = NOW - timedelta(minutes=30)
    tail = read_tail(lake, table, since)
    got = versions(tail.records)
    assert got == sorted(got), "oldest first, as read_history"
    # Every commit of the window (and of the clock-skew margin before it) is there ...
    assert set(range(COMMITS - 35, COMMITS + 1)) <= set(got)
    # ... as the full read has it, and reading stopped at the first chunk wholly before the margin.
    assert tail.records == full.records[-len(got) :]
    assert len(got) <= 35 + 2 * TAIL_CHUNK
    assert len(got) < len(full.records)


def test_the_tail_goes_back_to_the_newest_wanted_record(lake: Lake) -> None:
    # Only commit 10 is of topic "raw": an idle source, its last ingest three hours ago.
    topics = {v: "other" for v in range(1, COMMITS + 1)} | {10: "raw"}
    table = history_table(lake, topics)
    since = NOW - timedelta(minutes=30)
    tail = read_tail(lake, table, since, want=lambda r: r.range.topic == "raw")
    raw = [r for r in tail.records if r.range.topic == "raw"]
    assert versions(raw) == [10]
    assert abs(raw[0].committed_at - stamp(10)) < timedelta(seconds=1)


@pytest.mark.parametrize("minutes", [0, COMMITS * 2])
def test_without_the_wanted_record_or_with_a_wide_window_the_tail_is_the_whole_log(
    lake: Lake, minutes: int
) -> None:
    table = history_table(lake, {})
    since = NOW - timedelta(minutes=minutes)
    want = (lambda r: False) if minutes == 0 else None
    assert read_tail(lake, table, since, want=want).records == read_history(lake, table).records


def test_a_read_of_some_kinds_keeps_exactly_those_records(lake: Lake) -> None:
    kinds = {v: "reprocess" for v in (3, 77, 150)} | {v: "loss" for v in (5, 6)}
    table = history_table(lake, {}, kinds)
    full = read_history(lake, table).records
    wanted = read_history(lake, table, kinds=("reprocess",)).records
    assert versions(wanted) == [3, 77, 150]
    assert wanted == [r for r in full if r.kind == "reprocess"]
    both = read_history(lake, table, kinds=("reprocess", "loss")).records
    assert versions(both) == [3, 5, 6, 77, 150]
