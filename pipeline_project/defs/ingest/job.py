"""Job ingest_events: one op over the core's run protocol, reporting what it committed to Dagster.

With no config it drains every partition from its last commit to the high watermark seen at start;
with `ranges` it runs exactly those (the sensor's way). Each UTC day written becomes a
materialization of the `events` partition, and the accounting identity of the run is reported as an
asset check.
"""

from dagster import (
    AssetCheckEvaluation,
    AssetMaterialization,
    Config,
    DagsterInstance,
    MetadataValue,
    OpExecutionContext,
    in_process_executor,
    job,
    op,
)

from pipeline_project.batch import run as protocol
from pipeline_project.batch.ranges import Range
from pipeline_project.batch.run import IngestResult
from pipeline_project.defs.ingest.assets import DLQ_KEY, EVENTS_KEY
from pipeline_project.defs.resources import PipelineSettings
from pipeline_project.defs.tags import JOB_TAG, WORKER_TAG
from pipeline_project.defs.workers import this_worker

ACCOUNTING_CHECK = "accounting_identity"


class RangeConfig(Config):
    """One exact offset range [start, end) of a raw-topic partition."""

    partition: int
    start: int
    end: int
    epoch: int = 0  # the lake's epoch of the topic (`topic new-epoch`)


class IngestConfig(Config):
    """Ranges to ingest; empty means every partition up to the high watermark seen at start.

    `after_run`: the run whose ranges end where these begin (the sensor starts a partition's next
    run while the last one works); each range waits for that run's commit before it is read.
    """

    ranges: list[RangeConfig] = []
    after_run: str = ""


# How long a successor run waits for the run before it, at most, while that run is alive.
PREDECESSOR_WAIT_SECONDS = 900.0


def range_run_config(ranges: list[Range], after_run: str = "") -> dict:
    """Run config that makes ingest_events run exactly `ranges` (after the run `after_run`)."""
    cfg = [
        {
            "partition": r.partition,
            "start": r.start,
            "end": r.end,
            **({"epoch": r.epoch} if r.epoch else {}),
        }
        for r in ranges
    ]
    config: dict = {"ranges": cfg, **({"after_run": after_run} if after_run else {})}
    return {"ops": {"ingest": {"config": config}}}


def predecessor(instance: DagsterInstance, run_id: str) -> protocol.Predecessor | None:
    """The run this one follows, as the protocol waits for it (None: it follows no run)."""
    if not run_id:
        return None

    def running() -> bool:
        run = instance.get_run_by_id(run_id)
        return run is not None and not run.is_finished

    return protocol.Predecessor(run_id, running, PREDECESSOR_WAIT_SECONDS)


@op(description="Drain exact offset ranges, validate, transform, write daily Parquet, DLQ, commit.")
def ingest(context: OpExecutionContext, config: IngestConfig, settings: PipelineSettings) -> None:
    """Runs the protocol; a bad setting fails the run with one line before anything is read."""
    context.instance.add_run_tags(context.run_id, {WORKER_TAG: this_worker()})
    resolved = settings.for_run()
    topic = resolved.raw_topic
    ranges = [Range(topic, r.partition, r.start, r.end, r.epoch) for r in config.ranges] or None
    result = IngestResult(run_id=context.run_id)
    try:
        after = predecessor(context.instance, config.after_run)
        protocol.ingest(resolved, ranges, log=context.log, result=result, after=after)
    except BaseException:
        # A failed range or a termination (Dagster raises an interrupt inside the op) must not hide
        # the ranges that committed before it: `sessions` reacts to these materializations. Nothing
        # to settle after an interrupt: a range is one Delta commit or nothing (docs/lake.md).
        if result.committed:
            report(context, result)
        raise
    report(context, result)


def report(context: OpExecutionContext, result: IngestResult) -> None:
    """Logs the run's `events` (and DLQ) materializations and its accounting check."""
    for event in materializations(result):
        context.log_event(event)
    context.log_event(accounting_check(result))
    context.log.info(result.summary())


def materializations(result: IngestResult) -> list[AssetMaterialization]:
    """One `events` materialization per day written, plus one for the DLQ if it got records."""
    events = []
    for day, stats in sorted(result.days().items()):
        events.append(
            AssetMaterialization(
                asset_key=EVENTS_KEY,
                partition=day.isoformat(),
                metadata={
                    "rows": MetadataValue.int(stats.rows),
                    "commits": MetadataValue.int(len(stats.ranges)),
                    "delta_versions": MetadataValue.json(stats.versions),
                    "offset_ranges": MetadataValue.json(stats.ranges),
                    **result.run_metadata(),
                },
            )
        )
    if result.dlq_count:
        events.append(
            AssetMaterialization(
                asset_key=DLQ_KEY,
                metadata={
                    "records": MetadataValue.int(result.dlq_count),
                    "by_category": MetadataValue.json(result.dlq_by_category()),
                },
            )
        )
    return events


def accounting_check(result: IngestResult) -> AssetCheckEvaluation:
    """Consumed = written + DLQ + filtered for every range the run committed."""
    return AssetCheckEvaluation(
        asset_key=EVENTS_KEY,
        check_name=ACCOUNTING_CHECK,
        passed=result.accounting_ok(),
        metadata={
            "consumed": MetadataValue.int(result.records),
            "written": MetadataValue.int(result.written),
            "dlq": MetadataValue.int(result.dlq_count),
            "filtered": MetadataValue.int(sum(result.filtered().values())),
            "ranges": MetadataValue.json([o.range.range_id for o in result.outcomes]),
        },
        description="Every consumed record is in the lake, the DLQ or counted as filtered.",
    )


@job(
    executor_def=in_process_executor,
    tags={JOB_TAG: "ingest_events"},
    description="Micro-batch: raw-events offset ranges into daily Parquet, exactly once.",
)
def ingest_events() -> None:
    ingest()
