"""Asset specs: the Kafka topics as external assets, the lake's daily-partitioned `events` table.

`events` is materialized by the ingest_events job, one materialization per UTC day a run wrote,
because a run owns offset ranges, not days: Kafka order is not event-time order.
"""

from __future__ import annotations

from dagster import AssetKey, AssetSpec, DailyPartitionsDefinition

RAW_EVENTS_KEY = AssetKey(["kafka", "raw_events"])
DLQ_KEY = AssetKey(["kafka", "dead_letter_queue"])
EVENTS_KEY = AssetKey(["events"])

# Today's partition exists from the start of the day (end_offset=1): it fills as events arrive.
daily_partitions = DailyPartitionsDefinition(start_date="2025-01-01", end_offset=1)

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
        "<data>/output/events/date=YYYY-MM-DD/, with Kafka lineage columns on every row."
    ),
    group_name="lake",
    kinds={"parquet", "polars"},
)
