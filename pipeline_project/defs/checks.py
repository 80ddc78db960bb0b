"""Asset checks on `events`: the accounting identity, re-proved over the whole ledger on demand.

Every ingest run also reports this check for its own ranges; running it from the UI re-checks
everything committed so far with the same code as `pipeline-project reconcile`.
"""

from __future__ import annotations

from dagster import AssetCheckResult, MetadataValue, asset_check

from pipeline_project.batch.reconcile import reconcile
from pipeline_project.defs.assets import events_spec
from pipeline_project.defs.jobs import ACCOUNTING_CHECK
from pipeline_project.settings import Settings


@asset_check(
    asset=events_spec.key,
    name=ACCOUNTING_CHECK,
    description="consumed offsets = rows written + DLQ + filtered, for every committed range.",
)
def accounting_identity() -> AssetCheckResult:
    report = reconcile(Settings.from_env())
    return AssetCheckResult(
        passed=report.ok,
        metadata={"report": MetadataValue.md(f"```\n{report_table(report)}\n```")},
    )


def report_table(report) -> str:
    from pipeline_project.batch.reconcile import render_table

    return render_table(report)
