"""A run of several partitions reads the next range while the last one is written.

What a user would notice if it went wrong: a range committed out of its partition's order, a
range committed twice or not at all, a run that stops but keeps reading.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest

from pipeline_project.batch.ranges import Range
from pipeline_project.batch.run import ingest, interleaved
from pipeline_project.errors import DrainError
from pipeline_project.kafka.drain import drain_range, make_consumer, watermarks
from pipeline_project.lake.audit import audit
from pipeline_project.lake.location import lake_of
from pipeline_project.lake.table import open_table, txn_version
from pipeline_project.settings import Settings
from pipeline_project_tests.ingest_support import produce


def test_partitions_take_turns_and_keep_their_own_order() -> None:
    ranges = [
        Range("t", 0, 0, 10),
        Range("t", 0, 10, 20),
        Range("t", 0, 20, 30),
        Range("t", 1, 0, 10),
        Range("t", 2, 0, 10),
        Range("t", 2, 10, 20),
    ]
    order = [(r.partition, r.start) for r in interleaved(ranges)]
    assert order == [(0, 0), (1, 0), (2, 0), (0, 10), (2, 10), (0, 20)]


def test_a_run_of_many_ranges_commits_each_once_in_its_partitions_order(
    lake_settings: Settings, tmp_path: Path
) -> None:
    settings = dataclasses.replace(lake_settings, max_range_events=400)
    truth = produce(settings, tmp_path / "truth.jsonl", 3000, "--bad-ratio", "0.05")
    consumer = make_consumer(settings)
    try:
        ends = {p: watermarks(consumer, settings.raw_topic, p)[1] for p in range(3)}
    finally:
        consumer.close()
    # Ranges of 150, as a sensor run gets them: two fit in the memory of one (400).
    ranges = [
        Range(settings.raw_topic, p, start, min(start + 150, end))
        for p, end in ends.items()
        for start in range(0, end, 150)
    ]
    result = ingest(settings, ranges)
    assert len(result.committed) == len(ranges) >= 18
    assert result.records == len(truth) and result.accounting_ok()
    # Every range after the first was read while the one before it (of another partition) was
    # written, until one partition is left.
    assert sum(o.read_ahead for o in result.outcomes) >= len(ranges) // 2
    # Read ahead, then committed one after another, each partition's ranges in order.
    seen: dict[int, int] = {}
    for outcome in result.outcomes:
        rng = outcome.range
        assert seen.get(rng.partition, 0) == rng.start, [o.range.range_id for o in result.outcomes]
        seen[rng.partition] = rng.end
    partitions = [o.range.partition for o in result.outcomes]
    assert partitions[:3] == sorted(set(partitions)), "the partitions did not take turns"
    assert seen == ends
    lake = lake_of(settings)
    table = open_table(lake)
    for partition, end in ends.items():
        assert txn_version(table, f"{settings.raw_topic}-{partition}") == end
    assert audit(lake).ok


def test_two_full_ranges_are_not_held_at_once(kafka_settings: Settings, tmp_path: Path) -> None:
    """Ranges that together exceed PIPELINE_MAX_RANGE_EVENTS run one after the other."""
    settings = dataclasses.replace(kafka_settings, max_range_events=400)
    produce(settings, tmp_path / "truth.jsonl", 1500)
    result = ingest(settings)
    assert len(result.committed) >= 6 and result.accounting_ok()
    pairs = list(zip(result.outcomes, result.outcomes[1:], strict=False))
    full = [cur for prev, cur in pairs if prev.range.size + cur.range.size > 400]
    assert full, [o.range.range_id for o in result.outcomes]
    assert not any(cur.read_ahead for cur in full)


def test_a_stopped_run_stops_reading_at_once(kafka_settings: Settings) -> None:
    """The range read ahead for a run that failed: its drain ends now, not at its time bound."""
    settings = kafka_settings
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    consumer = make_consumer(settings)
    started = time.monotonic()
    try:
        with pytest.raises(DrainError, match="the run stopped while the range was read"):
            # Nothing was produced: the range waits for records that never come.
            drain_range(consumer, Range(settings.raw_topic, 0, 0, 100), timeout_s=60, stop=stop)
    finally:
        consumer.close()
    assert time.monotonic() - started < 5
