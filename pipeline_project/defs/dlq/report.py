"""The `dlq_report` asset and its checks, its job and schedule.

Thin: the report is dlq.report.build; this module only turns its result into a materialization,
metadata and check results. No postponed annotations: Dagster reads the parameters' annotations.
"""

from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    DefaultScheduleStatus,
    MaterializeResult,
    MetadataValue,
    ScheduleDefinition,
    asset,
    define_asset_job,
    in_process_executor,
)

from pipeline_project.defs.ingest.assets import DLQ_KEY
from pipeline_project.defs.resources import PipelineSettings
from pipeline_project.defs.tags import BACKGROUND_TAGS
from pipeline_project.dlq import report as dlq_report_core

DLQ_REPORT_KEY = AssetKey(["dlq_report"])
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
def dlq_report(context: AssetExecutionContext, settings: PipelineSettings) -> MaterializeResult:
    """Reads the DLQ since the last materialization and rewrites the report."""
    found = dlq_report_core.build(settings.for_background_run(context.log))
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


dlq_report_job = define_asset_job(
    "dlq_report_job",
    selection=[DLQ_REPORT_KEY],
    executor_def=in_process_executor,
    tags=BACKGROUND_TAGS,
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
