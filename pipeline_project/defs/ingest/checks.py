"""Asset checks on `events`: the accounting identity, re-proved over the whole table on demand.

Every ingest run also reports this check for its own ranges; running it from the UI re-checks
everything committed so far with the same code as `pipeline-project reconcile` (lake.audit: the
Delta log's range records against the table's rows).
"""

from dagster import AssetCheckResult, MetadataValue, asset_check

from pipeline_project.defs.ingest.assets import EVENTS_KEY
from pipeline_project.defs.ingest.job import ACCOUNTING_CHECK
from pipeline_project.defs.resources import PipelineSettings
from pipeline_project.lake.audit import audit, render
from pipeline_project.lake.location import lake_of


@asset_check(
    asset=EVENTS_KEY,
    name=ACCOUNTING_CHECK,
    description="consumed offsets = rows written + DLQ + filtered, for every committed range.",
)
def accounting_identity(settings: PipelineSettings) -> AssetCheckResult:
    """The same proof as `pipeline-project reconcile`, its table as the check's metadata."""
    report = audit(lake_of(settings.for_background_run()))
    return AssetCheckResult(
        passed=report.ok,
        metadata={
            "report": MetadataValue.md(f"```\n{render(report)}\n```"),
            "delta_version": MetadataValue.int(-1 if report.version is None else report.version),
            "problems": MetadataValue.int(len(report.problems)),
        },
    )
