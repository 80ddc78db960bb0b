"""ledger.py: manifests (shape, torn = absent), contiguity (Z3), locks (Z1), intents, adoption.

Also the accounting check before commit, atomic writes under EIO (F5) and committed_ids.
"""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from pipeline_project.batch import lake, ledger
from pipeline_project.batch.ranges import Range
from pipeline_project.errors import (
    AccountingError,
    AlreadyCommittedError,
    ContiguityError,
    LedgerError,
    LockBusyError,
)
from pipeline_project_tests.batch.ledger_support import (
    DAY1,
    DAY2,
    INGESTED_AT,
    NOW,
    REPO_ROOT,
    TOPIC,
    dlq_entries,
    events_frame,
    run_protocol,
    split,
    stage_and_prepare,
)

R0 = Range(TOPIC, 0, 0, 40)
R1 = Range(TOPIC, 0, 40, 100)


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "output", tmp_path / "state"


# ------------------------------------------------------------------------------------- manifests


def test_manifest_shape_and_roundtrip(tmp_path: Path) -> None:
    manifest = run_protocol(tmp_path, R0)
    path = ledger.manifest_path(tmp_path / "state", R0)
    assert path == tmp_path / "state/manifests/raw-events/0" / f"{R0.range_id}.json"
    data = orjson.loads(path.read_bytes())
    assert set(data) == {
        "version",
        "kind",
        "range_id",
        "range",
        "run_id",
        "ingested_at",
        "reference_time",
        "committed_at",
        "counts",
        "files",
        "dlq",
        "filtered",
        "record_offsets",
    }
    parts = split(R0)
    assert data["counts"] == {
        "records": 40,
        "written": len(parts.good),
        "dlq": len(parts.dlq),
        "filtered": {"duplicate": len(parts.filtered["duplicate"])},
    }
    assert data["filtered"] == {"duplicate": parts.filtered["duplicate"]}
    assert set(data["files"][0]) == {
        "path",
        "table",
        "day",
        "rows",
        "sha256",
        "bytes",
        "min_offset",
        "max_offset",
    }
    assert data["dlq"][0] == {
        "source_offset": 3,
        "category": "invalid_json",
        "dlq_partition": 0,
        "dlq_offset": 0,
    }
    assert data["record_offsets"] == {"count": 40, "sha256": ledger.offsets_digest(range(40))}
    assert ledger.read_manifest(tmp_path / "state", R0) == manifest
    assert ledger.Manifest.from_dict(data).to_dict() == data


def _listed_twice(raw: bytes) -> bytes:
    body = orjson.loads(raw)
    body["files"].append(body["files"][0])
    return orjson.dumps(body)


@pytest.mark.parametrize(
    "damage", ["truncate", "garbage", "empty", "array", "wrong_path", "listed_twice"]
)
def test_torn_manifest_is_absent_and_reported(tmp_path: Path, damage: str) -> None:
    run_protocol(tmp_path, R0)
    run_protocol(tmp_path, R1)
    path = ledger.manifest_path(tmp_path / "state", R1)
    raw = path.read_bytes()
    path.write_bytes(
        {
            "truncate": raw[: len(raw) // 2],
            "garbage": b"\x00\xff{",
            "empty": b"",
            "array": b"[1, 2]",
            "wrong_path": raw.replace(b"events/date=", b"../../etc/date="),
            "listed_twice": _listed_twice(raw),
        }[damage]
    )
    state = tmp_path / "state"
    assert [m.range for m in ledger.load_manifests(state)] == [R0]
    scan = ledger.scan_manifests(state)
    assert [p.path for p in scan.problems] == [path]
    assert ledger.read_manifest(state, R1) is None
    assert ledger.committed_end(state, TOPIC, 0) == 40


# ------------------------------------------------------------------------------------ contiguity


def test_contiguity_rejects_gaps_overlaps_and_repeats(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert ledger.committed_end(state, TOPIC, 0) is None
    ledger.check_contiguity(state, Range(TOPIC, 0, 17, 20))  # first range: any start
    run_protocol(tmp_path, R0)
    assert ledger.committed_end(state, TOPIC, 0) == 40
    ledger.check_contiguity(state, Range(TOPIC, 0, 40, 50))
    ledger.check_contiguity(state, Range(TOPIC, 1, 0, 10))  # other partitions are independent
    with pytest.raises(AlreadyCommittedError, match="already committed"):
        ledger.check_contiguity(state, R0)
    with pytest.raises(ContiguityError, match="overlaps"):
        ledger.check_contiguity(state, Range(TOPIC, 0, 30, 60))
    with pytest.raises(ContiguityError, match="does not start at the committed end 40"):
        ledger.check_contiguity(state, Range(TOPIC, 0, 45, 60))


def test_write_intent_enforces_contiguity(tmp_path: Path) -> None:
    run_protocol(tmp_path, R0)
    state = tmp_path / "state"
    with ledger.partition_lock(state, TOPIC, 0), pytest.raises(ContiguityError):
        ledger.write_intent(state, Range(TOPIC, 0, 20, 60), "run-B", INGESTED_AT, NOW)


def test_committed_end_stops_at_a_gap(tmp_path: Path) -> None:
    for rng in (R0, R1, Range(TOPIC, 0, 100, 120)):
        run_protocol(tmp_path, rng)
    ledger.manifest_path(tmp_path / "state", R1).unlink()
    assert ledger.committed_end(tmp_path / "state", TOPIC, 0) == 40


# ----------------------------------------------------------------------------------------- locks


_HOLDER = """
import sys, time
from pathlib import Path
from pipeline_project.batch import ledger
with ledger.partition_lock(Path(sys.argv[1]), "raw-events", 0):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_lock_busy_fails_fast_across_processes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(state)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(
            LockBusyError, match=rf"another run .*raw-events\[0\].*pid {holder.pid}"
        ):
            with ledger.partition_lock(state, TOPIC, 0):
                pass
        assert time.monotonic() - started < 1.0
        with ledger.partition_lock(state, TOPIC, 1):  # another partition is free
            pass
        holder.send_signal(signal.SIGKILL)  # a dead holder never leaves a stale lock
        holder.wait(timeout=10)
        with ledger.partition_lock(state, TOPIC, 0):
            pass
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_lock_is_not_reentrant_and_guards_mutations(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with ledger.partition_lock(state, TOPIC, 0):
        with pytest.raises(LockBusyError, match="already locked by this process"):
            with ledger.partition_lock(state, TOPIC, 0):
                pass
    with pytest.raises(LedgerError, match="hold partition_lock"):
        ledger.write_intent(state, R0, "run-A", INGESTED_AT, NOW)


# --------------------------------------------------------------------------------------- intents


def test_intent_identity_is_adopted_by_a_rerun(tmp_path: Path) -> None:
    state = tmp_path / "state"
    later = datetime(2030, 1, 1, tzinfo=UTC)
    with ledger.partition_lock(state, TOPIC, 0):
        first = ledger.write_intent(state, R0, "run-A", INGESTED_AT, NOW)
        assert not first.adopted and first.state == ledger.STARTED
        again = ledger.write_intent(state, R0, "run-B", later, later)
        assert again.adopted
        assert (again.run_id, again.ingested_at, again.now) == ("run-A", INGESTED_AT, NOW)
        other = ledger.write_intent(state, Range(TOPIC, 0, 0, 30), "run-C", later, later)
        assert other.run_id == "run-C" and ledger.read_intent(state, R0) is None


def test_prepared_intent_blocks_new_intents_until_recovery(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with ledger.partition_lock(state, TOPIC, 0):
        intent = ledger.write_intent(state, R0, "run-A", INGESTED_AT, NOW)
        prepared = stage_and_prepare(state, R0, intent)
        assert ledger.read_intent(state, R0) == prepared
        assert [f.day for f in prepared.files] == [DAY1, DAY2]
        with pytest.raises(LedgerError, match="run recovery first"):
            ledger.write_intent(state, Range(TOPIC, 0, 0, 10), "run-B", INGESTED_AT, NOW)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("lose_one", "unaccounted offsets \\[3\\]"),
        ("dlq_and_filtered", "counted twice"),
        ("out_of_range", "outside"),
        ("consumed_twice", "counted twice"),
        ("never_consumed", "never consumed \\[39\\]"),
    ],
)
def test_prepare_refuses_broken_accounting(tmp_path: Path, change: str, message: str) -> None:
    state = tmp_path / "state"
    parts = split(R0)
    dlq, filtered, consumed = parts.dlq, dict(parts.filtered), parts.consumed
    if change == "lose_one":
        dlq = dlq[1:]
    elif change == "dlq_and_filtered":
        filtered = {"duplicate": [*filtered["duplicate"], dlq[0]]}
    elif change == "out_of_range":
        dlq = [*dlq, 40]
        consumed = [*consumed, 40]
    elif change == "consumed_twice":
        consumed = [*consumed, 0]
    else:
        consumed = [o for o in consumed if o != 39]
    with ledger.partition_lock(state, TOPIC, 0):
        intent = ledger.write_intent(state, R0, "run-A", INGESTED_AT, NOW)
        staged = lake.stage_days(lake.staging_dir(state, R0), R0, events_frame(R0, parts.good))
        with pytest.raises(AccountingError, match=message):
            ledger.prepare_intent(state, intent, staged, dlq_entries(dlq), filtered, consumed)
        assert ledger.read_intent(state, R0) == intent  # still "started"


# ---------------------------------------------------------------------------------------- commit


def test_commit_refuses_unpublished_files_and_is_idempotent(tmp_path: Path) -> None:
    lake_dir, state = _dirs(tmp_path)
    with ledger.partition_lock(state, TOPIC, 0):
        intent = stage_and_prepare(state, R0, ledger.write_intent(state, R0, "a", INGESTED_AT, NOW))
        with pytest.raises(LedgerError, match="is not published"):
            ledger.commit_manifest(state, lake_dir, intent, NOW)
        assert ledger.read_manifest(state, R0) is None
        lake.publish_all(intent.files, lake_dir)
        first = ledger.commit_manifest(state, lake_dir, intent, NOW)
        second = ledger.commit_manifest(state, lake_dir, intent, datetime(2031, 1, 1, tzinfo=UTC))
        assert second.committed_at == first.committed_at  # the first commit stands
        with pytest.raises(LedgerError, match="different or unreadable manifest"):
            other = ledger.Intent(**{**intent.__dict__, "run_id": "zombie"})
            ledger.commit_manifest(state, lake_dir, other, NOW)


def test_manifest_write_eio_commits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake_dir, state = _dirs(tmp_path)
    with ledger.partition_lock(state, TOPIC, 0):
        intent = stage_and_prepare(state, R0, ledger.write_intent(state, R0, "a", INGESTED_AT, NOW))
        lake.publish_all(intent.files, lake_dir)
        directory = ledger.manifest_path(state, R0).parent
        lake.ensure_dir(directory)  # so the first fsync is the manifest temp file's
        calls = {"n": 0}
        real_fsync = lake.os.fsync

        def failing_fsync(fd: int) -> None:
            calls["n"] += 1
            raise OSError(errno.EIO, "injected fsync failure")

        monkeypatch.setattr(lake.os, "fsync", failing_fsync)
        with pytest.raises(OSError, match="injected"):
            ledger.commit_manifest(state, lake_dir, intent, NOW)
        monkeypatch.setattr(lake.os, "fsync", real_fsync)
        assert calls["n"] == 1  # never retried
        assert list(directory.iterdir()) == []  # neither a manifest nor a temp file
        assert ledger.read_intent(state, R0) == intent  # still prepared: recovery rolls forward


# --------------------------------------------------------------------------------- committed ids


def test_committed_ids_reads_only_manifest_listed_files(tmp_path: Path) -> None:
    lake_dir, state = _dirs(tmp_path)
    run_protocol(tmp_path, R0)
    stray_rng = Range(TOPIC, 0, 40, 60)
    for staged in lake.stage_days(tmp_path / "x", stray_rng, events_frame(stray_rng, [41, 42])):
        lake.publish(staged, lake_dir)  # published but never committed
    ids = ledger.committed_ids(lake_dir, [DAY1], state_dir=state)
    assert ids.columns == ["event_date", "event_id"]
    frame = events_frame(R0, split(R0).good)
    expected = frame.filter(frame["event_date"] == DAY1)
    assert sorted(ids["event_id"].to_list()) == sorted(expected["event_id"].to_list())
    assert ledger.committed_ids(lake_dir, [DAY2], state_dir=state, partition=1).height == 0
    assert ledger.committed_ids(lake_dir, [], state_dir=state).height == 0


def test_newer_manifest_format_stops_instead_of_being_dropped(tmp_path: Path) -> None:
    run_protocol(tmp_path, R0)
    path = ledger.manifest_path(tmp_path / "state", R0)
    body = orjson.loads(path.read_bytes())
    body["version"] = ledger.LEDGER_VERSION + 1
    path.write_bytes(orjson.dumps(body))
    with pytest.raises(LedgerError, match="newer pipeline"):
        ledger.load_manifests(tmp_path / "state")
