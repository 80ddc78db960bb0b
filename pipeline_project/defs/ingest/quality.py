"""Periodic asset checks on `events`: freshness and the share of unrecognised user agents.

The ingest op logs `events` materializations without running checks, so these run on a cron
through the automation sensor (defs/sessions.py): freshness on every tick (staleness is the absence
of events, so nothing else would trigger it), the user-agent share only when `events` changed.
Both read the lake itself: freshness the newest range commit in the events table's Delta log (a
commit by the CLI counts as much as a Dagster run's), the share the latest day's
committed rows.
"""

from datetime import UTC, datetime
from typing import cast

from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AutomationCondition,
    MetadataValue,
    asset_check,
)

from pipeline_project import health
from pipeline_project.batch.quality import unknown_user_agents
from pipeline_project.defs.ingest.assets import EVENTS_KEY
from pipeline_project.defs.resources import PipelineSettings
from pipeline_project.lake.location import lake_of
from pipeline_project.settings import Settings

FRESHNESS_CHECK = "freshness"
UNKNOWN_UA_CHECK = "unknown_user_agents"
CHECK_CRON = "*/5 * * * *"


def check_condition(condition: AutomationCondition) -> AutomationCondition[AssetCheckKey]:
    """The condition as a check's (the builders are typed for assets, the operands are not)."""
    return cast(AutomationCondition[AssetCheckKey], condition)


def last_update(settings: Settings) -> tuple[datetime | None, str | None]:
    """When a raw-topic range was last committed into `events` (its Delta log); else why not.

    The error is the lake's one-line LakeError text when the table cannot be read.
    """
    state = health.read_lake(lake_of(settings), settings.raw_topic, datetime.now(UTC))
    if state.error is not None:
        return None, state.error
    return health.last_commit(state.ingested(settings.raw_topic)), None


@asset_check(
    asset=EVENTS_KEY,
    name=FRESHNESS_CHECK,
    description=(
        "events was materialized within PIPELINE_HEALTH_MAX_INGEST_AGE_SECONDS, or Kafka has "
        "nothing waiting (an idle source is not a stale lake)."
    ),
    automation_condition=check_condition(
        AutomationCondition.cron_tick_passed(CHECK_CRON) & ~AutomationCondition.in_progress()
    ),
)
def events_freshness(settings: PipelineSettings) -> AssetCheckResult:
    """Same rule as `health`'s last_ingest line; Kafka is asked only when events look old."""
    resolved = settings.for_background_run()
    updated, error = last_update(resolved)
    if error is not None:
        return AssetCheckResult(passed=False, severity=AssetCheckSeverity.WARN, description=error)
    verdict = health.events_freshness(resolved, updated)
    age = (datetime.now(UTC) - updated).total_seconds() if updated else -1.0
    return AssetCheckResult(
        passed=verdict.status == health.OK,
        severity=AssetCheckSeverity.WARN,
        description=verdict.detail,
        metadata={
            "age_seconds": MetadataValue.float(round(age, 1)),
            "max_age_seconds": MetadataValue.float(resolved.health_max_ingest_age_seconds),
        },
    )


@asset_check(
    asset=EVENTS_KEY,
    name=UNKNOWN_UA_CHECK,
    description=(
        "Share of the latest day's events with device `unknown` or browser `Other` stays at or "
        "below PIPELINE_MAX_UNKNOWN_UA_SHARE (a new client or a broken user-agent rule)."
    ),
    automation_condition=check_condition(
        AutomationCondition.cron_tick_passed(CHECK_CRON)
        & AutomationCondition.any_deps_updated().since_last_handled()
        & ~AutomationCondition.in_progress()
    ),
)
def events_unknown_user_agents(settings: PipelineSettings) -> AssetCheckResult:
    """Reads the device/browser columns of the latest day's committed files only."""
    resolved = settings.for_background_run()
    counts = unknown_user_agents(resolved)
    limit = resolved.max_unknown_ua_share
    return AssetCheckResult(
        passed=counts.share <= limit,
        severity=AssetCheckSeverity.WARN,
        description=(
            f"{counts.share:.2%} of {counts.rows} events on {counts.day or 'no day yet'} "
            f"unrecognised (limit {limit:.2%})"
        ),
        metadata={
            "day": MetadataValue.text(counts.day.isoformat() if counts.day else ""),
            "rows": MetadataValue.int(counts.rows),
            "unknown_device": MetadataValue.int(counts.unknown_device),
            "unknown_browser": MetadataValue.int(counts.unknown_browser),
            "share": MetadataValue.float(counts.share),
            "limit": MetadataValue.float(limit),
        },
    )


events_quality_checks = (events_freshness, events_unknown_user_agents)
