"""Proof of exactly-once from the Delta log and the files (what `pipeline-project reconcile` runs).

Read-only. Checks, for the events table:
- contiguity: each topic-partition's committed ranges follow each other without gap or overlap,
  and the last one ends at the partition's app transaction version;
- files: every file the snapshot lists exists and its Parquet footer holds the rows the log says;
- conservation: every consumed offset of a range is in exactly one of lake rows, the range's DLQ
  entries or its filtered offsets, and the counts per day match the range's record; rows on a day
  that a later retention commit deleted (lake/upkeep.expire_days) count as expired, not missing;
- no row twice (source coordinates), no event id twice in a day, and every row recovered from the
  DLQ names a source record that its range sent to the DLQ, recovered once;
- history: each partition's first committed range starts where its history starts (the
  `<app id>#start` transaction its first commit set: offset 0, the low watermark at first
  ingestion, a new epoch's start, or an operator's `history acknowledge`), and the ranges of one
  partition and epoch were all read from one Kafka topic id.
A topic's epochs (`topic new-epoch`) are separate app ids (`<topic>@<n>-<partition>`); rows of an
epoch after the first carry `kafka_epoch`, so offsets that repeat across epochs are told apart.
Files under the table that no commit references are invisible to every Delta reader; they are
counted (vacuum removes them), not reported as problems.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable

from pipeline_project.batch.epochs import (
    DLQ_EPOCH_COLUMN,
    EPOCH_COLUMN,
    HISTORY_KIND,
    history_problems,
    kafka_problems,
)
from pipeline_project.columns import (
    DLQ_OFFSET_COLUMN,
    DLQ_PARTITION_COLUMN,
    EVENT_ID_COLUMN,
    KAFKA_PARTITION_COLUMN,
    OFFSET_COLUMN,
    PARTITION_COLUMN,
    SOURCE_COLUMNS,
    TOPIC_COLUMN,
)
from pipeline_project.lake.files import storage
from pipeline_project.lake.history import History, read_history
from pipeline_project.lake.location import TABLE_EVENTS, Lake
from pipeline_project.lake.record import RangeRecord, offsets_digest
from pipeline_project.lake.table import error_line, lake_errors, open_table
from pipeline_project.settings import Settings

ROW_COLUMNS = (*SOURCE_COLUMNS, EVENT_ID_COLUMN, PARTITION_COLUMN)
DLQ_COLUMNS = (DLQ_PARTITION_COLUMN, DLQ_OFFSET_COLUMN)
# Columns an older table may lack: read as null (epoch columns: epoch 0).
OPTIONAL_COLUMNS = {
    **dict.fromkeys(DLQ_COLUMNS, pl.Int64),
    EPOCH_COLUMN: pl.Int32,
    DLQ_EPOCH_COLUMN: pl.Int32,
}
_SAMPLE = 5
ID_HASH_SEED = 0x1D5


@dataclass(frozen=True)
class Problem:
    """One violated invariant: a machine code and a sentence naming what is wrong."""

    code: str
    message: str
    app_id: str | None = None

    def __str__(self) -> str:
        where = f"{self.app_id}: " if self.app_id else ""
        return f"[{self.code}] {where}{self.message}"


@dataclass
class PartitionAudit:
    """Totals of one topic-partition's committed ranges."""

    app_id: str
    ranges: int = 0
    first_offset: int | None = None
    end_offset: int | None = None
    txn_version: int | None = None
    records: int = 0
    written: int = 0
    dlq: int = 0
    filtered: int = 0
    expired: int = 0  # rows deleted by the lake's retention


@dataclass
class AuditReport:
    """Everything the audit checked; `ok` only when no invariant is violated."""

    lake: str
    version: int | None = None
    files: int = 0
    rows: int = 0
    expired_rows: int = 0
    unreferenced_files: int = 0
    partitions: list[PartitionAudit] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be checked, and why

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["problems"] = [asdict(p) | {"text": str(p)} for p in self.problems]
        return data


def audit(lake: Lake) -> AuditReport:
    """Audits the events table of `lake` (an absent table is an empty, consistent lake)."""
    report = AuditReport(lake.describe())
    table = open_table(lake)
    if table is None:
        return report
    report.version = table.version()
    history = read_history(lake, table)
    if table.version() != report.version:  # reading the history may move the table forward
        table.load_as_version(report.version)
    for version, why in history.unreadable:
        report.problems.append(Problem("unreadable_record", f"commit {version}: {why}"))
    ranges = History(
        [r for r in history.records if r.kind != HISTORY_KIND],
        history.unreadable,
        history.retentions,
    )
    _check_contiguity(report, table, ranges)
    report.problems.extend(history_problems(table, ranges))
    if not _check_files(report, lake, table):  # else conservation cannot be judged: reported
        _check_rows(report, ranges, _Rows(lake, table))
    report.unreferenced_files = _unreferenced(lake, table)
    return report


# ------------------------------------------------------------------------------------ contiguity


def _check_contiguity(report: AuditReport, table: DeltaTable, history: History) -> None:
    for app_id, records in sorted(history.by_app_id().items()):
        summary = PartitionAudit(app_id, txn_version=table.transaction_version(app_id))
        report.partitions.append(summary)
        previous: RangeRecord | None = None
        for record in records:
            rng = record.range
            if previous is not None and rng.start != previous.range.end:
                kind = "gap" if rng.start > previous.range.end else "overlap"
                report.problems.append(
                    Problem(
                        kind,
                        f"{rng.range_id} (commit {record.version}) starts at {rng.start}, the "
                        f"previous range ended at {previous.range.end}",
                        app_id,
                    )
                )
            previous = record
            _add_totals(summary, record)
        if summary.end_offset != summary.txn_version:
            report.problems.append(
                Problem(
                    "txn_mismatch",
                    f"committed ranges end at {summary.end_offset}, the table's app transaction "
                    f"says {summary.txn_version}",
                    app_id,
                )
            )


def _add_totals(summary: PartitionAudit, record: RangeRecord) -> None:
    summary.ranges += 1
    if summary.first_offset is None:
        summary.first_offset = record.range.start
    summary.end_offset = record.range.end
    summary.records += record.records
    summary.written += record.written
    summary.dlq += len(record.dlq)
    summary.filtered += record.filtered_count()


# ------------------------------------------------------------------------------------------ files


class _Rows:
    """The audited snapshot's lineage columns, read a piece at a time.

    A table holds millions of rows per partition and day: reconcile holds one topic-partition's
    coordinates or one day's id hashes at once, never every row's lineage. Read with polars, not
    through delta-rs's pyarrow dataset: that path aborts the interpreter at exit now and then
    (measured: 1 in 10 to 1 in 15 runs), and reconcile's exit status matters.
    """

    def __init__(self, lake: Lake, table: DeltaTable) -> None:
        self.lake = lake
        self.scan = pl.scan_delta(  # the audited snapshot, not a later one: commits go on meanwhile
            lake.table_uri(TABLE_EVENTS),
            version=table.version(),
            storage_options=lake.polars_options(),
        )
        names = set(self.scan.collect_schema().names())
        self.scan = self.scan.with_columns(
            pl.lit(None, dtype).alias(column)
            for column, dtype in OPTIONAL_COLUMNS.items()
            if column not in names
        ).with_columns(pl.col(EPOCH_COLUMN, DLQ_EPOCH_COLUMN).fill_null(0).cast(pl.Int64))
        adds = table.get_add_actions(flatten=True)
        self.days = sorted({str(d) for d in adds[f"partition.{PARTITION_COLUMN}"].to_pylist()})

    def collect(self, query: pl.LazyFrame) -> pl.DataFrame:
        with lake_errors(self.lake, "reading the events table"):
            return query.collect(engine="streaming")

    def sources(self) -> list[tuple[str | None, int | None]]:
        """The (topic, partition) pairs the rows came from."""
        found = self.collect(self.scan.select(TOPIC_COLUMN, KAFKA_PARTITION_COLUMN).unique())
        return list(found.iter_rows())  # a null in lineage is a source too: its rows fit no range

    def of_source(self, topic: str | None, partition: int | None) -> pl.DataFrame:
        """One source's rows (ingested and recovered): coordinates, day, DLQ offset."""
        mine = pl.col(TOPIC_COLUMN).eq_missing(topic) & pl.col(KAFKA_PARTITION_COLUMN).eq_missing(
            partition
        )
        return self.collect(
            self.scan.filter(mine).select(
                *SOURCE_COLUMNS, EPOCH_COLUMN, PARTITION_COLUMN, DLQ_OFFSET_COLUMN
            )
        )

    def recovered(self) -> pl.DataFrame:
        """Rows recovered from the DLQ, with their DLQ coordinates (a few per cent at most)."""
        query = self.scan.filter(pl.col(DLQ_OFFSET_COLUMN).is_not_null())
        return self.collect(
            query.select(*SOURCE_COLUMNS, PARTITION_COLUMN, *DLQ_COLUMNS, DLQ_EPOCH_COLUMN)
        )

    def repeated_ids(self, day: str) -> pl.DataFrame:
        """(date, event_id) of the rows of `day` whose id another row of the day has too.

        Hashes first (8 bytes a row), then the ids behind the repeated hashes only.
        """
        on_day = self.scan.filter(pl.col(PARTITION_COLUMN) == pl.lit(day).str.to_date())
        hashed = pl.col(EVENT_ID_COLUMN).hash(ID_HASH_SEED)
        hashes = self.collect(on_day.select(hashed.alias("h"))).to_series()
        twice = hashes.filter(hashes.is_duplicated()).unique()
        if twice.is_empty():
            return pl.DataFrame(schema={PARTITION_COLUMN: pl.Date, EVENT_ID_COLUMN: pl.String})
        ids = self.collect(
            on_day.filter(hashed.is_in(twice.implode())).select(PARTITION_COLUMN, EVENT_ID_COLUMN)
        )
        return ids.filter(ids.is_duplicated())


def _check_files(report: AuditReport, lake: Lake, table: DeltaTable) -> set[str]:
    """Every listed file opens and its footer's row count equals the log's numRecords.

    Returns the files that could not be opened (reported as problems).
    """
    adds = pl.DataFrame(table.get_add_actions(flatten=True)).select("path", "num_records")
    where = storage(lake, TABLE_EVENTS)
    missing: set[str] = set()
    for path, logged in adds.iter_rows():
        report.files += 1
        try:
            with where.fs.open_input_file(f"{where.root}/{path}") as handle:
                rows = pq.ParquetFile(handle).metadata.num_rows
        except (OSError, pa.ArrowException) as exc:
            report.problems.append(Problem("missing_file", f"{path}: {error_line(exc)}"))
            missing.add(path)
            continue
        if logged is not None and logged != rows:
            report.problems.append(
                Problem("row_count", f"{path} holds {rows} rows, the log says {logged}")
            )
    return missing


def _unreferenced(lake: Lake, table: DeltaTable) -> int:
    """Files under the table no commit references (crashed writers, compacted-away files)."""
    with lake_errors(lake, "listing unreferenced files"):
        return len(
            table.vacuum(
                retention_hours=0, dry_run=True, enforce_retention_duration=False, full=True
            )
        )


# ------------------------------------------------------------------------------------ conservation


def _check_rows(report: AuditReport, history: History, rows: _Rows) -> None:
    records = history.records
    raw_ranges = [r for r in records if r.kind != "reprocess"]
    dlq_ranges = [r for r in records if r.kind == "reprocess"]
    by_source: dict[tuple[str | None, int | None], list[RangeRecord]] = {}
    for record in raw_ranges:
        by_source.setdefault((record.range.topic, record.range.partition), []).append(record)
    twice = _Repeats("duplicate_row", "rows share source coordinates")
    raw = (TOPIC_COLUMN, KAFKA_PARTITION_COLUMN, EPOCH_COLUMN, OFFSET_COLUMN)
    for source in sorted(set(by_source) | set(rows.sources()), key=str):
        found = rows.of_source(*source)
        report.rows += found.height
        twice.add(
            found.filter(
                pl.struct(raw).is_duplicated() & pl.col(DLQ_OFFSET_COLUMN).is_null()
            ).select(raw)
        )
        ingested = found.filter(pl.col(DLQ_OFFSET_COLUMN).is_null())
        mine = by_source.get(source, [])
        _check_ranges(report, history, mine, _place(ingested, mine, *raw))
    twice.report(report)
    recovered = rows.recovered()
    recovered_by = recovered.with_columns(pl.lit(_dlq_topic(dlq_ranges)).alias("dlq_topic"))
    placed_dlq = _place(
        recovered_by,
        dlq_ranges,
        "dlq_topic",
        DLQ_PARTITION_COLUMN,
        DLQ_EPOCH_COLUMN,
        DLQ_OFFSET_COLUMN,
    )
    _check_ranges(report, history, dlq_ranges, placed_dlq)
    _check_recovered(report, raw_ranges, recovered)
    ids = _Repeats("duplicate_event_id", "rows repeat an event id in a day")
    for day in rows.days:
        ids.add(rows.repeated_ids(day))
    ids.report(report)


@dataclass
class _Repeats:
    """One problem for rows found twice, summed over the pieces the table was read in."""

    code: str
    what: str
    rows: int = 0
    sample: list[tuple] = field(default_factory=list)

    def add(self, repeated: pl.DataFrame) -> None:
        self.rows += repeated.height
        if len(self.sample) < _SAMPLE:
            self.sample += repeated.unique().sort(repeated.columns).head(_SAMPLE).rows()

    def report(self, report: AuditReport) -> None:
        if self.rows:
            sample = self.sample[:_SAMPLE]
            report.problems.append(Problem(self.code, f"{self.rows} {self.what}, e.g. {sample}"))


def _ranges_frame(records: Sequence[RangeRecord]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "topic": [r.range.topic for r in records],
            "partition": [r.range.partition for r in records],
            "epoch": [r.range.epoch for r in records],
            "start": [r.range.start for r in records],
            "end": [r.range.end for r in records],
            "index": list(range(len(records))),
        },
        schema={
            "topic": pl.String,
            "partition": pl.Int64,
            "epoch": pl.Int64,
            "start": pl.Int64,
            "end": pl.Int64,
            "index": pl.Int64,
        },
    ).sort("start")


def _place(
    rows: pl.DataFrame,
    records: Sequence[RangeRecord],
    topic: str,
    partition: str,
    epoch: str,
    offset: str,
) -> pl.DataFrame:
    """Each row with the index of the committed range holding its offset (null when none does)."""
    keyed = rows.select(
        pl.col(topic).cast(pl.String).alias("topic"),
        pl.col(partition).cast(pl.Int64).alias("partition"),
        pl.col(epoch).cast(pl.Int64).alias("epoch"),
        pl.col(offset).cast(pl.Int64).alias("offset"),
        pl.col("date"),
    ).sort("offset")
    joined = keyed.join_asof(
        _ranges_frame(records),
        left_on="offset",
        right_on="start",
        by=["topic", "partition", "epoch"],
        strategy="backward",
        check_sortedness=False,
    )
    inside = pl.col("offset") < pl.col("end")
    return joined.with_columns(pl.when(inside).then(pl.col("index")).alias("index"))


def _check_ranges(
    report: AuditReport, history: History, records: Sequence[RangeRecord], placed: pl.DataFrame
) -> None:
    outside = placed.filter(pl.col("index").is_null())
    if outside.height:
        sample = outside.select("topic", "partition", "offset").head(_SAMPLE).rows()
        report.problems.append(
            Problem("uncommitted_row", f"{outside.height} rows in no committed range: {sample}")
        )
    per_day = placed.filter(pl.col("index").is_not_null()).group_by("index", "date").len().rows()
    days: dict[int, dict[str, int]] = {}
    for index, day, count in per_day:
        days.setdefault(int(index), {})[day.isoformat()] = count
    partitions = {p.app_id: p for p in report.partitions}
    for index, record in enumerate(records):
        expired = _check_range(
            report,
            record,
            days.get(index, {}),
            placed_offsets(placed, index),
            history.expired_days(record),
        )
        report.expired_rows += expired
        if record.app_id in partitions:
            partitions[record.app_id].expired += expired


def placed_offsets(placed: pl.DataFrame, index: int) -> Iterable[int]:
    return placed.filter(pl.col("index") == index).get_column("offset").to_list()


def _check_range(
    report: AuditReport,
    record: RangeRecord,
    days: dict[str, int],
    lake: Iterable[int],
    expired_days: set[str],
) -> int:
    """Checks one range's offsets and rows per day; returns its rows expired by retention.

    On an expired day a range may have fewer rows than its record says (none, or those a
    concurrent commit kept), never more; the shortfall is expired. The offsets digest cannot be
    checked once rows are expired (their offsets are gone), the counts still are.
    """
    rng, app_id = record.range, record.app_id
    expired = sum(max(record.days[d] - days.get(d, 0), 0) for d in expired_days)
    lake_offsets = list(lake)
    dlq = [d.source_offset for d in record.dlq]
    filtered = [o for offsets in record.filtered.values() for o in offsets]
    everywhere = lake_offsets + dlq + filtered
    if len(set(everywhere)) != len(everywhere):
        report.problems.append(
            Problem("offset_twice", f"{rng.range_id}: an offset is in two places", app_id)
        )
    if any(not rng.start <= o < rng.end for o in dlq + filtered):
        report.problems.append(
            Problem("offset_outside", f"{rng.range_id}: DLQ/filtered offset outside", app_id)
        )
    if len(everywhere) + expired != record.records:
        report.problems.append(
            Problem(
                "conservation",
                f"{rng.range_id}: {record.records} records consumed, {len(lake_offsets)} lake "
                f"rows + {len(dlq)} DLQ + {len(filtered)} filtered + {expired} expired found",
                app_id,
            )
        )
    elif not expired and offsets_digest(everywhere) != record.record_offsets_sha256:
        report.problems.append(
            Problem(
                "conservation",
                f"{rng.range_id}: the offsets found are not the offsets consumed (digest differs)",
                app_id,
            )
        )
    kept = {d: n for d, n in record.days.items() if n and d not in expired_days}
    found = {d: n for d, n in days.items() if d not in expired_days}
    extra = [d for d in expired_days if days.get(d, 0) > record.days[d]]
    if found != kept or extra:
        report.problems.append(
            Problem(
                "day_rows", f"{rng.range_id}: rows per day {days}, record {record.days}", app_id
            )
        )
    return expired


def _dlq_topic(dlq_ranges: Sequence[RangeRecord]) -> str:
    topics = {r.range.topic for r in dlq_ranges}
    return topics.pop() if len(topics) == 1 else ""


def _check_recovered(
    report: AuditReport, raw_ranges: Sequence[RangeRecord], recovered: pl.DataFrame
) -> None:
    """A recovered row's source record was sent to the DLQ by its range, and recovered once."""
    if recovered.height == 0:
        return
    sent = {(r.range.topic, r.range.partition, d.source_offset) for r in raw_ranges for d in r.dlq}
    coords = recovered.select(SOURCE_COLUMNS).rows()
    unknown = [c for c in coords if c not in sent]
    if unknown:
        report.problems.append(
            Problem("recovered_unknown", f"rows recovered from no DLQ entry: {unknown[:_SAMPLE]}")
        )
    if len(set(coords)) != len(coords):
        report.problems.append(Problem("recovered_twice", "a source record was recovered twice"))


# ------------------------------------------------------------------------------------------ output


def render(report: AuditReport) -> str:
    """Human-readable report: partitions, problems, and a last line with the verdict."""
    header = ("partition", "ranges", "offsets", "records", "written", "dlq", "filtered", "expired")
    rows = [
        (
            p.app_id,
            p.ranges,
            f"[{p.first_offset}, {p.end_offset})",
            p.records,
            p.written,
            p.dlq,
            p.filtered,
            p.expired,
        )
        for p in report.partitions
    ]
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        f"lake {report.lake}  version {report.version}  files {report.files}  rows {report.rows}"
        f"  unreferenced files {report.unreferenced_files}",
        "",
        *(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in cells
        ),
    ]
    if report.problems:
        lines += ["", f"Problems ({len(report.problems)})"] + [f"  {p}" for p in report.problems]
    lines += [f"note: {note}" for note in report.notes]
    expired = f" ({report.expired_rows} rows expired by retention)" if report.expired_rows else ""
    verdict = (
        f"OK: every consumed offset is accounted for exactly once{expired}"
        if report.ok
        else f"FAILED: {len(report.problems)} problems"
    )
    return "\n".join([*lines, "", verdict])


def main(lake: Lake, as_json: bool, settings: Settings | None = None) -> int:
    """`pipeline-project reconcile`: prints the report; exit 0 only if the lake reconciles.

    With `settings`, the lake is also held against Kafka as it is now (batch/epochs.py): a topic
    recreated under the lake fails the audit, though every commit in it still adds up.
    """
    report = audit(lake)
    if settings is not None and report.version is not None:
        problems, note = kafka_problems(settings, lake)
        report.problems.extend(problems)
        report.notes.extend([note] if note else [])
    if as_json:
        text = orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode()
    else:
        text = render(report)
    sys.stdout.write(text + "\n")
    return 0 if report.ok else 1
