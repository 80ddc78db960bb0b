"""kafka_backlog_sensor: ingest runs for the partitions whose backlog is big enough or old enough.

One run per partition by default; PIPELINE_PARTITIONS_PER_RUN=N puts the ranges of up to N
partitions in one run, which then reads each range while the last one is written, and a busy
machine starts fewer run processes (each costs Dagster's start-up, seconds of CPU).

Thin over batch.backlog (watermark and metadata calls only, never a poll), so a tick stays far
inside Dagster's 60 s limit. The run_key is the range ids, so a re-evaluated tick never launches a
range twice; a failed run's key is retried with an attempt suffix, because Dagster blocks a used key
for ever.
"""

import json
import time

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from pipeline_project.batch.backlog import partition_states
from pipeline_project.batch.plan import plan_ranges
from pipeline_project.batch.ranges import Range
from pipeline_project.defs.ingest.job import ingest_events, range_run_config
from pipeline_project.defs.resources import PipelineSettings
from pipeline_project.defs.tags import PARTITION_TAG, RANGE_TAG
from pipeline_project.defs.workers import fail_dead_runs
from pipeline_project.errors import PipelineError, SettingsError, TopicChangedError
from pipeline_project.settings import Settings

# Queued and in-flight runs: a partition with one of these is busy (the run queue and the partition
# lock allow one run per partition; planning a second range now would only fail on the lock).
# Dagster's own list of unfinished statuses, which it does not export.
UNFINISHED = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.SUSPENDED,
    DagsterRunStatus.CANCELING,
]


def _busy_partitions(context: SensorEvaluationContext, topic: str) -> set[str]:
    """Partition tags of ingest runs not finished yet (queued runs count; dead ones fail)."""
    runs = context.instance.get_runs(
        filters=RunsFilter(job_name=ingest_events.name, statuses=UNFINISHED),
        limit=200,
    )
    runs = fail_dead_runs(context.instance, list(runs))
    return {
        tag
        for run in runs
        for tag in run.tags.get(PARTITION_TAG, "").split()
        if tag.startswith(topic)
    }


def run_request(context: SensorEvaluationContext, ranges: list[Range]) -> RunRequest:
    """One run for these ranges (one per partition), tagged with every partition it holds.

    Tag values list the partitions and ranges, space-separated (one item for one partition), so the
    run queue's per-value limit keeps two runs of one partition apart and the busy check sees each.
    """
    ranges_tag = " ".join(r.range_id for r in ranges)
    attempt = _failed_attempts(context, ranges_tag)
    return RunRequest(
        run_key=ranges_tag if attempt == 0 else f"{ranges_tag}#retry{attempt}",
        run_config=range_run_config(ranges),
        tags={
            PARTITION_TAG: " ".join(partition_tag(r.topic, r.partition) for r in ranges),
            RANGE_TAG: ranges_tag,
        },
    )


def _failed_attempts(context: SensorEvaluationContext, ranges_tag: str) -> int:
    runs = context.instance.get_runs(
        filters=RunsFilter(
            tags={RANGE_TAG: ranges_tag},
            statuses=[DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED],
        ),
        limit=100,
    )
    return len(runs)


def partition_tag(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


def evaluate_backlog(
    context: SensorEvaluationContext, settings: Settings
) -> SensorResult | SkipReason:
    """The sensor body: plan, skip busy partitions, trigger on size or age, keep first-seen."""
    cursor = json.loads(context.cursor) if context.cursor else {}
    first_seen: dict[str, float] = cursor.get("first_seen", {})
    now = time.time()
    try:
        plan = plan_ranges(
            settings.raw_topic, partition_states(settings), settings.max_range_events
        )
    except TopicChangedError as exc:
        return SkipReason(f"STOPPED: {exc}")
    except PipelineError as exc:
        return SkipReason(f"cannot read Kafka: {exc}")
    busy = _busy_partitions(context, settings.raw_topic)
    ready, reasons, seen = [], [], {}
    for rng in plan.ranges:
        tag = partition_tag(rng.topic, rng.partition)
        if tag in busy:
            reasons.append(f"{tag} busy")
            seen[tag] = first_seen.get(tag, now)
            continue
        since = first_seen.get(tag, now)
        if rng.size < settings.min_backlog_events and now - since < settings.max_wait_seconds:
            seen[tag] = since
            reasons.append(
                f"{tag} backlog {rng.size} < {settings.min_backlog_events}, "
                f"waiting {now - since:.0f}/{settings.max_wait_seconds:.0f} s"
            )
            continue
        ready.append(rng)
    size = settings.partitions_per_run
    groups = [ready[i : i + size] for i in range(0, len(ready), size)]
    requests = [run_request(context, group) for group in groups]
    for lost in plan.lost:
        reasons.append(f"DATA LOSS: {lost.range_id} deleted by retention before ingestion")
    new_cursor = json.dumps({"first_seen": seen, "last_tick": now}, sort_keys=True)
    if requests:
        return SensorResult(run_requests=requests, cursor=new_cursor)
    context.update_cursor(new_cursor)
    return SkipReason(
        "; ".join(reasons) if reasons else "nothing new: every partition is caught up"
    )


# Seconds between ticks: a tick is a few watermark and instance queries, and the wait for the next
# tick is part of every event's freshness.
TICK_SECONDS = 5


@sensor(
    job=ingest_events,
    minimum_interval_seconds=TICK_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
)
def kafka_backlog_sensor(
    context: SensorEvaluationContext, settings: PipelineSettings
) -> SensorResult | SkipReason:
    """Launches an ingest run per partition whose backlog is big enough or waited long enough.

    A malformed setting skips the tick with its one line; the code location stays loaded.
    """
    try:
        resolved = settings.resolve()
    except SettingsError as exc:
        return SkipReason(f"bad setting: {exc}")
    return evaluate_backlog(context, resolved)
