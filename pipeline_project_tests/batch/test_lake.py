"""lake.py: path contract and validation (P11), deterministic staging, no-clobber publish.

Also quarantine, readers (pyarrow, polars, duckdb) on the hive layout, and EIO faults (F5).
"""

from __future__ import annotations

import errno
import os
from datetime import date, datetime
from pathlib import Path

import polars as pl
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline_project.batch import lake
from pipeline_project.batch.ranges import Range
from pipeline_project.errors import FencingError, LakePathError, LedgerError
from pipeline_project_tests.batch.ledger_support import DAY1, DAY2, TOPIC, events_frame, split

RNG = Range(TOPIC, 2, 100, 140)


def _eio(*_args: object, **_kwargs: object) -> None:
    raise OSError(errno.EIO, "injected I/O error")


def _day_frame(rng: Range = RNG, day: date = DAY1, run_id: str = "run-A") -> pl.DataFrame:
    frame = events_frame(rng, split(rng).good, run_id)
    return frame.filter(pl.col("event_date") == day)


# ---------------------------------------------------------------------------------------- paths


def test_relative_path_follows_the_contract() -> None:
    rel = lake.relative_path(Range("raw-events", 3, 5, 17), date(2024, 1, 2))
    assert rel == (
        "events/date=2024-01-02/part-raw-events-3-0000000000000000005-0000000000000000016.parquet"
    )
    parsed = lake.parse_relative_path(rel)
    assert parsed == lake.LakeName("events", date(2024, 1, 2), "raw-events", 3, 5, 16)
    assert lake.relative_path(RNG, DAY1, table="sessions").startswith("sessions/date=2024-03-09/")


@pytest.mark.parametrize(
    "topic", ["", ".", "..", "../etc", "a/b", "x=y", "a b", "é", "t" * 250, "%2F"]
)
def test_invalid_topic_never_reaches_a_path(topic: str) -> None:
    with pytest.raises((LakePathError, ValueError)):
        lake.relative_path(Range(topic, 0, 0, 1), DAY1)


@pytest.mark.parametrize(
    "day",
    [datetime(2024, 1, 1), "2024-01-01", date(1969, 12, 31), date(3000, 1, 1), None, 20240101],
)
def test_invalid_day_never_reaches_a_path(day: object) -> None:
    with pytest.raises(LakePathError):
        lake.relative_path(RNG, day)  # type: ignore[arg-type]


@pytest.mark.parametrize("table", ["", "_tmp", ".hidden", "Events", "a/b", "..", "x=y"])
def test_invalid_table_never_reaches_a_path(table: str) -> None:
    with pytest.raises(LakePathError):
        lake.relative_path(RNG, DAY1, table=table)


def test_empty_range_has_no_file_name() -> None:
    with pytest.raises(LakePathError):
        lake.file_name(Range(TOPIC, 0, 5, 5))


@pytest.mark.parametrize(
    "rel",
    [
        "events/date=2024-01-01/.part-x-0-0000000000000000000-0000000000000000001.parquet",
        "events/date=2024-01-01/part-x-0-0000000000000000000-0000000000000000001.parquet.tmp",
        "events/date=2024-13-01/part-x-0-0000000000000000000-0000000000000000001.parquet",
        "events/dt=2024-01-01/part-x-0-0000000000000000000-0000000000000000001.parquet",
        "../events/date=2024-01-01/part-x-0-0000000000000000000-0000000000000000001.parquet",
        "events/date=2024-01-01/part-x-0-0000000000000000002-0000000000000000001.parquet",
        "events/date=2024-01-01/x.parquet",
    ],
)
def test_foreign_names_do_not_parse(rel: str) -> None:
    assert lake.parse_relative_path(rel) is None


def test_resolve_refuses_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "lake", tmp_path / "outside"
    (root / "events").mkdir(parents=True)
    outside.mkdir()
    (root / "events" / "date=2024-03-09").symlink_to(outside)
    with pytest.raises(LakePathError, match="outside the lake root"):
        lake.resolve(root, lake.relative_path(RNG, DAY1))


# --------------------------------------------------------------------------------------- staging


def test_staging_is_byte_identical_for_equal_input(tmp_path: Path) -> None:
    frame = _day_frame()
    # The same rows in another order and in two chunks.
    shuffled = pl.concat([frame.slice(5), frame.slice(0, 5)], rechunk=False)
    first = lake.stage_day(tmp_path / "a", RNG, DAY1, frame, row_group_rows=4)
    second = lake.stage_day(tmp_path / "b", RNG, DAY1, shuffled, row_group_rows=4)
    assert first is not None and second is not None
    assert first.staging_path.read_bytes() == second.staging_path.read_bytes()
    assert (first.sha256, first.size, first.rows) == (second.sha256, second.size, second.rows)
    assert (first.min_offset, first.max_offset) == (100, 134)


def test_staged_file_is_written_in_row_groups_with_checksums(tmp_path: Path) -> None:
    staged = lake.stage_day(tmp_path, RNG, DAY1, _day_frame(), row_group_rows=4)
    assert staged is not None
    meta = pq.read_metadata(staged.staging_path)
    assert meta.num_rows == staged.rows == 16
    assert meta.num_row_groups == 4
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert "date" not in meta.schema.names and "event_date" in meta.schema.names
    table = pq.ParquetFile(staged.staging_path, page_checksum_verification=True).read()
    assert table.column("kafka_offset").to_pylist() == sorted(
        table.column("kafka_offset").to_pylist()
    )


def test_empty_day_stages_no_file(tmp_path: Path) -> None:
    assert lake.stage_day(tmp_path, RNG, DAY1, _day_frame().head(0)) is None
    assert lake.stage_days(tmp_path, RNG, _day_frame().head(0)) == []
    assert not any(tmp_path.rglob("*.parquet"))


def test_stage_days_writes_one_file_per_day(tmp_path: Path) -> None:
    staged = lake.stage_days(tmp_path, RNG, events_frame(RNG, split(RNG).good))
    assert [s.day for s in staged] == [DAY1, DAY2]
    assert sum(s.rows for s in staged) == len(split(RNG).good)
    assert all(s.staging_path.is_relative_to(tmp_path) for s in staged)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.with_columns(pl.lit(DAY2).alias("event_date")), "event_date"),
        (lambda f: f.with_columns(pl.col("event_date").alias("date")), "hive partition key"),
        (lambda f: f.with_columns(pl.lit(999, pl.Int64).alias("kafka_offset")), "outside"),
        (lambda f: pl.concat([f, f.head(1)]), "duplicate"),
        (lambda f: f.with_columns(pl.lit(9, pl.Int32).alias("kafka_partition")), "kafka_partition"),
        (lambda f: f.drop("event_date"), "missing date column"),
    ],
)
def test_stage_day_refuses_rows_that_lie(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LakePathError, match=message):
        lake.stage_day(tmp_path, RNG, DAY1, mutate(_day_frame()))
    assert not any(tmp_path.rglob("*.parquet"))


def test_stage_fsync_error_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lake.os, "fsync", _eio)
    with pytest.raises(OSError, match="injected"):
        lake.stage_day(tmp_path / "s", RNG, DAY1, _day_frame())
    assert not any((tmp_path / "s").rglob("*.parquet"))


# --------------------------------------------------------------------------------------- publish


def _staged(tmp_path: Path, run_id: str = "run-A", sub: str = "s") -> lake.StagedFile:
    staged = lake.stage_day(tmp_path / sub, RNG, DAY1, _day_frame(run_id=run_id))
    assert staged is not None
    return staged


def test_publish_then_identical_is_a_no_op(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    staged = _staged(tmp_path)
    assert lake.publish(staged, root) == "published"
    target = root / staged.path
    inode = target.stat().st_ino
    again = _staged(tmp_path, sub="t")  # an equal re-run staged elsewhere
    assert lake.publish(again, root) == "identical"
    assert target.stat().st_ino == inode
    assert lake.sha256_file(target) == staged.sha256


def test_publish_different_content_is_fencing_and_never_overwrites(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    lake.publish(_staged(tmp_path), root)
    before = (root / lake.relative_path(RNG, DAY1)).read_bytes()
    zombie = _staged(tmp_path, run_id="zombie", sub="z")
    with pytest.raises(FencingError, match="refusing to overwrite"):
        lake.publish(zombie, root)
    assert (root / zombie.path).read_bytes() == before


def test_publish_refuses_a_staged_file_that_changed(tmp_path: Path) -> None:
    staged = _staged(tmp_path)
    with open(staged.staging_path, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff")
    with pytest.raises(LedgerError, match="changed"):
        lake.publish(staged, tmp_path / "lake")
    assert not (tmp_path / "lake" / staged.path).exists()


def test_publish_link_eio_leaves_nothing_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged = _staged(tmp_path)
    monkeypatch.setattr(lake.os, "link", _eio)
    with pytest.raises(OSError, match="injected"):
        lake.publish(staged, tmp_path / "lake")
    assert not any((tmp_path / "lake").rglob("*.parquet"))


def test_publish_dir_fsync_eio_unlinks_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged = _staged(tmp_path)
    root = tmp_path / "lake"
    lake.ensure_dir(root / staged.path.rsplit("/", 1)[0])
    monkeypatch.setattr(lake, "fsync_dir", _eio)
    with pytest.raises(OSError, match="injected"):
        lake.publish(staged, root)
    assert not any(root.rglob("*.parquet"))
    assert staged.staging_path.exists()  # still there for a retry or a roll-forward


def test_publish_all_is_k4_aware_and_ordered(tmp_path: Path) -> None:
    staged = lake.stage_days(tmp_path / "s", RNG, events_frame(RNG, split(RNG).good))
    assert lake.publish_all(staged, tmp_path / "lake") == ["published", "published"]
    assert lake.publish_all(staged, tmp_path / "lake") == ["identical", "identical"]


# --------------------------------------------------------------------------------------- readers


def test_hive_layout_reads_in_pyarrow_polars_and_duckdb(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    for rng in (RNG, Range(TOPIC, 2, 140, 170)):
        for staged in lake.stage_days(tmp_path / "s", rng, events_frame(rng, split(rng).good)):
            lake.publish(staged, root)
    expected = len(split(RNG).good) + len(split(Range(TOPIC, 2, 140, 170)).good)
    events = root / "events"
    table = ds.dataset(events, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == expected and "date" in table.column_names
    frame = pl.scan_parquet(events, hive_partitioning=True).collect()
    assert frame.height == expected
    assert (frame.get_column("date").cast(pl.Date) == frame.get_column("event_date")).all()
    duckdb = pytest.importorskip("duckdb")
    query = (
        "select count(*), count(distinct kafka_offset), sum((date = event_date)::int) "
        "from read_parquet($glob, hive_partitioning = true)"
    )
    rows = duckdb.execute(query, {"glob": f"{events}/**/*.parquet"}).fetchall()
    assert rows == [(expected, expected, expected)]


# ------------------------------------------------------------------------------------ quarantine


def test_quarantine_moves_out_of_the_root_with_a_note(tmp_path: Path) -> None:
    root, state = tmp_path / "lake", tmp_path / "state"
    stray = root / "events" / "date=2024-03-09" / ".tmp-123.parquet"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"PAR1 partial")
    dest = lake.quarantine(stray, root, state, "stray temp file")
    assert not stray.exists() and dest.read_bytes() == b"PAR1 partial"
    assert dest.is_relative_to(state / "quarantine")
    note = dest.parent / f"{dest.name}.quarantine.json"
    assert '"reason":"stray temp file"' in note.read_text()


def test_quarantine_refuses_paths_outside_the_root(tmp_path: Path) -> None:
    (tmp_path / "lake").mkdir()
    victim = tmp_path / "elsewhere.txt"
    victim.write_text("x")
    with pytest.raises(LakePathError):
        lake.quarantine(victim, tmp_path / "lake", tmp_path / "state", "nope")
    with pytest.raises(LakePathError):
        lake.quarantine(tmp_path / "lake", tmp_path / "lake", tmp_path / "state", "the root itself")
    assert victim.exists()


def test_atomic_write_failure_keeps_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "x.json"
    lake.atomic_write_bytes(target, b"old")
    monkeypatch.setattr(lake.os, "replace", _eio)
    with pytest.raises(OSError, match="injected"):
        lake.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.json"]
