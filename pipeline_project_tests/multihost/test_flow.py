"""The demo's flow on the PostgreSQL instance, across hosts: sensor → runs → lake → DLQ report.

A control host (dagster-daemon) and two worker hosts (dagster-celery), each with its own working
directory and DAGSTER_HOME, sharing only Kafka, PostgreSQL, Redis and the lake on versitygw. The
sensor's runs land on whichever worker takes them, both at once; every record is in the lake or
the DLQ exactly once, and the DLQ report (launched through the same queue) counts what failed.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

from dagster import AssetKey

from pipeline_project_tests.faults import oracle
from pipeline_project_tests.faults.fault_support import ends, generated, produce
from pipeline_project_tests.multihost.flow import (
    INGEST_JOB,
    all_finished,
    caught_up,
    finished,
    launch,
    overlapping,
    stopped,
    succeeded,
    wait_until,
)
from pipeline_project_tests.multihost.hosts import Cluster, executed_by, runs_of


def test_sensor_runs_execute_on_two_worker_hosts_into_the_lake_and_the_dlq_report(
    cluster: Cluster,
) -> None:
    settings = cluster.settings
    truth = produce(settings, generated(6000, seed=21, bad_ratio=0.05))
    assert len(ends(truth)) == 4, "the keyed records should reach every partition"
    # Each run freezes once when its range is drained (kill point K1, action "stop"): a worker
    # (one slot) holding a frozen run leaves the next run to the other, so the two run at once
    # however fast a run is.
    workers = [
        cluster.start_worker(name, PIPELINE_FAULT_POINT="K1", PIPELINE_FAULT_ACTION="stop")
        for name in ("worker-a", "worker-b")
    ]
    cluster.wait_ready(*workers)
    control = cluster.start_control()
    hosts = [control, *workers]
    wait_until("a run frozen on each worker", lambda: all(map(stopped, workers)), 240, hosts)

    def thawed_and_caught_up() -> bool:
        for pid in [p for w in workers for p in stopped(w)]:
            os.kill(pid, signal.SIGCONT)
        return caught_up(settings, ends(truth))()

    wait_until("the lake to catch up", thawed_and_caught_up, 240, hosts)

    with cluster.observer() as instance:
        wait_until("the ingest runs to finish", lambda: all_finished(instance, INGEST_JOB), 60)
        runs = runs_of(instance, INGEST_JOB)
        assert all(succeeded(r) for r in runs), [r.dagster_run.status for r in runs]
        by_host = {
            w.name: [r for r in runs if executed_by(r.dagster_run, workers) == w.name]
            for w in workers
        }
        assert sum(len(v) for v in by_host.values()) == len(runs), "a run no worker logged"
        assert all(by_host.values()), f"one worker executed every run: {by_host}"
        assert overlapping(by_host["worker-a"], by_host["worker-b"]), "the workers never overlapped"
        for worker in workers:  # each host's Dagster files stay on that host
            assert (worker.root / "dagster_home").exists()
        report = oracle.check(settings, truth)
        report.assert_ok()

        run_id = launch(control, "dlq_report_job")
        wait_until("the DLQ report run", lambda: finished(instance, run_id), 120, hosts)
        report_run = instance.get_run_record_by_id(run_id)
        assert succeeded(report_run), report_run.dagster_run.status
        assert executed_by(report_run.dagster_run, workers) is not None
        event = instance.get_latest_materialization_event(AssetKey("dlq_report"))
        meta = event.asset_materialization.metadata
    bad = Counter(s.verdict[4:] for s in truth if s.verdict.startswith("bad:"))
    assert meta["failed_records"].value == bad.total() > 0
    assert meta["by_category"].data == dict(bad)
    oracle.assert_rerun_is_noop(settings)
