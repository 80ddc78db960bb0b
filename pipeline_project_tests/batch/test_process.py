"""process_batch end to end: P1-P12, P15, P16, the accounting identity and determinism.

Every input offset must land in exactly one of lake rows, rejects or filtered offsets.
"""

from __future__ import annotations

import io
import time
from datetime import date

import polars as pl
import pytest

from pipeline_project.batch.records import BatchResult, RawBatch
from pipeline_project.batch.transform import LAKE_SCHEMA
from pipeline_project.events.contract import ERROR_CATEGORIES, ERROR_STAGE, FILTER_REASONS
from pipeline_project_tests.batch.batch_support import (
    FIRST_OFFSET,
    GOOGLEBOT,
    embedded,
    encode,
    event_id,
    good_event,
    good_values,
    raw_batch,
    run,
)

GOOD = encode(good_event(7))

# One or more records per contract category, each with exactly one defect.
CASES: list[tuple[str, bytes | None, str]] = [
    ("P1_latin1", GOOD.replace(b'"shoes"', b'"caf\xe9"'), "invalid_utf8"),
    ("P1_bom", b"\xef\xbb\xbf" + GOOD, "invalid_utf8"),
    ("P2_truncated", GOOD[:-3], "invalid_json"),
    ("P2_two_objects", GOOD + GOOD, "invalid_json"),
    ("P2_empty", b"", "invalid_json"),
    ("P3_array", b"[1]", "not_object"),
    ("P3_null", b"null", "not_object"),
    ("P3_tombstone", None, "null_value"),
    (
        "P4_missing",
        encode({k: v for k, v in good_event(7).items() if k != "event_id"}),
        "missing_field",
    ),
    ("P4_empty", encode(good_event(7, event_id="")), "empty_field"),
    ("P4_null", encode(good_event(7, timestamp=None)), "empty_field"),
    ("P5_str_for_int", encode(good_event(7, schema_version="1")), "wrong_type"),
    ("P5_bool_for_int", encode(good_event(7, schema_version=True)), "wrong_type"),
    ("P5_num_for_str", encode(good_event(7, session_id=789)), "wrong_type"),
    (
        "P5_int_over_int64",
        GOOD.replace(b'"quantity":2', b'"quantity":9223372036854775808'),
        "invalid_value",
    ),
    ("P6_nan", GOOD.replace(b"19.99", b"NaN"), "non_finite"),
    ("P6_infinity", GOOD.replace(b"19.99", b"Infinity"), "non_finite"),
    ("P6_1e400", GOOD.replace(b"19.99", b"1e400"), "non_finite"),
    ("P7_duplicate_key", GOOD[:-1] + b',"user_id":"user_8"}', "duplicate_key"),
    ("P8_depth_1000", b"[" * 1000 + b"]" * 1000, "too_deep"),
    ("P8_10000_keys", encode({f"k{i}": i for i in range(10_000)}), "too_large"),
    ("P9_lone_surrogate", GOOD.replace(b'"shoes"', b'"\\ud800"'), "invalid_unicode"),
    ("P9_rtl_in_id", encode(good_event(7, user_id="user_\u202e654")), "invalid_format"),
    ("P9_zero_width_id", encode(good_event(7, user_id="jose\u200b")), "invalid_format"),
    ("P10_naive", encode(good_event(7, timestamp="2025-03-01T11:00:00")), "invalid_timestamp"),
    ("P10_epoch", encode(good_event(7, timestamp=1740826800)), "invalid_timestamp"),
    (
        "P10_far_future",
        encode(good_event(7, timestamp="2035-03-01T00:00:00Z")),
        "timestamp_out_of_range",
    ),
    (
        "P10_far_past",
        encode(good_event(7, timestamp="2001-09-09T01:46:40Z")),
        "timestamp_out_of_range",
    ),
    ("P11_control_char", encode(good_event(7, session_id="sess\x07")), "invalid_format"),
    ("P11_300_chars", encode(good_event(7, user_id="u" * 300)), "invalid_format"),
    ("value_unknown_type", encode(good_event(7, event_type="PAGE_VIEW")), "invalid_value"),
    ("value_negative_price", GOOD.replace(b"19.99", b"-4.99"), "invalid_value"),
    ("value_currency", GOOD.replace(b'"USD"', b'"BTC"'), "invalid_value"),
    ("future_version", encode(good_event(7, schema_version=9)), "unsupported_schema_version"),
    (
        "future_version_other_shape",
        encode({**good_event(7, schema_version=3, user_id=7), "href": "/"}),
        "unsupported_schema_version",
    ),
    ("P13_cap_plus_one", b"{" + b" " * (65_537 - len(GOOD)) + GOOD[1:], "too_large"),
]


def assert_accounts_for(raw: RawBatch, result: BatchResult) -> None:
    """The identity: consumed offsets = lake rows + rejects + filtered, each exactly once."""
    good = result.good["kafka_offset"].to_list()
    rejected = [r.offset for r in result.rejects]
    filtered = [o for offsets in result.filtered.values() for o in offsets]
    every = good + rejected + filtered
    assert sorted(every) == raw.offsets, "an offset is missing or accounted twice"
    assert result.total == len(raw)
    assert good == sorted(good)
    assert rejected == sorted(rejected)
    assert list(result.filtered) == list(FILTER_REASONS)


def test_every_contract_category_is_covered() -> None:
    covered = {category for _, _, category in CASES}
    assert covered == set(ERROR_CATEGORIES) - {"transform_error"}


@pytest.mark.parametrize(("name", "value", "category"), CASES, ids=[c[0] for c in CASES])
def test_one_bad_record_among_100_good(name: str, value: bytes | None, category: str) -> None:
    raw, bad_offset = embedded(value)
    result = run(raw)
    assert [(r.offset, r.category, r.stage) for r in result.rejects] == [
        (bad_offset, category, ERROR_STAGE[category])
    ]
    assert result.good.height == 100
    assert result.good.schema == pl.Schema(LAKE_SCHEMA)
    assert_accounts_for(raw, result)


def test_all_bad_batch_writes_no_rows() -> None:
    raw = raw_batch([value for _, value, _ in CASES])
    result = run(raw)
    assert result.good.height == 0 and result.good.schema == pl.Schema(LAKE_SCHEMA)
    assert [r.category for r in result.rejects] == [c for _, _, c in CASES]
    assert result.reject_counts() == dict(
        sorted((c, sum(1 for *_, k in CASES if k == c)) for c in {k for *_, k in CASES})
    )
    assert_accounts_for(raw, result)


def test_empty_batch() -> None:
    calls: list[list[date]] = []
    result = run(
        raw_batch([]), committed_ids=lambda days, ids: calls.append(days) or pl.DataFrame()
    )
    assert result.good.height == 0 and result.good.schema == pl.Schema(LAKE_SCHEMA)
    assert result.rejects == [] and result.filtered_counts() == dict.fromkeys(FILTER_REASONS, 0)
    assert calls == [], "no rows, no lookup"


def test_duplicates_within_batch_and_against_committed_ids() -> None:
    values = good_values(6)
    values.append(encode(good_event(2)))  # P12: the same event again at a later offset
    values.append(encode(good_event(9, user_agent=GOOGLEBOT)))
    values.append(encode(good_event(10, user_id="test_load_1")))
    calls: list[list[date]] = []

    def committed(days: list[date], ids: pl.Series) -> pl.DataFrame:
        calls.append(days)
        assert event_id(4) in ids.to_list(), "the lookup is asked about the batch's ids"
        return pl.DataFrame({"event_date": [date(2025, 3, 1)], "event_id": [event_id(4)]})

    raw = raw_batch(values)
    result = run(raw, committed_ids=committed)
    assert calls == [[date(2025, 3, 1)]]
    assert result.filtered == {
        "duplicate": [FIRST_OFFSET + 4, FIRST_OFFSET + 6],
        "bot": [FIRST_OFFSET + 7],
        "test_user": [FIRST_OFFSET + 8],
    }
    assert result.good["event_id"].to_list() == [event_id(i) for i in (0, 1, 2, 3, 5)]
    assert result.good["event_id"].n_unique() == result.good.height
    assert_accounts_for(raw, result)


def test_rows_sorted_by_offset_with_gaps_and_utc_dates() -> None:
    """Offsets need not be dense (transaction markers); +14:00 near midnight is yesterday in UTC."""
    events = [
        good_event(1, timestamp="2025-03-01T00:30:00+14:00"),
        good_event(2, timestamp="2025-02-28T23:30:00-03:00"),
        good_event(3, timestamp="2025-02-28T23:59:59.999999999Z"),
    ]
    raw = RawBatch(
        "raw-events", 0, [10, 12, 15], [0, 0, 0], [None] * 3, [encode(e) for e in events]
    )
    result = run(raw)
    assert result.good["kafka_offset"].to_list() == [10, 12, 15]
    assert result.good["event_date"].to_list() == [
        date(2025, 2, 28),
        date(2025, 3, 1),
        date(2025, 2, 28),
    ]
    assert_accounts_for(raw, result)


def _mixed_batch() -> RawBatch:
    values = good_values(300)
    for i, (_, value, _) in enumerate(CASES):
        values[i * 8] = value
    values[250] = values[10]  # a duplicate
    return raw_batch(values)


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd", statistics=True)
    return buffer.getvalue()


def test_same_input_twice_gives_identical_output() -> None:
    """P16: output depends only on the inputs, down to the Parquet bytes."""
    first, second = run(_mixed_batch()), run(_mixed_batch())
    assert first.good.equals(second.good)
    assert first.rejects == second.rejects
    assert first.filtered == second.filtered
    assert _parquet_bytes(first.good) == _parquet_bytes(second.good)


def test_local_time_zone_does_not_matter(monkeypatch: pytest.MonkeyPatch) -> None:
    """P16: Kiritimati (UTC+14) and UTC-12 hosts produce the same rows and files."""
    results = []
    try:
        for zone in ("Pacific/Kiritimati", "Etc/GMT+12"):
            monkeypatch.setenv("TZ", zone)
            time.tzset()
            results.append(run(_mixed_batch()))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert results[0].good.equals(results[1].good)
    assert results[0].rejects == results[1].rejects
    assert _parquet_bytes(results[0].good) == _parquet_bytes(results[1].good)


def test_mixed_batch_accounts_for_every_offset() -> None:
    raw = _mixed_batch()
    result = run(raw)
    assert_accounts_for(raw, result)
    assert result.reject_count == len(CASES)
    assert result.filtered_counts() == {"duplicate": 1, "bot": 0, "test_user": 0}
