"""The raw-event contract, defined once for the producer, the validator and the docs.

A raw event is a UTF-8 JSON object: the producer's side of the pipeline's contract. The required
fields alone make a valid event (`event_id` a UUID, `event_type` a known type, `timestamp` ISO-8601
with a zone, `user_id` and `session_id` ids, `page_url` an absolute URL or a path starting with
`/`, `user_agent` non-empty); optional fields are validated when present. Error categories double
as the producer's `bad:<class>` verdicts and the DLQ's `dlq.error.category` header, so a test can
compare what was sent with what was rejected, one to one.

The contract is versioned (`VERSIONS` below, the one place that defines each version): an event
says which version it follows in `schema_version`, and one without it follows version 1.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final

# The version of an event that carries no `schema_version` (or null): the contract before versions.
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

# Identifiers (user_id, session_id, properties.product_id and .order_id): 1-128 characters (code
# points) of any script, none of them a control or invisible character, i.e. none whose Unicode
# general category is one of ID_FORBIDDEN_CATEGORIES: Cc (controls: NUL, tab, newline, ...), Cf
# (format: zero-width space and joiner, bidi overrides, BOM, tags), Cs (surrogates), Co (private
# use), Cn (unassigned), Zl and Zp (line and paragraph separators). So `josé`, `user_😀`, `a/b`,
# `ユーザー` and `user 456` are ids, `user\u200b456` is not; an emoji sequence joined by U+200D
# (ZWJ, Cf) is not either. Why so open: no id ever shapes a path (the lake partitions by date
# only), so refusing `a/b` protected nothing and lost real users' events.
ID_MAX_LENGTH: Final = 128
ID_FORBIDDEN_CATEGORIES: Final[tuple[str, ...]] = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
# The same set as a pattern for polars (Rust regex). It leaves out Cs: a polars string is valid
# UTF-8 and cannot hold a surrogate (the parse stage rejects lone surrogate escapes). Cn follows
# the regex engine's Unicode tables, which may be newer than Python's `unicodedata`: a character
# assigned since is an id character to the validator and "unassigned" to `is_valid_id`.
ID_FORBIDDEN_PATTERN: Final = (
    "[" + "".join(rf"\p{{{c}}}" for c in ID_FORBIDDEN_CATEGORIES if c != "Cs") + "]"
)
UUID_PATTERN: Final = (
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
COUNTRY_PATTERN: Final = r"^[A-Za-z]{2}$"
URL_PATTERN: Final = r"^(https?://[^\s/?#]+[^\s]*|/[^\s]*)$"
# Loose IPv4/IPv6 shape: keeps free text and injection strings out, leaves exact parsing to readers.
IP_PATTERN: Final = r"^[0-9A-Fa-f:.]{2,45}$"
# The one accepted timestamp grammar: RFC 3339 date-time, seconds required, 1-9 fraction digits, and
# a zone (`Z` or ±HH:MM / ±HHMM). Naive times and epoch numbers do not match.
TIMESTAMP_PATTERN: Final = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})$"
TEXT_MAX_LENGTH: Final = 2_048

# Parse limits: a message larger than this, nested deeper, or with more keys is rejected up front.
MAX_MESSAGE_BYTES: Final = 64 * 1024
MAX_DEPTH: Final = 8
MAX_KEYS: Final = 256

# Filtering rules (rows dropped on purpose, each counted by reason, never sent to the DLQ).
# A test user is a user_id that starts with "test_" in any letter case (test_x, TEST_x, Test_x);
# nothing else (a "test" inside an id, "tester_1", "test-1") is one.
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
# A schema_version newer than any this code knows: held in the DLQ, not lost. Reprocessing re-sends
# such a record without counting an attempt until the code knows its version, then brings it in.
UNSUPPORTED_VERSION: Final = "unsupported_schema_version"
VALIDATE_CATEGORIES: Final[tuple[str, ...]] = (
    UNSUPPORTED_VERSION,
    "missing_field",  # a required field is absent
    "empty_field",  # a required field is null or an empty/blank string
    "wrong_type",  # a field of the wrong JSON type (bool for int, "1" for 1, ...)
    "invalid_format",  # ids, UUIDs, URLs, country codes that do not match their pattern
    "invalid_value",  # unknown event type or currency, a number out of its bounds, version < 1
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

# --- the named checks on one value ---------------------------------------------------------------
#
# Defined once: batch/validate.py runs them over a batch as polars expressions, the per-event
# baseline of benchmarks/bench.py record by record. A rule's name is the DLQ's `dlq.error.rule`.

VERSION_RULE: Final = "schema_version_known"  # a version this code does not know: judged first


@dataclass(frozen=True)
class FormatRule:
    """A text column whose whole value must match `pattern`, else `invalid_format`.

    `optional`: null or blank passes (a blank optional text is stored as null).
    """

    name: str
    column: str
    pattern: str
    optional: bool = True


FORMAT_RULES: Final[tuple[FormatRule, ...]] = (
    FormatRule("event_id_uuid", "event_id", UUID_PATTERN, optional=False),
    FormatRule("page_url_format", "page_url", URL_PATTERN, optional=False),
    FormatRule("referrer_format", "referrer", URL_PATTERN),
    FormatRule("country_format", "country", COUNTRY_PATTERN),
    FormatRule("ip_format", "ip", IP_PATTERN),
)
# Columns holding ids (`is_valid_id`, rule `<column>_format`): required ones must be ids, optional
# ones (properties.product_id and .order_id) may be blank.
ID_COLUMNS: Final[tuple[str, ...]] = ("user_id", "session_id", "product_id", "order_id")
# The suffixes of the per-column rules: `<column>_not_empty` (required fields, empty_field),
# `<column>_max_length` and `<column>_range` (invalid_value), `<column>_format` (ids).
NOT_EMPTY, MAX_LENGTH, RANGE, FORMAT = "not_empty", "max_length", "range", "format"


def rule_name(column: str, check: str) -> str:
    """The name of a per-column rule: `rule_name("price", RANGE)` is `price_range`."""
    return f"{column}_{check}"


# Producer ground-truth verdicts: "good", a filter reason, or "bad:<category>".
GOOD: Final = "good"


def bad_verdict(category: str) -> str:
    """The truth-file verdict for a record that must land in the DLQ with `category`."""
    if category not in ERROR_STAGE:
        raise ValueError(f"unknown error category {category!r}")
    return f"bad:{category}"


# --- versions ------------------------------------------------------------------------------------
#
# Each version is what it changes in the one before it; an event of version N may carry every key
# of versions 1..N. A key a later version introduces means nothing in an older event, which ignores
# it as it ignores any unknown key: a v1 event's `app_version` is dropped, its `url` does not stand
# in for `page_url`. (Such a key is still type-checked, as the decoder reads one union of keys.)

JSON_KINDS: Final[tuple[str, ...]] = ("str", "int", "number", "bool")


@dataclass(frozen=True)
class ContractVersion:
    """What one version of the raw event adds to the version before it.

    `fields`: new optional top-level keys and their JSON kinds (JSON_KINDS); each is a lake column
    of the same name. `objects`: new optional nested objects, key -> {entry: kind}, each entry a
    lake column `<object>_<entry>`. `aliases`: new raw keys that may carry an existing field
    instead of its own key (same lake column; both present must agree). `max_chars`: the limit of
    a new text field (TEXT_MAX_LENGTH otherwise).
    """

    number: int
    fields: Mapping[str, str] = field(default_factory=dict)
    objects: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)
    max_chars: Mapping[str, int] = field(default_factory=dict)

    def keys(self) -> tuple[str, ...]:
        """The top-level keys this version introduces."""
        return (*self.fields, *self.objects, *self.aliases)


# Version 1 is the contract above (REQUIRED_FIELDS, OPTIONAL_FIELDS, PROPERTY_TYPES); later
# versions are deltas. Adding a version: append it here, with its tests (README, "Adding a schema
# version").
VERSIONS: Final[tuple[ContractVersion, ...]] = (
    ContractVersion(1),
    ContractVersion(
        2,
        fields={"app_version": "str"},
        objects={"consent": {"analytics": "bool", "marketing": "bool"}},
        aliases={"url": "page_url"},
        max_chars={"app_version": 64},
    ),
)


def object_column(obj: str, entry: str) -> str:
    """The lake column of a nested object's entry.

    `properties` (v1) flattens unprefixed, `category` renamed so it is not confused with
    event_category; a later version's object is prefixed (`consent_analytics`).
    """
    if obj == "properties":
        return "product_category" if entry == "category" else entry
    return f"{obj}_{entry}"


def _later_fields(versions: Iterable[ContractVersion]) -> dict[str, str]:
    return {name: kind for v in versions for name, kind in v.fields.items()}


def _later_objects(versions: Iterable[ContractVersion]) -> dict[str, dict[str, str]]:
    return {name: dict(entries) for v in versions for name, entries in v.objects.items()}


# What the decoder reads: the union of every version's keys, fixed when the code loads.
VERSIONED_FIELDS: Final[dict[str, str]] = _later_fields(VERSIONS)
ALIASES: Final[dict[str, str]] = {k: t for v in VERSIONS for k, t in v.aliases.items()}
NESTED_OBJECTS: Final[dict[str, dict[str, str]]] = {
    "properties": dict(PROPERTY_TYPES),
    **_later_objects(VERSIONS),
}


def _lake_columns(version: ContractVersion) -> dict[str, str]:
    """The lake columns a version adds: its fields, then its objects' entries."""
    return dict(version.fields) | {
        object_column(obj, entry): kind
        for obj, entries in version.objects.items()
        for entry, kind in entries.items()
    }


# Lake columns that versions after 1 add, with their JSON kinds: version by version, so a new
# version's columns come after every existing one (the table's column order only grows).
VERSIONED_COLUMNS: Final[dict[str, str]] = {
    column: kind for v in VERSIONS for column, kind in _lake_columns(v).items()
}
TEXT_LIMITS: Final[dict[str, int]] = {k: n for v in VERSIONS for k, n in v.max_chars.items()}


class Contract:
    """The registry of known versions that every stage asks at run time.

    Why a registry and not a constant: a record of a version this code does not know waits in the
    DLQ (`unsupported_schema_version`), and a test must be able to teach the code that version
    (`taught`) to show that reprocessing then brings the record in, once.
    """

    def __init__(self, versions: Iterable[ContractVersion]) -> None:
        self._versions: dict[int, ContractVersion] = {}
        for version in versions:
            self._add(version)

    def _add(self, version: ContractVersion) -> None:
        if self._versions and version.number <= self.newest:
            raise ValueError(f"version {version.number} must be newer than {self.newest}")
        if not self._versions and version.number != SCHEMA_VERSION:
            raise ValueError(f"the first version must be {SCHEMA_VERSION}")
        _check_version(version, self._keys())
        self._versions[version.number] = version

    def _keys(self) -> set[str]:
        """Every top-level key of the known versions (v1's included)."""
        v1 = {*REQUIRED_FIELDS, *OPTIONAL_FIELDS}
        return v1.union(*(v.keys() for v in self._versions.values()))

    @property
    def numbers(self) -> tuple[int, ...]:
        return tuple(self._versions)

    @property
    def newest(self) -> int:
        return max(self._versions)

    def knows(self, number: int) -> bool:
        return number in self._versions

    def versions_with(self, key: str) -> tuple[int, ...]:
        """The known versions whose events may carry `key` (a v1 key: all of them)."""
        first = next((v.number for v in self._versions.values() if key in v.keys()), None)
        if first is None:
            return self.numbers
        return tuple(n for n in self._versions if n >= first)

    def required_keys(self, number: int) -> list[tuple[str, tuple[str, ...]]]:
        """Each required field of a version with the keys that may carry it, in contract order."""
        return [
            (name, (name, *(a for a, t in ALIASES.items() if t == name and self._has(number, a))))
            for name in REQUIRED_FIELDS
        ]

    def _has(self, number: int, key: str) -> bool:
        return number in self.versions_with(key)

    def teach(self, version: ContractVersion) -> None:
        """Adds a newer version that only renumbers (no new keys): it has the newest one's keys.

        A version with new keys needs new columns in the decoder and the lake, which are fixed when
        the code loads, so it belongs in VERSIONS.
        """
        if version.keys():
            raise ValueError("a taught version cannot add keys: add it to VERSIONS instead")
        self._add(version)

    def forget(self, number: int) -> None:
        """Removes a taught version (tests)."""
        if number not in self._versions or number in {v.number for v in VERSIONS}:
            raise ValueError(f"version {number} was not taught")
        del self._versions[number]

    @contextmanager
    def taught(self, number: int) -> Iterator[ContractVersion]:
        """A test's temporary knowledge of one more version."""
        version = ContractVersion(number)
        self.teach(version)
        try:
            yield version
        finally:
            self.forget(number)


def _check_version(version: ContractVersion, known: set[str]) -> None:
    """What the stages can read: new keys, JSON_KINDS only, aliases of required fields.

    An alias of an optional field would send every row without it to the exact classifier; a new
    kind needs a column type in parse and transform (and in the native decoder).
    """
    kinds = [*version.fields.values(), *(k for e in version.objects.values() for k in e.values())]
    if any(kind not in JSON_KINDS for kind in kinds):
        raise ValueError(f"version {version.number}: kinds must be among {JSON_KINDS}")
    if known & set(version.keys()):
        raise ValueError(
            f"version {version.number} redefines {sorted(known & set(version.keys()))}"
        )
    if any(target not in REQUIRED_FIELDS for target in version.aliases.values()):
        raise ValueError(f"version {version.number}: an alias must carry a required field")


CONTRACT: Final = Contract(VERSIONS)


def is_valid_id(text: str) -> bool:
    """The id rule in Python (producer, tests): see ID_FORBIDDEN_CATEGORIES."""
    if not 0 < len(text) <= ID_MAX_LENGTH:
        return False
    category = unicodedata.category
    return not any(category(ch) in ID_FORBIDDEN_CATEGORIES for ch in text)
