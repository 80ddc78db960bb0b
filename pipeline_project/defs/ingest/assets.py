"""Asset specs: the Kafka topics as external assets, the lake's daily-partitioned `events` table.

`events` is materialized by the ingest_events job, one materialization per UTC day a run wrote,
because a run owns offset ranges, not days: Kafka order is not event-time order.
"""

from datetime import UTC, datetime, timedelta

from dagster import AssetKey, AssetSpec, DailyPartitionsDefinition

from pipeline_project.settings import Settings

RAW_EVENTS_KEY = AssetKey(["kafka", "raw_events"])
DLQ_KEY = AssetKey(["kafka", "dead_letter_queue"])
EVENTS_KEY = AssetKey(["events"])

# The days a run can still write: validation sends events older than the lateness window to the
# DLQ. The default window, not PIPELINE_MAX_LATENESS_DAYS: partitions are fixed when the code
# location loads, and nothing reads the environment then (docs/ARCHITECTURE.md, "Daily partitions").
PARTITION_WINDOW_DAYS = Settings.max_lateness_days


def recent_days(
    now: datetime | None = None, window_days: int = PARTITION_WINDOW_DAYS
) -> DailyPartitionsDefinition:
    """Daily partitions from `window_days` before today (UTC) through today.

    Today's partition exists from the start of the day (end_offset=1): it fills as events arrive.
    A fresh instance shows window + 1 days, not every day since some fixed date; older days stay in
    the lake and the event log, they only leave the partitions view.
    """
    today = (now or datetime.now(UTC)).date()
    start = today - timedelta(days=window_days)
    return DailyPartitionsDefinition(start_date=start.isoformat(), end_offset=1, timezone="UTC")


daily_partitions = recent_days()

raw_events_spec = AssetSpec(
    RAW_EVENTS_KEY,
    description="Kafka topic raw-events: user-interaction events as JSON, keyed by user_id.",
    group_name="kafka",
    kinds={"kafka"},
)
dlq_spec = AssetSpec(
    DLQ_KEY,
    deps=[RAW_EVENTS_KEY],
    description="Kafka topic dead-letter-queue: rejected records: original bytes, error headers.",
    group_name="kafka",
    kinds={"kafka"},
)
events_spec = AssetSpec(
    EVENTS_KEY,
    deps=[RAW_EVENTS_KEY],
    partitions_def=daily_partitions,
    description=(
        "Validated, normalised and enriched events as daily Parquet partitions under "
        "<data>/output/events/date=YYYY-MM-DD/, with Kafka lineage columns on every row. "
        f"Partitions: the last {PARTITION_WINDOW_DAYS} days and today (the lateness window)."
    ),
    group_name="lake",
    kinds={"parquet", "polars"},
)
