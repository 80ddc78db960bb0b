"""The oracle's truth checks catch what they exist for: a test tool that cannot fail proves nothing.

Pure data, no broker: committed range records and lake rows are built by hand around a known truth,
then one thing is broken at a time.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from pipeline_project.batch.ranges import Range
from pipeline_project.lake.record import DlqEntry, RangeRecord
from pipeline_project_tests.faults import oracle
from pipeline_project_tests.faults.fault_support import Sent

NOW = datetime(2026, 12, 3, tzinfo=UTC)
TRUTH = [
    Sent(0, 0, "good"),
    Sent(0, 1, "bad:invalid_json"),
    Sent(0, 2, "duplicate"),
    Sent(0, 3, "good"),
    Sent(1, 0, "good"),
]


def record(partition: int, start: int, end: int, dlq=(), filtered=None) -> RangeRecord:
    return RangeRecord(
        Range("raw", partition, start, end),
        "ingest",
        "run",
        NOW,
        NOW,
        end - start,
        "",
        dlq=tuple(DlqEntry(o, c, 0, o) for o, c in dlq),
        filtered=filtered or {},
    )


def good_state() -> tuple[list[RangeRecord], pl.DataFrame]:
    records = [
        record(0, 0, 4, dlq=[(1, "invalid_json")], filtered={"duplicate": (2,)}),
        record(1, 0, 1),
    ]
    lake = pl.DataFrame({"partition": [0, 0, 1], "offset": [0, 3, 0]})
    return records, lake


def problems(records: list[RangeRecord], lake: pl.DataFrame, complete: bool = True) -> list[str]:
    report = oracle.OracleReport()
    lake = lake.cast(oracle.COORD_SCHEMA)  # type: ignore[arg-type]
    where = oracle._destinations(report, records, lake)
    oracle._check_truth(report, oracle.truth_frame(TRUTH), where, records, complete)
    return report.problems


def test_a_correct_lake_passes_whether_the_truth_is_objects_or_columns() -> None:
    records, lake = good_state()
    assert problems(records, lake) == []
    frame = oracle.truth_frame(TRUTH)
    assert oracle.truth_frame(frame).equals(frame)


@pytest.mark.parametrize(
    ("lake_rows", "records_of", "expected"),
    [
        ([(0, 0), (0, 3), (1, 0), (0, 3)], None, "1 duplicate lake rows"),
        (
            [(0, 0), (1, 0)],
            None,
            "records misplaced, e.g. ['(0, 3) good: expected lake, found nowhere']",
        ),
        ([(0, 0), (0, 3), (1, 0), (0, 2)], None, "offsets in two places: [(0, 2)]"),
        ([(0, 0), (0, 3), (1, 0), (2, 9)], None, "never produced, e.g. [(2, 9)]"),
        (
            [(0, 0), (0, 3), (1, 0)],
            lambda: [record(0, 0, 4, dlq=[(1, "wrong_type")], filtered={"duplicate": (2,)})],
            "expected dlq:invalid_json, found ['dlq:wrong_type']",
        ),
        (
            [(0, 0), (0, 3), (1, 0)],
            lambda: [record(0, 1, 4, dlq=[(1, "invalid_json")], filtered={"duplicate": (2,)})],
            "partition 0: first committed start 1 > 0",
        ),
    ],
)
def test_each_violation_is_reported(lake_rows, records_of, expected: str) -> None:
    records, _ = good_state()
    if records_of is not None:
        records = [*records_of(), records[1]]
    lake = pl.DataFrame(lake_rows, schema=["partition", "offset"], orient="row")
    found = problems(records, lake)
    assert any(expected in p for p in found), found


def test_an_incomplete_run_is_checked_only_inside_its_committed_ranges() -> None:
    records = [record(0, 0, 2, dlq=[(1, "invalid_json")]), record(1, 0, 1)]
    lake = pl.DataFrame({"partition": [0, 1], "offset": [0, 0]})
    assert problems(records, lake, complete=False) == []
    assert any(
        "(0, 2) duplicate: expected filtered:duplicate" in p for p in problems(records, lake)
    )
