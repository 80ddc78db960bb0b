"""Transform stage: validated rows to lake rows (normalise, enrich, flatten, lineage), then filter.

Whole-batch polars expressions, no per-event Python. Output always has LAKE_SCHEMA (same columns,
order and dtypes, even when empty) and depends only on the inputs, so re-runs are identical.

Columns a later contract version adds (contract.VERSIONED_COLUMNS: v2's app_version, consent_*)
are in every batch's output, null for older events, so a batch of v1 events alone writes the same
schema as a mixed one and the table's schema never flips with the mix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import polars as pl

from pipeline_project.batch.parse import KAFKA_TS_MS_COLUMN, PROPERTY_COLUMNS
from pipeline_project.batch.records import Reject
from pipeline_project.batch.validate import TIMESTAMP_UTC_COLUMN
from pipeline_project.columns import (
    DATE_COLUMN,
    DLQ_OFFSET_COLUMN,
    DLQ_PARTITION_COLUMN,
    INGESTED_AT_COLUMN,
    KAFKA_PARTITION_COLUMN,
    KAFKA_TIMESTAMP_COLUMN,
    LINEAGE_COLUMNS,
    OFFSET_COLUMN,
    RECOVERY_COLUMNS,
    REPAIR_RULES_COLUMN,
    RUN_ID_COLUMN,
    TOPIC_COLUMN,
)
from pipeline_project.events.contract import (
    BOT_UA_PATTERN,
    EVENT_CATEGORIES,
    FILTER_REASONS,
    OPTIONAL_FIELDS,
    PROPERTY_TYPES,
    TEST_USER_PREFIX,
    VERSIONED_COLUMNS,
    VERSIONED_FIELDS,
)

UTC_US = pl.Datetime("us", "UTC")
_KIND_TYPES: dict[str, pl.DataType] = {
    "str": pl.String(),
    "int": pl.Int64(),
    "number": pl.Float64(),
    "bool": pl.Boolean(),
}

# The lake schema, defined once: every Parquet file has exactly these columns, in this order.
LAKE_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "event_type": pl.String(),
    "event_category": pl.String(),
    "timestamp": UTC_US,
    DATE_COLUMN: pl.Date(),
    "user_id": pl.String(),
    "session_id": pl.String(),
    "page_url": pl.String(),
    "page_path": pl.String(),
    "page_query": pl.String(),
    "page_section": pl.String(),
    "referrer": pl.String(),
    "user_agent": pl.String(),
    "device_type": pl.String(),
    "browser": pl.String(),
    "os": pl.String(),
    "is_bot": pl.Boolean(),
    "country": pl.String(),
    "ip": pl.String(),
    "schema_version": pl.Int64(),
    "product_id": pl.String(),
    "product_category": pl.String(),
    "price": pl.Float64(),
    "currency": pl.String(),
    "quantity": pl.Int64(),
    "query": pl.String(),
    "results_count": pl.Int64(),
    "order_id": pl.String(),
    "revenue": pl.Float64(),
    "element_id": pl.String(),
    "method": pl.String(),
    # Added by contract versions after 1, in version order (null in older events' rows).
    **{name: _KIND_TYPES[kind] for name, kind in VERSIONED_COLUMNS.items()},
    # Set only on rows recovered from the DLQ (dlq/reprocess.py): the DLQ record and repairs used.
    DLQ_PARTITION_COLUMN: pl.Int32(),
    DLQ_OFFSET_COLUMN: pl.Int64(),
    REPAIR_RULES_COLUMN: pl.String(),
    TOPIC_COLUMN: pl.String(),
    KAFKA_PARTITION_COLUMN: pl.Int32(),
    OFFSET_COLUMN: pl.Int64(),
    KAFKA_TIMESTAMP_COLUMN: UTC_US,
    INGESTED_AT_COLUMN: UTC_US,
    RUN_ID_COLUMN: pl.String(),
}
# Columns that may be null in the lake (optional in the raw event, or absent on the Kafka record).
NULLABLE_COLUMNS: frozenset[str] = frozenset(
    {"page_query", "referrer", "country", "ip", "schema_version", KAFKA_TIMESTAMP_COLUMN}
    | set(PROPERTY_COLUMNS.values())
    | set(VERSIONED_COLUMNS)
    | set(RECOVERY_COLUMNS)
)
COMMITTED_IDS_SCHEMA: dict[str, pl.DataType] = {DATE_COLUMN: pl.Date(), "event_id": pl.String()}

DEVICE_TYPES = ("bot", "tablet", "mobile", "desktop", "unknown")
# User-agent rules, first match wins (order matters: Edge and Opera UAs also say Chrome and Safari).
BROWSER_RULES: tuple[tuple[str, str], ...] = (
    ("Edge", r"Edg(e|A|iOS)?/"),
    ("Opera", r"OPR/|Opera"),
    ("Samsung Internet", r"SamsungBrowser/"),
    ("Firefox", r"Firefox/|FxiOS/"),
    ("Chrome", r"Chrome/|CriOS/|Chromium/"),
    ("Safari", r"Safari/"),
    ("Internet Explorer", r"MSIE |Trident/"),
)
OS_RULES: tuple[tuple[str, str], ...] = (
    ("iOS", r"iPhone|iPad|iPod"),
    ("Android", r"Android"),
    ("Windows", r"Windows"),
    ("ChromeOS", r"CrOS"),
    ("macOS", r"Macintosh|Mac OS X"),
    ("Linux", r"Linux|X11"),
)
_TABLET = r"(?i)ipad|tablet|kindle|silk/|playbook"
_MOBILE = r"(?i)mobi|iphone|ipod|windows phone|blackberry|opera mini"
_DESKTOP = r"(?i)windows nt|macintosh|x11|linux|cros"
_URL_SCHEME_HOST = r"^https?://[^/?#\s]*"
# Optional text: blank means absent and is stored as null.
_OPTIONAL_TEXT = (
    tuple(name for name, kind in OPTIONAL_FIELDS.items() if kind == "str")
    + tuple(PROPERTY_COLUMNS[name] for name, kind in PROPERTY_TYPES.items() if kind == "str")
    + tuple(name for name, kind in VERSIONED_FIELDS.items() if kind == "str")
)


@dataclass
class LakeRows:
    """Lake rows of a batch before filtering, plus records the transform could not complete."""

    rows: pl.DataFrame
    rejects: list[Reject] = field(default_factory=list)

    def dates(self) -> list[date]:
        """Distinct UTC event dates, sorted: what a committed-ids lookup needs."""
        return self.rows.get_column(DATE_COLUMN).unique().sort().to_list()


@dataclass
class FilteredRows:
    """Rows to write, and source offsets dropped on purpose by reason (contract.FILTER_REASONS)."""

    good: pl.DataFrame
    filtered: dict[str, list[int]]


def empty_lake_frame() -> pl.DataFrame:
    """A zero-row frame with the exact lake schema."""
    return pl.DataFrame(schema=LAKE_SCHEMA)


def to_lake_rows(
    frame: pl.DataFrame,
    *,
    topic: str,
    partition: int,
    run_id: str,
    ingested_at: datetime,
) -> LakeRows:
    """Normalises, enriches, flattens and adds lineage; rows come out in kafka_offset order."""
    if ingested_at.tzinfo is None:
        raise ValueError("`ingested_at` must be timezone-aware")
    rows = (
        frame.join(
            user_agent_table(frame.get_column("user_agent")),
            on="user_agent",
            how="left",
            maintain_order="left",
        )
        .with_columns(_normalised())
        .with_columns(_url_parts())
        .with_columns(_derived())
        .select(
            *(
                pl.col(name)
                for name in LAKE_SCHEMA
                if name not in LINEAGE_COLUMNS + RECOVERY_COLUMNS
            ),
            *(pl.lit(None, dtype=LAKE_SCHEMA[name]).alias(name) for name in RECOVERY_COLUMNS),
            pl.lit(topic, dtype=pl.String).alias(TOPIC_COLUMN),
            pl.lit(partition, dtype=pl.Int32).alias(KAFKA_PARTITION_COLUMN),
            pl.col(OFFSET_COLUMN),
            _kafka_timestamp().alias(KAFKA_TIMESTAMP_COLUMN),
            pl.lit(ingested_at.astimezone(UTC), dtype=UTC_US).alias(INGESTED_AT_COLUMN),
            pl.lit(run_id, dtype=pl.String).alias(RUN_ID_COLUMN),
        )
    )
    rows = rows.select(pl.col(name).cast(dtype) for name, dtype in LAKE_SCHEMA.items())
    return _split_incomplete(sorted_by_offset(rows))


def sorted_by_offset(rows: pl.DataFrame, column: str = OFFSET_COLUMN) -> pl.DataFrame:
    """Rows in `column` order; a frame already in order (the usual case) is not copied by a sort."""
    if rows.get_column(column).is_sorted():
        return rows
    return rows.sort(column, maintain_order=True)


# Expressions run in stages (each with_columns reuses the previous one's columns), because one big
# select would recompute shared sub-expressions such as the URL split for every derived column.
def _normalised() -> list[pl.Expr]:
    """Canonical ids and codes, UTC timestamp, blank optional text as null, URL without host."""
    optional = {name: _blank_to_null(pl.col(name)) for name in _OPTIONAL_TEXT}
    optional["country"] = optional["country"].str.to_uppercase()
    without_host = pl.col("page_url").str.replace(_URL_SCHEME_HOST, "")
    return [
        pl.col("event_id").str.to_lowercase(),
        pl.col(TIMESTAMP_UTC_COLUMN).alias("timestamp"),
        *(expr.alias(name) for name, expr in optional.items()),
        without_host.str.splitn("#", 2).struct.field("field_0").alias("_path_query"),
    ]


def _url_parts() -> list[pl.Expr]:
    parts = pl.col("_path_query").str.splitn("?", 2)
    path = parts.struct.field("field_0")
    return [
        pl.when(path == "").then(pl.lit("/")).otherwise(path).alias("page_path"),
        parts.struct.field("field_1").alias("page_query"),
    ]


def _derived() -> list[pl.Expr]:
    section = pl.col("page_path").str.strip_prefix("/").str.splitn("/", 2).struct.field("field_0")
    section = section.str.to_lowercase()
    return [
        pl.col("event_type").replace_strict(EVENT_CATEGORIES, default=None).alias("event_category"),
        pl.col("timestamp").dt.date().alias(DATE_COLUMN),
        pl.when(section == "").then(pl.lit("home")).otherwise(section).alias("page_section"),
    ]


def _blank_to_null(column: pl.Expr) -> pl.Expr:
    return pl.when(column.str.strip_chars().str.len_bytes() > 0).then(column)


def _kafka_timestamp() -> pl.Expr:
    """Kafka's CreateTime/LogAppendTime in ms; negative means "not available" and becomes null."""
    ms = pl.col(KAFKA_TS_MS_COLUMN)
    return pl.when(ms >= 0).then(ms * 1000).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def user_agent_table(user_agents: pl.Series) -> pl.DataFrame:
    """device_type, browser, os, is_bot per distinct user agent (batches repeat few UAs)."""
    table = pl.DataFrame({"user_agent": user_agents.unique()})
    ua = pl.col("user_agent")
    is_bot = ua.str.contains(BOT_UA_PATTERN)
    android = ua.str.contains("Android")
    tablet = ua.str.contains(_TABLET) | (android & ~ua.str.contains("(?i)mobile"))
    device = (
        pl.when(is_bot)
        .then(pl.lit("bot"))
        .when(tablet)
        .then(pl.lit("tablet"))
        .when(ua.str.contains(_MOBILE) | android)
        .then(pl.lit("mobile"))
        .when(ua.str.contains(_DESKTOP))
        .then(pl.lit("desktop"))
        .otherwise(pl.lit("unknown"))
    )
    return table.with_columns(
        device.alias("device_type"),
        _first_match(BROWSER_RULES).alias("browser"),
        _first_match(OS_RULES).alias("os"),
        is_bot.alias("is_bot"),
    )


def _first_match(rules: tuple[tuple[str, str], ...], default: str = "Other") -> pl.Expr:
    ua = pl.col("user_agent")
    expr: Any = pl  # pl.when(...) first, then .when(...) on the chain
    for label, pattern in rules:
        expr = expr.when(ua.str.contains(pattern)).then(pl.lit(label))
    return expr.otherwise(pl.lit(default))


def _split_incomplete(rows: pl.DataFrame) -> LakeRows:
    """Rows with a null where the lake needs a value become transform_error rejects."""
    required = [c for c in LAKE_SCHEMA if c not in NULLABLE_COLUMNS]
    incomplete = pl.any_horizontal(pl.col(required).is_null())
    bad = rows.filter(incomplete)
    if bad.height == 0:
        return LakeRows(rows)
    rejects = []
    for row in bad.select(OFFSET_COLUMN, *required).iter_rows(named=True):
        column = next(c for c in required if row[c] is None)
        message = f"transform left {column} empty"
        rejects.append(
            Reject.of(row[OFFSET_COLUMN], "transform_error", f"{column}_derived", column, message)
        )
    return LakeRows(rows.filter(~incomplete), rejects)


def filter_rows(rows: pl.DataFrame, committed_ids: pl.DataFrame | None = None) -> FilteredRows:
    """Drops bots, then test users, then duplicates, keeping each dropped offset by reason.

    Bots and test users are judged first, so a re-sent bot event counts as "bot" whether its copies
    share a batch or not. A duplicate is a (event_date, event_id) already committed or seen at a
    lower offset in this batch, the same key the committed-ids lookup uses.
    """
    bot = pl.col("is_bot")
    test_user = ~bot & pl.col("user_id").str.to_lowercase().str.starts_with(TEST_USER_PREFIX)
    keys = [DATE_COLUMN, "event_id"]
    first_in_batch = pl.col(OFFSET_COLUMN) == pl.col(OFFSET_COLUMN).min().over(keys)
    reasons = rows.select(
        OFFSET_COLUMN,
        *keys,
        bot.alias("bot"),
        test_user.alias("test_user"),
    )
    candidates = reasons.filter(~pl.col("bot") & ~pl.col("test_user"))
    duplicate = ~first_in_batch
    if committed_ids is not None and committed_ids.height:
        known = committed_ids.select(pl.col(k).cast(COMMITTED_IDS_SCHEMA[k]) for k in keys)
        known = known.with_columns(pl.col("event_id").str.to_lowercase())
        known = known.unique().with_columns(pl.lit(True).alias("_committed"))
        candidates = candidates.join(known, on=keys, how="left", maintain_order="left")
        duplicate = duplicate | pl.col("_committed").fill_null(False)
    dup_offsets = candidates.filter(duplicate).get_column(OFFSET_COLUMN)
    filtered = {
        "bot": reasons.filter(pl.col("bot")).get_column(OFFSET_COLUMN).to_list(),
        "test_user": reasons.filter(pl.col("test_user")).get_column(OFFSET_COLUMN).to_list(),
        "duplicate": dup_offsets.sort().to_list(),
    }
    dropped = pl.concat(
        [reasons.filter(pl.col("bot") | pl.col("test_user")).get_column(OFFSET_COLUMN), dup_offsets]
    )
    good = rows.filter(~pl.col(OFFSET_COLUMN).is_in(dropped.implode()))
    return FilteredRows(good, {reason: filtered[reason] for reason in FILTER_REASONS})
