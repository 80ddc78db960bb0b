"""The upkeep assets: compaction, vacuum + checkpoints, retention of the lake's tables.

Each materialization is one pass of upkeep, and its metadata (files and bytes before and after,
average file size, bytes reclaimed, seconds) has stable names, so the UI plots them over time.
Thin over lake.upkeep. No postponed annotations: Dagster reads the parameters' annotations.
"""

from typing import Any

from dagster import AssetExecutionContext, AssetKey, MaterializeResult, MetadataValue, asset

from pipeline_project.defs.ingest.assets import EVENTS_KEY
from pipeline_project.defs.resources import PipelineSettings
from pipeline_project.lake.location import TABLE_EVENTS, lake_of
from pipeline_project.lake.upkeep import (
    MIB,
    RETAINED_TABLES,
    CompactResult,
    checkpoint,
    compact,
    expire_days,
    lake_tables,
    retention_cutoff,
    vacuum,
)

COMPACTION_KEY = AssetKey(["upkeep", "events_compaction"])
VACUUM_KEY = AssetKey(["upkeep", "lake_vacuum"])
RETENTION_KEY = AssetKey(["upkeep", "lake_retention"])
GROUP = "upkeep"


def upkeep_asset(key: AssetKey, description: str) -> Any:
    """The decorator every upkeep asset shares: after `events`, in the upkeep group."""
    return asset(
        key=key, deps=[EVENTS_KEY], group_name=GROUP, kinds={"delta"}, description=description
    )


@upkeep_asset(
    COMPACTION_KEY,
    "Compacts every day of `events` holding 8 or more small files (below half of "
    "PIPELINE_COMPACT_TARGET_MB) into files near the target, with Delta's optimize: one "
    "commit per day, safe while ingestion commits to the same day.",
)
def events_compaction(
    context: AssetExecutionContext, settings: PipelineSettings
) -> MaterializeResult:
    """One compaction pass; the metadata sums the days it compacted."""
    resolved = settings.for_background_run(context.log)
    result = compact(lake_of(resolved), target_mb=resolved.compact_target_mb)
    context.log.info(result.render())
    return MaterializeResult(metadata=compaction_metadata(result))


def compaction_metadata(result: CompactResult) -> dict[str, Any]:
    """Totals over the compacted days (0 when none needed it) and a per-day table."""
    files_before, files_after = result.total("files_before"), result.total("files_after")
    bytes_before, bytes_after = result.total("bytes_before"), result.total("bytes_after")
    rows = [
        f"| {d['day']} | {d['files_before']} | {d['files_after']} | "
        f"{d['bytes_before'] / MIB:.1f} | {d['bytes_after'] / MIB:.1f} |"
        for d in result.days
    ]
    table = "\n".join(
        ["| day | files before | files after | MiB before | MiB after |", "|---|---|---|---|---|"]
        + rows
    )
    return {
        "days_compacted": MetadataValue.int(len(result.days)),
        "files_before": MetadataValue.int(files_before),
        "files_after": MetadataValue.int(files_after),
        "bytes_before": MetadataValue.int(bytes_before),
        "bytes_after": MetadataValue.int(bytes_after),
        "avg_file_mib_before": MetadataValue.float(_avg_mib(bytes_before, files_before)),
        "avg_file_mib_after": MetadataValue.float(_avg_mib(bytes_after, files_after)),
        "seconds": MetadataValue.float(result.seconds),
        "days": MetadataValue.md(table if rows else "no day had enough small files"),
    }


def _avg_mib(size: int, files: int) -> float:
    return round(size / MIB / files, 3) if files else 0.0


@upkeep_asset(
    VACUUM_KEY,
    "For every table of the lake: deletes files no commit references that are older than "
    "PIPELINE_VACUUM_RETENTION_HOURS (compacted-away, expired, crashed writers'), then writes "
    "a checkpoint. The events table's commit JSONs are kept: they are the ledger.",
)
def lake_vacuum(context: AssetExecutionContext, settings: PipelineSettings) -> MaterializeResult:
    """Vacuum and checkpoint each table; bytes reclaimed summed over the tables."""
    resolved = settings.for_background_run(context.log)
    lake = lake_of(resolved)
    files = reclaimed = 0
    seconds = 0.0
    per_table: dict[str, Any] = {}
    for table in lake_tables(lake):
        done = vacuum(lake, retention_hours=resolved.vacuum_retention_hours, table_name=table)
        version = checkpoint(lake, table)
        context.log.info("%s; checkpoint at version %s", done.render(), version)
        files, reclaimed, seconds = (
            files + len(done.removed),
            reclaimed + done.bytes_reclaimed,
            seconds + done.seconds,
        )
        per_table[table] = {
            "files_removed": len(done.removed),
            "bytes_reclaimed": done.bytes_reclaimed,
            "checkpoint_version": version,
        }
    events_version = per_table.get(TABLE_EVENTS, {}).get("checkpoint_version")
    return MaterializeResult(
        metadata={
            "files_removed": MetadataValue.int(files),
            "bytes_reclaimed": MetadataValue.int(reclaimed),
            "mib_reclaimed": MetadataValue.float(round(reclaimed / MIB, 3)),
            "seconds": MetadataValue.float(round(seconds, 3)),
            "events_checkpoint_version": MetadataValue.int(
                -1 if events_version is None else events_version
            ),
            "retention_hours": MetadataValue.int(resolved.vacuum_retention_hours),
            "tables": MetadataValue.json(per_table),
        }
    )


@upkeep_asset(
    RETENTION_KEY,
    "Deletes days older than PIPELINE_LAKE_RETENTION_DAYS from events and sessions, one "
    "Delta commit per table recording what it deleted (reconcile reports those offsets as "
    "expired). Does nothing while the setting is unset; the files stay until vacuum.",
)
def lake_retention(context: AssetExecutionContext, settings: PipelineSettings) -> MaterializeResult:
    """Expires old days, or records that retention is off."""
    resolved = settings.for_background_run(context.log)
    days = resolved.lake_retention_days
    if days is None:
        context.log.info("PIPELINE_LAKE_RETENTION_DAYS is not set: nothing deleted")
        return MaterializeResult(metadata={"enabled": MetadataValue.bool(False)})
    lake = lake_of(resolved)
    cutoff = retention_cutoff(days)
    results = [expire_days(lake, cutoff, table) for table in RETAINED_TABLES]
    for result in results:
        context.log.info(result.render())
    events = results[0]
    return MaterializeResult(
        metadata={
            "enabled": MetadataValue.bool(True),
            "cutoff": MetadataValue.text(cutoff.isoformat()),
            "days_deleted": MetadataValue.int(len(events.days)),
            "rows_deleted": MetadataValue.int(events.rows),
            "files_deleted": MetadataValue.int(sum(r.files for r in results)),
            "events_version": MetadataValue.int(-1 if events.version is None else events.version),
        }
    )
