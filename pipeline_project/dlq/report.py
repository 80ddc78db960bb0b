"""The DLQ report: what failed and why, counted once per failed source record, and what came of it.

Three Delta tables beside `events` in the lake, lowercase identifiers as every lake table:
- `dlq_report_log`: every DLQ record read so far (one row per copy, decoded, payload preview),
  appended once per materialization. It is also the read progress: the next read of a DLQ
  partition starts after the highest offset it holds for that topic, so an append is data and
  progress in one commit (a crash before it only re-reads). It lives in the lake, not under the
  state dir, because it is not a cache: the DLQ topic's retention deletes records the report still
  counts, so it could not be rebuilt from the topic.
- `dlq_report_records`: one row per failed source record (first error = why it failed, last error
  = why it still fails, copies, resolution from reprocessing), replaced whole in one commit.
- `dlq_report_summary`: long counts (dimension, key, records), replaced whole in one commit.
The counts, samples, new categories/rules and checks are returned for the Dagster asset and the CLI.

Records of a schema version the code does not know yet (`unsupported_schema_version`) are named
apart, by version: they are not broken, they wait for a release that knows their version, after
which reprocessing brings them in.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

import polars as pl
from deltalake import write_deltalake

from pipeline_project.batch.backlog import partition_states
from pipeline_project.batch.epochs import lake_epoch
from pipeline_project.batch.plan import PartitionState, plan_ranges
from pipeline_project.batch.run import UNBOUNDED
from pipeline_project.batch.transform import UTC_US
from pipeline_project.dlq import resolution
from pipeline_project.dlq.records import PREVIEW_CHARS, DlqRecord, escape_payload
from pipeline_project.dlq.reprocess import DlqMessage, decode_batch
from pipeline_project.events.contract import ERROR_CATEGORIES, UNSUPPORTED_VERSION
from pipeline_project.health import OK, check_dlq_rate, read_lake, window_start
from pipeline_project.kafka.access import DESCRIBE, READ, require
from pipeline_project.kafka.drain import drain_range, make_consumer
from pipeline_project.lake.derived import ensure_table, replace_whole, retry_on_conflict
from pipeline_project.lake.location import Lake, lake_of
from pipeline_project.lake.read import scan_table
from pipeline_project.lake.table import lake_errors, open_table
from pipeline_project.settings import Settings
from pipeline_project.utc import UTC_HOUR_FORMAT

log = logging.getLogger(__name__)

TABLE_LOG = "dlq_report_log"
TABLE_RECORDS = "dlq_report_records"
TABLE_SUMMARY = "dlq_report_summary"
OUTPUTS = {"log": TABLE_LOG, "records": TABLE_RECORDS, "summary": TABLE_SUMMARY}
TOP_MESSAGES = 10
SAMPLES = 5
FAILING = "failing"  # the status of a record no reprocessing resolved (yet)
DIMENSIONS = ("category", "rule", "field", "stage", "source_partition", "hour", "status")
MALFORMED_CATEGORY = "<no source headers>"
# The version in a future-version reject's message (parse.version_message).
_VERSION_IN_MESSAGE = re.compile(r"schema_version='?(-?\d+)")

# One row per DLQ record read (every copy); source_* null when its headers were unusable.
LOG_SCHEMA: dict[str, pl.DataType] = {
    "dlq_topic": pl.String(),
    "dlq_partition": pl.Int32(),
    "dlq_offset": pl.Int64(),
    "source_topic": pl.String(),
    "source_partition": pl.Int32(),
    "source_offset": pl.Int64(),
    "source_timestamp": UTC_US,
    "attempt": pl.Int32(),
    "stage": pl.String(),
    "category": pl.String(),
    "rule": pl.String(),
    "field": pl.String(),
    "message": pl.String(),
    "failed_at": pl.String(),
    "payload_bytes": pl.Int64(),
    "payload": pl.String(),  # escaped, truncated preview
}
_SOURCE = ["source_topic", "source_partition", "source_offset"]
LOG_KEY = ["dlq_topic", "dlq_partition", "dlq_offset"]
_ERROR = ["stage", "category", "rule", "field", "message"]


# ------------------------------------------------------------------------------- what was read


@dataclass
class ReadSoFar:
    """The report's log of this DLQ topic and where each partition's next read starts."""

    log: pl.DataFrame
    offsets: dict[int, int] = field(default_factory=dict)
    first: bool = True  # no log table yet: this is the first report

    def seen(self, column: str) -> set[str]:
        """Categories or rules already seen (of records with usable source headers)."""
        known = self.log.filter(pl.col("source_topic").is_not_null())
        return set(known.get_column(column).drop_nulls().to_list())


def load_log(lake: Lake, topic: str) -> ReadSoFar:
    """The log table's rows of `topic` (one row per DLQ coordinates) and the offsets after them.

    After `topic new-epoch` of the DLQ topic its offsets restart: rows of epoch n name the topic
    `<topic>@<n>` (`dlq_topic`), and only the current epoch's rows say where reading goes on.
    """
    scan = scan_table(lake, TABLE_LOG)
    if scan is None:
        return ReadSoFar(pl.DataFrame(schema=LOG_SCHEMA))
    current = epoch_name(topic, lake_epoch(open_table(lake), topic))
    ours = (pl.col("dlq_topic") == topic) | pl.col("dlq_topic").str.starts_with(f"{topic}@")
    with lake_errors(lake, f"reading {TABLE_LOG}"):
        rows = scan.filter(ours).collect()
    rows = rows.select(list(LOG_SCHEMA)).cast(LOG_SCHEMA)  # type: ignore[arg-type]
    rows = rows.unique(LOG_KEY, keep="last", maintain_order=True)
    now = rows.filter(pl.col("dlq_topic") == current)
    ends = now.group_by("dlq_partition").agg(pl.col("dlq_offset").max() + 1)
    return ReadSoFar(rows, {int(p): int(o) for p, o in ends.rows()}, first=False)


def append_log(lake: Lake, rows: pl.DataFrame) -> None:
    """Appends newly read DLQ records in one commit: the report's data and progress at once."""
    data = pl.DataFrame(schema=LOG_SCHEMA).to_arrow(compat_level=pl.CompatLevel.newest())
    ensure_table(lake, TABLE_LOG, data.schema)
    if rows.height == 0:
        return
    with lake_errors(lake, f"writing {TABLE_LOG}"):
        write_deltalake(
            lake.table_uri(TABLE_LOG),
            rows.to_arrow(compat_level=pl.CompatLevel.newest()),
            mode="append",
            storage_options=lake.options(),
        )


def replace_output(lake: Lake, table: str, rows: pl.DataFrame) -> int | None:
    """Replaces an output table whole (created first, in its own commit); its version after.

    Two reports at once: the loser of the overwrite conflict writes again (both computed the
    report from the log, the later one wins).
    """
    ensure_table(lake, table, rows.to_arrow(compat_level=pl.CompatLevel.newest()).schema)
    retry_on_conflict(lambda: replace_whole(lake, table, rows), f"replacing {table}")
    written = open_table(lake, table)
    return written.version() if written is not None else None


# ---------------------------------------------------------------------------------------- reading


def epoch_name(topic: str, epoch: int) -> str:
    """The `dlq_topic` of the log's rows read in `epoch` of the DLQ topic (`topic@n` after 0)."""
    return topic if epoch == 0 else f"{topic}@{epoch}"


def log_rows(topic: str, messages: Iterable[DlqMessage]) -> pl.DataFrame:
    """Decoded DLQ records of `topic` as LOG_SCHEMA rows.

    Built as columns, one comprehension each: a dict per row took 1.0 s on 200k records, columns
    0.65 s. A message whose headers were unusable (`record` None) keeps its DLQ coordinates and
    has nulls elsewhere.
    """
    messages = list(messages)
    records = [m.record for m in messages]
    known = [r for r in records if r is not None]
    # Columns of the records with usable headers, then spread over every message.
    columns: dict[str, list[Any]] = {
        "source_topic": [r.source_topic for r in known],
        "source_partition": [r.source_partition for r in known],
        "source_offset": [r.source_offset for r in known],
        "source_timestamp": [r.source_time for r in known],
        "attempt": [r.attempt for r in known],
        **{name: list(map(attrgetter(name), known)) for name in _ERROR},
        "failed_at": [r.failed_at for r in known],
        "payload": [escape_payload(r.value, PREVIEW_CHARS) for r in known],
    }
    if len(known) < len(records):
        columns = {name: _spread(values, records) for name, values in columns.items()}
    columns |= {
        "dlq_topic": [topic] * len(messages),
        "dlq_partition": [m.partition for m in messages],
        "dlq_offset": [m.offset for m in messages],
        "payload_bytes": [0 if r is None or r.value is None else len(r.value) for r in records],
    }
    return pl.DataFrame(columns, schema=LOG_SCHEMA)


def _spread(values: list[Any], records: list[DlqRecord | None]) -> list[Any]:
    """`values` (one per record that is not None) in the records' places, None elsewhere."""
    found = iter(values)
    return [None if r is None else next(found) for r in records]


def read_new(settings: Settings, offsets: dict[int, int]) -> pl.DataFrame:
    """DLQ records after the report's offsets (the log's highest offset + 1 per partition).

    A partition restarts at its low watermark when retention deleted past the report's offset (or
    the topic was recreated below it).
    """
    require(settings, {settings.dlq_topic: (READ, DESCRIBE)})
    consumer = make_consumer(settings)
    frames = [pl.DataFrame(schema=LOG_SCHEMA)]
    try:
        starts = []
        for s in partition_states(settings, consumer, settings.dlq_topic):
            start = offsets.get(s.partition, s.low)
            start = start if s.low <= start <= s.high else s.low
            starts.append(PartitionState(s.partition, start, s.low, s.high, s.epoch))
        plan = plan_ranges(settings.dlq_topic, starts, settings.max_range_events, UNBOUNDED)
        for rng in plan.ranges:
            raw = drain_range(consumer, rng, settings.drain_timeout_seconds, with_headers=True)
            name = epoch_name(settings.dlq_topic, rng.epoch)
            frames.append(log_rows(name, decode_batch(raw)))
    finally:
        consumer.close()
    return pl.concat(frames)


# ------------------------------------------------------------------------------------- the report


def per_source(log_frame: pl.DataFrame, book: resolution.Book) -> pl.DataFrame:
    """One row per failed source record: its first and last error, copies, and resolution."""
    known = log_frame.filter(pl.col("source_topic").is_not_null())
    order = ["attempt", "dlq_partition", "dlq_offset"]
    first = known.sort(order).unique(_SOURCE, keep="first", maintain_order=True)
    last = known.sort(order).unique(_SOURCE, keep="last", maintain_order=True)
    stats = known.group_by(_SOURCE).agg(
        pl.len().alias("copies"),
        pl.col("attempt").max().alias("attempts"),
        pl.col("failed_at").min().alias("first_failed_at"),
        pl.col("failed_at").max().alias("last_failed_at"),
    )
    frame = (
        first.select(*_SOURCE, "source_timestamp", *_ERROR, "payload_bytes", "payload")
        .join(last.select(*_SOURCE, *(pl.col(c).alias(f"last_{c}") for c in _ERROR)), on=_SOURCE)
        .join(stats, on=_SOURCE)
    )
    status = [_status(book, key) for key in frame.select(_SOURCE).rows()]
    return frame.with_columns(
        pl.Series("status", [s for s, _, _ in status], dtype=pl.String),
        pl.Series("resolved_detail", [d for _, d, _ in status], dtype=pl.String),
        pl.Series("repair_rules", [r for _, _, r in status], dtype=pl.String),
    ).sort(_SOURCE)


def _status(book: resolution.Book, key: tuple[str, int, int]) -> tuple[str, str, str]:
    entry = book.get(key)
    if entry is None or not entry.terminal:
        return FAILING, "" if entry is None else entry.outcome, ""
    return entry.outcome, entry.detail, ",".join(entry.rules)


def summary_frame(records: pl.DataFrame) -> pl.DataFrame:
    """Long counts (dimension, key, records) over every DIMENSIONS entry: the summary table."""
    with_hour = records.with_columns(
        pl.col("source_timestamp").dt.truncate("1h").dt.strftime(UTC_HOUR_FORMAT).alias("hour")
    )
    parts = [
        with_hour.group_by(pl.col(d).cast(pl.String).fill_null("").alias("key"))
        .agg(pl.len().alias("records"))
        .with_columns(pl.lit(d).alias("dimension"))
        .select("dimension", "key", "records")
        for d in DIMENSIONS
    ]
    return pl.concat(parts).sort("dimension", "records", "key", descending=[False, True, False])


@dataclass(frozen=True)
class CheckOutcome:
    """One asset check's verdict, Dagster-free (`severity` is "warn" or "error")."""

    name: str
    passed: bool
    severity: str
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    """One materialization's findings (what the asset shows and the checks judge)."""

    records: pl.DataFrame  # per source record
    summary: pl.DataFrame
    dlq_records: int
    new_records: int
    malformed: int
    new_categories: list[str]
    new_rules: list[str]
    checks: list[CheckOutcome]
    tables: dict[str, str]  # "log"/"records"/"summary" -> table URI
    versions: dict[str, int | None]  # their Delta versions after this materialization
    first: bool

    def counts(self, dimension: str) -> dict[str, int]:
        rows = self.summary.filter(pl.col("dimension") == dimension).select("key", "records")
        return dict(rows.rows())

    def top_messages(self, n: int = TOP_MESSAGES) -> list[tuple[str, str, int]]:
        """(category, message, records) of the commonest first errors."""
        top = (
            self.records.group_by("category", "message")
            .len()
            .sort("len", "category", descending=[True, False])
        )
        return [tuple(row) for row in top.head(n).rows()]  # type: ignore[misc]

    def waiting_versions(self) -> dict[str, int]:
        """Still-failing records whose schema version is newer than the code, per version."""
        waiting = self.records.filter(
            (pl.col("status") == FAILING) & (pl.col("last_category") == UNSUPPORTED_VERSION)
        )
        versions = Counter(_version_of(m) for m in waiting.get_column("last_message").to_list())
        return dict(sorted(versions.items(), key=lambda kv: (len(kv[0]), kv[0])))

    def samples(self, n: int = SAMPLES) -> list[dict[str, Any]]:
        """One still-failing record (else any) per commonest category: escaped, truncated."""
        rows = self.records.sort(pl.col("status") != FAILING, "source_offset")
        picked = rows.unique("category", keep="first", maintain_order=True).head(n)
        return [
            {
                "source": f"{r['source_topic']}[{r['source_partition']}]@{r['source_offset']}",
                "category": r["category"],
                "rule": r["rule"],
                "status": r["status"],
                "payload": r["payload"],
            }
            for r in picked.iter_rows(named=True)
        ]


def _version_of(message: str | None) -> str:
    found = _VERSION_IN_MESSAGE.search(message or "")
    return found.group(1) if found else "?"


def build(settings: Settings, now: datetime | None = None) -> Report:
    """Reads what is new in the DLQ, appends it to the log, replaces the output tables."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    lake = lake_of(settings)
    so_far = load_log(lake, settings.dlq_topic)
    new_log = read_new(settings, so_far.offsets)
    append_log(lake, new_log)
    merged = pl.concat([so_far.log, new_log]).unique(LOG_KEY, keep="last", maintain_order=True)
    book = resolution.load_book(lake)  # the resolution ledger is the table's log
    records = per_source(merged, book)
    summary = summary_frame(records)
    versions = write_outputs(lake, records, summary)
    report = Report(
        records=records,
        summary=summary,
        dlq_records=merged.height,
        new_records=new_log.height,
        malformed=merged.filter(pl.col("source_topic").is_null()).height,
        new_categories=_new(records, so_far, "category"),
        new_rules=_new(records, so_far, "rule"),
        checks=[],
        tables={name: lake.table_uri(table) for name, table in OUTPUTS.items()},
        versions=versions,
        first=so_far.first,
    )
    report.checks = checks(settings, report, moment)
    return report


def write_outputs(
    lake: Lake, records: pl.DataFrame, summary: pl.DataFrame
) -> dict[str, int | None]:
    """Replaces the records and summary tables; every report table's version after that."""
    versions = {
        "records": replace_output(lake, TABLE_RECORDS, records),
        "summary": replace_output(lake, TABLE_SUMMARY, summary),
    }
    log_table = open_table(lake, TABLE_LOG)
    versions["log"] = log_table.version() if log_table is not None else None
    return versions


def _new(records: pl.DataFrame, so_far: ReadSoFar, column: str) -> list[str]:
    """First or last errors' categories (rules) that no earlier report had seen."""
    now = set(records.get_column(column).to_list()) | set(
        records.get_column(f"last_{column}").to_list()
    )
    return sorted(c for c in now - so_far.seen(column) if c is not None)


# ----------------------------------------------------------------------------------------- checks

RATE_CHECK = "dlq_rate_below_threshold"
CATEGORY_CHECK = "no_unknown_category"
AGE_CHECK = "oldest_unresolved_age"


def checks(settings: Settings, report: Report, now: datetime) -> list[CheckOutcome]:
    """The three asset checks on the report (thresholds from PIPELINE_* settings)."""
    return [rate_check(settings, now), category_check(report), age_check(settings, report, now)]


def rate_check(settings: Settings, now: datetime) -> CheckOutcome:
    """DLQ records / consumed records in the recent window, as `pipeline-project health` sees it."""
    state = read_lake(lake_of(settings), settings.raw_topic, window_start(settings, now))
    if state.error is not None:
        return CheckOutcome(RATE_CHECK, False, "warn", f"unknown: {state.error}", {})
    check = check_dlq_rate(settings, state.ingested(settings.raw_topic), now)
    return CheckOutcome(RATE_CHECK, check.status == OK, "warn", check.detail, dict(check.values))


def category_check(report: Report) -> CheckOutcome:
    """Every category must be one of the contract's: an unknown one is a new failure mode."""
    seen = Counter(report.records.get_column("category").to_list())
    seen.update(report.records.get_column("last_category").to_list())
    unknown = {c: n for c, n in seen.items() if c not in ERROR_CATEGORIES}
    if report.malformed:
        unknown[MALFORMED_CATEGORY] = report.malformed
    detail = f"unknown: {unknown}" if unknown else "every category is in the contract"
    return CheckOutcome(CATEGORY_CHECK, not unknown, "error", detail, {"unknown": unknown})


def age_check(settings: Settings, report: Report, now: datetime) -> CheckOutcome:
    """The oldest still-failing record must be younger than the configured limit (hours)."""
    limit = settings.dlq_max_unresolved_age_hours
    failing = report.records.filter(pl.col("status") == FAILING)
    oldest = failing.get_column("source_timestamp").min() if failing.height else None
    if not isinstance(oldest, datetime):
        return CheckOutcome(AGE_CHECK, True, "warn", "nothing unresolved", {"failing": 0})
    hours = max((now - oldest).total_seconds(), 0.0) / 3600
    detail = f"oldest unresolved record arrived {hours:.1f} h ago (limit {limit:g} h)"
    values = {"failing": failing.height, "oldest_hours": round(hours, 2), "limit_hours": limit}
    return CheckOutcome(AGE_CHECK, hours <= limit, "warn", detail, values)


# --------------------------------------------------------------------------------------- rendering


def markdown(report: Report) -> str:
    """The summary as Markdown for the Dagster UI."""
    status = report.counts("status")
    lines = [
        f"**{report.records.height}** failed source records in **{report.dlq_records}** DLQ "
        f"records ({report.new_records} new): "
        + ", ".join(f"{n} {s}" for s, n in sorted(status.items())),
        "",
        "| category | records |",
        "|---|---:|",
        *(f"| {c} | {n} |" for c, n in report.counts("category").items()),
        "",
        "| top error | category | records |",
        "|---|---|---:|",
        *(f"| {_cell(m)} | {c} | {n} |" for c, m, n in report.top_messages()),
    ]
    lines += _waiting_lines(report.waiting_versions())
    if report.first:
        seen = f"{len(report.new_categories)} categories, {len(report.new_rules)} rules"
        lines += ["", f"First report: {seen} seen (later reports name the new ones)."]
    elif report.new_categories or report.new_rules:
        lines += [
            "",
            f"**New since the last report**: categories {report.new_categories}, "
            f"rules {report.new_rules}",
        ]
    lines += ["", "| check | result | detail |", "|---|---|---|"]
    lines += [
        f"| {c.name} | {'pass' if c.passed else c.severity.upper()} | {_cell(c.description)} |"
        for c in report.checks
    ]
    lines += ["", "Samples (escaped, truncated):", ""]
    lines += [f"- `{s['source']}` {s['category']}: `{s['payload']}`" for s in report.samples()]
    return "\n".join(lines)


def _waiting_lines(waiting: dict[str, int]) -> list[str]:
    """The future-version records, apart from the failures: what they wait for."""
    if not waiting:
        return []
    versions = ", ".join(f"v{v}: {n}" for v, n in waiting.items())
    return [
        "",
        f"**Waiting for a newer contract** ({UNSUPPORTED_VERSION}): {sum(waiting.values())} "
        f"records of schema versions the code does not know yet ({versions}). They are held, "
        "not broken: once a release knows the version, reprocessing brings them in.",
    ]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_failing(messages: Sequence[DlqMessage], limit: int) -> str:
    """`dlq inspect`: a table of what is failing and why, and a count per category."""
    shown = list(messages)[:limit]
    header = ("source", "category", "rule", "field", "attempt", "message", "payload")
    rows = [
        (
            f"{r.source_topic}[{r.source_partition}]@{r.source_offset}",
            r.category,
            r.rule,
            r.field or "-",
            str(r.attempt),
            _clip(r.message, 60),
            escape_payload(r.value, 60),
        )
        for r in (m.record for m in shown)
        if r is not None
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    table = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    counts = Counter(m.record.category for m in messages if m.record is not None)
    total = ", ".join(f"{c} {n}" for c, n in counts.most_common())
    more = f" (showing {len(shown)})" if len(messages) > len(shown) else ""
    lines = [*table, "", f"{len(messages)} failing{more}: {total or 'nothing'}"]
    if counts[UNSUPPORTED_VERSION]:
        lines.append(
            f"{counts[UNSUPPORTED_VERSION]} of them come from a newer schema version "
            f"({UNSUPPORTED_VERSION}): they wait for a newer contract; reprocessing re-sends them "
            "without counting an attempt"
        )
    return "\n".join(lines)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
