"""The raw-event contract, defined once for the producer, the validator and the docs.

A raw event is a UTF-8 JSON object. The required fields alone make a valid event; optional fields
are validated when present. Error categories double as the producer's `bad:<class>` verdicts and the
DLQ's `dlq.error.category` header, so a test can compare what was sent with what was rejected, one
to one.
"""

from __future__ import annotations

import re
from typing import Final

SCHEMA_VERSION: Final = 1

# Event types and the category each one enriches to.
EVENT_CATEGORIES: Final[dict[str, str]] = {
    "page_view": "navigation",
    "click": "engagement",
    "search": "discovery",
    "add_to_cart": "cart",
    "remove_from_cart": "cart",
    "begin_checkout": "checkout",
    "purchase": "conversion",
    "login": "account",
    "signup": "account",
    "logout": "account",
}
EVENT_TYPES: Final[tuple[str, ...]] = tuple(EVENT_CATEGORIES)

REQUIRED_FIELDS: Final[tuple[str, ...]] = (
    "event_id",
    "event_type",
    "timestamp",
    "user_id",
    "session_id",
    "page_url",
    "user_agent",
)
# Optional top-level fields and their JSON types (validated when present and not null).
OPTIONAL_FIELDS: Final[dict[str, str]] = {
    "schema_version": "int",
    "referrer": "str",
    "country": "str",
    "ip": "str",
    "properties": "object",
}
# Optional entries of `properties`: JSON type and inclusive numeric bounds where they apply.
PROPERTY_TYPES: Final[dict[str, str]] = {
    "product_id": "str",
    "category": "str",
    "price": "number",
    "currency": "str",
    "quantity": "int",
    "query": "str",
    "results_count": "int",
    "order_id": "str",
    "revenue": "number",
    "element_id": "str",
    "method": "str",
}
NUMERIC_BOUNDS: Final[dict[str, tuple[float, float]]] = {
    "price": (0.0, 100_000.0),
    "revenue": (0.0, 10_000_000.0),
    "quantity": (1, 1_000),
    "results_count": (0, 1_000_000),
    "schema_version": (1, 1_000),
}
CURRENCIES: Final[tuple[str, ...]] = (
    "USD",
    "EUR",
    "GBP",
    "JPY",
    "CAD",
    "AUD",
    "BRL",
    "INR",
    "CHF",
    "SEK",
)

# Identifiers: 1-128 characters, a letter or digit first, no path separators, '=' or '%', no control
# or
# invisible characters. Keeps `../../etc`, `x=y`, `.hidden`, `_tmp` and RTL tricks out of ids.
ID_MAX_LENGTH: Final = 128
ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"
UUID_PATTERN: Final = (
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
COUNTRY_PATTERN: Final = r"^[A-Za-z]{2}$"
URL_PATTERN: Final = r"^(https?://[^\s/?#]+[^\s]*|/[^\s]*)$"
TEXT_MAX_LENGTH: Final = 2_048

# Parse limits: a message larger than this, nested deeper, or with more keys is rejected up front.
MAX_MESSAGE_BYTES: Final = 64 * 1024
MAX_DEPTH: Final = 8
MAX_KEYS: Final = 256

# Filtering rules (rows dropped on purpose, each counted by reason, never sent to the DLQ).
TEST_USER_PREFIX: Final = "test_"
BOT_UA_PATTERN: Final = r"(?i)(bot|crawler|spider|slurp|crawl|headless|python-requests|curl/|wget/)"
BOT_UA_RE: Final = re.compile(BOT_UA_PATTERN)
FILTER_REASONS: Final[tuple[str, ...]] = ("duplicate", "bot", "test_user")

# Error categories: the stage that detects each (the DLQ `dlq.error.stage` header).
PARSE_CATEGORIES: Final[tuple[str, ...]] = (
    "null_value",  # Kafka tombstone: the value is null
    "too_large",  # message over MAX_MESSAGE_BYTES, or an object with more than MAX_KEYS keys
    "invalid_utf8",  # bytes that are not strict UTF-8 (a BOM counts as invalid)
    "invalid_json",  # truncated, trailing garbage, concatenated objects, empty payload
    "invalid_unicode",  # lone surrogate escapes such as "\ud800"
    "non_finite",  # NaN, Infinity, or numbers that overflow to infinity (1e400)
    "duplicate_key",  # the same key twice in one object
    "too_deep",  # nesting deeper than MAX_DEPTH
    "not_object",  # valid JSON that is an array, string, number or null
)
VALIDATE_CATEGORIES: Final[tuple[str, ...]] = (
    "missing_field",  # a required field is absent
    "empty_field",  # a required field is null or an empty/blank string
    "wrong_type",  # a field of the wrong JSON type (bool for int, "1" for 1, ...)
    "invalid_format",  # ids, UUIDs, URLs, country codes that do not match their pattern
    "invalid_value",  # unknown event type or currency, a number out of its bounds
    "invalid_timestamp",  # not ISO-8601 with a zone: naive, epoch numbers, unparseable
    "timestamp_out_of_range",  # further in the past or future than the lateness/skew window
)
TRANSFORM_CATEGORIES: Final[tuple[str, ...]] = ("transform_error",)
ERROR_STAGE: Final[dict[str, str]] = {
    **{c: "parse" for c in PARSE_CATEGORIES},
    **{c: "validate" for c in VALIDATE_CATEGORIES},
    **{c: "transform" for c in TRANSFORM_CATEGORIES},
}
ERROR_CATEGORIES: Final[tuple[str, ...]] = tuple(ERROR_STAGE)

# Producer ground-truth verdicts: "good", a filter reason, or "bad:<category>".
GOOD: Final = "good"


def bad_verdict(category: str) -> str:
    """The truth-file verdict for a record that must land in the DLQ with `category`."""
    if category not in ERROR_STAGE:
        raise ValueError(f"unknown error category {category!r}")
    return f"bad:{category}"
