"""recover.py: roll forward/back (C3-C5, C8, F8), strays and corrupt files quarantined (F6, F7).

Also torn ledger files, and the kill points K2/K4/K8 in a real child process dying by SIGKILL:
after recovery and a re-run the lake is byte-identical to one that never crashed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_project.batch import lake, ledger
from pipeline_project.batch.ranges import Range
from pipeline_project.batch.reconcile import reconcile_dirs
from pipeline_project.batch.recover import RecoveryReport, recover
from pipeline_project.errors import AlreadyCommittedError, LedgerError
from pipeline_project_tests.batch.ledger_support import (
    COMMITTED_AT,
    INGESTED_AT,
    NOW,
    REPO_ROOT,
    TOPIC,
    events_frame,
    lake_bytes,
    run_in_subprocess,
    run_protocol,
    split,
    stage_and_prepare,
)

R0 = Range(TOPIC, 0, 0, 40)
R1 = Range(TOPIC, 0, 40, 100)


def _recover(data: Path, partition: int = 0, deep: bool = False) -> RecoveryReport:
    state = data / "state"
    with ledger.partition_lock(state, TOPIC, partition):
        return recover(data / "output", state, TOPIC, partition, deep=deep)


def _reference(tmp_path: Path, *ranges: Range, row_group_rows: int = lake.ROW_GROUP_ROWS) -> Path:
    ref = tmp_path / "reference"
    for rng in ranges:
        run_protocol(ref, rng, row_group_rows=row_group_rows)
    return ref


def _crash_after_prepare(data: Path, rng: Range, publish: int) -> ledger.Intent:
    """A run that stopped after "prepared" with `publish` of its files linked into the lake."""
    state = data / "state"
    with ledger.partition_lock(state, TOPIC, rng.partition):
        intent = ledger.write_intent(state, rng, "run-A", INGESTED_AT, NOW)
        intent = stage_and_prepare(state, rng, intent)
        for staged in intent.files[:publish]:
            lake.publish(staged, data / "output")
    return intent


def _assert_clean_and_identical(data: Path, ref: Path) -> None:
    assert lake_bytes(data / "output") == lake_bytes(ref / "output")
    report = reconcile_dirs(data / "output", data / "state")
    assert report.ok, [str(p) for p in report.problems]
    assert not any((data / "state" / "staging").iterdir())
    assert not any((data / "state" / "intents").rglob("*.json"))


# ------------------------------------------------------------------------------- roll forward/back


@pytest.mark.parametrize("published", [0, 1, 2])  # C3 (none), C4 (one of two days), C5 (all)
def test_prepared_intent_rolls_forward(tmp_path: Path, published: int) -> None:
    data = tmp_path / "data"
    intent = _crash_after_prepare(data, R0, publish=published)
    assert len(intent.files) == 2
    report = _recover(data)
    assert report.rolled_forward == [R0.range_id] and report.ok
    assert ledger.read_manifest(data / "state", R0) is not None
    _assert_clean_and_identical(data, _reference(tmp_path, R0))


def test_prepared_intent_with_lost_staging_rolls_back_and_keeps_identity(tmp_path: Path) -> None:
    data = tmp_path / "data"
    intent = _crash_after_prepare(data, R0, publish=1)
    intent.files[1].staging_path.unlink()  # day 2 neither staged nor published: cannot roll forward
    report = _recover(data)
    assert report.rolled_back == [R0.range_id]
    assert report.staging_removed == [R0.range_id]
    assert [q.reason for q in report.quarantined] == ["no manifest lists this file"]  # day 1
    kept = ledger.read_intent(data / "state", R0)
    assert kept is not None and kept.state == ledger.STARTED and kept.run_id == "run-A"
    run_protocol(data, R0, run_id="run-B")  # adopts run-A's identity
    _assert_clean_and_identical(data, _reference(tmp_path, R0))


def test_started_intent_rolls_back(tmp_path: Path) -> None:
    data, state = tmp_path / "data", tmp_path / "data" / "state"
    with ledger.partition_lock(state, TOPIC, 0):
        ledger.write_intent(state, R0, "run-A", INGESTED_AT, NOW)
        lake.stage_days(lake.staging_dir(state, R0), R0, events_frame(R0, split(R0).good))
    report = _recover(data)
    assert report.rolled_back == [R0.range_id] and report.staging_removed == [R0.range_id]
    assert not lake.staging_dir(state, R0).exists()
    assert not any((data / "output").rglob("*.parquet"))


def test_intent_of_a_committed_range_is_just_cleared(tmp_path: Path) -> None:
    data, state = tmp_path / "data", tmp_path / "data" / "state"
    intent = _crash_after_prepare(data, R0, publish=2)
    with ledger.partition_lock(state, TOPIC, 0):
        # died after the commit point, before finish_range (K7)
        ledger.commit_manifest(state, data / "output", intent, COMMITTED_AT)
    report = _recover(data)
    assert report.already_committed == [R0.range_id] and not report.rolled_forward
    _assert_clean_and_identical(data, _reference(tmp_path, R0))


def test_stale_intent_is_dropped(tmp_path: Path) -> None:
    data, state = tmp_path / "data", tmp_path / "data" / "state"
    run_protocol(data, R0)
    stale = ledger.Intent(Range(TOPIC, 0, 0, 30), "old", INGESTED_AT, NOW)
    ledger.atomic_write_json(ledger.intent_path(state, stale.range), stale.to_dict())
    report = _recover(data)
    assert report.stale_intents == [stale.range.range_id]
    assert ledger.read_intent(state, stale.range) is None


def test_recover_requires_the_lock(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="hold partition_lock"):
        recover(tmp_path / "output", tmp_path / "state", TOPIC, 0)


def test_clean_state_is_clean(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_protocol(data, R0)
    report = _recover(data, deep=True)
    assert report.clean and report.ok and report.summary().endswith("clean")


# ---------------------------------------------------------------------------- strays and staging


def test_strays_are_quarantined_and_other_partitions_left_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_protocol(data, R0)
    root, day = data / "output", data / "output" / "events" / "date=2024-03-09"
    committed = lake_bytes(root)
    strays = [
        day / ".tmp-123.parquet",
        day / "_tmp-123.parquet",
        day / "part-0.parquet.inprogress",
        day / "unknown.parquet",
        day / lake.file_name(Range(TOPIC, 0, 40, 50)),  # ours by name, but in no manifest
        root / "events" / "_staging",
        root / "events" / "date=2024-99-01",
        root / ".hidden",
        root / "_SUCCESS",
    ]
    for path in strays:
        if path.suffix or path.name == "_SUCCESS":
            path.write_bytes(b"PAR1 not really")
        else:
            path.mkdir()
            (path / "x.parquet").write_bytes(b"PAR1")
    foreign = day / lake.file_name(Range(TOPIC, 1, 0, 10))  # partition 1 may be publishing now
    foreign.write_bytes(b"in flight")
    report = _recover(data)
    assert sorted(q.path for q in report.quarantined) == sorted(str(p) for p in strays)
    assert not any(p.exists() for p in strays) and foreign.exists()
    for item in report.quarantined:
        assert Path(item.dest).exists()
        assert Path(f"{item.dest}.quarantine.json").exists()
    foreign.unlink()
    assert lake_bytes(root) == committed
    assert reconcile_dirs(root, data / "state").ok


def test_orphan_staging_is_removed_only_for_this_partition(tmp_path: Path) -> None:
    data, state = tmp_path / "data", tmp_path / "data" / "state"
    ours = lake.staging_dir(state, R0)
    theirs = lake.staging_dir(state, Range(TOPIC, 1, 0, 10))
    junk = state / "staging" / "not-a-range"
    for path in (ours, theirs, junk):
        path.mkdir(parents=True)
        (path / "f.parquet").write_bytes(b"partial")
    report = _recover(data)
    assert sorted(report.staging_removed) == sorted([R0.range_id, "not-a-range"])
    assert theirs.exists() and not ours.exists() and not junk.exists()


# ------------------------------------------------------------------------- damaged committed data


def test_missing_and_corrupt_committed_files_are_reported(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_protocol(data, R0)
    run_protocol(data, R1)
    m0, m1 = (ledger.read_manifest(data / "state", r) for r in (R0, R1))
    assert m0 is not None and m1 is not None
    root = data / "output"
    (root / m0.files[0].path).unlink()
    truncated = root / m0.files[1].path
    truncated.write_bytes(truncated.read_bytes()[:-10])
    flipped = root / m1.files[0].path
    raw = bytearray(flipped.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    flipped.write_bytes(bytes(raw))
    shallow = _recover(data)
    assert shallow.missing == [m0.files[0].path] and shallow.corrupt == [m0.files[1].path]
    assert not shallow.ok and not truncated.exists()
    deep = _recover(data, deep=True)
    assert deep.corrupt == [m1.files[0].path] and not flipped.exists()


def test_torn_ledger_files_are_quarantined(tmp_path: Path) -> None:
    data, state = tmp_path / "data", tmp_path / "data" / "state"
    run_protocol(data, R0)
    manifest = ledger.manifest_path(state, R0)
    manifest.write_bytes(manifest.read_bytes()[:50])
    intent = ledger.intent_path(state, R1)
    intent.parent.mkdir(parents=True, exist_ok=True)
    intent.write_bytes(b'{"kind": "intent", "vers')
    report = _recover(data)
    assert len(report.ledger_problems) == 2
    assert not manifest.exists() and not intent.exists()
    # The torn manifest's range is absent: its files were quarantined and the range can be redone.
    assert not any((data / "output").rglob("*.parquet"))
    run_protocol(data, R0)
    _assert_clean_and_identical(data, _reference(tmp_path, R0))


# ------------------------------------------------------------------------------------ kill points


def _crash(data: Path, rng: Range, fault: str) -> None:
    result = run_in_subprocess(data, rng, fault)
    assert result.returncode == -signal.SIGKILL, result.stderr


def test_k2_mid_parquet_write(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_protocol(data, R0, row_group_rows=4)
    _crash(data, R1, "K2")
    partial = list((data / "state" / "staging").rglob("*.parquet"))
    assert len(partial) == 1 and not partial[0].read_bytes().endswith(b"PAR1")  # no footer
    assert ledger.read_manifest(data / "state", R1) is None
    ref = _reference(tmp_path, R0, R1, row_group_rows=4)
    only_r0 = _reference(tmp_path / "r0", R0, row_group_rows=4)
    assert lake_bytes(data / "output") == lake_bytes(only_r0 / "output")  # nothing of R1 visible
    # Recovery rolls back; the re-run adopts run-A's identity and writes identical bytes.
    run_protocol(data, R1, run_id="run-B", row_group_rows=4)
    _assert_clean_and_identical(data, ref)


def test_k4_between_two_publishes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _crash(data, R0, "K4")
    assert len(list((data / "output").rglob("*.parquet"))) == 1  # day 1 of 2
    report = _recover(data)
    assert report.rolled_forward == [R0.range_id] and not report.quarantined
    _assert_clean_and_identical(data, _reference(tmp_path, R0, row_group_rows=4))
    before = lake_bytes(data / "output")
    with pytest.raises(AlreadyCommittedError):  # I5: a re-run of a committed range adds nothing
        run_protocol(data, R0, row_group_rows=4)
    assert lake_bytes(data / "output") == before


def test_k8_between_manifest_temp_write_and_link(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _crash(data, R0, "K8")
    directory = ledger.manifest_path(data / "state", R0).parent
    assert [p.name.endswith(".tmp") for p in directory.iterdir()] == [True]
    assert ledger.committed_end(data / "state", TOPIC, 0) is None
    report = _recover(data)
    assert report.rolled_forward == [R0.range_id]
    assert [p.name for p in directory.iterdir()] == [f"{R0.range_id}.json"]
    _assert_clean_and_identical(data, _reference(tmp_path, R0, row_group_rows=4))


def test_no_fault_point_runs_to_completion(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = run_in_subprocess(data, R0)
    assert result.returncode == 0, result.stderr
    _assert_clean_and_identical(data, _reference(tmp_path, R0, row_group_rows=4))


# ----------------------------------------------------------------------------- durability order


def _traced_events(data: Path, tmp_path: Path) -> list[tuple[str, str, str]]:
    """(syscall, path, second path) of fsync/rename/link calls of one protocol run, in order."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not installed")
    trace = tmp_path / "trace.txt"
    cmd = [strace, "-f", "-y", "-qq", "-o", str(trace), "-e", "trace=fsync,fdatasync,rename,link"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("PIPELINE_FAULT_POINT", None)
    args = [sys.executable, "-m", "pipeline_project_tests.batch.ledger_support", str(data), "0"]
    result = subprocess.run(
        [*cmd, *args, "0", "40"], env=env, capture_output=True, text=True, check=False, timeout=60
    )
    if result.returncode != 0 and "ptrace" in result.stderr:
        pytest.skip(f"strace cannot trace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    pattern = re.compile(r'(fsync|fdatasync)\(\d+<([^>]*)>\)|(rename|link)\("([^"]*)", "([^"]*)"\)')
    events = []
    for line in trace.read_text().splitlines():
        match = pattern.search(line)
        if match and str(data) in line:
            if match[1]:
                events.append(("fsync", match[2], ""))
            else:
                events.append((match[3], match[4], match[5]))
    return events


def test_i7_durability_order_under_strace(tmp_path: Path) -> None:
    """F9/I7: fsync(file) < link < fsync(dir) < manifest link < fsync(manifest dir)."""
    data = tmp_path / "data"
    events = _traced_events(data, tmp_path)
    fsyncs = [(i, path) for i, (call, path, _) in enumerate(events) if call == "fsync"]
    manifest = str(ledger.manifest_path(data / "state", R0))
    commit = next(i for i, (c, _, dst) in enumerate(events) if c == "link" and dst == manifest)
    publishes = [(i, src, dst) for i, (c, src, dst) in enumerate(events) if c == "link"]
    lake_links = [(i, src, dst) for i, src, dst in publishes if "/output/" in dst]
    assert len(lake_links) == 2
    for index, src, dst in lake_links:
        assert any(path == src for i, path in fsyncs if i < index), f"{src} not fsynced before link"
        dir_sync = [i for i, path in fsyncs if i > index and path == os.path.dirname(dst)]
        assert dir_sync and dir_sync[0] < commit, f"{dst}'s directory not fsynced before commit"
    tmp = events[commit][1]
    assert any(path == tmp for i, path in fsyncs if i < commit), "manifest temp not fsynced"
    assert any(i > commit and path == os.path.dirname(manifest) for i, path in fsyncs)
    prepared = max(
        i for i, (c, _, dst) in enumerate(events) if c == "rename" and "/intents/" in dst
    )
    assert prepared < lake_links[0][0], "the prepared intent must be durable before publishing"
