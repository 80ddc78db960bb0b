"""The duplicate lookup through the host's id cache answers exactly what a scan of the day answers.

Whatever the cache holds (nothing, the files of the last commit, a damaged entry, a hash that
collides, entries of files compacted away), the ids found are the ids committed, on both backends.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import date
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from pipeline_project.batch.run import remember_ids
from pipeline_project.lake import files
from pipeline_project.lake.commit import commit_range, stage_files
from pipeline_project.lake.id_cache import PRUNE_AGE_SECONDS, SEED, IdCache, day_files, read_ids
from pipeline_project.lake.location import Lake
from pipeline_project.lake.read import committed_ids
from pipeline_project.lake.table import open_table
from pipeline_project.lake.upkeep import compact
from pipeline_project_tests.lake.lake_support import processed, record_of

DAY = date(2025, 3, 1)


def commit(lake: Lake, start: int, count: int, cache: IdCache | None = None) -> pl.Series:
    """Commits a range of `count` events; returns its ids."""
    rng, batch = processed(start, count)
    record = record_of(rng, batch)
    staged = stage_files(lake, rng.range_id, record.token, batch.good)
    assert commit_range(lake, record, staged).status == "committed"
    remember_ids(cache, staged, batch.good)
    return batch.good.get_column("event_id")


def lookup(lake: Lake, among: pl.Series, cache: IdCache | None) -> list[str]:
    return sorted(committed_ids(lake, [DAY], among, cache=cache).get_column("event_id").to_list())


def hashes_in(entry: Path) -> pl.Series:
    return pl.Series(ipc.open_file(pa.memory_map(str(entry))).read_all().column(0))


def entries(cache: IdCache) -> list[Path]:
    return sorted(cache.root.rglob("*.arrow"))


def test_the_cached_lookup_finds_exactly_the_committed_ids(lake: Lake, tmp_path: Path) -> None:
    cache = IdCache(tmp_path / "cache", lake.table_uri("events"))
    first = commit(lake, 0, 300)
    second = commit(lake, 300, 300, cache)
    assert len(entries(cache)) == 1  # the second commit's file, remembered from its rows
    new = pl.Series(["ffffffff-0000-4000-8000-000000000000"] * 2)
    among = pl.concat([first.head(5), second.tail(5), new])
    expected = lookup(lake, among, None)
    assert len(expected) == 10
    assert lookup(lake, among, cache) == expected  # the first file read once, then cached
    assert len(entries(cache)) == 2
    assert lookup(lake, among, cache) == expected
    shutil.rmtree(cache.root)  # a deleted cache is rebuilt from the table
    assert lookup(lake, among, cache) == expected
    assert lookup(lake, new, cache) == []


def test_each_file_of_a_split_day_is_remembered_with_its_own_ids(
    lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "ROW_GROUP_ROWS", 120)  # 300 rows of one day: three files
    cache = IdCache(tmp_path / "cache", lake.table_uri("events"))
    ids = commit(lake, 0, 300, cache)
    table = open_table(lake)
    assert table is not None
    written = {
        path: set(read_ids(files.storage(lake, "events"), path).hash(SEED).to_list())
        for _, path in day_files(table, [DAY])
    }
    remembered = [set(hashes_in(entry).to_list()) for entry in entries(cache)]
    assert len(written) == len(remembered) == 3
    assert sorted(map(sorted, written.values())) == sorted(map(sorted, remembered))
    assert set().union(*remembered) == set(ids.hash(SEED).to_list())
    assert lookup(lake, ids, cache) == sorted(ids.to_list())


def test_a_damaged_entry_is_rebuilt(lake: Lake, tmp_path: Path) -> None:
    cache = IdCache(tmp_path / "cache", lake.table_uri("events"))
    ids = commit(lake, 0, 200, cache)
    (entry,) = entries(cache)
    entry.write_bytes(b"not arrow")
    assert lookup(lake, ids.head(3), cache) == sorted(ids.head(3).to_list())
    assert hashes_in(entry).len() == 200


def test_a_hash_collision_never_drops_an_event(lake: Lake, tmp_path: Path) -> None:
    """An entry that holds a new id's hash (as a collision would) costs a read, not the event."""
    cache = IdCache(tmp_path / "cache", lake.table_uri("events"))
    ids = commit(lake, 0, 200, cache)
    new = pl.Series(["0f0f0f0f-1111-4222-8333-444444444444"])
    table = open_table(lake)
    assert table is not None
    ((day, path),) = day_files(table, [DAY])
    cache.remember([(day, path, new)])
    assert hashes_in(entries(cache)[0]).to_list() == new.hash(SEED).to_list()
    assert lookup(lake, new, cache) == []  # the file was read: the id is not in it
    assert lookup(lake, pl.concat([new, ids.head(1)]), cache) == [ids[0]]


def test_after_a_compaction_the_new_files_are_read_and_the_old_entries_pruned(
    lake: Lake, tmp_path: Path
) -> None:
    cache = IdCache(tmp_path / "cache", lake.table_uri("events"))
    ids = pl.concat([commit(lake, start, 100, cache) for start in range(0, 500, 100)])
    assert len(entries(cache)) == 5
    done = compact(lake, day=DAY, min_small_files=2)
    assert (done.total("files_before"), done.total("files_after")) == (5, 1)
    sample = ids.gather([0, 150, 499])
    assert lookup(lake, sample, cache) == sorted(sample.to_list())
    assert len(entries(cache)) == 6  # young entries stay: a commit after the snapshot may own them
    old = time.time() - PRUNE_AGE_SECONDS - 1
    for entry in entries(cache):
        os.utime(entry, (old, old))
    assert lookup(lake, sample, cache) == sorted(sample.to_list())
    assert len(entries(cache)) == 1  # the compacted file's; the five removed files' are gone
