"""One job and one schedule per upkeep asset; all run in process and carry the `upkeep` tag."""

from dagster import (
    AssetsDefinition,
    DefaultScheduleStatus,
    ScheduleDefinition,
    define_asset_job,
    in_process_executor,
)

from pipeline_project.defs.tags import BACKGROUND_TAGS, JOB_TAG
from pipeline_project.defs.upkeep.assets import events_compaction, lake_retention, lake_vacuum

UPKEEP_TAG_VALUE = "upkeep"
COMPACT_CRON = "17 * * * *"  # hourly, off the hour: ingestion's busiest moments are on it
VACUUM_CRON = "40 3 * * *"  # daily, at night (UTC)
RETENTION_CRON = "10 3 * * *"  # daily, before the vacuum that then frees the expired files


def _scheduled_job(
    asset_def: AssetsDefinition, name: str, cron: str, what: str
) -> ScheduleDefinition:
    """The job `name` materializing `asset_def`, on a schedule that is on from the start."""
    job = define_asset_job(
        name,
        selection=[asset_def.key],
        executor_def=in_process_executor,
        tags={JOB_TAG: UPKEEP_TAG_VALUE, **BACKGROUND_TAGS},
        description=what,
    )
    return ScheduleDefinition(
        name=f"{name}_schedule",
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description=f"{what} ({cron}, UTC)",
    )


compact_schedule = _scheduled_job(
    events_compaction, "compact_events", COMPACT_CRON, "Compacts days of events with small files"
)
vacuum_schedule = _scheduled_job(
    lake_vacuum, "vacuum_lake", VACUUM_CRON, "Vacuums and checkpoints every table of the lake"
)
retention_schedule = _scheduled_job(
    lake_retention,
    "expire_lake_days",
    RETENTION_CRON,
    "Deletes days older than PIPELINE_LAKE_RETENTION_DAYS (nothing while unset)",
)

UPKEEP_ASSETS = (events_compaction, lake_vacuum, lake_retention)
UPKEEP_SCHEDULES = (compact_schedule, vacuum_schedule, retention_schedule)
UPKEEP_JOBS = tuple(schedule.job for schedule in UPKEEP_SCHEDULES)
