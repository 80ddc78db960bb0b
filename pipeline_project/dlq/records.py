"""The DLQ record contract (DESIGN.md §3): original key and value bytes plus bounded headers.

The source coordinates (topic, partition, offset) identify a failed record, so a re-sent DLQ record
is recognised as the same one by every reader.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE_TOPIC = "dlq.source.topic"
SOURCE_PARTITION = "dlq.source.partition"
SOURCE_OFFSET = "dlq.source.offset"
SOURCE_TIMESTAMP = "dlq.source.timestamp"
ERROR_STAGE = "dlq.error.stage"
ERROR_CATEGORY = "dlq.error.category"
ERROR_RULE = "dlq.error.rule"
ERROR_FIELD = "dlq.error.field"
ERROR_MESSAGE = "dlq.error.message"
ATTEMPT = "dlq.attempt"
RUN_ID = "dlq.run_id"
FAILED_AT = "dlq.failed_at"

HEADER_NAMES = (
    SOURCE_TOPIC,
    SOURCE_PARTITION,
    SOURCE_OFFSET,
    SOURCE_TIMESTAMP,
    ERROR_STAGE,
    ERROR_CATEGORY,
    ERROR_RULE,
    ERROR_FIELD,
    ERROR_MESSAGE,
    ATTEMPT,
    RUN_ID,
    FAILED_AT,
)
MAX_MESSAGE_CHARS = 500
MAX_VALUE_CHARS = 200  # every other header value


@dataclass(frozen=True)
class DlqRecord:
    """One record bound for the DLQ: where it came from, why it failed, and its original bytes."""

    source_topic: str
    source_partition: int
    source_offset: int
    source_timestamp_ms: int
    key: bytes | None
    value: bytes | None
    stage: str
    category: str
    rule: str
    field: str
    message: str
    attempt: int
    run_id: str
    failed_at: str  # ISO-8601 UTC

    def headers(self) -> list[tuple[str, bytes]]:
        """Contract headers, each value bounded so a DLQ record always fits its topic's limit."""
        values = {
            SOURCE_TOPIC: self.source_topic,
            SOURCE_PARTITION: str(self.source_partition),
            SOURCE_OFFSET: str(self.source_offset),
            SOURCE_TIMESTAMP: str(self.source_timestamp_ms),
            ERROR_STAGE: self.stage,
            ERROR_CATEGORY: self.category,
            ERROR_RULE: self.rule,
            ERROR_FIELD: self.field,
            ERROR_MESSAGE: bounded(self.message, MAX_MESSAGE_CHARS),
            ATTEMPT: str(self.attempt),
            RUN_ID: self.run_id,
            FAILED_AT: self.failed_at,
        }
        return [
            (
                name,
                bounded(
                    values[name], MAX_VALUE_CHARS if name != ERROR_MESSAGE else MAX_MESSAGE_CHARS
                ).encode("utf-8", "replace"),
            )
            for name in HEADER_NAMES
        ]

    @property
    def coordinates(self) -> tuple[str, int, int]:
        return (self.source_topic, self.source_partition, self.source_offset)


def bounded(text: str, limit: int) -> str:
    """Text cut to `limit` characters with a marker, so header bytes stay bounded."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def decode_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """Header list from a consumed DLQ message → name: text (last one wins)."""
    return {name: (value or b"").decode("utf-8", "replace") for name, value in headers or []}
