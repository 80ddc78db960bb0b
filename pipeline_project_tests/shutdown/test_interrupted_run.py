"""A run stopped mid-way (SIGINT, as a cancel from the UI, or SIGTERM) leaves nothing half-done.

`dagster job execute` drains many small ranges; the signal lands after the first commits. Dagster
turns both signals into an interrupt raised inside the op (a UI cancel becomes a SIGINT in the run
worker); the ranges that committed before it are still reported as `events` materializations. The
next run completes the backlog, `reconcile` exits 0, and every good event is in the lake once.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from pipeline_project.lake.history import read_history
from pipeline_project.lake.location import lake_of
from pipeline_project.settings import Settings
from pipeline_project_tests.ingest_support import assert_reconciles, lake_frame, produce
from pipeline_project_tests.support import PYTHON, REPO_ROOT, env_for

RANGE_EVENTS = 1_000
EVENTS = 20_000


def dagster_execute(env: dict[str, str]) -> subprocess.Popen:
    dagster = str(Path(PYTHON).parent / "dagster")
    return subprocess.Popen(
        [dagster, "job", "execute", "-m", "pipeline_project.definitions", "-j", "ingest_events"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
    )


def committed_ranges(settings: Settings) -> set[str]:
    """Range ids of the commits in the events table's log."""
    return {r.range.range_id for r in read_history(lake_of(settings)).records}


def wait_for_commits(settings: Settings, proc: subprocess.Popen, n: int) -> None:
    deadline = time.monotonic() + 120
    while len(committed_ranges(settings)) < n:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, "no commit within 120 s"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_run_then_rerun_reconciles(
    kafka_settings: Settings, tmp_path: Path, sig: signal.Signals
) -> None:
    truth = produce(kafka_settings, tmp_path / "truth.jsonl", EVENTS, "--bad-ratio", "0.02")
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = env_for(
        kafka_settings, DAGSTER_HOME=str(home), PIPELINE_MAX_RANGE_EVENTS=str(RANGE_EVENTS)
    )
    proc = dagster_execute(env)
    wait_for_commits(kafka_settings, proc, 2)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0, output[-2000:]
    committed = committed_ranges(kafka_settings)
    total = -(-EVENTS // RANGE_EVENTS)  # at least this many ranges over all partitions
    assert 2 <= len(committed) < total, "the signal did not land mid-run"

    # Dagster maps SIGTERM to SIGINT and raises an interrupt inside the op, which reports the
    # ranges that committed before it (the sessions automation reacts to those).
    assert "DagsterExecutionInterruptedError" in output
    with DagsterInstance.from_config(str(home)) as instance:
        mats = instance.fetch_materializations(AssetKey("events"), limit=1000).records
        reported = {
            r for m in mats for r in m.asset_materialization.metadata["offset_ranges"].value
        }
    assert reported and reported <= committed

    rerun = dagster_execute(env)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output[-3000:]
    assert_reconciles(env)
    lake = lake_frame(kafka_settings)
    good = sorted(t["event_id"] for t in truth if t["verdict"] == "good")
    assert sorted(lake.get_column("event_id").to_list()) == good
