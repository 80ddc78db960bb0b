"""Z2, the zombie writer: run A freezes (SIGSTOP at a fault point) holding the partition lock; the
lock file is deleted (a lost lock, an expired lease); run B completes; A wakes up (SIGCONT).

A must never overwrite or double-commit: it stops with a FencingError, or its late steps are
identical no-ops. The oracle holds afterwards, and a re-run is a no-op.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline_project.batch import ledger
from pipeline_project.batch.ranges import Range
from pipeline_project.errors import FencingError
from pipeline_project.settings import Settings
from pipeline_project_tests.faults import oracle
from pipeline_project_tests.faults.fault_support import (
    committed_state,
    generated,
    produce,
    run_driver,
    start_driver,
)


def test_a_removed_or_replaced_lock_file_fences_every_ledger_change(tmp_path: Path) -> None:
    state = tmp_path / "state"
    path = ledger.lock_path(state, "raw", 0)
    with ledger.partition_lock(state, "raw", 0):
        ledger.assert_locked(state, "raw", 0)
        path.unlink()
        with pytest.raises(FencingError, match="removed or replaced"):
            ledger.assert_locked(state, "raw", 0)
        path.write_text("pid 1\n")  # another run's lock file now
        with pytest.raises(FencingError):
            ledger.assert_locked(state, "raw", 0)


def break_lock(settings: Settings, partition: int) -> None:
    """What a lost lock looks like to the next run: the lock file is gone."""
    ledger.lock_path(settings.state_dir, settings.raw_topic, partition).unlink()


@pytest.mark.parametrize(
    ("point", "more"),
    [
        ("K1", 400),  # drained only: B commits a longer range over the same offsets
        ("K3", 0),  # prepared: B rolls A's work forward, then A tries to publish it again
        ("K5", 0),  # published, not committed: B commits it, then A tries to commit again
    ],
)
def test_a_zombie_run_never_commits_over_a_newer_run(
    settings: Settings, point: str, more: int
) -> None:
    truth = produce(settings, generated(1500, seed=3), partition=0)
    zombie = start_driver(settings, [Range(settings.raw_topic, 0, 0, 1500)], fault=point, stop=True)
    zombie.wait_stopped()
    break_lock(settings, 0)
    if more:
        truth += produce(settings, generated(more, seed=4), partition=0)
    newer = run_driver(settings)
    assert newer.ok, str(newer)
    after_newer = committed_state(settings)

    zombie.cont()
    late = zombie.finish()
    assert late.code in (0, 1), f"the zombie crashed instead of failing cleanly: {late}"
    if late.code == 1:
        assert late.result["error"] == "FencingError", str(late)
    assert committed_state(settings) == after_newer, "the zombie changed the committed lake"
    oracle.check(settings, truth).assert_ok()
    oracle.assert_rerun_is_noop(settings)
