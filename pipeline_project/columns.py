"""Lake column names that several modules use, defined once (the schema is transform.LAKE_SCHEMA).

No imports: the parse, transform, lake and DLQ modules all read these, and none of them may pull
in another to get a name.
"""

from typing import Final

EVENT_ID_COLUMN: Final = "event_id"
DATE_COLUMN: Final = "event_date"  # the event's UTC day
PARTITION_COLUMN: Final = "date"  # the hive key: `date=YYYY-MM-DD` directories, one per UTC day

# Lineage: where each row came from in Kafka, and which run wrote it.
TOPIC_COLUMN: Final = "kafka_topic"
KAFKA_PARTITION_COLUMN: Final = "kafka_partition"
OFFSET_COLUMN: Final = "kafka_offset"
KAFKA_TIMESTAMP_COLUMN: Final = "kafka_timestamp"
INGESTED_AT_COLUMN: Final = "ingested_at"
RUN_ID_COLUMN: Final = "run_id"
# A row's source record: unique per ingested row (a recovered row keeps its source's).
SOURCE_COLUMNS: Final = (TOPIC_COLUMN, KAFKA_PARTITION_COLUMN, OFFSET_COLUMN)
LINEAGE_COLUMNS: Final = (
    *SOURCE_COLUMNS,
    KAFKA_TIMESTAMP_COLUMN,
    INGESTED_AT_COLUMN,
    RUN_ID_COLUMN,
)

# Lineage of rows recovered from the DLQ (null on ingested rows): the DLQ record they came from,
# and the repair rules that made them valid.
DLQ_PARTITION_COLUMN: Final = "dlq_partition"
DLQ_OFFSET_COLUMN: Final = "dlq_offset"
REPAIR_RULES_COLUMN: Final = "repair_rules"
RECOVERY_COLUMNS: Final = (DLQ_PARTITION_COLUMN, DLQ_OFFSET_COLUMN, REPAIR_RULES_COLUMN)
