"""The audit (reconcile on the Delta log): passes on a correct lake, names each violation."""

from __future__ import annotations

import dataclasses
import os

from deltalake import CommitProperties, Transaction, write_deltalake

from pipeline_project.lake.audit import audit
from pipeline_project.lake.commit import commit_range, to_delta_rows
from pipeline_project.lake.location import Lake
from pipeline_project.lake.table import open_table
from pipeline_project_tests.lake.lake_support import processed, record_of


def _three_ranges(lake: Lake) -> None:
    for start in (0, 300, 600):
        rng, batch = processed(start, 300, bad_every=37)
        commit_range(lake, record_of(rng, batch), batch.good)


def test_a_lake_of_committed_ranges_passes(lake: Lake) -> None:
    _three_ranges(lake)
    report = audit(lake)
    assert report.ok, [str(p) for p in report.problems]
    (part,) = report.partitions
    assert (part.app_id, part.ranges, part.first_offset, part.end_offset) == (
        "raw-events-0",
        3,
        0,
        900,
    )
    assert part.txn_version == 900
    assert part.records == 900 == part.written + part.dlq + part.filtered
    assert report.rows == part.written


def test_an_empty_lake_passes() -> None:
    from pipeline_project.lake.location import parse_lake_uri

    assert audit(parse_lake_uri("/nonexistent/lake-for-audit", {})).ok


def test_a_row_written_outside_the_protocol_is_caught(lake: Lake) -> None:
    """A second copy of a committed range's rows, committed by a writer that skipped the fence."""
    _three_ranges(lake)
    rng, batch = processed(300, 300, bad_every=37)
    write_deltalake(
        open_table(lake),
        to_delta_rows(batch.good),
        mode="append",
        commit_properties=CommitProperties(app_transactions=[Transaction("raw-events-0", 900)]),
    )
    codes = {p.code for p in audit(lake).problems}
    assert {"duplicate_row", "duplicate_event_id", "conservation"} <= codes


def test_a_gap_in_the_history_is_caught(lake: Lake) -> None:
    rng, batch = processed(0, 100)
    commit_range(lake, record_of(rng, batch), batch.good)
    later, batch2 = processed(200, 100)
    record = record_of(later, batch2)
    write_deltalake(
        open_table(lake),
        to_delta_rows(batch2.good),
        mode="append",
        commit_properties=CommitProperties(
            custom_metadata={"pipeline": record.to_metadata(record.ingested_at)},
            app_transactions=[Transaction("raw-events-0", 300)],
        ),
    )
    problems = audit(lake).problems
    assert [p.code for p in problems] == ["gap"], problems
    assert "starts at 200, the previous range ended at 100" in str(problems[0])


def test_a_missing_file_is_caught(lake: Lake, tmp_path) -> None:
    if lake.is_s3:
        return  # deleting an object behind the table's back: covered on local disk
    _three_ranges(lake)
    victim = next(
        os.path.join(root, name)
        for root, _dirs, names in os.walk(lake.table_uri("events"))
        for name in names
        if name.endswith(".parquet")
    )
    os.remove(victim)
    codes = {p.code for p in audit(lake).problems}
    assert "missing_file" in codes


def test_accounting_that_does_not_add_up_is_caught(lake: Lake) -> None:
    rng, batch = processed(0, 100, bad_every=10)
    record = record_of(rng, batch)
    lying = dataclasses.replace(record, dlq=record.dlq[:-1], records=record.records - 1)
    commit_range(lake, lying, batch.good)
    codes = [p.code for p in audit(lake).problems]
    assert codes == ["conservation"]
