"""The ledger's two caches: manifest heads and the committed-ids index.

Both only make runs faster as the history grows; wrong, torn or missing cache data must never change
an answer: the ids a dedup sees, the ranges a plan sees, an unusable manifest recovery must find.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from pipeline_project.batch import id_index, lake, ledger
from pipeline_project.batch.ranges import Range
from pipeline_project.batch.run import ids_by_file
from pipeline_project_tests.batch.ledger_support import (
    COMMITTED_AT,
    DAY1,
    DAY2,
    INGESTED_AT,
    NOW,
    TOPIC,
    dlq_entries,
    events_frame,
    run_protocol,
    split,
)

RANGES = [Range(TOPIC, 0, start, start + 20) for start in range(0, 120, 20)]


def _committed(tmp_path: Path, among: pl.Series | None = None) -> pl.DataFrame:
    return ledger.committed_ids(
        tmp_path / "output", [DAY1, DAY2], state_dir=tmp_path / "state", among=among
    )


def _from_lake_only(tmp_path: Path, among: pl.Series | None = None) -> pl.DataFrame:
    """The same question answered with both caches gone (and no way to rebuild the ids index)."""
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "state", copy / "state")
    shutil.copytree(tmp_path / "output", copy / "output")
    shutil.rmtree(copy / "state" / id_index.IDS_DIR)
    shutil.rmtree(copy / "state" / ledger.HEADS_DIR)
    return _committed(copy, among)


@pytest.fixture
def committed(tmp_path: Path) -> Path:
    for rng in RANGES:
        run_protocol(tmp_path, rng)
    return tmp_path


def test_dedup_ids_come_from_the_index_and_equal_the_lake(committed: Path) -> None:
    files = sorted((committed / "state" / id_index.IDS_DIR).rglob("*.arrows"))
    assert [f.parent.name for f in files] == [DAY1.isoformat(), DAY2.isoformat()]
    indexed = _committed(committed)
    assert indexed.height == 6 * 16  # 20 offsets a range, 4 of them DLQ or filtered
    assert indexed.equals(_from_lake_only(committed))


def test_a_lookup_among_a_batch_s_ids_returns_exactly_those(committed: Path) -> None:
    """A run asks only about its own ids; index and lake answer alike, unknown ids find nothing."""
    everything = _committed(committed)
    asked = everything.get_column("event_id").gather([0, 7, 50, 95])
    among = pl.concat([asked, pl.Series(["00000000-0000-4000-8000-00000000ffff"])])
    expected = everything.filter(pl.col("event_id").is_in(asked.implode()))
    assert expected.height == 4
    assert _committed(committed, among).equals(expected)
    assert _from_lake_only(committed, among).equals(expected)


def test_a_torn_or_wrong_index_is_never_believed(committed: Path) -> None:
    expected = _from_lake_only(committed)
    day1 = next((committed / "state" / id_index.IDS_DIR).rglob(f"{DAY1.isoformat()}/*.arrows"))
    day1.write_bytes(day1.read_bytes()[:-40])  # a crash mid-append
    assert _committed(committed).equals(expected)
    # An index entry claiming a committed file with one id too many is ignored as a whole.
    manifest = ledger.load_manifests(committed / "state")[0]
    item = next(f for f in manifest.files if f.day == DAY2)
    ids = lake.read_columns(lake.resolve(committed / "output", item.path), id_index.ID_COLUMNS)
    extra = pl.DataFrame({"event_date": [DAY2], "event_id": ["not-committed"]}).to_arrow()
    bogus = pl.concat([pl.DataFrame(ids), pl.DataFrame(extra)], how="vertical_relaxed")
    path = id_index.index_path(committed / "state", item.table, DAY2, TOPIC, 0)
    id_index._add(path, id_index._with_file(bogus.to_arrow(), item.path))
    assert "not-committed" not in _committed(committed)["event_id"].to_list()
    assert _committed(committed).equals(expected)


def test_many_appends_are_merged_into_few_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(id_index, "MAX_STREAMS", 3)
    for rng in RANGES:
        run_protocol(tmp_path, rng)
    for path in (tmp_path / "state" / id_index.IDS_DIR).rglob("*.arrows"):
        tables, clean = id_index._streams(path)
        assert clean and len(tables) <= 3
    assert _committed(tmp_path).equals(_from_lake_only(tmp_path))


def test_heads_spare_the_parse_but_a_changed_manifest_is_read_again(
    committed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = committed / "state"
    full = [(m.range, m.files) for m in ledger.load_manifests(state)]
    real_load = ledger._load_manifest_file

    def refuse(*args: object) -> ledger.Manifest:
        raise AssertionError("a cached head was parsed again")

    monkeypatch.setattr(ledger, "_load_manifest_file", refuse)
    assert [(h.range, h.files) for h in ledger.load_heads(state)] == full
    assert ledger.committed_end(state, TOPIC, 0) == RANGES[-1].end
    monkeypatch.setattr(ledger, "_load_manifest_file", real_load)
    torn = ledger.manifest_path(state, RANGES[2])
    torn.write_bytes(torn.read_bytes()[:100])  # in place: same inode, new size and mtime
    scan = ledger.scan_heads(state, TOPIC, 0)
    assert [p.path for p in scan.problems] == [torn]
    assert ledger.committed_end(state, TOPIC, 0) == RANGES[2].start  # the gap, as before


def test_deleted_heads_are_rebuilt_from_the_manifests(committed: Path) -> None:
    state = committed / "state"
    shutil.rmtree(state / ledger.HEADS_DIR)
    heads = ledger.load_heads(state)
    assert [(h.range, h.files) for h in heads] == [
        (m.range, m.files) for m in ledger.load_manifests(state)
    ]
    assert ledger.heads_path(state, TOPIC, 0).read_bytes().count(b"\n") == len(RANGES)


def test_ids_handed_over_at_commit_index_what_reading_the_files_back_would(
    tmp_path: Path,
) -> None:
    """A run gives the commit the ids of the rows it wrote; recovery reads them from the lake."""

    def index_after_commit(data_dir: Path, hand_over: bool) -> pa.Table:
        lake_dir, state = data_dir / "output", data_dir / "state"
        rng = RANGES[0]
        with ledger.partition_lock(state, rng.topic, rng.partition):
            intent = ledger.write_intent(state, rng, "run-A", INGESTED_AT, NOW)
            parts = split(rng)
            frame = events_frame(rng, parts.good, intent.run_id, intent.ingested_at)
            staged = lake.stage_days(lake.staging_dir(state, rng), rng, frame)
            ids = ids_by_file(frame, staged) if hand_over else None
            intent = ledger.prepare_intent(
                state, intent, staged, dlq_entries(parts.dlq), parts.filtered, parts.consumed
            )
            lake.publish_all(intent.files, lake_dir)
            ledger.commit_manifest(state, lake_dir, intent, COMMITTED_AT, ids=ids)
        files = sorted((state / id_index.IDS_DIR).rglob("*.arrows"))
        return pa.concat_tables(t for f in files for t in id_index._streams(f)[0])

    handed, read_back = (
        index_after_commit(tmp_path / "a", True),
        index_after_commit(tmp_path / "b", False),
    )
    assert handed.num_rows == 16
    assert handed.combine_chunks().equals(read_back.combine_chunks())
