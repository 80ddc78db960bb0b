"""Asset specs: the Kafka topics as external assets, the lake's daily-partitioned `events` table.

`events` is materialized by the ingest_events job, one materialization per UTC day a run wrote,
because a run owns offset ranges, not days: Kafka order is not event-time order.
"""

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from dagster import AssetKey, AssetSpec, DailyPartitionsDefinition

from pipeline_project.errors import SettingsError
from pipeline_project.settings import Settings, setting_at_load

log = logging.getLogger(__name__)

RAW_EVENTS_KEY = AssetKey(["kafka", "raw_events"])
DLQ_KEY = AssetKey(["kafka", "dead_letter_queue"])
EVENTS_KEY = AssetKey(["events"])


def partition_window() -> int:
    """PIPELINE_PARTITION_DAYS: the days before today shown as daily partitions.

    The one setting read when the code location loads, because Dagster fixes partitions then. A
    malformed value must not stop the location loading (docs/ARCHITECTURE.md): it is logged as
    one line and the default applies.
    """
    try:
        return int(setting_at_load("partition_days"))
    except SettingsError as exc:
        default = Settings.partition_days
        log.warning("bad setting: %s; daily partitions cover the default %d days", exc, default)
        return default


def recent_days(window_days: int, now: datetime | None = None) -> DailyPartitionsDefinition:
    """Daily partitions from `window_days` before today (UTC) through today.

    Today's partition exists from the start of the day (end_offset=1): it fills as events arrive.
    A fresh instance shows window + 1 days, not every day since some fixed date; older days stay in
    the lake and the event log, they only leave the partitions view.
    """
    today = (now or datetime.now(UTC)).date()
    start = today - timedelta(days=window_days)
    return DailyPartitionsDefinition(start_date=start.isoformat(), end_offset=1, timezone="UTC")


PARTITION_WINDOW_DAYS = partition_window()
daily_partitions = recent_days(PARTITION_WINDOW_DAYS)


def _topic_spec(key: AssetKey, description: str, deps: Sequence[AssetKey] = ()) -> AssetSpec:
    """A Kafka topic as an external asset: Dagster shows it, nothing here materializes it."""
    return AssetSpec(key, deps=deps, description=description, group_name="kafka", kinds={"kafka"})


raw_events_spec = _topic_spec(
    RAW_EVENTS_KEY, "Kafka topic raw-events: user-interaction events as JSON, keyed by user_id."
)
dlq_spec = _topic_spec(
    DLQ_KEY,
    "Kafka topic dead-letter-queue: rejected records: original bytes, error headers.",
    deps=[RAW_EVENTS_KEY],
)
events_spec = AssetSpec(
    EVENTS_KEY,
    deps=[RAW_EVENTS_KEY],
    partitions_def=daily_partitions,
    description=(
        "Validated, normalised and enriched events: the Delta table `events` in the lake "
        "(PIPELINE_LAKE_URI), partitioned by date, with Kafka lineage columns on every row. "
        f"Partitions: today and the {PARTITION_WINDOW_DAYS} days before it "
        "(PIPELINE_PARTITION_DAYS)."
    ),
    group_name="lake",
    kinds={"parquet", "polars"},
)
