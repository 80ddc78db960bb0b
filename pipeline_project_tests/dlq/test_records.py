"""The DLQ record's headers: contract names in order, bounded values, and a lossless round trip."""

from __future__ import annotations

import dataclasses

from pipeline_project.dlq.records import (
    ERROR_FIELD,
    ERROR_MESSAGE,
    HEADER_NAMES,
    MAX_MESSAGE_CHARS,
    MAX_VALUE_CHARS,
    SOURCE_OFFSET,
    DlqRecord,
)

RECORD = DlqRecord(
    source_topic="raw-events",
    source_partition=3,
    source_offset=123456789,
    source_timestamp_ms=1_740_830_400_123,
    key=b"user_1",
    value=b'{"event_id": 1}',
    stage="validate",
    category="invalid_format",
    rule="event_id_uuid",
    field="event_id",
    message="event_id_uuid failed for event_id='1'",
    attempt=2,
    run_id="run-42",
    failed_at="2025-03-01T12:00:00Z",
)


def test_headers_are_the_contract_names_in_order_and_round_trip() -> None:
    headers = RECORD.headers()
    assert [name for name, _ in headers] == list(HEADER_NAMES)
    assert dict(headers)[SOURCE_OFFSET] == b"123456789"
    assert DlqRecord.from_message(RECORD.key, RECORD.value, headers) == RECORD


def test_records_sharing_values_still_get_their_own_headers() -> None:
    """Repeated values are encoded once; per-record values (offset, message) never mix up."""
    records = [
        dataclasses.replace(RECORD, source_offset=i, message=f"m{i}", rule=f"rule_{i % 3}")
        for i in range(50)
    ]
    for record in records:
        assert DlqRecord.from_message(record.key, record.value, record.headers()) == record


def test_long_values_are_bounded_and_unencodable_text_is_replaced() -> None:
    record = dataclasses.replace(
        RECORD, field="f" * 1000, message="m" * 5000 + "\ud800", run_id="r\udc80"
    )
    headers = dict(record.headers())
    assert len(headers[ERROR_FIELD]) == MAX_VALUE_CHARS
    assert headers[ERROR_FIELD].endswith(b"...")
    assert len(headers[ERROR_MESSAGE]) == MAX_MESSAGE_CHARS
    assert headers["dlq.run_id"] == b"r?"
