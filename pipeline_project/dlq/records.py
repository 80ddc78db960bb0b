"""The DLQ record contract (docs/ARCHITECTURE.md): original key and value bytes, bounded headers.

The source coordinates (topic, partition, offset) identify a failed record, so a re-sent DLQ record
is recognised as the same one by every reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

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
PREVIEW_CHARS = 120  # payload previews in reports and `dlq inspect`


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
        """Contract headers, each value bounded so a DLQ record always fits its topic's limit.

        Built for thousands of records per range: the values a range repeats (topic, stage,
        rule, run id, ...) are encoded once (`_encode_shared`); only offsets, timestamps and
        messages are encoded per record.
        """
        return [
            (SOURCE_TOPIC, _encode_shared(self.source_topic)),
            (SOURCE_PARTITION, _encode_shared(str(self.source_partition))),
            (SOURCE_OFFSET, _encode_header(str(self.source_offset))),
            (SOURCE_TIMESTAMP, _encode_header(str(self.source_timestamp_ms))),
            (ERROR_STAGE, _encode_shared(self.stage)),
            (ERROR_CATEGORY, _encode_shared(self.category)),
            (ERROR_RULE, _encode_shared(self.rule)),
            (ERROR_FIELD, _encode_shared(self.field)),
            (ERROR_MESSAGE, bounded(self.message, MAX_MESSAGE_CHARS).encode("utf-8", "replace")),
            (ATTEMPT, _encode_shared(str(self.attempt))),
            (RUN_ID, _encode_shared(self.run_id)),
            (FAILED_AT, _encode_shared(self.failed_at)),
        ]

    @property
    def coordinates(self) -> tuple[str, int, int]:
        return (self.source_topic, self.source_partition, self.source_offset)

    @classmethod
    def from_message(
        cls, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None
    ) -> DlqRecord:
        """A consumed DLQ message back as a record; ValueError without usable source coordinates.

        Only the source coordinates are required (they identify the record); a missing reason
        header reads as "" and a missing attempt as 1, so foreign records still show up in reports.
        """
        values = decode_headers(headers)
        topic = values.get(SOURCE_TOPIC, "")
        partition = _non_negative(values.get(SOURCE_PARTITION))
        offset = _non_negative(values.get(SOURCE_OFFSET))
        if not topic or partition is None or offset is None:
            raise ValueError("DLQ record without valid dlq.source.* headers")
        timestamp = values.get(SOURCE_TIMESTAMP, "")
        return cls(
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            source_timestamp_ms=int(timestamp) if timestamp.lstrip("-").isdigit() else -1,
            key=key,
            value=value,
            stage=values.get(ERROR_STAGE, ""),
            category=values.get(ERROR_CATEGORY, ""),
            rule=values.get(ERROR_RULE, ""),
            field=values.get(ERROR_FIELD, ""),
            message=values.get(ERROR_MESSAGE, ""),
            attempt=max(_non_negative(values.get(ATTEMPT)) or 1, 1),
            run_id=values.get(RUN_ID, ""),
            failed_at=values.get(FAILED_AT, ""),
        )

    @property
    def source_time(self) -> datetime | None:
        """When the source record reached Kafka (its CreateTime), None when unknown."""
        if self.source_timestamp_ms < 0:
            return None
        return datetime.fromtimestamp(self.source_timestamp_ms / 1000, tz=UTC)


def _encode_header(text: str) -> bytes:
    """A header value bounded to MAX_VALUE_CHARS, as UTF-8 (bad surrogates replaced)."""
    return bounded(text, MAX_VALUE_CHARS).encode("utf-8", "replace")


# The values a range's records share, encoded once per distinct value.
_encode_shared = lru_cache(maxsize=4096)(_encode_header)


def bounded(text: str, limit: int) -> str:
    """Text cut to `limit` characters with a marker, so header bytes stay bounded."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def decode_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """Header list from a consumed DLQ message → name: text (last one wins)."""
    return {name: (value or b"").decode("utf-8", "replace") for name, value in headers or []}


def _non_negative(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def escape_payload(value: bytes | None, limit: int = PREVIEW_CHARS) -> str:
    """A printable, bounded preview of raw bytes for tables and Markdown.

    Invalid UTF-8 shows as a backslash-x escape; control and invisible characters (NUL, bidi
    overrides, zero-width joiners) and backticks are escaped too, so a payload can never break a
    table or a code block, nor hide what it holds.
    """
    if value is None:
        return "<null>"
    text = value[: limit * 4].decode("utf-8", "backslashreplace")[: limit + 1]
    if text.isprintable() and "`" not in text:  # most payloads: nothing to escape, checked in C
        return bounded(text, limit)
    return bounded("".join(_escaped(ch) for ch in text), limit)


def _escaped(ch: str) -> str:
    if ch == "`":
        return "\\x60"
    return ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
