"""Table upkeep on both backends: compaction while ingestion commits to the same day (a looping
reader sees every committed event exactly once in every snapshot), a compaction killed mid-way,
vacuum, and retention that reconcile reports as expired."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from bisect import bisect_right
from datetime import date, timedelta

import polars as pl
import pyarrow.fs as pafs
import pytest

from pipeline_project.lake.audit import audit, render
from pipeline_project.lake.commit import commit_range
from pipeline_project.lake.files import storage
from pipeline_project.lake.location import TABLE_EVENTS, Lake
from pipeline_project.lake.stats import table_stats
from pipeline_project.lake.table import open_table
from pipeline_project.lake.upkeep import (
    compact,
    days_to_compact,
    expire_days,
    lake_tables,
    vacuum,
)
from pipeline_project_tests.lake.lake_support import (
    LoopingReader,
    processed,
    read_events,
    record_of,
)
from pipeline_project_tests.support import PYTHON, REPO_ROOT
from pipeline_project_tests.support import pipeline_cli as cli

DAY = date(2025, 3, 1)


class Ingest:
    """Commits ranges of DAY in order, keeping (version, rows committed up to it) per commit."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self.versions: list[int] = []
        self.totals: list[int] = []

    def commit(self, batches: list) -> None:
        for rng, batch in batches:
            result = commit_range(self.lake, record_of(rng, batch), batch.good)
            assert result.status == "committed" and result.version is not None
            self.versions.append(result.version)
            self.totals.append((self.totals[-1] if self.totals else 0) + batch.good.height)

    def rows_at(self, version: int) -> int:
        """Rows committed by ingestion up to `version` (compaction commits add none)."""
        index = bisect_right(self.versions, version)
        return self.totals[index - 1] if index else 0


def test_compaction_during_ingestion_keeps_every_row_once(lake: Lake) -> None:
    batches = [processed(start, 200, bad_every=31) for start in range(0, 6_000, 200)]
    ingest = Ingest(lake)
    ingest.commit(batches[:10])
    writer = threading.Thread(target=ingest.commit, args=(batches[10:],))
    with LoopingReader(lake) as reader:
        writer.start()
        result = compact(lake, day=DAY)
        writer.join()
        compact(lake, day=DAY)  # what ingestion added during the first pass
    assert not reader.errors, reader.errors
    assert len(reader.versions) >= 3, "the reader never overlapped the writes"
    wrong = [
        (version, rows, distinct, ingest.rows_at(version))
        for version, rows, distinct in reader.versions
        if not rows == distinct == ingest.rows_at(version)
    ]
    assert wrong == [], "(version, rows, distinct offsets, committed rows) of wrong snapshots"
    (day,) = result.days
    assert day["files_before"] >= 10 and day["files_after"] < day["files_before"]
    stats = table_stats(lake)
    assert stats.files == 1, stats.days
    final = read_events(lake).height
    assert final == stats.rows == sum(b.good.height for _r, b in batches)
    report = audit(lake)
    assert report.ok, [str(p) for p in report.problems]
    assert report.rows == final
    assert report.unreferenced_files >= 30  # the compacted-away files, until vacuum
    assert vacuum(lake, retention_hours=1).removed == []  # younger than the retention: kept


def test_only_days_with_enough_small_files_are_compacted(lake: Lake) -> None:
    """A day compacted once is left alone until late events bring enough new small files."""
    ingest = Ingest(lake)
    ingest.commit([processed(start, 100) for start in range(0, 1_000, 100)])
    assert days_to_compact(lake, target_mb=128) == [DAY.isoformat()]
    assert [d["files_after"] for d in compact(lake).days] == [1]
    ingest.commit([processed(start, 100) for start in range(1_000, 1_500, 100)])
    assert compact(lake).days == [], "5 new small files: not yet"
    ingest.commit([processed(start, 100) for start in range(1_500, 1_800, 100)])
    assert [d["files_before"] for d in compact(lake).days] == [9]
    assert table_stats(lake).files == 1
    assert lake_tables(lake) == [TABLE_EVENTS]


def _new_data_files(lake: Lake, known: set[str]) -> list[str]:
    """Parquet files under DAY's directory that were not there before (compaction's output)."""
    where = storage(lake, TABLE_EVENTS)
    directory = f"{where.root}/date={DAY.isoformat()}"
    infos = where.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    return [i.path for i in infos if i.path.endswith(".parquet") and i.path not in known]


def _day_files(lake: Lake) -> set[str]:
    return set(_new_data_files(lake, set()))


def cli_env(lake: Lake, **settings: str) -> dict[str, str]:
    """The environment a shell user would set for this lake (S3 connection included).

    No broker: reconcile would compare the lake's topic with a topic of the same name on one
    (a developer's `make demo` broker on the default port is another topic, another epoch).
    """
    env = {
        **os.environ,
        "PIPELINE_LAKE_URI": lake.root,
        "PYTHONPATH": str(REPO_ROOT),
        "PIPELINE_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    }
    return env | dict(lake.storage_options) | settings


def test_upkeep_from_a_shell(lake: Lake) -> None:
    """lake stats / compact / vacuum / expire, then reconcile, as an operator runs them."""
    Ingest(lake).commit([processed(start, 100) for start in range(0, 1_000, 100)])
    env = cli_env(lake)
    stats = cli(env, "lake", "stats")
    assert stats.returncode == 0 and "small" in stats.stdout
    assert f"{DAY.isoformat()}  10     10" in stats.stdout, stats.stdout
    compacted = cli(env, "lake", "compact")
    assert compacted.returncode == 0, compacted.stderr
    assert f"{DAY.isoformat()}: 10 -> 1 files" in compacted.stdout
    swept = cli(env, "lake", "vacuum")
    assert swept.returncode == 0, swept.stderr
    assert swept.stdout.splitlines()[0].startswith("events: removed 0 unreferenced file(s)")
    assert f"events: checkpoint at version {open_table(lake).version()}" in swept.stdout
    assert "PIPELINE_LAKE_RETENTION_DAYS is not set" in cli(env, "lake", "expire").stdout
    expired = cli(cli_env(lake, PIPELINE_LAKE_RETENTION_DAYS="8"), "lake", "expire")
    assert expired.returncode == 0, expired.stderr
    assert "events: deleted 1 day(s) before" in expired.stdout
    reconciled = cli(env, "reconcile")
    assert reconciled.returncode == 0, reconciled.stdout
    assert "rows expired by retention" in reconciled.stdout.splitlines()[-1]
    too_short = cli(cli_env(lake, PIPELINE_LAKE_RETENTION_DAYS="3"), "lake", "expire")
    assert too_short.returncode == 1 and too_short.stderr.count("\n") == 1
    assert "must exceed PIPELINE_MAX_LATENESS_DAYS" in too_short.stderr


def test_a_compaction_killed_mid_way_leaves_the_table_correct(lake: Lake) -> None:
    """SIGKILL once compaction has written its first file: nothing is committed, every reader
    sees the small files, reconcile passes, and the next compaction does the whole day."""
    Ingest(lake).commit([processed(start, 1_000) for start in range(0, 60_000, 1_000)])
    before = table_stats(lake)
    version = open_table(lake).version()
    known = _day_files(lake)
    env = cli_env(lake)
    command = [PYTHON, "-m", "pipeline_project.cli", "lake", "compact", "--day", DAY.isoformat()]
    compaction = subprocess.Popen([*command, "--target-mb", "1"], env=env, cwd=REPO_ROOT)
    deadline = time.monotonic() + 120
    while not _new_data_files(lake, known) and compaction.poll() is None:
        assert time.monotonic() < deadline, "compaction wrote nothing in 120 s"
        time.sleep(0.005)
    compaction.send_signal(signal.SIGKILL)
    assert compaction.wait(timeout=30) == -signal.SIGKILL, "compaction finished before the kill"
    assert open_table(lake).version() == version, "the killed compaction committed"
    assert table_stats(lake).files == before.files
    assert read_events(lake).height == before.rows
    report = audit(lake)
    assert report.ok, render(report)
    assert report.unreferenced_files >= 1  # the killed compaction's output, for vacuum
    done = subprocess.run(
        [*command, "--target-mb", "1", "--json"], env=env, cwd=REPO_ROOT, timeout=300
    )
    assert done.returncode == 0
    after = table_stats(lake)
    assert after.rows == before.rows and after.files < before.files / 4, after.days
    assert audit(lake).ok
    if not lake.is_s3:  # local disk: age the leftovers past the retention, vacuum reclaims them
        old = time.time() - 2 * 3600
        for path in _day_files(lake) - known:
            os.utime(path, (old, old))
        swept = vacuum(lake, retention_hours=1)
        assert swept.removed and swept.bytes_reclaimed > 0
        assert read_events(lake).height == before.rows
        assert audit(lake).ok


def _shifted(start: int, count: int, days: int) -> tuple:
    """A range whose events all land `days` days after DAY (negative: before)."""
    rng, batch = processed(start, count)
    rows = batch.good.with_columns(pl.col("event_date").dt.offset_by(f"{days}d"))
    return rng, record_of(rng, batch, days_shift=days), rows


@pytest.mark.parametrize("late_after_retention", [False, True])
def test_retention_deletes_old_days_and_reconcile_reports_them_expired(
    lake: Lake, late_after_retention: bool
) -> None:
    old_day = DAY - timedelta(days=10)
    ranges = [_shifted(0, 300, -10), _shifted(300, 300, 0), _shifted(600, 300, -10)]
    for _rng, record, rows in ranges:
        commit_range(lake, record, rows)
    expired_rows = ranges[0][2].height + ranges[2][2].height
    result = expire_days(lake, DAY - timedelta(days=5))
    assert result.days == {old_day.isoformat(): expired_rows} and result.version is not None
    assert expire_days(lake, DAY - timedelta(days=5)).version is None  # nothing left to delete
    kept = ranges[1][2].height
    if late_after_retention:  # a late event for an expired day, committed after the retention
        _rng, record, rows = _shifted(900, 300, -10)
        commit_range(lake, record, rows)
        kept += rows.height
    assert read_events(lake).height == kept
    report = audit(lake)
    assert report.ok, render(report)
    assert report.expired_rows == expired_rows
    assert [p.expired for p in report.partitions] == [expired_rows]
    assert f"({expired_rows} rows expired by retention)" in render(report)


def test_reconcile_still_fails_when_rows_of_a_kept_day_are_deleted(lake: Lake) -> None:
    """Expired is only what a retention commit deleted: a delete that is not one is missing rows."""
    for _rng, record, rows in [_shifted(0, 300, -10), _shifted(300, 300, 0)]:
        commit_range(lake, record, rows)
    open_table(lake).delete(predicate=f"date < '{(DAY - timedelta(days=5)).isoformat()}'")
    report = audit(lake)
    assert {p.code for p in report.problems} >= {"conservation"}, render(report)
    assert report.expired_rows == 0
