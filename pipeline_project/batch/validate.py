"""Validate stage: a pandera (polars backend) schema over the typed batch, one reject per record.

Every check has a readable name (the DLQ `rule`) bound to a contract category and a raw-event field.
A record failing several checks gets the first in RULES order, so counts are deterministic.

Before the checks, each row is read as its contract version says (`versioned_columns`): keys of a
later version are null in an older event, and an alias (v2's `url`) fills the field it stands for.
A version this code does not know is judged first and alone (`unsupported_schema_version`).

Two steps, so a range's parts can be validated as they are drained: `screen` (column types, then
every rule's expression in one polars pass) splits clean rows from suspects, and `judge` has
pandera's checks name each suspect's failure, once per range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData
from pandera.config import ValidationDepth, config_context
from pandera.errors import SchemaErrors

from pipeline_project.batch.parse import (
    FIELD_PATHS,
    OBJECT_COLUMNS,
    PARSED_SCHEMA,
)
from pipeline_project.batch.records import Reject
from pipeline_project.columns import OFFSET_COLUMN
from pipeline_project.events.contract import (
    ALIASES,
    CONTRACT,
    CURRENCIES,
    EVENT_TYPES,
    FORMAT,
    FORMAT_RULES,
    ID_COLUMNS,
    ID_FORBIDDEN_PATTERN,
    ID_MAX_LENGTH,
    MAX_LENGTH,
    NOT_EMPTY,
    NUMERIC_BOUNDS,
    PROPERTY_TYPES,
    RANGE,
    REQUIRED_FIELDS,
    SCHEMA_VERSION,
    TEXT_LIMITS,
    TEXT_MAX_LENGTH,
    TIMESTAMP_PATTERN,
    UNSUPPORTED_VERSION,
    VERSION_RULE,
    VERSIONED_FIELDS,
    FormatRule,
    rule_name,
)

TIMESTAMP_UTC_COLUMN = "_timestamp_utc"

_TEXT_COLUMNS: tuple[str, ...] = ("page_url", "user_agent", "referrer", "product_category")
_TEXT_COLUMNS += ("query", "element_id", "method")
_TEXT_COLUMNS += tuple(name for name, kind in VERSIONED_FIELDS.items() if kind == "str")
# Columns of keys a later contract version introduced, each with the key that brings it.
_VERSIONED_KEYS: dict[str, str] = {name: name for name in VERSIONED_FIELDS} | {
    column: obj
    for obj, columns in OBJECT_COLUMNS.items()
    if obj != "properties"
    for column in columns.values()
}


@dataclass(frozen=True)
class Rule:
    """One named check: `passes` is True for good rows (null = not applicable, counts as a pass)."""

    name: str
    column: str
    category: str
    passes: Callable[[pl.Expr], pl.Expr]
    ignore_na: bool = True

    @property
    def field(self) -> str:
        return FIELD_PATHS.get(self.column, self.column)

    def verdict(self) -> pl.Expr:
        """True where a row passes, as pandera judges it (null passes unless `ignore_na` is off)."""
        return self.passes(pl.col(self.column)).fill_null(self.ignore_na)


@dataclass(frozen=True)
class ValidatedBatch:
    """Rows that passed every check (with the parsed UTC timestamp added) and the rejects."""

    frame: pl.DataFrame
    rejects: list[Reject]


def parse_timestamp(column: pl.Expr) -> pl.Expr:
    """ISO-8601 text with a zone to Datetime(us, UTC); null if the grammar or calendar fails."""
    # chrono's "%+" (RFC 3339, any offset or Z) is ~2x faster than an explicit "%z" format; the
    # grammar check in front keeps its leniencies (space separator, 10+ fraction digits) out.
    parsed = column.str.to_datetime("%+", time_unit="us", time_zone="UTC", strict=False)
    return pl.when(column.str.contains(TIMESTAMP_PATTERN)).then(parsed)


def _is_blank(column: pl.Expr) -> pl.Expr:
    return column.str.strip_chars().str.len_bytes() == 0


def _matches_or_blank(pattern: str) -> Callable[[pl.Expr], pl.Expr]:
    """Optional text: blank counts as absent (normalised to null later), else it must match."""
    return lambda c: c.str.contains(pattern) | _is_blank(c)


def _known_or_blank(values: tuple[str, ...]) -> Callable[[pl.Expr], pl.Expr]:
    return lambda c: c.is_in(values) | _is_blank(c)


def _is_id(column: pl.Expr) -> pl.Expr:
    """Up to ID_MAX_LENGTH characters, none of them a control or invisible one (contract)."""
    return (column.str.len_chars() <= ID_MAX_LENGTH) & ~column.str.contains(ID_FORBIDDEN_PATTERN)


def _version() -> pl.Expr:
    return pl.col("schema_version").fill_null(SCHEMA_VERSION)


def _version_known(column: pl.Expr) -> pl.Expr:
    """Read when the rule runs, so a version taught to CONTRACT (tests) counts at once.

    Below 1 is schema_version_range's invalid_value, not a version from the future.
    """
    return (column < 1) | column.is_in(CONTRACT.numbers)


def versioned_columns() -> list[pl.Expr]:
    """Each row as its version reads it: later keys null in older events, aliases folded in.

    An alias fills its field only where the field is null, so `url_matches_page_url` can still
    see both when an event carries both.
    """
    version = _version()
    exprs = [
        pl.when(version.is_in(CONTRACT.versions_with(key))).then(pl.col(column)).alias(column)
        for column, key in _VERSIONED_KEYS.items()
    ]
    for alias, target in ALIASES.items():
        carries = version.is_in(CONTRACT.versions_with(alias))
        exprs.append(pl.when(carries).then(pl.col(alias)).alias(alias))
        folded = pl.when(carries).then(pl.coalesce(target, alias)).otherwise(pl.col(target))
        exprs.append(folded.alias(target))
    return exprs


def _required_rule(column: str) -> Rule:
    """A required field must be neither null nor blank (one check: each costs a batch scan)."""
    return Rule(
        rule_name(column, NOT_EMPTY),
        column,
        "empty_field",
        lambda c: c.is_not_null() & ~_is_blank(c),
        ignore_na=False,
    )


def _rules() -> list[Rule]:
    """Every check. Precedence: PARSED_SCHEMA column order, then this order within a column."""
    rules: list[Rule] = [Rule(VERSION_RULE, "schema_version", UNSUPPORTED_VERSION, _version_known)]
    rules += [_required_rule(column) for column in REQUIRED_FIELDS]
    rules += [_format_rule(rule) for rule in FORMAT_RULES]
    rules += [
        # Exact codes: "PAGE_VIEW" or " click" is the producer's invalid_value, not a spelling.
        Rule("event_type_known", "event_type", "invalid_value", lambda c: c.is_in(EVENT_TYPES)),
        Rule(
            "timestamp_iso8601",
            "timestamp",
            "invalid_timestamp",
            lambda _: pl.col(TIMESTAMP_UTC_COLUMN).is_not_null(),
        ),
        # timestamp_in_window is added per call (it depends on `now`).
        Rule(
            rule_name("schema_version", RANGE), "schema_version", "invalid_value", lambda c: c >= 1
        ),
        Rule("currency_known", "currency", "invalid_value", _known_or_blank(CURRENCIES)),
    ]
    rules += [
        Rule(
            rule_name(column, FORMAT), column, "invalid_format", lambda c: _is_id(c) | _is_blank(c)
        )
        for column in ID_COLUMNS
        if column not in REQUIRED_FIELDS
    ]
    rules += [
        Rule(rule_name(column, FORMAT), column, "invalid_format", _is_id)
        for column in ID_COLUMNS
        if column in REQUIRED_FIELDS
    ]
    rules += [_max_length_rule(column) for column in _TEXT_COLUMNS]
    rules += [
        Rule(
            f"{alias}_matches_{target}", alias, "invalid_value", lambda c, t=target: c == pl.col(t)
        )
        for alias, target in ALIASES.items()
    ]
    rules += [
        Rule(rule_name(name, RANGE), name, "invalid_value", _bounds(name))
        for name in PROPERTY_TYPES
        if name in NUMERIC_BOUNDS
    ]
    return rules


def _max_length_rule(column: str) -> Rule:
    limit = TEXT_LIMITS.get(column, TEXT_MAX_LENGTH)
    return Rule(
        rule_name(column, MAX_LENGTH), column, "invalid_value", lambda c: c.str.len_chars() <= limit
    )


def _format_rule(rule: FormatRule) -> Rule:
    """A contract FormatRule as a check: the whole value matches (or, if optional, is blank)."""
    if rule.optional:
        return Rule(rule.name, rule.column, "invalid_format", _matches_or_blank(rule.pattern))
    return Rule(rule.name, rule.column, "invalid_format", lambda c: c.str.contains(rule.pattern))


def _bounds(column: str) -> Callable[[pl.Expr], pl.Expr]:
    low, high = NUMERIC_BOUNDS[column]
    return lambda c: c.is_between(low, high)


def _window_rule(start: datetime, end: datetime) -> Rule:
    return Rule(
        "timestamp_in_window",
        "timestamp",
        "timestamp_out_of_range",
        lambda _: pl.col(TIMESTAMP_UTC_COLUMN).is_between(start, end),
    )


RULES: tuple[Rule, ...] = tuple(_rules())


def _check(rule: Rule) -> pa.Check:
    def run(data: PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(rule.passes(pl.col(data.key)).alias(rule.name))

    return pa.Check(run, name=rule.name, error=rule.name, ignore_na=rule.ignore_na)


@lru_cache(maxsize=64)
def event_schema(
    window_start: datetime, window_end: datetime, only: frozenset[str] | None = None
) -> pa.DataFrameSchema:
    """The pandera schema for one timestamp window; types are exact, so no coercion.

    `only`: the names of the checks to run (every column's type is still checked); None for all.
    """
    rules = [*RULES, _window_rule(window_start, window_end)]
    columns = {
        name: pa.Column(
            dtype,
            checks=[
                _check(r) for r in rules if r.column == name and (only is None or r.name in only)
            ],
            nullable=True,  # nulls are judged by the named *_not_empty checks
            required=True,
        )
        for name, dtype in PARSED_SCHEMA.items()
    }
    columns[TIMESTAMP_UTC_COLUMN] = pa.Column(pl.Datetime("us", "UTC"), nullable=True)
    return pa.DataFrameSchema(columns, name="raw_event", strict=False)


def rule_order(window_start: datetime, window_end: datetime) -> list[Rule]:
    """Rules in precedence order, as the schema for this window runs them.

    The version rule first: an event of an unknown version is judged by nothing else.
    """
    schema_rules = [*RULES, _window_rule(window_start, window_end)]
    ordered = [r for name in PARSED_SCHEMA for r in schema_rules if r.column == name]
    return sorted(ordered, key=lambda r: r.name != VERSION_RULE)


@dataclass(frozen=True)
class ScreenedBatch:
    """A batch split by one polars pass over every rule, before pandera judges anything.

    `clean` passes every rule; `suspects` fails at least one. Both carry the columns the checks
    read (versioned fields, the parsed UTC timestamp), so either can go on to `judge` or transform.
    """

    clean: pl.DataFrame
    suspects: pl.DataFrame


def validate_frame(
    frame: pl.DataFrame,
    *,
    now: datetime,
    max_lateness_days: int,
    max_clock_skew_seconds: int,
) -> ValidatedBatch:
    """Runs the schema eagerly (all checks, lazy error collection) and splits good rows from bad."""
    window = (now, max_lateness_days, max_clock_skew_seconds)
    screened = screen(frame, *window)
    judged = judge(screened.suspects, *window)
    if judged.frame.height == 0:
        return ValidatedBatch(screened.clean, judged.rejects)
    kept = pl.concat([screened.clean, judged.frame]).sort(OFFSET_COLUMN, maintain_order=True)
    return ValidatedBatch(kept, judged.rejects)


def screen(
    frame: pl.DataFrame,
    now: datetime,
    max_lateness_days: int,
    max_clock_skew_seconds: int,
) -> ScreenedBatch:
    """Checks every row's column types (pandera, schema only) and screens the rows by rule.

    Why a screen: pandera runs each check as its own query over the whole batch (250+ collects,
    ~0.1 s a call whatever the rows); the screen finds the rows failing any rule in one polars
    pass with every rule's expression at once, so the parts of a range can be screened as they
    are drained, and pandera judges only the suspects, once per range. A rule's null result
    counts as pandera counts it (a pass when the check ignores nulls), so the clean rows are
    exactly the rows pandera would pass.
    """
    start, end = _window(now, max_lateness_days, max_clock_skew_seconds)
    frame = frame.with_columns(versioned_columns()).with_columns(
        parse_timestamp(pl.col("timestamp")).alias(TIMESTAMP_UTC_COLUMN)
    )
    _run_schema(event_schema(start, end), frame, ValidationDepth.SCHEMA_ONLY)
    rules = rule_order(start, end)
    passes = [r.verdict() for r in rules]
    mask = frame.select(pl.all_horizontal(passes)).to_series()
    return ScreenedBatch(frame.filter(mask), frame.filter(~mask))


def judge(
    suspects: pl.DataFrame,
    now: datetime,
    max_lateness_days: int,
    max_clock_skew_seconds: int,
) -> ValidatedBatch:
    """Pandera's verdict on screened suspects: one reject per failing row, and any it passes."""
    if suspects.height == 0:
        return ValidatedBatch(suspects, [])
    start, end = _window(now, max_lateness_days, max_clock_skew_seconds)
    rules = rule_order(start, end)
    schema = event_schema(start, end, _failing(suspects, rules))
    failures = _run_schema(schema, suspects, ValidationDepth.SCHEMA_AND_DATA)
    if failures is None:
        return ValidatedBatch(suspects, [])
    return _split(suspects, failures, rules)


def _failing(suspects: pl.DataFrame, rules: list[Rule]) -> frozenset[str]:
    """The rules some suspect fails: pandera runs only those checks (the rest pass every row).

    Each check is a query of its own in pandera (~2 ms each, whatever the rows); the suspects of a
    range fail a few rules, not all of them.
    """
    fails = [(~r.verdict()).any() for r in rules]
    row = suspects.select([f.alias(r.name) for f, r in zip(fails, rules, strict=True)]).row(0)
    return frozenset(r.name for r, failed in zip(rules, row, strict=True) if failed)


def _window(
    now: datetime, max_lateness_days: int, max_clock_skew_seconds: int
) -> tuple[datetime, datetime]:
    """The accepted event-time window [now - lateness, now + skew]."""
    if now.tzinfo is None:
        raise ValueError("`now` must be timezone-aware")
    return now - timedelta(days=max_lateness_days), now + timedelta(seconds=max_clock_skew_seconds)


def _run_schema(
    schema: pa.DataFrameSchema, frame: pl.DataFrame, depth: ValidationDepth
) -> pl.DataFrame | None:
    """The pandera failure cases for `frame` (None when it passes), at the given depth.

    Explicit depth: an inherited PANDERA_VALIDATION_* setting must never turn the checks off.
    """
    with config_context(validation_enabled=True, validation_depth=depth):
        try:
            schema.validate(frame, lazy=True)
        except SchemaErrors as errors:
            if depth == ValidationDepth.SCHEMA_ONLY:
                raise RuntimeError(
                    f"event batch does not fit the parsed schema: {errors.failure_cases.rows()}"
                ) from None
            return errors.failure_cases
    return None


def _split(frame: pl.DataFrame, failures: pl.DataFrame, rules: list[Rule]) -> ValidatedBatch:
    """First failing rule per row (by precedence) becomes that row's reject."""
    if failures["index"].null_count():
        schema_level = failures.filter(pl.col("index").is_null())
        raise RuntimeError(f"event batch does not fit the parsed schema: {schema_level.rows()}")
    rank = pl.DataFrame(
        {"check": [r.name for r in rules], "rank": list(range(len(rules)))},
        schema={"check": pl.String, "rank": pl.Int32},
    )
    first = (
        failures.select("index", "check", "failure_case")
        .join(rank, on="check", how="left")
        .sort("index", "rank")
        .unique(subset="index", keep="first", maintain_order=True)
        .select("index", "check", "failure_case")
    )
    by_name = {r.name: r for r in rules}
    offsets = frame[OFFSET_COLUMN]
    rejects = []
    for index, check, value in first.iter_rows():
        rule = by_name[check]
        message = f"{rule.name} failed for {rule.field}={_preview(value)}"
        rejects.append(Reject.of(offsets[index], rule.category, rule.name, rule.field, message))
    bad = first["index"].cast(pl.UInt32)
    keep = frame.filter(~pl.int_range(pl.len(), dtype=pl.UInt32).is_in(bad.implode()))
    return ValidatedBatch(keep, rejects)


def _preview(value: str | None) -> str:
    if value is None:
        return "null"
    return repr(value[:80] + "…") if len(value) > 80 else repr(value)
