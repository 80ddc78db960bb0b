"""The commit protocol: one Delta commit per range, fenced by the app transaction version."""

from __future__ import annotations

import os
import re
import threading

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline_project.errors import AccountingError, ContiguityError, FencingError, LakeError
from pipeline_project.lake import files
from pipeline_project.lake.audit import audit
from pipeline_project.lake.commit import commit_range
from pipeline_project.lake.location import Lake
from pipeline_project.lake.record import RangeRecord
from pipeline_project.lake.table import open_table
from pipeline_project_tests.lake.lake_support import processed, read_events, record_of


def test_a_range_lands_as_one_commit_with_its_offsets_and_accounting(lake: Lake) -> None:
    rng, batch = processed(0, 500, bad_every=50)
    record = record_of(rng, batch)
    result = commit_range(lake, record, batch.good)
    assert result.status == "committed"
    table = open_table(lake)
    assert table is not None
    assert table.transaction_version("raw-events-0") == 500
    rows = read_events(lake)
    assert rows.height == batch.good.height == 490
    assert sorted(rows.get_column("kafka_offset").to_list()) == sorted(
        batch.good.get_column("kafka_offset").to_list()
    )
    assert (rows.get_column("date") == rows.get_column("event_date")).all()
    meta = table.history(1)[0]["pipeline"]
    back = RangeRecord.from_metadata(meta)
    assert (back.range, back.records, back.written, len(back.dlq)) == (rng, 500, 490, 10)
    assert table.metadata().partition_columns == ["date"]


def test_a_day_over_one_row_group_is_split_into_even_files_of_one_row_group(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "ROW_GROUP_ROWS", 200)  # 490 rows of one day: three files
    rng, batch = processed(0, 500, bad_every=50)
    result = commit_range(lake, record_of(rng, batch), batch.good)
    assert result.status == "committed"
    table = open_table(lake)
    adds = pl.DataFrame(table.get_add_actions(flatten=True)).to_dicts()
    pattern = rf"part-{re.escape(rng.range_id)}-([0-9a-f]{{12}})(-1|-2)?\.parquet"
    named = [re.fullmatch(pattern, a["path"].rsplit("/", 1)[1]) for a in adds]
    assert all(named), [a["path"] for a in adds]
    assert len({m.group(1) for m in named}) == 1  # one attempt's token
    assert sorted(m.group(2) or "" for m in named) == ["", "-1", "-2"]
    assert sorted(a["num_records"] for a in adds) == [162, 164, 164]
    storage = files.storage(lake, "events")
    for add in adds:
        with storage.fs.open_input_file(f"{storage.root}/{add['path']}") as handle:
            assert pq.ParquetFile(handle).metadata.num_row_groups == 1
    rows = read_events(lake)
    assert sorted(rows.get_column("kafka_offset").to_list()) == sorted(
        batch.good.get_column("kafka_offset").to_list()
    )
    report = audit(lake)
    assert report.ok, [str(p) for p in report.problems]


def test_the_next_range_appends_and_a_committed_range_changes_nothing(lake: Lake) -> None:
    first, batch1 = processed(0, 100)
    second, batch2 = processed(100, 100)
    commit_range(lake, record_of(first, batch1), batch1.good)
    commit_range(lake, record_of(second, batch2), batch2.good)
    table = open_table(lake)
    version = table.version()
    again = commit_range(lake, record_of(first, batch1, run_id="rerun"), batch1.good)
    assert again.status == "already_committed"
    assert open_table(lake).version() == version
    assert read_events(lake).height == 200


def test_a_gap_or_an_overlap_is_refused_and_commits_nothing(lake: Lake) -> None:
    first, batch1 = processed(0, 100)
    commit_range(lake, record_of(first, batch1), batch1.good)
    version = open_table(lake).version()
    gap, batch_gap = processed(150, 50)
    with pytest.raises(ContiguityError, match=r"\[100, 150\) would be skipped"):
        commit_range(lake, record_of(gap, batch_gap), batch_gap.good)
    overlap, batch_overlap = processed(50, 100)
    with pytest.raises(FencingError, match="committed up to offset 100"):
        commit_range(lake, record_of(overlap, batch_overlap), batch_overlap.good)
    assert open_table(lake).version() == version
    assert read_events(lake).height == 100


def test_unbalanced_accounting_is_refused(lake: Lake) -> None:
    rng, batch = processed(0, 100)
    record = record_of(rng, batch)
    with pytest.raises(AccountingError, match="refusing to commit"):
        commit_range(lake, record, batch.good.head(90))
    assert open_table(lake) is None


def test_a_range_with_no_lake_rows_still_commits_its_offsets(lake: Lake) -> None:
    rng, batch = processed(0, 20, bad_every=1)
    assert batch.good.height == 0
    commit_range(lake, record_of(rng, batch), batch.good)
    table = open_table(lake)
    assert table.transaction_version("raw-events-0") == 20
    assert read_events(lake).height == 0


def test_racing_writers_of_one_range_commit_it_exactly_once(lake: Lake) -> None:
    """Two writers (threads) race for each range: one commits, the other changes nothing."""
    outcomes: list[list[str]] = []
    start = 0
    for trial in range(int(os.environ.get("LAKE_RACE_TRIALS", "20"))):  # 100 for the issue
        rng, batch = processed(start, 40)
        results: list[str] = []
        barrier = threading.Barrier(2)

        def writer(name: str, rng=rng, batch=batch, results=results, barrier=barrier) -> None:
            barrier.wait()
            try:
                result = commit_range(lake, record_of(rng, batch, run_id=name), batch.good)
                results.append(result.status)
            except FencingError:
                results.append("fenced")

        threads = [threading.Thread(target=writer, args=(f"w{trial}-{i}",)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        outcomes.append(sorted(results))
        start += 40
    assert all(o.count("committed") == 1 for o in outcomes), outcomes
    assert all(set(o) - {"committed"} <= {"fenced", "already_committed"} for o in outcomes)
    rows = read_events(lake)
    assert rows.height == rows.get_column("kafka_offset").n_unique() == start
    assert open_table(lake).transaction_version("raw-events-0") == start


def test_a_table_that_is_not_ours_is_refused_in_one_line(lake: Lake) -> None:
    from deltalake import write_deltalake

    write_deltalake(
        lake.table_uri("events"),
        pl.DataFrame({"x": [1]}).to_arrow(),
        storage_options=lake.options(),
    )
    rng, batch = processed(0, 10)
    with pytest.raises(LakeError, match="did not write"):
        commit_range(lake, record_of(rng, batch), batch.good)


def test_days_and_ids_are_read_through_the_log(lake: Lake) -> None:
    from datetime import date

    from pipeline_project.lake.read import committed_ids, read_days, replace_day

    rng, batch = processed(0, 200)
    commit_range(lake, record_of(rng, batch), batch.good)
    day = date(2025, 3, 1)
    assert read_days(lake, [day], ["event_id"]).height == 200
    assert read_days(lake, [date(2025, 3, 2)], ["event_id"]).height == 0
    among = batch.good.get_column("event_id").head(3)
    ids = committed_ids(lake, [day], among)
    assert sorted(ids.get_column("event_id").to_list()) == sorted(among.to_list())
    replace_day(lake, "sessions", day, pl.DataFrame({"session_id": ["a", "b"]}))
    replace_day(lake, "sessions", day, pl.DataFrame({"session_id": ["c"]}))
    assert read_days(lake, [day], ["session_id"], table="sessions").to_series().to_list() == ["c"]


def test_a_new_column_is_merged_into_the_table_and_old_rows_read_null(lake: Lake) -> None:
    first, batch1 = processed(0, 50)
    commit_range(lake, record_of(first, batch1), batch1.good)
    second, batch2 = processed(50, 50)
    newer = batch2.good.with_columns(pl.lit("2.1.0").alias("app_version"))
    commit_range(lake, record_of(second, batch2), newer)
    rows = read_events(lake).sort("kafka_offset")
    versions = rows.get_column("app_version")
    assert versions.head(50).null_count() == 50
    assert versions.tail(50).to_list() == ["2.1.0"] * 50
    changed, batch3 = processed(100, 10)
    clash = batch3.good.with_columns(pl.lit(1).alias("app_version"))
    with pytest.raises(LakeError, match="column types changed: app_version"):
        commit_range(lake, record_of(changed, batch3), clash)


def test_days_before_and_after_new_columns_read_together_in_polars_and_duckdb(
    lake: Lake,
) -> None:
    """A day written before a column existed and one after: one query each, one schema."""
    import json
    import subprocess
    import sys

    old, batch1 = processed(0, 40)
    commit_range(lake, record_of(old, batch1), batch1.good.drop("app_version", strict=False))
    new, batch2 = processed(40, 40)
    later = batch2.good.with_columns(
        pl.lit("2.0.1").alias("app_version"),
        pl.col("event_date").dt.offset_by("1d"),
    )
    commit_range(lake, record_of(new, batch2, days_shift=1), later)
    by_polars = (
        pl.scan_delta(lake.table_uri("events"), storage_options=lake.polars_options())
        .group_by("date")
        .agg(pl.col("app_version").is_not_null().sum().alias("v2"), pl.len().alias("rows"))
        .sort("date")
        .collect()
    )
    assert by_polars.get_column("v2").to_list() == [0, 40]
    assert by_polars.get_column("rows").to_list() == [40, 40]
    script = (
        "import duckdb, deltalake, json, sys; "
        "t = deltalake.DeltaTable(sys.argv[1], storage_options=json.loads(sys.argv[2]) or None)"
        ".to_pyarrow_dataset(); "
        "print(json.dumps(duckdb.sql('SELECT CAST(date AS VARCHAR), count(app_version), "
        "count(*) FROM t GROUP BY 1 ORDER BY 1').fetchall()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, lake.table_uri("events"), json.dumps(lake.options() or {})],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    days = json.loads(done.stdout)
    assert [row[1:] for row in days] == [[0, 40], [40, 40]]
