"""The oracle every fault test ends with: invariants I1-I6 (docs/lake.md, "Invariants").

Given the ground truth (what the broker acknowledged, with the verdict a correct pipeline reaches),
it reads the lake (through the Delta log), the range records of its commits and the DLQ topic and
reports every violated invariant:

* I1 conservation: every truth record inside a committed range is in exactly one of lake rows, DLQ
  entries or filtered offsets, in the right one (good → lake, bad:<c> → DLQ with category c, filter
  reason → filtered); lake row count == distinct (partition, offset) count; nothing that was never
  produced (an aborted transaction's record) appears anywhere.
* I2-I4 through `reconcile` (files the log lists are whole, counts, contiguity), plus: the first
  committed range of a partition starts at or before its first truth offset.
* I5: `assert_rerun_is_noop` re-runs the planner and compares the table's state and the DLQ.
* I6: each DLQ record carries the original key and value bytes, the contract headers, bounded.

It is deliberately independent of the pipeline's own bookkeeping where it can be: lake offsets are
read from the table's files and DLQ records from the topic, not from the commit records alone.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from confluent_kafka import Consumer, KafkaError, TopicPartition

from pipeline_project.dlq import records as dlq_contract
from pipeline_project.lake.audit import AuditReport, audit
from pipeline_project.lake.history import read_history
from pipeline_project.lake.location import lake_of
from pipeline_project.lake.read import scan_table
from pipeline_project.lake.record import RangeRecord
from pipeline_project.settings import Settings
from pipeline_project_tests.faults.fault_support import Sent, committed_state, run_driver
from pipeline_project_tests.support import unique

SAMPLE = 5
MAX_HEADER_BYTES = 12 * 1024  # 11 values x 200 chars + a 500-char message, UTF-8, plus names


@dataclass(frozen=True)
class KafkaRecord:
    """A consumed record: coordinates, timestamp, key, value and decoded headers."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass
class OracleReport:
    """Violated invariants (empty when all hold) and the counts the checks saw."""

    problems: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, invariant: str, message: str) -> None:
        self.problems.append(f"{invariant}: {message}")

    def assert_ok(self) -> None:
        assert self.ok, "oracle failed:\n  " + "\n  ".join(self.problems[:40])


# -------------------------------------------------------------------------------------- reading

Coord = tuple[int, int]
COORD_SCHEMA = {"partition": pl.Int64, "offset": pl.Int64}
Truth = Sequence[Sent] | pl.DataFrame


def read_topic(
    bootstrap: str,
    topic: str,
    partitions: Iterable[int] | None = None,
    timeout: float = 30.0,
    wanted: Callable[[Coord], bool] | None = None,
) -> list[KafkaRecord]:
    """Every committed record of `topic` (read_committed), to the high watermark of each partition.

    Stops by position, not by count: transaction markers take offsets. `wanted`: keep only the
    records at these coordinates (a soak's raw topic holds millions; the DLQ check needs a few).
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("oracle"),
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "auto.offset.reset": "error",
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            return []
        parts = sorted(meta.topics[topic].partitions) if partitions is None else list(partitions)
        return _read_partitions(consumer, topic, parts, timeout, wanted)
    finally:
        consumer.close()


def _read_partitions(
    consumer: Consumer,
    topic: str,
    parts: list[int],
    timeout: float,
    wanted: Callable[[Coord], bool] | None,
) -> list[KafkaRecord]:
    todo: dict[int, int] = {}
    starts = []
    for p in parts:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        if high > low:
            todo[p] = high
            starts.append(TopicPartition(topic, p, low))
    if not todo:
        return []
    consumer.assign(starts)
    out: list[KafkaRecord] = []
    deadline = time.monotonic() + timeout
    while todo:
        assert time.monotonic() < deadline, f"reading {topic} {sorted(todo)} stalled"
        batch = consumer.consume(5000, timeout=0.1)
        if batch:  # a bound on silence, not on the whole read: a soak's topic holds millions
            deadline = time.monotonic() + timeout
        for msg in batch:
            p, offset, high = msg.partition(), msg.offset(), todo.get(msg.partition())
            if high is None:
                continue
            err = msg.error()
            if err is None and offset < high and (wanted is None or wanted((p, offset))):
                out.append(
                    KafkaRecord(
                        p, offset, msg.timestamp()[1], msg.key(), msg.value(), msg.headers() or []
                    )
                )
            elif err is not None and err.code() != KafkaError._PARTITION_EOF:
                continue
            if offset >= high - (0 if err is not None else 1):
                todo.pop(p, None)
        for tp in consumer.position([TopicPartition(topic, p) for p in todo]):
            if tp.offset >= todo[tp.partition]:
                todo.pop(tp.partition, None)
    consumer.unassign()
    return sorted(out, key=lambda r: (r.partition, r.offset))


def lake_rows(settings: Settings) -> pl.DataFrame:
    """(partition, offset) of every ingested row of the events table, read through the log."""
    scan = scan_table(lake_of(settings))
    if scan is None:
        return pl.DataFrame(schema=COORD_SCHEMA)
    rows = scan.filter(pl.col("dlq_offset").is_null()).select(
        pl.col("kafka_partition").cast(pl.Int64).alias("partition"),
        pl.col("kafka_offset").cast(pl.Int64).alias("offset"),
    )
    return rows.collect()


def raw_records(settings: Settings) -> list[RangeRecord]:
    """The committed range records of the raw topic, from the table's log."""
    history = read_history(lake_of(settings))
    return [r for r in history.records if r.range.topic == settings.raw_topic]


def truth_frame(truth: Truth) -> pl.DataFrame:
    """The truth as columns (partition, offset, verdict): millions of records in a soak."""
    schema = {**COORD_SCHEMA, "verdict": pl.String}
    if isinstance(truth, pl.DataFrame):
        return truth.select(pl.col(c).cast(t) for c, t in schema.items())
    return pl.DataFrame(
        {
            "partition": [s.partition for s in truth],
            "offset": [s.offset for s in truth],
            "verdict": [s.verdict for s in truth],
        },
        schema=schema,
    )


def read_truth_frame(path: Path) -> pl.DataFrame:
    """The producer CLI's --truth file as (partition, offset, verdict): no Python object a line."""
    schema = {**COORD_SCHEMA, "verdict": pl.String}
    if path.stat().st_size == 0:
        return pl.DataFrame(schema=schema)
    return pl.scan_ndjson(path, schema=schema).collect()


# --------------------------------------------------------------------------------------- checks


def check(
    settings: Settings,
    truth: Truth,
    *,
    complete: bool = True,
    allow: Iterable[str] = (),
    reconciled: AuditReport | None = None,
) -> OracleReport:
    """I1-I4 and I6 for `settings`' lake, ledger and DLQ topic against `truth`.

    `complete`: every truth record must be committed (the run caught up); otherwise only records
    inside committed ranges are checked. `allow`: reconcile problem codes to tolerate.
    `reconciled`: reconcile's report of the same lake, if the caller has it already.
    The records are held in columns, not Python objects, so a 12M-event soak checks in a few GB.
    """
    report = OracleReport()
    records = raw_records(settings)
    _check_reconcile(report, reconciled or audit(lake_of(settings)), set(allow))
    where = _destinations(report, records, lake_rows(settings))
    _check_truth(report, truth_frame(truth), where, records, complete)
    _check_dlq(report, settings, truth, records)
    return report


def _check_reconcile(report: OracleReport, reconciled: AuditReport, allow: set[str]) -> None:
    for problem in reconciled.problems:
        if problem.code not in allow:
            report.add("I2-I4", str(problem))


def _destinations(
    report: OracleReport, manifests: Sequence[RangeRecord], lake: pl.DataFrame
) -> pl.DataFrame:
    """(partition, offset, dest) for every place a record is: "lake", "dlq:<c>", "filtered:<r>".

    I1 on the lake rows too: each (partition, offset) once; count == distinct count.
    """
    partitions: list[int] = []
    offsets: list[int] = []
    dests: list[str] = []
    for m in manifests:
        for d in m.dlq:
            offsets.append(d.source_offset)
            dests.append(f"dlq:{d.category}")
        for reason, filtered in m.filtered.items():
            offsets.extend(filtered)
            dests.extend([f"filtered:{reason}"] * len(filtered))
        partitions.extend([m.range.partition] * (len(offsets) - len(partitions)))
        report.counts["ranges"] += 1
        report.counts["records"] += m.records
    listed = pl.DataFrame(
        {"partition": partitions, "offset": offsets, "dest": dests},
        schema={**COORD_SCHEMA, "dest": pl.String},
    )
    distinct = lake.unique()
    report.counts["lake_rows"] = lake.height
    report.counts["lake_distinct"] = distinct.height
    if lake.height != distinct.height:
        dups = lake.filter(lake.is_duplicated()).unique().sort(lake.columns).head(SAMPLE).rows()
        report.add("I1", f"{lake.height - distinct.height} duplicate lake rows, e.g. {dups}")
    return pl.concat([listed, distinct.with_columns(dest=pl.lit("lake"))])


def _committed(truth: pl.DataFrame, manifests: Sequence[RangeRecord]) -> pl.DataFrame:
    """The truth records inside a committed range."""
    spans = pl.DataFrame(
        {
            "partition": [m.range.partition for m in manifests],
            "start": [m.range.start for m in manifests],
            "end": [m.range.end for m in manifests],
        },
        schema={"partition": pl.Int64, "start": pl.Int64, "end": pl.Int64},
    ).sort("start")
    placed = truth.sort("offset").join_asof(
        spans, left_on="offset", right_on="start", by="partition", strategy="backward"
    )
    return placed.filter(pl.col("offset") < pl.col("end")).select(truth.columns)


def _expected() -> pl.Expr:
    verdict = pl.col("verdict")
    return (
        pl.when(verdict == "good")
        .then(pl.lit("lake"))
        .when(verdict.str.starts_with("bad:"))
        .then(pl.lit("dlq:") + verdict.str.slice(4))
        .otherwise(pl.lit("filtered:") + verdict)
    )


def _check_truth(
    report: OracleReport,
    truth: pl.DataFrame,
    where: pl.DataFrame,
    manifests: Sequence[RangeRecord],
    complete: bool,
) -> None:
    """I1 against the truth: right destination exactly once; nothing unproduced; I4 first start."""
    coords = list(COORD_SCHEMA)
    found = where.group_by(coords).agg(pl.len().alias("n"), pl.col("dest").min())
    checked = truth if complete else _committed(truth, manifests)
    report.counts["checked"] += checked.height
    wrong = (
        checked.with_columns(want=_expected())
        .join(found, on=coords, how="left")
        .filter(pl.col("n").is_null() | (pl.col("n") != 1) | (pl.col("dest") != pl.col("want")))
        .sort(coords)
    )
    if wrong.height:
        shown = wrong.head(SAMPLE).select(*coords, "verdict", "want")
        places = where.join(shown, on=coords).group_by(coords).agg(pl.col("dest").sort())
        rows = shown.join(places, on=coords, how="left").sort(coords).iter_rows()
        sample = [f"{(p, o)} {v}: expected {w}, found {g or 'nowhere'}" for p, o, v, w, g in rows]
        report.add("I1", f"{wrong.height} records misplaced, e.g. {sample}")
    extra = found.join(truth, on=coords, how="anti").sort(coords)
    if extra.height:
        sample = extra.select(coords).head(SAMPLE).rows()
        report.add("I1", f"{extra.height} offsets that were never produced, e.g. {sample}")
    doubled = found.filter(pl.col("n") > 1).sort(coords)
    if doubled.height:
        sample = doubled.select(coords).head(SAMPLE).rows()
        report.add("I1", f"{doubled.height} offsets in two places: {sample}")
    _check_first_starts(report, truth, manifests)


def _check_first_starts(
    report: OracleReport, truth: pl.DataFrame, manifests: Sequence[RangeRecord]
) -> None:
    """I4: a partition's first committed range starts at or before its first truth record."""
    starts: dict[int, int] = {}
    for m in manifests:
        p = m.range.partition
        starts[p] = min(starts.get(p, m.range.start), m.range.start)
    firsts = truth.group_by("partition").agg(pl.col("offset").min()).sort("partition")
    for p, first in firsts.iter_rows():
        if p in starts and starts[p] > first:
            report.add("I4", f"partition {p}: first committed start {starts[p]} > {first}")


def _check_dlq(
    report: OracleReport,
    settings: Settings,
    truth: Truth,
    manifests: Sequence[RangeRecord],
) -> None:
    """I6 on every DLQ record; I1/I5: each manifest DLQ entry is in the topic where it says."""
    dlq = read_topic(settings.bootstrap, settings.dlq_topic)
    report.counts["dlq_records"] = len(dlq)
    if not dlq and not any(m.dlq for m in manifests):
        return
    originals = _originals(settings, truth, dlq)
    at = {(r.partition, r.offset): r for r in dlq}
    listed: set[Coord] = set()
    for m in manifests:
        for d in m.dlq:
            listed.add((m.range.partition, d.source_offset))
            rec = at.get((d.dlq_partition, d.dlq_offset))
            head = dlq_contract.decode_headers(rec.headers) if rec else {}
            if rec is None or head.get(dlq_contract.SOURCE_OFFSET) != str(d.source_offset):
                report.add("I1", f"committed DLQ entry {d} is not in {settings.dlq_topic}")
    for rec in dlq:
        _check_dlq_record(report, settings, rec, originals, listed)


def _originals(
    settings: Settings, truth: Truth, dlq: Sequence[KafkaRecord]
) -> dict[Coord, tuple[bytes | None, bytes | None, int | None]]:
    """Source coordinates → (key, value, timestamp) as produced: from the truth, else the topic.

    Only the DLQ's sources are read back from the raw topic, not the millions around them.
    """
    sent = [] if isinstance(truth, pl.DataFrame) else truth
    out: dict[Coord, tuple[bytes | None, bytes | None, int | None]] = {
        (s.partition, s.offset): (s.key, s.value, None) for s in sent if s.value is not None
    }
    need = set()
    for rec in dlq:
        head = dlq_contract.decode_headers(rec.headers)
        with contextlib.suppress(ValueError, KeyError):
            need.add(
                (int(head[dlq_contract.SOURCE_PARTITION]), int(head[dlq_contract.SOURCE_OFFSET]))
            )
    parts = sorted({p for p, _ in need})
    for raw in read_topic(settings.bootstrap, settings.raw_topic, parts, wanted=need.__contains__):
        coord = (raw.partition, raw.offset)
        key, value, _ = out.get(coord, (raw.key, raw.value, None))
        out[coord] = (key, value, raw.timestamp_ms)
    return out


def _check_dlq_record(
    report: OracleReport,
    settings: Settings,
    rec: KafkaRecord,
    originals: dict[Coord, tuple[bytes | None, bytes | None, int | None]],
    listed: set[Coord],
) -> None:
    where = f"DLQ record {rec.partition}@{rec.offset}"
    names = [name for name, _ in rec.headers]
    missing = [n for n in dlq_contract.HEADER_NAMES if n not in names]
    if missing:
        report.add("I6", f"{where} lacks headers {missing}")
        return
    size = sum(len(n) + len(v or b"") for n, v in rec.headers)
    if size > MAX_HEADER_BYTES:
        report.add("I6", f"{where} has {size} header bytes > {MAX_HEADER_BYTES}")
    head = dlq_contract.decode_headers(rec.headers)
    if head[dlq_contract.SOURCE_TOPIC] != settings.raw_topic:
        report.add("I6", f"{where} names source topic {head[dlq_contract.SOURCE_TOPIC]!r}")
    coord = (int(head[dlq_contract.SOURCE_PARTITION]), int(head[dlq_contract.SOURCE_OFFSET]))
    if coord not in listed:
        report.add("I5", f"{where} for source {coord} belongs to no committed range")
    original = originals.get(coord)
    if original is None:
        report.add("I6", f"{where}: source record {coord} not found in {settings.raw_topic}")
        return
    key, value, stamp = original
    if rec.key != key or rec.value != value:
        report.add("I6", f"{where}: key/value bytes differ from the source record {coord}")
    if stamp is not None and head[dlq_contract.SOURCE_TIMESTAMP] != str(stamp):
        report.add(
            "I6", f"{where}: source timestamp {head[dlq_contract.SOURCE_TIMESTAMP]} != {stamp}"
        )
    report.counts["dlq_checked"] += 1


# ------------------------------------------------------------------------------------------- I5


def assert_rerun_is_noop(settings: Settings, **extra: str) -> None:
    """I5: a planned re-run commits nothing, changes no byte and sends nothing to the DLQ."""
    before = committed_state(settings)
    dlq_before = len(read_topic(settings.bootstrap, settings.dlq_topic))
    again = run_driver(settings, **extra)
    assert again.ok and again.result["committed"] == [], str(again)
    assert committed_state(settings) == before, "a re-run changed the table"
    assert len(read_topic(settings.bootstrap, settings.dlq_topic)) == dlq_before
