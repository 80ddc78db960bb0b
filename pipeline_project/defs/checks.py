"""Asset checks on `events`: the accounting identity, re-proved over the whole table on demand.

Every ingest run also reports this check for its own ranges; running it from the UI re-checks
everything committed so far with the same code as `pipeline-project reconcile` (lake.audit: the
Delta log's range records against the table's rows).
"""

from __future__ import annotations

from dagster import AssetCheckResult, MetadataValue, asset_check

from pipeline_project.defs.assets import events_spec
from pipeline_project.defs.jobs import ACCOUNTING_CHECK
from pipeline_project.lake.audit import audit, render
from pipeline_project.lake.location import lake_of
from pipeline_project.settings import Settings


@asset_check(
    asset=events_spec.key,
    name=ACCOUNTING_CHECK,
    description="consumed offsets = rows written + DLQ + filtered, for every committed range.",
)
def accounting_identity() -> AssetCheckResult:
    report = audit(lake_of(Settings.from_env()))
    return AssetCheckResult(
        passed=report.ok,
        metadata={
            "report": MetadataValue.md(f"```\n{render(report)}\n```"),
            "delta_version": MetadataValue.int(-1 if report.version is None else report.version),
            "problems": MetadataValue.int(len(report.problems)),
        },
    )
