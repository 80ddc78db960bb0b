"""Dagster over dlq/: the `dlq_report` asset and its checks, job `reprocess_dlq`, their schedules.

Thin: the report is dlq.report.build, the job dlq.reprocess.reprocess; this module only turns their
results into materializations, metadata and check results. No postponed annotations: Dagster
reads the `context` annotation at import time.
"""

from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    DefaultScheduleStatus,
    MaterializeResult,
    MetadataValue,
    OpExecutionContext,
    ScheduleDefinition,
    asset,
    define_asset_job,
    in_process_executor,
    job,
    op,
)

from pipeline_project.defs.assets import DLQ_KEY, EVENTS_KEY
from pipeline_project.defs.jobs import JOB_TAG
from pipeline_project.dlq import report as dlq_report_core
from pipeline_project.dlq.reprocess import ReprocessResult
from pipeline_project.dlq.reprocess import reprocess as reprocess_core
from pipeline_project.settings import Settings

DLQ_REPORT_KEY = AssetKey(["dlq_report"])
REPROCESS_JOB = "reprocess_dlq"
REPORT_CRON = "*/10 * * * *"
_SEVERITY = {"warn": AssetCheckSeverity.WARN, "error": AssetCheckSeverity.ERROR}
_CHECKS = {
    dlq_report_core.RATE_CHECK: "DLQ records / consumed records over the recent window are under "
    "PIPELINE_HEALTH_MAX_DLQ_RATE (window PIPELINE_HEALTH_WINDOW_SECONDS).",
    dlq_report_core.CATEGORY_CHECK: "Every failed record's category is one of the contract's "
    "error categories.",
    dlq_report_core.AGE_CHECK: "The oldest record no reprocessing resolved arrived less than "
    "PIPELINE_DLQ_MAX_UNRESOLVED_AGE_HOURS ago.",
}


@asset(
    key=DLQ_REPORT_KEY,
    deps=[DLQ_KEY],
    group_name="dlq",
    kinds={"kafka", "delta", "polars"},
    check_specs=[
        AssetCheckSpec(n, asset=DLQ_REPORT_KEY, description=d) for n, d in _CHECKS.items()
    ],
    description=(
        "What failed and why, once per failed source record, and what reprocessing made of it "
        "(recovered / filtered / parked / failing); Delta tables dlq_report_records and "
        "dlq_report_summary (and the log of DLQ records read, dlq_report_log) beside events."
    ),
)
def dlq_report(context: AssetExecutionContext) -> MaterializeResult:
    """Reads the DLQ since the last materialization and rewrites the report."""
    found = dlq_report_core.build(Settings.from_env())
    context.log.info(
        "%d failed source records, %d new DLQ records", found.records.height, found.new_records
    )
    return MaterializeResult(
        metadata=report_metadata(found),
        check_results=[
            AssetCheckResult(
                check_name=c.name,
                passed=c.passed,
                severity=_SEVERITY[c.severity],
                description=c.description,
                metadata={k: _metadata_value(v) for k, v in c.metadata.items()},
            )
            for c in found.checks
        ],
    )


def report_metadata(found: dlq_report_core.Report) -> dict[str, Any]:
    """Counts with stable names (the UI plots them), breakdowns as JSON, the summary as Markdown."""
    status = found.counts("status")
    metadata: dict[str, Any] = {
        "failed_records": MetadataValue.int(found.records.height),
        "dlq_records": MetadataValue.int(found.dlq_records),
        "new_dlq_records": MetadataValue.int(found.new_records),
        "malformed_records": MetadataValue.int(found.malformed),
        **{s: MetadataValue.int(status.get(s, 0)) for s in _STATUSES},
    }
    for dimension in ("category", "rule", "field", "stage", "source_partition", "hour"):
        metadata[f"by_{dimension}"] = MetadataValue.json(found.counts(dimension))
    metadata["top_errors"] = MetadataValue.json(
        [{"category": c, "message": m, "records": n} for c, m, n in found.top_messages()]
    )
    metadata["waiting_schema_versions"] = MetadataValue.json(found.waiting_versions())
    metadata["new_categories"] = MetadataValue.json(found.new_categories)
    metadata["new_rules"] = MetadataValue.json(found.new_rules)
    metadata["samples"] = MetadataValue.json(found.samples())
    metadata["summary"] = MetadataValue.md(dlq_report_core.markdown(found))
    for name, uri in found.tables.items():
        metadata[f"{name}_table"] = MetadataValue.path(uri)
        version = found.versions.get(name)
        metadata[f"{name}_version"] = MetadataValue.int(-1 if version is None else version)
    return metadata


_STATUSES = ("recovered", "filtered", "parked", dlq_report_core.FAILING)


def _metadata_value(value: Any) -> Any:
    return MetadataValue.json(value) if isinstance(value, dict | list) else value


@op(
    description="Repair and re-validate failed records from the DLQ; recovered ones go to the lake."
)
def reprocess(context: OpExecutionContext) -> None:
    result = reprocess_core(Settings.from_env(), run_id=context.run_id, log=context.log)
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
    tags={JOB_TAG: REPROCESS_JOB},
    description="DLQ ranges through the lake protocol: repaired records land once, the rest retry "
    "with attempt + 1 and are parked after PIPELINE_DLQ_MAX_ATTEMPTS.",
)
def reprocess_dlq() -> None:
    reprocess()


reprocess_dlq_schedule = ScheduleDefinition(
    name="reprocess_dlq_schedule",
    job=reprocess_dlq,
    cron_schedule=Settings.from_env().dlq_reprocess_cron,
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Reprocesses the DLQ (PIPELINE_DLQ_REPROCESS_CRON, hourly by default).",
)
dlq_report_job = define_asset_job(
    "dlq_report_job",
    selection=[DLQ_REPORT_KEY],
    executor_def=in_process_executor,
    description="Refreshes the DLQ report and its checks.",
)
dlq_report_schedule = ScheduleDefinition(
    name="dlq_report_schedule",
    job=dlq_report_job,
    cron_schedule=REPORT_CRON,
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Refreshes the DLQ report every ten minutes.",
)
