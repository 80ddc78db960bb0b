"""Records and range names from before epochs stay what they were; epoch ones round-trip."""

from __future__ import annotations

from datetime import UTC, datetime

from pipeline_project.batch.ranges import Range, parse_range_id
from pipeline_project.lake.record import RangeRecord, offsets_digest

NOW = datetime(2026, 5, 3, 12, tzinfo=UTC)


def record(rng: Range, **fields: object) -> RangeRecord:
    return RangeRecord(rng, "ingest", "run-1", NOW, NOW, 0, offsets_digest([]), **fields)  # type: ignore[arg-type]


def test_an_epoch_zero_record_is_written_as_before_and_old_ones_read_as_unknown() -> None:
    old = record(Range("raw-events", 2, 0, 10)).to_metadata(NOW)
    assert "topic_id" not in old and "history_start" not in old and "epoch" not in old["range"]
    back = RangeRecord.from_metadata(old, version=3)
    assert back.topic_id is None and back.history_start is None  # unknown, not a mismatch
    assert back.app_id == "raw-events-2"
    assert [t.app_id for t in back.transactions()] == ["raw-events-2"]


def test_an_epoch_record_round_trips_with_its_app_ids() -> None:
    rng = Range("raw-events", 2, 0, 10, epoch=1)
    first = record(rng, topic_id="AbC", history_start=0)
    back = RangeRecord.from_metadata(first.to_metadata(NOW))
    assert back.range == rng and back.topic_id == "AbC" and back.history_start == 0
    assert [(t.app_id, t.version) for t in back.transactions()] == [
        ("raw-events@1-2", 10),
        ("raw-events@1-2#start", 0),
    ]
    assert rng.range_id == f"raw-events@1-2-{0:019d}-{10:019d}"
    assert parse_range_id(rng.range_id) == rng
    assert parse_range_id(Range("raw-events", 2, 0, 10).range_id) == Range("raw-events", 2, 0, 10)
