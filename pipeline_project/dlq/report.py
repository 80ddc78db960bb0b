"""The DLQ report: what failed and why, counted once per failed source record, and what came of it.

Reads the DLQ incrementally (its own offsets in `<state>/dlq_report/state.json`, the decoded records
so far in `<state>/dlq_report/dlq_log.parquet`, merged by DLQ coordinates so a crash between the two
writes only re-reads), folds the copies of each source record (first error = why it failed, last
error = why it still fails), joins the resolution ledger (recovered / filtered / parked / failing)
and writes `<lake>/dlq_report/records.parquet` and `summary.parquet` atomically. The counts,
samples, new categories/rules and checks are returned for the Dagster asset and the CLI.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from pipeline_project.batch import lake, ledger
from pipeline_project.batch.backlog import partition_states
from pipeline_project.batch.ledger import atomic_write_json, read_json
from pipeline_project.batch.plan import PartitionState, plan_ranges
from pipeline_project.batch.run import UNBOUNDED
from pipeline_project.dlq import resolution
from pipeline_project.dlq.records import PREVIEW_CHARS, escape_payload
from pipeline_project.dlq.reprocess import DlqMessage, decode_batch
from pipeline_project.events.contract import ERROR_CATEGORIES
from pipeline_project.health import OK, check_dlq_rate
from pipeline_project.kafka.access import DESCRIBE, READ, require
from pipeline_project.kafka.drain import drain_range, make_consumer
from pipeline_project.settings import Settings

log = logging.getLogger(__name__)

REPORT_DIR = "dlq_report"  # <state>/dlq_report/ and <lake>/dlq_report/ (not a ledger table)
LOG_FILE = "dlq_log.parquet"
STATE_FILE = "state.json"
RECORDS_FILE = "records.parquet"
SUMMARY_FILE = "summary.parquet"
STATE_VERSION = 1
TOP_MESSAGES = 10
SAMPLES = 5
FAILING = "failing"  # the status of a record no reprocessing resolved (yet)
DIMENSIONS = ("category", "rule", "field", "stage", "source_partition", "hour", "status")
MALFORMED_CATEGORY = "<no source headers>"

UTC_US = pl.Datetime("us", "UTC")
# One row per DLQ record read (every copy); source_* null when its headers were unusable.
LOG_SCHEMA: dict[str, pl.DataType] = {
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
_ERROR = ["stage", "category", "rule", "field", "message"]


# ------------------------------------------------------------------------------------- the state


@dataclass
class ReportState:
    """Next DLQ offset per partition and the categories/rules seen by earlier materializations."""

    topic: str
    offsets: dict[int, int] = field(default_factory=dict)
    categories: set[str] = field(default_factory=set)
    rules: set[str] = field(default_factory=set)
    materializations: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "topic": self.topic,
            "offsets": {str(p): o for p, o in sorted(self.offsets.items())},
            "categories": sorted(self.categories),
            "rules": sorted(self.rules),
            "materializations": self.materializations,
        }


def state_dir(settings: Settings) -> Path:
    return settings.state_dir / REPORT_DIR


def load_state(settings: Settings) -> tuple[ReportState, pl.DataFrame]:
    """The report's offsets and log; a fresh start when absent, unreadable or for another topic."""
    empty = (ReportState(settings.dlq_topic), pl.DataFrame(schema=LOG_SCHEMA))
    try:
        data = read_json(state_dir(settings) / STATE_FILE)
    except ValueError as exc:
        log.warning("DLQ report state unreadable (%s): starting over", exc)
        return empty
    log_path = state_dir(settings) / LOG_FILE
    if not data or data.get("topic") != settings.dlq_topic or not log_path.is_file():
        return empty
    state = ReportState(
        topic=settings.dlq_topic,
        offsets={int(p): int(o) for p, o in data["offsets"].items()},
        categories=set(data["categories"]),
        rules=set(data["rules"]),
        materializations=int(data.get("materializations", 0)),
    )
    return state, pl.read_parquet(log_path).cast(LOG_SCHEMA)  # type: ignore[arg-type]


def _write_parquet(path: Path, frame: pl.DataFrame) -> None:
    """Atomic (temp file, fsync, rename): readers see the old file or the new one, never half."""
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd")
    lake.atomic_write_bytes(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------- reading


def log_rows(messages: Iterable[DlqMessage]) -> pl.DataFrame:
    """Decoded DLQ records as LOG_SCHEMA rows."""
    rows = []
    for m in messages:
        r = m.record
        rows.append(
            {
                "dlq_partition": m.partition,
                "dlq_offset": m.offset,
                "source_topic": r.source_topic if r else None,
                "source_partition": r.source_partition if r else None,
                "source_offset": r.source_offset if r else None,
                "source_timestamp": r.source_time if r else None,
                "attempt": r.attempt if r else None,
                **{name: getattr(r, name) if r else None for name in _ERROR},
                "failed_at": r.failed_at if r else None,
                "payload_bytes": len(r.value) if r and r.value is not None else 0,
                "payload": escape_payload(r.value, PREVIEW_CHARS) if r else None,
            }
        )
    return pl.DataFrame(rows, schema=LOG_SCHEMA)


def read_new(settings: Settings, state: ReportState) -> tuple[pl.DataFrame, dict[int, int]]:
    """DLQ records after the report's offsets, and the offsets to continue from next time.

    A partition restarts at its low watermark when retention deleted past the report's offset (or
    the topic was recreated below it).
    """
    require(settings, {settings.dlq_topic: (READ, DESCRIBE)})
    consumer = make_consumer(settings)
    frames = [pl.DataFrame(schema=LOG_SCHEMA)]
    try:
        starts = []
        for s in partition_states(settings, consumer, settings.dlq_topic):
            start = state.offsets.get(s.partition, s.low)
            start = start if s.low <= start <= s.high else s.low
            starts.append(PartitionState(s.partition, start, s.low, s.high))
        plan = plan_ranges(settings.dlq_topic, starts, settings.max_range_events, UNBOUNDED)
        for rng in plan.ranges:
            raw = drain_range(consumer, rng, settings.drain_timeout_seconds, with_headers=True)
            frames.append(log_rows(decode_batch(raw)))
    finally:
        consumer.close()
    return pl.concat(frames), {s.partition: s.high for s in starts}


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
        pl.col("source_timestamp").dt.truncate("1h").dt.strftime("%Y-%m-%dT%H:00Z").alias("hour")
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
    paths: dict[str, str]
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


def build(settings: Settings, now: datetime | None = None) -> Report:
    """Reads what is new in the DLQ, updates the report's state, writes the lake outputs."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    state, old_log = load_state(settings)
    new_log, ends = read_new(settings, state)
    merged = pl.concat([old_log, new_log]).unique(
        ["dlq_partition", "dlq_offset"], keep="last", maintain_order=True
    )
    _write_parquet(state_dir(settings) / LOG_FILE, merged)
    previous = (set(state.categories), set(state.rules))
    state.offsets.update(ends)
    book = resolution.load_book(settings.state_dir)
    records = per_source(merged, book)
    categories = set(records.get_column("category").to_list()) | set(
        records.get_column("last_category").to_list()
    )
    rules = set(records.get_column("rule").to_list()) | set(
        records.get_column("last_rule").to_list()
    )
    state.categories |= categories
    state.rules |= rules
    state.materializations += 1
    atomic_write_json(state_dir(settings) / STATE_FILE, state.to_dict())
    summary = summary_frame(records)
    out = settings.lake_dir / REPORT_DIR
    _write_parquet(out / RECORDS_FILE, records)
    _write_parquet(out / SUMMARY_FILE, summary)
    malformed = merged.filter(pl.col("source_topic").is_null()).height
    report = Report(
        records=records,
        summary=summary,
        dlq_records=merged.height,
        new_records=new_log.height,
        malformed=malformed,
        new_categories=sorted(categories - previous[0]),
        new_rules=sorted(rules - previous[1]),
        checks=[],
        paths={"records": str(out / RECORDS_FILE), "summary": str(out / SUMMARY_FILE)},
        first=state.materializations == 1,
    )
    report.checks = checks(settings, report, moment)
    return report


# ----------------------------------------------------------------------------------------- checks

RATE_CHECK = "dlq_rate_below_threshold"
CATEGORY_CHECK = "no_unknown_category"
AGE_CHECK = "oldest_unresolved_age"


def checks(settings: Settings, report: Report, now: datetime) -> list[CheckOutcome]:
    """The three asset checks on the report (thresholds from PIPELINE_* settings)."""
    return [rate_check(settings, now), category_check(report), age_check(settings, report, now)]


def rate_check(settings: Settings, now: datetime) -> CheckOutcome:
    """DLQ records / consumed records in the recent window, as `pipeline-project health` sees it."""
    manifests = [
        m for m in ledger.load_manifests(settings.state_dir) if m.range.topic == settings.raw_topic
    ]
    check = check_dlq_rate(settings, manifests, now)
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
    return "\n".join([*table, "", f"{len(messages)} failing{more}: {total or 'nothing'}"])


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
