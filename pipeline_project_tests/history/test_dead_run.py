"""Case 5 of issue 21: a killed `dagster job execute` must not leave its partition busy for ever.

The run is frozen after its drain (kill point K1, SIGSTOP), then SIGKILLed: Dagster still shows
it STARTED. The sensor's next tick marks it failed (its worker process is gone) and plans that
partition again; the next run commits the range and reconcile passes.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
    SensorResult,
    build_sensor_context,
)

from pipeline_project.batch.run import ingest
from pipeline_project.defs.ingest.sensor import kafka_backlog_sensor
from pipeline_project.defs.tags import WORKER_TAG
from pipeline_project.settings import Settings
from pipeline_project_tests.faults.fault_support import Driver, generated, process_state, produce
from pipeline_project_tests.history.history_support import reconcile
from pipeline_project_tests.ingest_support import dagster_resources
from pipeline_project_tests.shutdown.test_interrupted_run import dagster_execute
from pipeline_project_tests.support import env_for


def test_a_killed_run_is_marked_failed_and_its_partition_planned_again(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    settings = kafka_settings
    produce(settings, generated(50, seed=13), partition=0)
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = env_for(
        settings, DAGSTER_HOME=str(home), PIPELINE_FAULT_POINT="K1", PIPELINE_FAULT_ACTION="stop"
    )
    run = Driver(dagster_execute(env))
    run.wait_stopped(timeout=120)
    os.kill(run.pid, signal.SIGKILL)
    run.proc.wait(timeout=30)
    assert process_state(run.pid) == ""

    resources = dagster_resources(settings, min_backlog_events=1)
    with DagsterInstance.from_config(str(home)) as instance:
        (stuck,) = instance.get_runs(RunsFilter(job_name="ingest_events"))
        assert stuck.status == DagsterRunStatus.STARTED  # for ever, before
        assert stuck.tags[WORKER_TAG].split(":")[1] == str(run.pid)
        tick = kafka_backlog_sensor(build_sensor_context(instance=instance, resources=resources))
        assert isinstance(tick, SensorResult)
        assert [r.tags["pipeline/partition"] for r in tick.run_requests] == [
            f"{settings.raw_topic}-0"
        ]
        failed = instance.get_run_by_id(stuck.run_id)
        assert failed is not None and failed.status == DagsterRunStatus.FAILURE

    assert ingest(settings).records == 50
    code, report = reconcile(settings)
    assert code == 0, report["problems"]
