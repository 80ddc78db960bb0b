"""Asset checks on `events`: the accounting identity, re-proved over the whole ledger on demand.

Every ingest run also reports this check for its own ranges; running it from the UI re-checks
everything committed so far with the same code as `pipeline-project reconcile`.
"""

from dagster import AssetCheckResult, MetadataValue, asset_check

from pipeline_project.batch.reconcile import reconcile, render_table
from pipeline_project.defs.ingest.assets import EVENTS_KEY
from pipeline_project.defs.ingest.job import ACCOUNTING_CHECK
from pipeline_project.defs.resources import PipelineSettings


@asset_check(
    asset=EVENTS_KEY,
    name=ACCOUNTING_CHECK,
    description="consumed offsets = rows written + DLQ + filtered, for every committed range.",
)
def accounting_identity(settings: PipelineSettings) -> AssetCheckResult:
    """The same proof as `pipeline-project reconcile`, its table as the check's metadata."""
    report = reconcile(settings.for_run())
    return AssetCheckResult(
        passed=report.ok,
        metadata={"report": MetadataValue.md(f"```\n{render_table(report)}\n```")},
    )
