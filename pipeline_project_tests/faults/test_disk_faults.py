"""Storage faults (matrix F1, F2, F4, F6): disk full while writing a range's files and while
committing its log entry (a small tmpfs holding the data dir), a read-only lake (bind mount
remounted read-only: EROFS even for root), and truncated and stray files planted in the lake. These
are local-disk faults by nature; on S3 the store refusing writes is its server gone (versitygw
stopped between a range's files and its commit, then while a run starts), tested here too.

Where mount(2) is impossible (not root, no CAP_SYS_ADMIN) the mount tests skip with the reason; the
disk-full case then still runs with an injected ENOSPC.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest

from pipeline_project.batch.ranges import Range
from pipeline_project.batch.run import ingest
from pipeline_project.errors import StorageError
from pipeline_project.lake import files
from pipeline_project.lake.location import lake_of
from pipeline_project.lake.s3server import LocalS3
from pipeline_project.settings import Settings
from pipeline_project_tests.faults import oracle
from pipeline_project_tests.faults.fault_support import (
    NOTHING_COMMITTED,
    committed_state,
    fill,
    generated,
    mount_problem,
    produce,
    read_only,
    records,
    resize_tmpfs,
    run_driver,
    start_driver,
    tmpfs,
)
from pipeline_project_tests.ingest_support import assert_reconciles
from pipeline_project_tests.support import PYTHON, REPO_ROOT, env_for, point_aws_at, unique


def on(settings: Settings, data: Path) -> Settings:
    return dataclasses.replace(settings, data_dir=data)


def readable(settings: Settings) -> int:
    """Rows a reader sees through the Delta log (0 before the first commit)."""
    lake = lake_of(settings)
    if committed_state(settings) == NOTHING_COMMITTED:
        return 0
    return pl.read_delta(lake.table_uri("events")).height


# ----------------------------------------------------------------------------------------- F1


def test_disk_full_while_writing_fails_cleanly_and_a_bigger_disk_recovers(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    truth = produce(settings, generated(25_000, seed=51), partition=0)
    if mount_problem():
        _injected_enospc(settings, truth, monkeypatch)
        return
    with tmpfs(tmp_path / "small", "512k") as data:
        small = on(settings, data)
        full = run_driver(small)
        # One clean line naming the range and the cause, not a crash with a traceback.
        assert full.code == 1 and full.result["error"] == "StorageError", str(full)
        assert "No space left on device" in full.result["message"]
        assert "nothing of this range was committed" in full.result["message"]
        assert "Traceback" not in full.stderr
        assert readable(small) == 0, "rows of a failed run are visible"
        resize_tmpfs(data, "64m")  # the operator grows the volume
        done = run_driver(small)
        assert done.ok, str(done)
        oracle.check(small, truth).assert_ok()
        oracle.assert_rerun_is_noop(small)


def _injected_enospc(settings: Settings, truth: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same check without a mount: the data file writer raises ENOSPC once."""
    real = files._write_file

    def full(*args: object, **kwargs: object) -> None:
        monkeypatch.setattr(files, "_write_file", real)
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    monkeypatch.setattr(files, "_write_file", full)
    with pytest.raises(StorageError, match="No space left on device"):
        ingest(settings)
    assert readable(settings) == 0
    done = run_driver(settings)
    assert done.ok, str(done)
    oracle.check(settings, truth).assert_ok()


# ----------------------------------------------------------------------------------------- F2


def test_disk_full_while_committing_keeps_the_old_state(
    settings: Settings, tmp_path: Path, mounts: None
) -> None:
    truth = produce(settings, generated(3_000, seed=52), partition=0)
    with tmpfs(tmp_path / "disk", "16m") as data:
        disk = on(settings, data)
        run = start_driver(disk, [Range(disk.raw_topic, 0, 0, 3_000)], fault="K5", stop=True)
        run.wait_stopped()  # files written and synced, the log entry not yet
        before = committed_state(disk)
        ballast = fill(data)
        run.cont()
        failed = run.finish()
        assert failed.code == 1 and failed.result["error"] == "StorageError", str(failed)
        assert "No space left on device" in failed.result["message"], str(failed)
        assert "Traceback" not in failed.stderr
        assert committed_state(disk) == before, "a failed commit changed the table"
        for path in ballast:
            path.unlink()
        done = run_driver(disk)
        assert done.ok, str(done)
        oracle.check(disk, truth).assert_ok()


# ----------------------------------------------------------------------------------------- F4


def test_a_read_only_lake_fails_before_consuming(settings: Settings, mounts: None) -> None:
    truth = produce(settings, generated(300, seed=53))
    assert run_driver(settings).ok
    truth += produce(settings, generated(300, seed=54))
    before = committed_state(settings)
    with read_only(settings.lake_dir):
        refused = run_driver(settings)
    assert refused.code == 1 and "not writable" in refused.result["message"], str(refused)
    assert "nothing was consumed" in refused.result["message"]
    assert committed_state(settings) == before
    done = run_driver(settings)
    assert done.ok, str(done)
    oracle.check(settings, truth).assert_ok()


# ----------------------------------------------------------------------- F2/F4 on S3: store gone


def test_an_s3_store_gone_stops_the_run_with_one_line_and_the_next_run_commits_once(
    settings: Settings, own_s3: LocalS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """versitygw stops after a range's files were PUT, before its commit; a run started while it
    is down is refused before consuming. Each stops with one line naming the endpoint and commits
    nothing; once the store is back the range commits once and reconcile passes."""
    point_aws_at(monkeypatch, own_s3.storage_options())
    store = dataclasses.replace(settings, lake_uri=f"s3://{own_s3.bucket}/{unique('table')}")
    truth = produce(store, generated(300, seed=57))
    assert run_driver(store).ok
    truth += produce(store, generated(300, seed=58), partition=0)
    before = committed_state(store)
    run = start_driver(store, fault="K5", stop=True)
    run.wait_stopped()  # the range's files are in the store, its commit is not
    own_s3.stop()
    run.cont()
    started = time.monotonic()
    gone = run.finish()
    assert time.monotonic() - started < 60, "the wait on a gone store is unbounded"
    down = run_driver(store)
    for failed in (gone, down):
        assert failed.code == 1 and failed.result["error"] == "LakeError", str(failed)
        assert own_s3.endpoint in failed.result["message"], str(failed)
        assert "Connection refused" in failed.result["message"], str(failed)
        assert "\x1b" not in failed.result["message"], "terminal colour codes in the message"
        assert "Traceback" not in failed.stderr and own_s3.credentials.secret_key not in str(failed)

    assert "committing" in gone.result["message"] and "at most once" in gone.result["message"]
    own_s3.start()
    assert committed_state(store) == before, "a run committed while the store was gone"
    done = run_driver(store)
    assert done.ok and len(done.result["committed"]) == 1, str(done)
    assert [r.range.range_id for r in records(store)].count(done.result["committed"][0]) == 1
    oracle.check(store, truth).assert_ok()
    oracle.assert_rerun_is_noop(store)
    assert_reconciles(env_for(store))


# ------------------------------------------------------------------------------------------ F6


def reconcile_json(settings: Settings) -> tuple[int, dict]:
    done = subprocess.run(
        [PYTHON, "-m", "pipeline_project.cli", "reconcile", "--json"],
        env=env_for(settings),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    return done.returncode, json.loads(done.stdout)


def test_stray_files_are_invisible_and_a_truncated_committed_file_is_reported(
    settings: Settings,
) -> None:
    truth = produce(settings, generated(900, seed=55))
    assert run_driver(settings).ok
    rows = readable(settings)
    table = settings.lake_dir / "events"
    victim = sorted(table.rglob("part-*.parquet"))[0]
    day = victim.parent
    good = victim.read_bytes()
    for name, content in {
        "part-stray.parquet": good,  # a complete copy no commit names: readers must not see it
        ".tmp-123.parquet": good[:200],
        "_tmp-123.parquet": good[:300],
        "part-0.parquet.inprogress": good[:400],
        "empty.parquet": b"",
    }.items():
        (day / name).write_bytes(content)
    assert readable(settings) == rows, "a stray file changed what readers see"
    code, report = reconcile_json(settings)
    assert code == 0 and report["unreferenced_files"] >= 5, report

    victim.write_bytes(good[: len(good) // 2])
    code, report = reconcile_json(settings)
    assert code == 1
    assert [p["code"] for p in report["problems"]] == ["missing_file"], report["problems"]
    assert victim.name in report["problems"][0]["message"]

    # A host whose id cache lacks the file (another host, a deleted cache) must read the day's
    # ids to filter duplicates, cannot, and stops naming the file.
    cache = settings.state_dir / "event-ids"
    kept = cache.with_name("event-ids.kept")
    cache.rename(kept)
    truth += produce(settings, generated(300, seed=56))
    stopped = run_driver(settings)
    assert stopped.code == 1, str(stopped)
    assert victim.name in stopped.result.get("message", ""), str(stopped)
    assert "Traceback" not in stopped.stderr
    # This host's cache holds the file's id hashes (taken from the rows it committed): the filter
    # needs nothing else, so ingestion goes on exactly once; reconcile still reports the file.
    shutil.rmtree(cache)
    kept.rename(cache)
    done = run_driver(settings)
    assert done.ok and done.result["records"] == 300, str(done)
    code, report = reconcile_json(settings)
    assert code == 1 and [p["code"] for p in report["problems"]] == ["missing_file"]
    victim.write_bytes(good)  # restored from a backup
    assert run_driver(settings).ok
    oracle.check(settings, truth).assert_ok()
