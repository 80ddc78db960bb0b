"""Job `reprocess_dlq` over dlq.reprocess, and its schedule.

Thin: the op runs dlq.reprocess.reprocess and turns its result into `events` materializations and a
DLQ observation. The schedule follows PIPELINE_DLQ_REPROCESS_CRON, read when it ticks (see
`reprocess_dlq_schedule`). No postponed annotations: Dagster reads the parameters' annotations.
"""

from datetime import UTC, datetime

from croniter import croniter
from dagster import (
    AssetMaterialization,
    AssetObservation,
    DefaultScheduleStatus,
    MetadataValue,
    OpExecutionContext,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    in_process_executor,
    job,
    op,
    schedule,
)

from pipeline_project.defs.ingest.assets import DLQ_KEY, EVENTS_KEY
from pipeline_project.defs.resources import PipelineSettings
from pipeline_project.defs.tags import BACKGROUND_TAGS, JOB_TAG
from pipeline_project.dlq.reprocess import ReprocessResult
from pipeline_project.dlq.reprocess import reprocess as reprocess_core
from pipeline_project.errors import SettingsError

REPROCESS_JOB = "reprocess_dlq"


@op(
    description="Repair and re-validate failed records from the DLQ; recovered ones go to the lake."
)
def reprocess(context: OpExecutionContext, settings: PipelineSettings) -> None:
    """One reprocessing pass; a bad setting fails the run with its one line."""
    resolved = settings.for_background_run(context.log)
    result = reprocess_core(resolved, run_id=context.run_id, log=context.log)
    for event in reprocess_events(result):
        context.log_event(event)
    context.log.info(result.summary())


def reprocess_events(result: ReprocessResult) -> list[AssetMaterialization | AssetObservation]:
    """An `events` materialization per day rows were recovered into; the outcome counts.

    A day names the Delta commits (versions) and DLQ ranges that wrote it, as ingest runs do.
    """
    events: list[AssetMaterialization | AssetObservation] = [
        AssetMaterialization(
            asset_key=EVENTS_KEY,
            partition=day.isoformat(),
            metadata={
                "rows_recovered": MetadataValue.int(stats.rows),
                "commits": MetadataValue.int(len(stats.ranges)),
                "delta_versions": MetadataValue.json(stats.versions),
                "dlq_ranges": MetadataValue.json(stats.ranges),
            },
        )
        for day, stats in sorted(result.lake.days().items())
    ]
    counts = result.counts()
    if any(counts.values()):
        metadata = {name: MetadataValue.int(n) for name, n in counts.items()}
        events.append(AssetObservation(asset_key=DLQ_KEY, metadata=metadata))
    return events


@job(
    name=REPROCESS_JOB,
    executor_def=in_process_executor,
    tags={JOB_TAG: REPROCESS_JOB, **BACKGROUND_TAGS},
    description="DLQ ranges through the lake protocol: repaired records land once, the rest retry "
    "with attempt + 1 and are parked after PIPELINE_DLQ_MAX_ATTEMPTS.",
)
def reprocess_dlq() -> None:
    reprocess()


@schedule(
    name="reprocess_dlq_schedule",
    job=reprocess_dlq,
    cron_schedule="* * * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Launches reprocess_dlq when PIPELINE_DLQ_REPROCESS_CRON is due (hourly by "
    "default); it ticks every minute because the cron is a setting, read at the tick.",
)
def reprocess_dlq_schedule(
    context: ScheduleEvaluationContext, settings: PipelineSettings
) -> RunRequest | SkipReason:
    """A run when this minute matches the configured cron, else a skip that says when.

    Dagster fixes a schedule's cron when the code location loads, and nothing reads the
    environment then; so the schedule ticks each minute and asks the setting. The run key is the
    minute, so a re-evaluated tick never launches twice.
    """
    try:
        cron = settings.resolve().dlq_reprocess_cron
    except SettingsError as exc:
        return SkipReason(f"bad setting: {exc}")
    minute = (context.scheduled_execution_time or datetime.now(UTC)).replace(
        second=0, microsecond=0
    )
    if not croniter.match(cron, minute):
        upcoming = croniter(cron, minute).get_next(datetime)
        return SkipReason(f"PIPELINE_DLQ_REPROCESS_CRON={cron!r}: next run at {upcoming:%H:%M} UTC")
    return RunRequest(run_key=minute.isoformat())
