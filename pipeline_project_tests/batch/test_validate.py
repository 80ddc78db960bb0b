"""Validate stage: the pandera schema's named rules, one reject per bad record.

Each bad record is embedded among 100 good ones and must be the only one rejected, with the
contract category, the rule name (DLQ `rule`) and the raw-event field (DLQ `field`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandera.polars as pa
import polars as pl
import pytest
from pandera.config import ValidationDepth, config_context

from pipeline_project.batch.parse import parse_batch
from pipeline_project.batch.validate import (
    RULES,
    TIMESTAMP_UTC_COLUMN,
    event_schema,
    parse_timestamp,
    screen,
    validate_frame,
)
from pipeline_project.columns import OFFSET_COLUMN
from pipeline_project.events.contract import ERROR_STAGE, VALIDATE_CATEGORIES
from pipeline_project_tests.batch.batch_support import (
    LATENESS_DAYS,
    NOW,
    SKEW_SECONDS,
    embedded,
    encode,
    event_id,
    good_event,
    good_values,
    raw_batch,
)

# Ids with a control or invisible character (contract.ID_FORBIDDEN_CATEGORIES), or too long.
BAD_IDS = [
    "user\x00456",  # Cc: NUL
    "user\n456",  # Cc: newline
    "user\x7f",  # Cc: DEL
    "user\u200b456",  # Cf: zero-width space
    "user\u200d456",  # Cf: zero-width joiner
    "user_\u202e654",  # Cf: right-to-left override
    "\ufeffuser",  # Cf: byte order mark
    "user\U000e0041",  # Cf: tag letter
    "user\ue000",  # Co: private use
    "user\U0010fffe",  # Cn: a noncharacter, never assigned
    "user\u2028x",  # Zl: line separator
    "user\u2029x",  # Zp: paragraph separator
    "u" * 129,
    "é" * 129,  # 129 characters (258 bytes): the limit counts characters
]
# Ids in any language, which earlier contracts refused.
GOOD_IDS = ["josé", "user_😀", "a/b", "../../etc/passwd", "x=y", "%2F", ".hidden", "_tmp", "-rf"]
GOOD_IDS += ["a b", "jose\u0301", "ユーザー", "пользователь", "مستخدم", "🇫🇷", "u" * 128, "é" * 128]

CASES: list[tuple[str, dict, str, str, str]] = [
    # (name, overrides, category, rule, field)
    *[
        (f"{field}_{label}", {field: value}, "empty_field", f"{field}_{rule}", field)
        for field in ("event_id", "event_type", "timestamp", "user_id", "session_id")
        for label, value, rule in (("null", None, "not_empty"), ("empty", "", "not_empty"))
    ],
    ("page_url_blank", {"page_url": "   "}, "empty_field", "page_url_not_empty", "page_url"),
    ("user_agent_null", {"user_agent": None}, "empty_field", "user_agent_not_empty", "user_agent"),
    ("user_agent_tab", {"user_agent": "\t"}, "empty_field", "user_agent_not_empty", "user_agent"),
    *[
        (f"event_id_{i}", {"event_id": v}, "invalid_format", "event_id_uuid", "event_id")
        for i, v in enumerate(["12345", "not-a-uuid", event_id(1) + "0", "{" + event_id(1) + "}"])
    ],
    *[
        (f"user_id_{i}", {"user_id": v}, "invalid_format", "user_id_format", "user_id")
        for i, v in enumerate(BAD_IDS)
    ],
    (
        "session_id_path",
        {"session_id": "sess\u200b1"},
        "invalid_format",
        "session_id_format",
        "session_id",
    ),
    *[
        (f"page_url_{i}", {"page_url": v}, "invalid_format", "page_url_format", "page_url")
        for i, v in enumerate(["javascript:alert(1)", "shop.example.com/p", "/a b", "p/x.html"])
    ],
    ("referrer", {"referrer": "google"}, "invalid_format", "referrer_format", "referrer"),
    ("country_3", {"country": "USA"}, "invalid_format", "country_format", "country"),
    ("country_digit", {"country": "1A"}, "invalid_format", "country_format", "country"),
    ("ip", {"ip": "not an ip"}, "invalid_format", "ip_format", "ip"),
    *[
        (f"event_type_{v}", {"event_type": v}, "invalid_value", "event_type_known", "event_type")
        for v in ("pageview", "PAGE_VIEW", " click", "checkout_complete")
    ],
    ("schema_v0", {"schema_version": 0}, "invalid_value", "schema_version_range", "schema_version"),
    (
        "schema_v-1",
        {"schema_version": -1},
        "invalid_value",
        "schema_version_range",
        "schema_version",
    ),
    *[
        (
            f"schema_v{v}",
            {"schema_version": v},
            "unsupported_schema_version",
            "schema_version_known",
            "schema_version",
        )
        for v in (3, 9, 10**6, 2**63 - 1)
    ],
    (
        "ua_too_long",
        {"user_agent": "x" * 2049},
        "invalid_value",
        "user_agent_max_length",
        "user_agent",
    ),
    *[
        (
            f"{prop}_{value}",
            {"properties": {**good_event()["properties"], prop: value}},
            code,
            rule,
            f"properties.{prop}",
        )
        for prop, value, code, rule in (
            ("price", -4.99, "invalid_value", "price_range"),
            ("price", 150_000.0, "invalid_value", "price_range"),
            ("quantity", 0, "invalid_value", "quantity_range"),
            ("quantity", 5_000, "invalid_value", "quantity_range"),
            ("revenue", -1, "invalid_value", "revenue_range"),
            ("results_count", -1, "invalid_value", "results_count_range"),
            ("currency", "XYZ", "invalid_value", "currency_known"),
            ("currency", "usd", "invalid_value", "currency_known"),
            ("product_id", "p\u200b1", "invalid_format", "product_id_format"),
            ("order_id", "o\x001", "invalid_format", "order_id_format"),
            ("query", "q" * 2049, "invalid_value", "query_max_length"),
        )
    ],
    *[
        (f"ts_{i}", {"timestamp": v}, "invalid_timestamp", "timestamp_iso8601", "timestamp")
        for i, v in enumerate(
            [
                "2025-03-01T11:00:00",  # naive
                "2025-03-01 11:00:00",  # naive, space
                "2025-03-01",  # date only
                "2025-03-01T11:00Z",  # no seconds
                "1740826800",  # epoch seconds as text
                "Sat, 01 Mar 2025 11:00:00 GMT",  # RFC 2822
                "yesterday",
                "2025-13-45T25:61:00Z",  # impossible
                "2025-02-29T12:00:00Z",  # not a leap year
                "+10000-01-01T00:00:00Z",
                "2025-03-01T11:00:00.1234567890Z",  # 10 fraction digits
                "2025-03-01T11:00:00+25:00",  # offset out of range
                "2025-03-01 11:00:00Z",  # space instead of T
            ]
        )
    ],
    *[
        (
            f"window_{i}",
            {"timestamp": v},
            "timestamp_out_of_range",
            "timestamp_in_window",
            "timestamp",
        )
        for i, v in enumerate(
            [
                "2035-03-01T12:00:00Z",  # +10 years
                "2024-01-26T00:00:00Z",  # -400 days
                "0001-01-01T00:00:00Z",
                "9999-12-31T23:59:59.999Z",
                "1970-01-01T00:00:00+00:00",
                "2038-01-19T03:14:08Z",
                "2025-03-01T12:05:01Z",  # 1 s beyond the clock skew
                "2025-02-22T11:59:59.999999Z",  # 1 us beyond the lateness
            ]
        )
    ],
]


def _validate(values: list[bytes | None]):
    parsed = parse_batch(raw_batch(values))
    assert parsed.rejects == []
    return validate_frame(
        parsed.frame,
        now=NOW,
        max_lateness_days=LATENESS_DAYS,
        max_clock_skew_seconds=SKEW_SECONDS,
    )


@pytest.mark.parametrize(
    ("name", "overrides", "category", "rule", "field"), CASES, ids=[c[0] for c in CASES]
)
def test_only_the_bad_record_is_rejected(
    name: str, overrides: dict, category: str, rule: str, field: str
) -> None:
    raw, bad_offset = embedded(encode(good_event(500, **overrides)))
    parsed = parse_batch(raw)
    validated = validate_frame(
        parsed.frame,
        now=NOW,
        max_lateness_days=LATENESS_DAYS,
        max_clock_skew_seconds=SKEW_SECONDS,
    )
    [reject] = validated.rejects
    assert (reject.offset, reject.category, reject.rule, reject.field) == (
        bad_offset,
        category,
        rule,
        field,
    )
    assert reject.stage == ERROR_STAGE[category] == "validate"
    assert rule in reject.message and len(reject.message) <= 500
    assert validated.frame.height == 100
    assert bad_offset not in validated.frame["kafka_offset"].to_list()


@pytest.mark.parametrize(
    "overrides",
    [
        {"timestamp": "2025-02-22T12:00:00Z"},  # exactly now - lateness
        {"timestamp": "2025-03-01T12:05:00Z"},  # exactly now + skew
        {"timestamp": "2025-03-02T02:00:00+14:00"},  # Kiribati, = 12:00 UTC
        {"timestamp": "2025-03-01T09:00:00-0300"},
        {"timestamp": "2025-03-01T11:00:00.123456789+00:00"},
        {"referrer": "", "country": " ", "ip": ""},  # blank optional text = absent
        {"referrer": None, "country": None, "ip": None, "properties": None},
        {"page_url": "/search?q=red+shoes"},
        {"country": "de"},
        {"properties": {"query": "shoes \u0000 \u202e \u200d 😀", "results_count": 0}},
        {"properties": {"price": 0, "quantity": 1000, "revenue": 10_000_000}},
        *({"user_id": i, "session_id": i} for i in GOOD_IDS),
        *({"properties": {"product_id": i, "order_id": i}} for i in GOOD_IDS),
        {"properties": {"product_id": " ", "order_id": ""}},  # blank optional id = absent
    ],
)
def test_valid_variants_pass(overrides: dict) -> None:
    validated = _validate([encode(good_event(1, **overrides))])
    assert validated.rejects == []
    assert validated.frame.height == 1


def test_first_rule_in_precedence_order_wins() -> None:
    bad = encode(good_event(1, event_id="", user_id="../x", timestamp="yesterday", country="USA"))
    [reject] = _validate([bad]).rejects
    assert reject.rule == "event_id_not_empty"


def test_every_rule_has_a_validate_category_and_a_unique_name() -> None:
    names = [r.name for r in RULES]
    assert len(names) == len(set(names))
    assert {r.category for r in RULES} <= set(VALIDATE_CATEGORIES)


def test_schema_is_a_pandera_schema_with_named_checks() -> None:
    schema = event_schema(NOW - timedelta(days=7), NOW)
    assert isinstance(schema, pa.DataFrameSchema)
    names = {check.name for column in schema.columns.values() for check in column.checks}
    assert {"user_id_format", "event_id_uuid", "timestamp_in_window", "price_range"} <= names


def test_checks_run_even_if_pandera_is_configured_off() -> None:
    """An inherited PANDERA_VALIDATION_* setting must not silently disable the data checks."""
    bad = encode(good_event(1, user_id="user\u200b1"))
    with config_context(validation_enabled=False, validation_depth=ValidationDepth.SCHEMA_ONLY):
        [reject] = _validate([bad]).rejects
    assert reject.rule == "user_id_format"


def test_all_bad_and_empty_batches() -> None:
    values = [encode(good_event(i, **overrides)) for i, (_, overrides, *_) in enumerate(CASES)]
    validated = _validate(values)
    assert validated.frame.height == 0
    assert [r.category for r in validated.rejects] == [c[2] for c in CASES]
    empty = _validate([])
    assert empty.rejects == [] and empty.frame.height == 0


def test_the_screen_doubts_exactly_the_rows_pandera_fails() -> None:
    """The screen's one polars pass must agree with pandera's checks row for row.

    Every bad case among good events: pandera over the whole batch (all checks) fails the same
    rows the screen sends to it as suspects, so a clean row never skips a check it would fail.
    """
    values = good_values(40)
    for i, (_, overrides, *_) in enumerate(CASES):
        values.insert(2 * i, encode(good_event(1000 + i, **overrides)))
    frame = parse_batch(raw_batch(values)).frame
    screened = screen(frame, NOW, LATENESS_DAYS, SKEW_SECONDS)
    prepared = pl.concat([screened.clean, screened.suspects]).sort(OFFSET_COLUMN)
    schema = event_schema(
        NOW - timedelta(days=LATENESS_DAYS), NOW + timedelta(seconds=SKEW_SECONDS)
    )
    with config_context(validation_depth=ValidationDepth.SCHEMA_AND_DATA):
        with pytest.raises(pa.errors.SchemaErrors) as failed:
            schema.validate(prepared, lazy=True)
    rows = failed.value.failure_cases.get_column("index").drop_nulls().unique()
    assert set(prepared[OFFSET_COLUMN].gather(rows).to_list()) == set(
        screened.suspects[OFFSET_COLUMN].to_list()
    )
    assert screened.suspects.height == len(CASES)
    assert screened.clean.height == 40


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        validate_frame(
            parse_batch(raw_batch([])).frame,
            now=NOW.replace(tzinfo=None),
            max_lateness_days=1,
            max_clock_skew_seconds=1,
        )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-01T11:00:00Z", datetime(2025, 3, 1, 11, tzinfo=UTC)),
        ("2025-03-01T00:30:00+14:00", datetime(2025, 2, 28, 10, 30, tzinfo=UTC)),
        ("2025-02-28T23:30:00-03:00", datetime(2025, 3, 1, 2, 30, tzinfo=UTC)),
        ("2025-03-01T08:00:00-0300", datetime(2025, 3, 1, 11, tzinfo=UTC)),
        ("2025-03-01T11:00:00.123456789Z", datetime(2025, 3, 1, 11, 0, 0, 123456, tzinfo=UTC)),
        ("2025-03-01T11:00:00.5+01:00", datetime(2025, 3, 1, 10, 0, 0, 500000, tzinfo=UTC)),
        ("2024-02-29T12:00:00Z", datetime(2024, 2, 29, 12, tzinfo=UTC)),
        ("2038-01-19T03:14:08Z", datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC)),
        ("2025-02-29T12:00:00Z", None),
        ("2025-03-01T11:00:00", None),
        ("2025-03-01 11:00:00Z", None),
        ("1740826800", None),
        (None, None),
    ],
)
def test_timestamp_parsing(text: str | None, expected: datetime | None) -> None:
    frame = pl.DataFrame({"timestamp": [text]}, schema={"timestamp": pl.String})
    parsed = frame.select(parse_timestamp(pl.col("timestamp")).alias(TIMESTAMP_UTC_COLUMN))
    assert parsed.schema[TIMESTAMP_UTC_COLUMN] == pl.Datetime("us", "UTC")
    assert parsed.item() == expected
