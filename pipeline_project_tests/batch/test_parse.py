"""Parse stage: each P1-P3, P5-P9 and P13 poison pill gets its contract category, alone.

Each bad record is embedded among 100 good ones: only it may be rejected (guards the measured
whole-batch failure of Arrow/polars on one bad record).
"""

from __future__ import annotations

import json

import pytest

from pipeline_project.batch.parse import PARSED_SCHEMA, diagnose, parse_batch
from pipeline_project.events.contract import ERROR_STAGE, MAX_KEYS, MAX_MESSAGE_BYTES
from pipeline_project_tests.batch.batch_support import (
    FIRST_OFFSET,
    embedded,
    encode,
    good_event,
    good_values,
    raw_batch,
)

GOOD = encode(good_event(7))


def _splice(old: bytes, new: bytes, value: bytes = GOOD) -> bytes:
    assert old in value
    return value.replace(old, new, 1)


def _with_unknown(raw_json: bytes) -> bytes:
    """The good event with an extra top-level field holding raw JSON text."""
    return GOOD[:-1] + b',"extra":' + raw_json + b"}"


def _padded(total: int) -> bytes:
    """The good event padded with insignificant whitespace to exactly `total` bytes."""
    return b"{" + b" " * (total - len(GOOD)) + GOOD[1:]


PARSE_CASES: list[tuple[str, bytes | None, str]] = [
    # P1 non-UTF-8 (a BOM is invalid by policy)
    ("latin1", _splice(b'"shoes"', b'"caf\xe9"'), "invalid_utf8"),
    ("invalid_byte", _splice(b'"shoes"', b'"\xff\xfe"'), "invalid_utf8"),
    ("truncated_sequence", _splice(b'"shoes"', b'"cut \xe2\x82"'), "invalid_utf8"),
    ("overlong", _splice(b'"shoes"', b'"\xc0\xaf"'), "invalid_utf8"),
    ("cesu_surrogate", _splice(b'"shoes"', b'"\xed\xa0\x80"'), "invalid_utf8"),
    ("bom", b"\xef\xbb\xbf" + GOOD, "invalid_utf8"),
    # msgspec skips unknown fields unchecked: these once failed the whole batch
    ("in_unknown_value", _with_unknown(b'"\xff"'), "invalid_utf8"),
    ("in_unknown_key", GOOD[:-1] + b',"ex\xfftra":1}', "invalid_utf8"),
    # P2 invalid JSON
    ("truncated", GOOD[:-7], "invalid_json"),
    ("trailing_garbage", GOOD + b" x", "invalid_json"),
    ("trailing_brace", GOOD + b"}", "invalid_json"),
    ("two_objects", GOOD + b"\n" + GOOD, "invalid_json"),
    ("trailing_comma", GOOD[:-1] + b",}", "invalid_json"),
    ("unquoted_key", _splice(b'"event_type":', b"event_type:"), "invalid_json"),
    ("empty_payload", b"", "invalid_json"),
    ("whitespace_payload", b" \n", "invalid_json"),
    # P3 not an object / tombstone
    ("array", b"[" + GOOD + b"]", "not_object"),
    ("empty_array", b"[]", "not_object"),
    ("string", encode(GOOD.decode()), "not_object"),
    ("number", b"42", "not_object"),
    ("json_null", b"null", "not_object"),
    ("json_true", b"true", "not_object"),
    ("tombstone", None, "null_value"),
    # P6 non-finite numbers
    ("nan_price", _splice(b"19.99", b"NaN"), "non_finite"),
    ("infinity_price", _splice(b"19.99", b"Infinity"), "non_finite"),
    ("minus_infinity_price", _splice(b"19.99", b"-Infinity"), "non_finite"),
    ("overflow_price", _splice(b"19.99", b"1e400"), "non_finite"),
    ("overflow_in_unknown_field", _with_unknown(b"-1e400"), "non_finite"),
    ("nan_in_unknown_field", _with_unknown(b"[NaN]"), "non_finite"),
    # P7 duplicate keys (also via whitespace and escapes, and in nested objects)
    ("dup_same_value", GOOD[:-1] + b',"user_id":"user_7"}', "duplicate_key"),
    ("dup_other_value", GOOD[:-1] + b',"event_type":"click"}', "duplicate_key"),
    ("dup_spaced", GOOD[:-1] + b', "user_id" : "x"}', "duplicate_key"),
    ("dup_escaped_key", GOOD[:-1] + b',"user\\u005fid":"x"}', "duplicate_key"),
    ("dup_in_properties", _splice(b'"quantity":2', b'"quantity":2,"quantity":3'), "duplicate_key"),
    ("dup_in_unknown_object", _with_unknown(b'{"a":1,"a":1}'), "duplicate_key"),
    # P8 depth and width
    ("depth_1000_arrays", _with_unknown(b"[" * 1000 + b"]" * 1000), "too_deep"),
    ("depth_9_objects", _with_unknown(b'{"a":' * 7 + b"{}" + b"}" * 7), "too_deep"),
    ("depth_1000_objects", b'{"a":' * 1000 + b"{}" + b"}" * 1000, "too_deep"),
    (
        "wide_properties",
        _with_unknown(encode({f"k{i}": i for i in range(MAX_KEYS + 1)})),
        "too_large",
    ),
    ("wide_10000_keys", encode({f"k{i}": 0 for i in range(10_000)}), "too_large"),
    # P9 lone surrogate escapes (in values and keys)
    ("lone_high_surrogate", _splice(b'"shoes"', b'"shoes \\ud800 red"'), "invalid_unicode"),
    ("lone_low_surrogate", _splice(b'"shoes"', b'"\\udfff"'), "invalid_unicode"),
    ("high_surrogate_at_end", _splice(b'"shoes"', b'"x\\ud83d"'), "invalid_unicode"),
    ("surrogate_in_key", _with_unknown(b'{"\\udc00":1}'), "invalid_unicode"),
    # P13 size cap
    ("cap_plus_one", _padded(MAX_MESSAGE_BYTES + 1), "too_large"),
    ("huge", _padded(200_000), "too_large"),
]

TYPE_CASES: list[tuple[str, dict, str, str]] = [
    # P4 missing required fields (absent key); nulls and blanks are the validator's (empty_field)
    *[
        (f"missing_{name}", {name: ...}, "missing_field", name)
        for name in ("event_id", "event_type", "timestamp", "user_id", "session_id", "page_url")
    ],
    ("missing_user_agent", {"user_agent": ...}, "missing_field", "user_agent"),
    # P5 wrong JSON types
    ("bool_for_int", {"schema_version": True}, "wrong_type", "schema_version"),
    ("str_for_int", {"schema_version": "1"}, "wrong_type", "schema_version"),
    ("float_for_int", {"schema_version": 1.0}, "wrong_type", "schema_version"),
    ("number_for_str", {"user_id": 456}, "wrong_type", "user_id"),
    ("array_for_str", {"event_type": ["page_view"]}, "wrong_type", "event_type"),
    ("object_for_str", {"country": {"code": "US"}}, "wrong_type", "country"),
    ("array_properties", {"properties": []}, "wrong_type", "properties"),
    ("string_properties", {"properties": "product_id=42"}, "wrong_type", "properties"),
    ("str_quantity", {"properties": {"quantity": "2"}}, "wrong_type", "properties.quantity"),
    ("bool_quantity", {"properties": {"quantity": True}}, "wrong_type", "properties.quantity"),
    ("str_price", {"properties": {"price": "19.99"}}, "wrong_type", "properties.price"),
    ("number_currency", {"properties": {"currency": 840}}, "wrong_type", "properties.currency"),
    # P10 a number where the timestamp text belongs is a timestamp problem, not a type problem
    ("epoch_seconds", {"timestamp": 1740826800}, "invalid_timestamp", "timestamp"),
    ("epoch_millis", {"timestamp": 1740826800000}, "invalid_timestamp", "timestamp"),
    ("timestamp_object", {"timestamp": {"s": 1}}, "invalid_timestamp", "timestamp"),
]


def _type_case(overrides: dict) -> bytes:
    event = good_event(7)
    for key, value in overrides.items():
        if value is ...:
            del event[key]
        else:
            event[key] = value
    return encode(event)


@pytest.mark.parametrize(
    ("name", "value", "category"), PARSE_CASES, ids=[c[0] for c in PARSE_CASES]
)
def test_diagnose_names_the_contract_category(
    name: str, value: bytes | None, category: str
) -> None:
    defect = diagnose(value)
    assert defect is not None, name
    assert defect.category == category


@pytest.mark.parametrize(
    ("name", "value", "category"), PARSE_CASES, ids=[c[0] for c in PARSE_CASES]
)
def test_only_the_bad_record_is_rejected(name: str, value: bytes | None, category: str) -> None:
    raw, bad_offset = embedded(value)
    parsed = parse_batch(raw)
    assert [(r.offset, r.stage, r.category) for r in parsed.rejects] == [
        (bad_offset, "parse", category)
    ]
    assert parsed.frame.height == 100
    assert bad_offset not in parsed.frame["kafka_offset"].to_list()


@pytest.mark.parametrize(
    ("name", "overrides", "category", "field"), TYPE_CASES, ids=[c[0] for c in TYPE_CASES]
)
def test_json_type_errors_are_validate_stage(
    name: str, overrides: dict, category: str, field: str
) -> None:
    value = _type_case(overrides)
    assert diagnose(value) is None, "a clean JSON object has no parse-stage defect"
    raw, bad_offset = embedded(value)
    parsed = parse_batch(raw)
    [reject] = parsed.rejects
    assert (reject.offset, reject.stage, reject.category, reject.field) == (
        bad_offset,
        "validate",
        category,
        field,
    )
    assert parsed.frame.height == 100


def test_integer_literal_overflowing_a_float_field_is_non_finite() -> None:
    """Valid JSON (an int), but it becomes infinity as a price: caught by the typed decoder."""
    raw, bad_offset = embedded(_splice(b"19.99", b"9" * 400))
    [reject] = parse_batch(raw).rejects
    assert (reject.offset, reject.category, reject.field) == (
        bad_offset,
        "non_finite",
        "properties.price",
    )


def test_int_beyond_int64_is_rejected_alone() -> None:
    value = _splice(b'"quantity":2', b'"quantity":99999999999999999999')
    raw, bad_offset = embedded(value)
    parsed = parse_batch(raw)
    [reject] = parsed.rejects
    assert (reject.offset, reject.category, reject.field) == (
        bad_offset,
        "invalid_value",
        "properties.quantity",
    )
    assert parsed.frame["quantity"].to_list() == [2] * 100


@pytest.mark.parametrize(
    "value",
    [
        _padded(MAX_MESSAGE_BYTES),  # exactly at the cap
        json.dumps(good_event(7), indent=2, separators=(" ,", " : ")).encode(),  # whitespace
        _with_unknown(b'{"nested":[1,2,{"k":"v"}]}'),  # unknown fields are ignored
        _with_unknown(b'"say \\"a\\": \\"b\\":"'),  # key look-alikes inside a string
        encode(good_event(7, referrer=None, properties=None)),  # explicit nulls in optional fields
        _with_unknown(b'"\\ud83d\\ude00 \\u0000 \\u202e \\u200d"'),  # valid pair, NUL, bidi, ZWJ
        _splice(b'"shoes"', '"😀 café"'.encode()),  # 4-byte UTF-8 and accents
        _with_unknown(b"[" * 5 + b"]" * 5),  # depth 7 in all: within MAX_DEPTH
    ],
    ids=["at_cap", "whitespace", "unknown", "lookalike", "nulls", "escapes", "utf8", "depth7"],
)
def test_clean_edge_cases_parse(value: bytes) -> None:
    assert diagnose(value) is None
    parsed = parse_batch(raw_batch([value]))
    assert parsed.rejects == []
    assert parsed.frame.height == 1


def test_frame_has_the_parsed_schema_even_when_empty() -> None:
    assert parse_batch(raw_batch([])).frame.schema == PARSED_SCHEMA
    assert parse_batch(raw_batch([None, b"[]"])).frame.schema == PARSED_SCHEMA
    assert parse_batch(raw_batch(good_values(3))).frame.schema == PARSED_SCHEMA


def test_all_bad_batch_rejects_everything_in_offset_order() -> None:
    values = [value for _, value, _ in PARSE_CASES]
    parsed = parse_batch(raw_batch(values))
    assert parsed.frame.height == 0
    assert [r.offset for r in parsed.rejects] == list(
        range(FIRST_OFFSET, FIRST_OFFSET + len(values))
    )
    assert [r.category for r in parsed.rejects] == [c for _, _, c in PARSE_CASES]


def test_chunk_boundaries_do_not_matter() -> None:
    """Bad records on both sides of a chunk boundary keep their own offsets."""
    values = good_values(9_000)
    for at in (0, 4_095, 4_096, 8_191, 8_999):
        values[at] = b"[]"
    parsed = parse_batch(raw_batch(values))
    assert [r.offset - FIRST_OFFSET for r in parsed.rejects] == [0, 4_095, 4_096, 8_191, 8_999]
    offsets = parsed.frame["kafka_offset"]
    assert offsets.len() == 8_995 and offsets.is_sorted()


@pytest.mark.parametrize("native", [False, True], ids=["python", "native"])
def test_oversized_values_among_others_keep_their_offsets(native: bool) -> None:
    """Values over the cap are never decoded; they and their bad neighbours are named apart."""
    values: list[bytes | None] = good_values(50)
    bad = {
        0: (_padded(MAX_MESSAGE_BYTES + 1), "too_large"),
        1: (None, "null_value"),
        2: (_padded(200_000), "too_large"),
        3: (b"{", "invalid_json"),
        49: (_padded(MAX_MESSAGE_BYTES + 1), "too_large"),
    }
    for at, (value, _) in bad.items():
        values[at] = value
    parsed = parse_batch(raw_batch(values), native=native)
    assert [(r.offset - FIRST_OFFSET, r.category) for r in parsed.rejects] == [
        (at, category) for at, (_, category) in sorted(bad.items())
    ]
    offsets = parsed.frame["kafka_offset"]
    assert offsets.to_list() == [FIRST_OFFSET + i for i in range(50) if i not in bad]


def test_properties_are_flattened_into_typed_columns() -> None:
    frame = parse_batch(raw_batch([GOOD])).frame
    row = frame.row(0, named=True)
    assert (row["product_id"], row["product_category"], row["price"], row["quantity"]) == (
        "prod_7",
        "shoes",
        19.99,
        2,
    )
    assert row["schema_version"] == 1 and row["kafka_offset"] == FIRST_OFFSET


def test_reject_messages_are_bounded() -> None:
    value = _splice(b'"shoes"', b'"' + b"\xff" * 5_000 + b'"')
    [reject] = parse_batch(raw_batch([value])).rejects
    assert reject.category == "invalid_utf8" and len(reject.message) <= 500
    assert ERROR_STAGE[reject.category] == reject.stage
