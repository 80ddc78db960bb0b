"""Zombie worker hosts: one writer per partition, proven without shared disk.

Each trial is one offset range of its own partition. Worker host A takes the sensor's run and
freezes in the middle of the range (its run process stops itself after the commit's start check,
kill point KC; then the test SIGSTOPs the whole host). Run monitoring gives the run up after
max_runtime_seconds (the frozen host cannot be told), the sensor launches the range again, worker
host B commits it. Then A's run wakes up and tries to commit its copy of the range: the Delta
commit's app-transaction check must stop it, every time ("committed nothing"), and leave the
lake exactly as B left it. Afterwards the oracle and `pipeline-project reconcile` pass.

The run queue's tag limit cannot help here: the given-up run no longer counts as in progress.
ZOMBIE_TRIALS (default 3) sets the number of trials, run up to ROUND at once on as many
partitions; `make zombie50` runs 50.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from pipeline_project_tests.faults import oracle
from pipeline_project_tests.faults.fault_support import (
    Sent,
    committed_state,
    generated,
    produce,
    wait_dead,
)
from pipeline_project_tests.multihost.flow import (
    INGEST_JOB,
    caught_up,
    committed_ends,
    stopped,
    wait_until,
)
from pipeline_project_tests.multihost.hosts import Cluster, Host, runs_of
from pipeline_project_tests.support import PYTHON, REPO_ROOT, env_for

TRIALS = int(os.environ.get("ZOMBIE_TRIALS", "3"))
ROUND = 10  # trials at once (one partition each)
RECORDS = 300  # per trial range


def monitoring(runs_at_once: int) -> dict[str, int]:
    """A max runtime long enough for that many runs, starting at once on one host of a busy 2-core
    machine, to reach their kill point before run monitoring gives them up."""
    return {"max_runtime_seconds": max(25, 6 * runs_at_once)}


_T0 = [time.monotonic()]


def phase(name: str) -> None:
    """Prints how long the phase that just ended took (with -s: where a slow round spends it)."""
    now = time.monotonic()
    print(f"{name}: {now - _T0[0]:.1f} s")
    _T0[0] = now


def failure_text(instance: DagsterInstance, run_id: str) -> str:
    """What the run's failed steps said, from the shared event log."""
    texts = []
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
        error = entry.dagster_event.step_failure_data.error
        texts.append(error.to_string() if error else entry.message)
    return "\n".join(texts)


def run_start(instance: DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """The pid of the process that executes the run and when it started (its engine event)."""
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        found = re.search(r"Started process for run \(pid: (\d+)\)", entry.message or "")
        if found:
            return int(found.group(1)), entry.timestamp
    return None


def frozen_runs(instance: DagsterInstance, before: set[str], pids: list[int]) -> dict[str, int]:
    """Run id → pid of the ingest runs (created after `before`) whose process is frozen now.

    A run that run monitoring stopped before it reached its kill point (a slow start) is not a
    zombie: the sensor's retry of its range may be the one that froze. A pid can be reused on a
    busy machine: it belongs to the run that started on it last.
    """
    latest: dict[int, tuple[float, str]] = {}
    for record in runs_of(instance, INGEST_JOB):
        run_id = record.dagster_run.run_id
        started = run_start(instance, run_id) if run_id not in before else None
        if started and started[0] in pids and started[1] > latest.get(started[0], (0.0, ""))[0]:
            latest[started[0]] = (started[1], run_id)
    return {run_id: pid for pid, (_, run_id) in latest.items()}


def all_failed(instance: DagsterInstance, run_ids: list[str]) -> bool:
    return all(instance.get_run_by_id(i).status == DagsterRunStatus.FAILURE for i in run_ids)


def run_round(
    cluster: Cluster, instance: DagsterInstance, zombie_host: Host, partitions: list[int], seed: int
) -> list[Sent]:
    """One round: a zombie and a replacement per partition; asserts the zombies committed nothing.

    Returns what was produced (the oracle's truth).
    """
    settings = cluster.settings
    before = {r.dagster_run.run_id for r in runs_of(instance, INGEST_JOB)}
    truth: list[Sent] = []
    for p in partitions:
        truth += produce(settings, generated(RECORDS, seed=seed + p), partition=p)
    target = {p: end + RECORDS for p, end in committed_ends(settings, max(partitions) + 1).items()}
    target = {p: target[p] for p in partitions}
    hosts = list(cluster.hosts)

    def frozen() -> dict[str, int]:
        return frozen_runs(instance, before, stopped(zombie_host))

    wait_until("every zombie to freeze", lambda: len(frozen()) == len(partitions), 300, hosts)
    zombie_host.freeze()  # the whole machine: its Celery worker cannot be told anything either
    phase("frozen")
    frozen_now = frozen()
    zombie_runs, zombies = list(frozen_now), list(frozen_now.values())
    assert len(zombie_runs) == len(partitions), frozen_now
    wait_until(
        "run monitoring to give the frozen runs up",
        lambda: all_failed(instance, zombie_runs),
        180,
        hosts,
    )
    phase("given up")
    healthy = cluster.start_worker(f"worker-b{seed}", concurrency=2)
    wait_until("the replacements to commit", caught_up(settings, target), 180, [*hosts, healthy])
    after_replacements = committed_state(settings)
    phase("replaced")

    for pid in zombies:  # the zombies wake first, so each reaches its commit
        os.kill(pid, signal.SIGCONT)
    wait_until(
        "every zombie's run to fail its step",
        lambda: all(failure_text(instance, run_id) for run_id in zombie_runs),
        180,
        hosts,
    )
    for pid in zombies:
        wait_dead(pid, timeout=120)  # done, left for the frozen host to reap
    phase("zombies done")
    assert committed_state(settings) == after_replacements, "a zombie changed the committed lake"
    zombie_host.thaw()
    for run_id in zombie_runs:
        text = failure_text(instance, run_id)
        assert "FencingError" in text and "committed nothing" in text, f"{run_id}: {text!r}"
    healthy.stop()
    cluster.hosts.remove(healthy)
    return truth


def test_a_frozen_worker_host_commits_nothing_after_its_replacement(
    make_cluster: Callable[..., Cluster],
) -> None:
    per_round = min(TRIALS, ROUND)
    cluster = make_cluster(partitions=per_round, monitoring=monitoring(per_round))
    settings = cluster.settings
    # Two slots more than the round's runs, for the schedules' and the automation sensor's runs.
    zombie_host = cluster.start_worker(
        "worker-a",
        concurrency=per_round + 2,
        PIPELINE_FAULT_POINT="KC",
        PIPELINE_FAULT_ACTION="stop",
    )
    # Only the sensor's ingest runs may reach the kill point: no DLQ reprocessing in this test.
    cluster.start_control(PIPELINE_DLQ_REPROCESS_CRON="0 0 1 1 *")
    cluster.wait_ready(zombie_host)
    phase("worker ready")
    done, truth = 0, []
    with cluster.observer() as instance:
        for number in range(math.ceil(TRIALS / per_round)):
            count = min(per_round, TRIALS - done)
            truth += run_round(cluster, instance, zombie_host, list(range(count)), 100 * number)
            done += count
            print(f"zombie trials: {done}/{TRIALS} fenced")
    phase("rounds")
    oracle.check(settings, truth).assert_ok()
    phase("oracle")
    reconcile = subprocess.run(
        [PYTHON, "-m", "pipeline_project.cli", "reconcile"],
        env=env_for(settings),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert reconcile.returncode == 0, reconcile.stdout[-2000:] + reconcile.stderr[-2000:]
