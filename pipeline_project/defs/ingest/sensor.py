"""kafka_backlog_sensor: ingest runs for the partitions whose backlog is big enough or old enough.

One run per partition by default; PIPELINE_PARTITIONS_PER_RUN=N puts the ranges of up to N
partitions in one run, which then reads each range while the last one is written, and a busy
machine starts fewer run processes (each costs Dagster's start-up, seconds of CPU).

While a run works, its partitions' next run (a successor) is launched at once, planned from where
the working run's ranges end: it starts its process meanwhile and waits for that run's commit
(batch/run.Predecessor), so no sensor tick and no run start-up lie between two runs of a partition.

Thin over batch.backlog (watermark and metadata calls only, never a poll), so a tick stays far
inside Dagster's 60 s limit. The run_key is the range ids, so a re-evaluated tick never launches a
range twice; a failed run's key is retried with an attempt suffix, because Dagster blocks a used key
for ever.
"""

import json
import time
from dataclasses import replace

from dagster import (
    DagsterRun,
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
from pipeline_project.batch.plan import PartitionState, plan_ranges
from pipeline_project.batch.ranges import Range, parse_range_id
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


# A run that has a process (it may be working): the next run of its partitions may start beside it.
LAUNCHED = {DagsterRunStatus.STARTING, DagsterRunStatus.STARTED}


def _unfinished_runs(context: SensorEvaluationContext, topic: str) -> dict[str, list[DagsterRun]]:
    """Ingest runs not finished yet, by partition tag (queued runs count; dead ones fail)."""
    runs = context.instance.get_runs(
        filters=RunsFilter(job_name=ingest_events.name, statuses=UNFINISHED),
        limit=200,
    )
    by_tag: dict[str, list[DagsterRun]] = {}
    for run in fail_dead_runs(context.instance, list(runs)):
        for tag in run.tags.get(PARTITION_TAG, "").split():
            if tag.startswith(topic):
                by_tag.setdefault(tag, []).append(run)
    return by_tag


def _planned_end(run: DagsterRun, tag: str) -> int | None:
    """Where `run`'s range of the partition `tag` ends (its range tag), None if it names none."""
    for range_id in run.tags.get(RANGE_TAG, "").split():
        rng = parse_range_id(range_id)
        if rng is not None and partition_tag(rng.topic, rng.partition) == tag:
            return rng.end
    return None


def _successor_starts(
    unfinished: dict[str, list[DagsterRun]],
) -> tuple[dict[str, tuple[int, str]], set[str]]:
    """Partitions whose next run may start now, behind the one run working on them.

    Returns (tag → (start, predecessor run id), busy tags). A partition with one launched run and
    nothing queued gets a successor: it starts its process while that run works and waits for its
    commit (batch/run.Predecessor). Any other unfinished run makes the partition busy, so a
    partition has at most two runs: the one that writes and the one that will. A run queued
    for a slot means the slots are taken: no successor then, they would only take more.
    """
    queued = any(run.status not in LAUNCHED for runs in unfinished.values() for run in runs)
    starts: dict[str, tuple[int, str]] = {}
    busy: set[str] = set()
    for tag, runs in unfinished.items():
        only = runs[0] if len(runs) == 1 else None
        end = _planned_end(only, tag) if only is not None and only.status in LAUNCHED else None
        if end is None or queued:
            busy.add(tag)
        else:
            starts[tag] = (end, only.run_id)
    return starts, busy


def _after(state: PartitionState, successor: tuple[int, str] | None) -> PartitionState:
    """The partition as its successor run plans it: from where the working run's range ends."""
    if successor is None:
        return state
    return replace(state, committed_end=successor[0])


def run_request(
    context: SensorEvaluationContext, ranges: list[Range], after_run: str = ""
) -> RunRequest:
    """One run for these ranges (one per partition), tagged with every partition it holds.

    Tag values list the partitions and ranges, space-separated (one item for one partition), so the
    run queue's per-value limit keeps runs of one partition apart and the busy check sees each.
    `after_run`: the run these ranges follow (a successor run).
    """
    ranges_tag = " ".join(r.range_id for r in ranges)
    attempt = _failed_attempts(context, ranges_tag)
    return RunRequest(
        run_key=ranges_tag if attempt == 0 else f"{ranges_tag}#retry{attempt}",
        run_config=range_run_config(ranges, after_run),
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
    successors, busy = _successor_starts(_unfinished_runs(context, settings.raw_topic))
    try:
        states = [
            _after(state, successors.get(partition_tag(settings.raw_topic, state.partition)))
            for state in partition_states(settings)
        ]
    except TopicChangedError as exc:
        return SkipReason(f"STOPPED: {exc}")
    except PipelineError as exc:
        return SkipReason(f"cannot read Kafka: {exc}")
    plan = plan_ranges(settings.raw_topic, states, settings.max_range_events)
    ready, reasons, seen = [], [], {}
    following: dict[str, list[Range]] = {}  # predecessor run id → its successor's ranges
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
        if tag in successors:
            following.setdefault(successors[tag][1], []).append(rng)
        else:
            ready.append(rng)
    size = settings.partitions_per_run
    groups = [ready[i : i + size] for i in range(0, len(ready), size)]
    requests = [run_request(context, group) for group in groups]
    requests += [run_request(context, group, after) for after, group in following.items()]
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
