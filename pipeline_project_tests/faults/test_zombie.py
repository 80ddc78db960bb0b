"""Zombie writers: run A freezes (SIGSTOP at a kill point) in the middle of a range; run B commits
the same offsets; A wakes up (SIGCONT). No lock is involved: the Delta commit is the fence.

A must commit nothing: it stops with a FencingError (its commit lost the conflict check against
B's app transaction) or finds its range already committed. The oracle holds, a re-run is a no-op.
"""

from __future__ import annotations

import pytest

from pipeline_project.batch.ranges import Range
from pipeline_project.settings import Settings
from pipeline_project_tests.faults import oracle
from pipeline_project_tests.faults.fault_support import (
    committed_state,
    generated,
    produce,
    run_driver,
    start_driver,
)


@pytest.mark.parametrize(
    ("point", "more"),
    [
        ("K1", 400),  # drained only: B commits a longer range; A finds it taken at its commit
        ("KC", 0),  # checked, not committed: B commits; A's commit loses the conflict check
        ("K5", 0),  # files written, not committed: the same, its files stay unreferenced
    ],
)
def test_a_zombie_run_never_commits_over_a_newer_run(
    any_settings: Settings, point: str, more: int
) -> None:
    settings = any_settings
    truth = produce(settings, generated(1500, seed=3), partition=0)
    zombie = start_driver(settings, [Range(settings.raw_topic, 0, 0, 1500)], fault=point, stop=True)
    zombie.wait_stopped()
    if more:
        truth += produce(settings, generated(more, seed=4), partition=0)
    newer = run_driver(settings)
    assert newer.ok, str(newer)
    after_newer = committed_state(settings)

    zombie.cont()
    late = zombie.finish()
    assert late.code == 1, f"the zombie did not stop with a clean error: {late}"
    assert late.result["error"] == "FencingError", str(late)
    assert "committed nothing" in late.result["message"]
    assert committed_state(settings) == after_newer, "the zombie changed the committed lake"
    oracle.check(settings, truth).assert_ok()
    oracle.assert_rerun_is_noop(settings)
