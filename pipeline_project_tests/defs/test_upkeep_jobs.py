"""The upkeep jobs of the code location, run in process against a real lake (local disk and S3):
compaction, vacuum + checkpoint and retention, with the metadata the UI plots, and the
`small_files` check on `events`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetSelection,
    DagsterInstance,
    DefaultScheduleStatus,
    evaluate_automation_conditions,
)

from pipeline_project.definitions import build_defs
from pipeline_project.defs.resources import PipelineSettings
from pipeline_project.defs.upkeep.checks import events_small_files
from pipeline_project.lake.audit import audit, render
from pipeline_project.lake.commit import commit_range
from pipeline_project.lake.location import Lake, lake_of
from pipeline_project.lake.stats import table_stats
from pipeline_project.lake.table import open_table
from pipeline_project.lake.upkeep import small_file_days
from pipeline_project.settings import Settings
from pipeline_project_tests.lake.lake_support import processed, read_events, record_of

COMMITS = 20


@pytest.fixture
def upkept(tmp_path: Path, backend: str) -> tuple[Settings, Lake]:
    """A lake whose one day holds COMMITS small files (one per range commit)."""
    settings = Settings(data_dir=tmp_path, lake_uri=backend)
    lake = lake_of(settings)
    for start in range(0, COMMITS * 150, 150):
        rng, batch = processed(start, 150, bad_every=17)
        commit_range(lake, record_of(rng, batch), batch.good)
    return settings, lake


def run_job(resource: PipelineSettings, name: str) -> dict[str, Any]:
    """Runs the job `name` of the code location; the metadata values of its one materialization."""
    with DagsterInstance.ephemeral() as instance:
        result = build_defs(resource).resolve_job_def(name).execute_in_process(instance=instance)
    assert result.success
    (event,) = result.get_asset_materialization_events()
    return {key: value.value for key, value in event.materialization.metadata.items()}


def test_upkeep_jobs_compact_vacuum_and_expire(upkept: tuple[Settings, Lake]) -> None:
    settings, lake = upkept
    resource = PipelineSettings.of(settings)
    rows = table_stats(lake).rows

    check = events_small_files(settings=resource)
    assert check.passed and check.metadata["max_small_files"].value == COMMITS

    compacted = run_job(resource, "compact_events")
    assert (compacted["days_compacted"], compacted["files_before"]) == (1, COMMITS)
    assert compacted["files_after"] == 1 == table_stats(lake).files
    assert compacted["bytes_before"] > 0 and compacted["bytes_after"] > 0
    assert compacted["avg_file_mib_after"] > compacted["avg_file_mib_before"] > 0
    assert compacted["seconds"] > 0
    assert read_events(lake).height == rows == table_stats(lake).rows
    assert audit(lake).ok
    assert run_job(resource, "compact_events")["days_compacted"] == 0  # nothing small left

    swept = run_job(resource, "vacuum_lake")
    assert swept["files_removed"] == 0, "files younger than PIPELINE_VACUUM_RETENTION_HOURS stay"
    assert swept["events_checkpoint_version"] == open_table(lake).version()
    assert swept["retention_hours"] == 168 and "events" in swept["tables"]

    assert run_job(resource, "expire_lake_days") == {"enabled": False}
    expired = run_job(PipelineSettings.of(settings, lake_retention_days=8), "expire_lake_days")
    assert expired["enabled"] and expired["rows_deleted"] == rows and expired["days_deleted"] == 1
    assert read_events(lake).height == 0
    report = audit(lake)
    assert report.ok and report.expired_rows == rows, render(report)


def test_small_file_days_over_a_limit(upkept: tuple[Settings, Lake]) -> None:
    _settings, lake = upkept
    stats = table_stats(lake)
    assert small_file_days(stats, limit=COMMITS - 1) == ["2025-03-01"]
    assert small_file_days(stats, limit=COMMITS) == []


def test_upkeep_schedules_are_on_from_the_start() -> None:
    defs = build_defs()
    for name, cron in [
        ("compact_events_schedule", "17 * * * *"),
        ("vacuum_lake_schedule", "40 3 * * *"),
        ("expire_lake_days_schedule", "10 3 * * *"),
    ]:
        schedule = defs.resolve_schedule_def(name)
        assert schedule.cron_schedule == cron
        assert schedule.default_status == DefaultScheduleStatus.RUNNING
        assert schedule.job.tags == {"pipeline/job": "upkeep", "pipeline/lane": "background"}


def test_the_small_files_check_runs_on_the_automation_sensors_cron(tmp_path: Path) -> None:
    """Requested every 5 minutes by pipeline_automation_sensor, whether or not events changed."""
    located = build_defs(PipelineSettings.of(Settings(data_dir=tmp_path)))
    key = AssetCheckKey(AssetKey("events"), "small_files")
    sensor = located.resolve_sensor_def("pipeline_automation_sensor")
    assert key in sensor.asset_selection.resolve_checks(located.resolve_asset_graph())
    boundary = datetime.now(UTC).replace(second=0, microsecond=0)
    boundary -= timedelta(minutes=boundary.minute % 5)
    cursor = None
    requested = []
    with DagsterInstance.ephemeral() as instance:
        for minutes in (1, 5, 10):
            result = evaluate_automation_conditions(
                located,
                instance,
                asset_selection=AssetSelection.checks(key),
                evaluation_time=boundary + timedelta(minutes=minutes, seconds=10),
                cursor=cursor,
            )
            cursor = result.cursor
            requested.append(sum(r.true_subset.size for r in result.results))
    assert requested == [0, 1, 1]
