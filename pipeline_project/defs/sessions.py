"""Sessions domain: asset `sessions` (daily) and `pipeline_automation_sensor`.

One row per session and day, redone when that day of `events` changes, at most once a tick of
PIPELINE_SESSIONS_CRON (every 5 minutes by default); the sensor also runs the periodic `events`
checks.

Thin over batch.sessions. `events` is materialized by the ingest op (AssetMaterialization events,
not an asset job); declarative automation sees those like any materialization, which
pipeline_project_tests/sessions verifies against real ingest runs. No postponed annotations:
Dagster checks the `context` annotation's type at import.
"""

import logging
from datetime import date

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
    MaterializeResult,
    MetadataValue,
    asset,
)

from pipeline_project.batch import sessions as core
from pipeline_project.defs.ingest.assets import EVENTS_KEY, daily_partitions
from pipeline_project.defs.ingest.quality import events_quality_checks
from pipeline_project.defs.resources import PipelineSettings
from pipeline_project.defs.tags import BACKGROUND_TAGS, JOB_TAG
from pipeline_project.defs.upkeep.checks import events_small_files
from pipeline_project.errors import SettingsError
from pipeline_project.lake.location import TABLE_SESSIONS
from pipeline_project.settings import Settings, setting_at_load

SESSIONS_KEY = AssetKey([TABLE_SESSIONS])
ROWS_CHECK = "rows_on_days_with_events"
AUTOMATION_SENSOR = "pipeline_automation_sensor"

log = logging.getLogger(__name__)


def sessions_condition(cron: str = "") -> AutomationCondition:
    """Request a day of `sessions` whenever that day of `events` was updated since the last request.

    Not `eager()`, for two reasons found in Dagster 1.13's source and pinned by the tests. eager()
    looks only at the latest time partition, so a late event for an older day would never redo it.
    And eager() can forget an `events` update that lands after a day was requested but before its
    run materializes (its since_last_handled resets on that materialization, and on a same-tick
    request without comparing times), although the run may have read the lake before that update.
    Here only a *request* resets, and both sides are bare timed operands (an And/Or in between
    drops the timestamps SinceCondition compares), so an update newer than the last request always
    wins: at worst one redundant run, never a stale day. No time window: late and reprocessed
    events can land on any day. The first evaluation after deployment catches up days that have
    events but no sessions.

    `cron` (PIPELINE_SESSIONS_CRON, `*/5 * * * *` by default; "" = after every change): a day is
    also requested only once a tick of it has passed since the day's last request, so a day that
    changes every few seconds is redone once a tick, not once a run. Each redo reads the whole
    day: on a busy day that is CPU the ingestion needs (measured: with a redo after every change,
    30 sessions runs in a 10-minute soak at 20k events/s; with the 5-minute cron, 8).
    """
    updated = AutomationCondition.any_deps_match(AutomationCondition.newly_updated()).since(
        AutomationCondition.newly_requested()
    )
    if cron:
        ticked = AutomationCondition.cron_tick_passed(cron).since(
            AutomationCondition.newly_requested()
        )
        updated = updated & ticked
    catch_up = AutomationCondition.initial_evaluation() & AutomationCondition.missing()
    label = "events day updated since last request" + (f", a {cron} tick since" if cron else "")
    return (
        (updated | catch_up)
        & ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label(label)


def redo_cron() -> str:
    """PIPELINE_SESSIONS_CRON, read when the code location loads (conditions are fixed then).

    A malformed value must not stop the location loading: it is logged as one line and the
    default applies.
    """
    default = Settings().sessions_cron
    try:
        return str(setting_at_load("sessions_cron"))
    except SettingsError as exc:
        log.warning("bad setting: %s; the default %r applies", exc, default)
        return default


def sessions_asset(cron: str = "") -> AssetsDefinition:
    """The `sessions` asset, its days redone after every change or once a `cron` tick."""

    @asset(
        key=SESSIONS_KEY,
        deps=[EVENTS_KEY],
        partitions_def=daily_partitions,
        automation_condition=sessions_condition(cron),
        check_specs=[
            AssetCheckSpec(
                ROWS_CHECK,
                asset=SESSIONS_KEY,
                description="A day with committed events has at least one session row.",
            )
        ],
        group_name="lake",
        kinds={"delta", "polars"},
        description=(
            "Sessions per UTC day (start, end, duration, events, page views, entry/exit page, "
            "device, "
            "conversion, revenue, funnel stage) from the day's committed events: the Delta table "
            "<lake>/sessions, partitioned by date, each day replaced by one overwrite commit."
        ),
    )
    def sessions(context: AssetExecutionContext, settings: PipelineSettings) -> MaterializeResult:
        """Recomputes one day of sessions from the committed `events` rows of that day."""
        day = date.fromisoformat(context.partition_key)
        out = core.materialize_day(settings.for_background_run(context.log), day)
        context.log.info(
            "%s: %d sessions from %d events (%d files)",
            day,
            out.rows,
            out.event_rows,
            out.source_files,
        )
        checks = []
        if _selected(context):
            checks.append(
                AssetCheckResult(
                    check_name=ROWS_CHECK,
                    passed=out.rows > 0 or out.event_rows == 0,
                    metadata={"rows": out.rows, "event_rows": out.event_rows},
                )
            )
        return MaterializeResult(metadata=_metadata(out), check_results=checks)

    return sessions


sessions = sessions_asset(redo_cron())


def _selected(context: AssetExecutionContext) -> bool:
    """The row check runs with the asset unless a run deselected it."""
    return any(key.name == ROWS_CHECK for key in context.selected_asset_check_keys)


def _metadata(out: core.SessionsOutput) -> dict[str, MetadataValue]:
    """Numeric entries with stable names, so the UI plots them per day and over time.

    Versions are -1 when nothing was read or written (a day without events), never absent.
    """
    return {
        "rows": MetadataValue.int(out.rows),
        "event_rows": MetadataValue.int(out.event_rows),
        "source_files": MetadataValue.int(out.source_files),
        "converted": MetadataValue.int(out.converted),
        "conversion_rate": MetadataValue.float(out.conversion_rate),
        **{
            f"funnel_{stage}": MetadataValue.int(out.funnel.get(stage, 0))
            for stage in core.FUNNEL_STAGES
        },
        "events_version": MetadataValue.int(
            -1 if out.events_version is None else out.events_version
        ),
        "delta_version": MetadataValue.int(-1 if out.version is None else out.version),
        "table_uri": MetadataValue.path(out.table_uri or "(no events this day)"),
    }


pipeline_automation_sensor = AutomationConditionSensorDefinition(
    AUTOMATION_SENSOR,
    target=AssetSelection.assets(SESSIONS_KEY)
    | AssetSelection.checks(*events_quality_checks, events_small_files),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=15,
    run_tags={JOB_TAG: "automation", **BACKGROUND_TAGS},  # dagster.yaml: one at a time
    description="Runs `sessions` days whose events changed, and the periodic `events` checks.",
)

defs = Definitions(assets=[sessions], sensors=[pipeline_automation_sensor])
