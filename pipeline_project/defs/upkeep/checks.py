"""The `events` check on small files: warns when a day holds more than compaction should allow.

Run every five minutes by the automation sensor, like the other periodic `events` checks. It reads
the add actions only (no data file), so it is cheap on any table size.
"""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AutomationCondition,
    MetadataValue,
    asset_check,
)

from pipeline_project.defs.ingest.assets import EVENTS_KEY
from pipeline_project.defs.ingest.quality import CHECK_CRON, check_condition
from pipeline_project.defs.resources import PipelineSettings
from pipeline_project.lake.location import lake_of
from pipeline_project.lake.stats import table_stats
from pipeline_project.lake.upkeep import (
    SMALL_FILES_WARN_PER_DAY,
    small_file_bytes,
    small_file_days,
)

SMALL_FILES_CHECK = "small_files"


@asset_check(
    asset=EVENTS_KEY,
    name=SMALL_FILES_CHECK,
    description=(
        f"No day of events holds more than {SMALL_FILES_WARN_PER_DAY} small files (below half "
        "of PIPELINE_COMPACT_TARGET_MB): more means the hourly compaction is off or behind."
    ),
    automation_condition=check_condition(
        AutomationCondition.cron_tick_passed(CHECK_CRON) & ~AutomationCondition.in_progress()
    ),
)
def events_small_files(settings: PipelineSettings) -> AssetCheckResult:
    """The worst day's small files against the limit; every day's count as metadata."""
    resolved = settings.for_background_run()
    stats = table_stats(lake_of(resolved), small_below=small_file_bytes(resolved.compact_target_mb))
    worst = max(stats.days, key=lambda d: d["small_files"], default=None)
    over = small_file_days(stats)
    most = worst["small_files"] if worst else 0
    return AssetCheckResult(
        passed=not over,
        severity=AssetCheckSeverity.WARN,
        description=(
            f"{len(over)} day(s) over {SMALL_FILES_WARN_PER_DAY} small files: {', '.join(over)}"
            if over
            else f"at most {most} small files in a day (limit {SMALL_FILES_WARN_PER_DAY})"
        ),
        metadata={
            "max_small_files": MetadataValue.int(most),
            "worst_day": MetadataValue.text(worst["day"] if worst else ""),
            "limit": MetadataValue.int(SMALL_FILES_WARN_PER_DAY),
            "days_over": MetadataValue.json(over),
            "files": MetadataValue.int(stats.files),
        },
    )
