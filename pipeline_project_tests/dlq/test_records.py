"""The DLQ record's headers (contract names in order, bounded values, a lossless round trip) and
the payload previews of reports."""

from __future__ import annotations

import dataclasses

from pipeline_project.dlq.records import (
    ERROR_FIELD,
    ERROR_MESSAGE,
    HEADER_NAMES,
    MAX_MESSAGE_CHARS,
    MAX_VALUE_CHARS,
    PREVIEW_CHARS,
    SOURCE_OFFSET,
    DlqRecord,
    escape_payload,
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


def test_payload_previews_escape_what_could_hide_or_break_and_keep_the_rest() -> None:
    """A preview is the payload as text, escaped only where a table or a reader would be fooled."""
    plain = b'{"event_id": "e1", "page_url": "https://shop.example/p?q=red shoes"}'
    assert escape_payload(plain) == plain.decode()
    assert escape_payload(None) == "<null>"
    assert escape_payload(b"a`b\nc") == "a\\x60b\\nc"
    assert escape_payload("x\u202ey\u200dz".encode()) == "x\\u202ey\\u200dz"
    assert escape_payload(b"caf\xe9 \x00") == "caf\\xe9 \\x00"
    long = escape_payload(b"x" * 500)
    assert len(long) == PREVIEW_CHARS and long.endswith("...")
    escaped_long = escape_payload(b"\t" * 500)
    assert len(escaped_long) == PREVIEW_CHARS and escaped_long.startswith("\\t\\t")
