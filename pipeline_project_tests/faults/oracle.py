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
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import polars as pl
from confluent_kafka import Consumer, KafkaError, TopicPartition

from pipeline_project.dlq import records as dlq_contract
from pipeline_project.lake.audit import audit
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


def read_topic(
    bootstrap: str, topic: str, partitions: Iterable[int] | None = None, timeout: float = 30.0
) -> list[KafkaRecord]:
    """Every committed record of `topic` (read_committed), to the high watermark of each partition.

    Stops by position, not by count: transaction markers take offsets.
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
        return _read_partitions(consumer, topic, parts, timeout)
    finally:
        consumer.close()


def _read_partitions(
    consumer: Consumer, topic: str, parts: list[int], timeout: float
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
            if err is None and offset < high:
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


def lake_rows(settings: Settings) -> list[tuple[int, int]]:
    """(partition, offset) of every ingested row of the events table, read through the log."""
    scan = scan_table(lake_of(settings))
    if scan is None:
        return []
    rows = scan.filter(pl.col("dlq_offset").is_null()).select("kafka_partition", "kafka_offset")
    return [(int(p), int(o)) for p, o in rows.collect().iter_rows()]


def raw_records(settings: Settings) -> list[RangeRecord]:
    """The committed range records of the raw topic, from the table's log."""
    history = read_history(lake_of(settings))
    return [r for r in history.records if r.range.topic == settings.raw_topic]


# --------------------------------------------------------------------------------------- checks


def check(
    settings: Settings,
    truth: Sequence[Sent],
    *,
    complete: bool = True,
    allow: Iterable[str] = (),
) -> OracleReport:
    """I1-I4 and I6 for `settings`' lake, ledger and DLQ topic against `truth`.

    `complete`: every truth record must be committed (the run caught up); otherwise only records
    inside committed ranges are checked. `allow`: reconcile problem codes to tolerate.
    """
    report = OracleReport()
    records = raw_records(settings)
    _check_reconcile(report, settings, set(allow))
    where = _destinations(report, records)
    _check_lake_rows(report, lake_rows(settings), where)
    _check_truth(report, truth, where, records, complete)
    _check_dlq(report, settings, truth, records)
    return report


def _check_reconcile(report: OracleReport, settings: Settings, allow: set[str]) -> None:
    for problem in audit(lake_of(settings)).problems:
        if problem.code not in allow:
            report.add("I2-I4", str(problem))


def _destinations(
    report: OracleReport, manifests: Sequence[RangeRecord]
) -> dict[tuple[int, int], list[str]]:
    """(partition, offset) → where the manifests put it ("lake", "dlq:<c>", "filtered:<r>")."""
    where: dict[tuple[int, int], list[str]] = defaultdict(list)
    for m in manifests:
        p = m.range.partition
        for d in m.dlq:
            where[(p, d.source_offset)].append(f"dlq:{d.category}")
        for reason, offsets in m.filtered.items():
            for o in offsets:
                where[(p, o)].append(f"filtered:{reason}")
        report.counts["ranges"] += 1
        report.counts["records"] += m.records
    return where


def _check_lake_rows(
    report: OracleReport, rows: list[tuple[int, int]], where: dict[tuple[int, int], list[str]]
) -> None:
    """I1: each lake row once; count == distinct count."""
    distinct = set(rows)
    report.counts["lake_rows"] = len(rows)
    report.counts["lake_distinct"] = len(distinct)
    if len(rows) != len(distinct):
        dups = [c for c, n in Counter(rows).items() if n > 1]
        report.add("I1", f"{len(rows) - len(distinct)} duplicate lake rows, e.g. {dups[:SAMPLE]}")
    for coord in distinct:
        where[coord].append("lake")


def _committed_spans(manifests: Sequence[RangeRecord]) -> dict[int, list[tuple[int, int]]]:
    spans: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for m in manifests:
        spans[m.range.partition].append((m.range.start, m.range.end))
    return spans


def _expected(verdict: str) -> str:
    if verdict == "good":
        return "lake"
    if verdict.startswith("bad:"):
        return "dlq:" + verdict[4:]
    return "filtered:" + verdict


def _check_truth(
    report: OracleReport,
    truth: Sequence[Sent],
    where: dict[tuple[int, int], list[str]],
    manifests: Sequence[RangeRecord],
    complete: bool,
) -> None:
    """I1 against the truth: right destination exactly once; nothing unproduced; I4 first start."""
    spans = _committed_spans(manifests)

    def committed(p: int, o: int) -> bool:
        return any(s <= o < e for s, e in spans.get(p, []))

    wrong: list[str] = []
    produced = set()
    for s in truth:
        coord = (s.partition, s.offset)
        produced.add(coord)
        if not complete and not committed(*coord):
            continue
        report.counts["checked"] += 1
        got, want = where.get(coord, []), _expected(s.verdict)
        if got != [want]:
            wrong.append(f"{coord} {s.verdict}: expected {want}, found {got or 'nowhere'}")
    if wrong:
        report.add("I1", f"{len(wrong)} records misplaced, e.g. {wrong[:SAMPLE]}")
    extra = sorted(c for c in where if c not in produced)
    if extra:
        report.add("I1", f"{len(extra)} offsets that were never produced, e.g. {extra[:SAMPLE]}")
    doubled = sorted(c for c, w in where.items() if len(w) > 1)
    if doubled:
        report.add("I1", f"{len(doubled)} offsets in two places: {doubled[:SAMPLE]}")
    firsts: dict[int, int] = {}
    for s in truth:
        firsts[s.partition] = min(firsts.get(s.partition, s.offset), s.offset)
    for p, first in firsts.items():
        starts = [s for s, _ in spans.get(p, [])]
        if starts and min(starts) > first:
            report.add("I4", f"partition {p}: first committed start {min(starts)} > {first}")


def _check_dlq(
    report: OracleReport,
    settings: Settings,
    truth: Sequence[Sent],
    manifests: Sequence[RangeRecord],
) -> None:
    """I6 on every DLQ record; I1/I5: each manifest DLQ entry is in the topic where it says."""
    dlq = read_topic(settings.bootstrap, settings.dlq_topic)
    report.counts["dlq_records"] = len(dlq)
    if not dlq and not any(m.dlq for m in manifests):
        return
    originals = _originals(settings, truth, dlq)
    at = {(r.partition, r.offset): r for r in dlq}
    listed: set[tuple[int, int]] = set()
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
    settings: Settings, truth: Sequence[Sent], dlq: Sequence[KafkaRecord]
) -> dict[tuple[int, int], tuple[bytes | None, bytes | None, int | None]]:
    """Source coordinates → (key, value, timestamp) as produced: from the truth, else the topic."""
    out: dict[tuple[int, int], tuple[bytes | None, bytes | None, int | None]] = {
        (s.partition, s.offset): (s.key, s.value, None) for s in truth if s.value is not None
    }
    need = set()
    for rec in dlq:
        head = dlq_contract.decode_headers(rec.headers)
        with contextlib.suppress(ValueError, KeyError):
            need.add(
                (int(head[dlq_contract.SOURCE_PARTITION]), int(head[dlq_contract.SOURCE_OFFSET]))
            )
    parts = {p for p, _ in need}
    for raw in read_topic(settings.bootstrap, settings.raw_topic, sorted(parts)) if parts else []:
        coord = (raw.partition, raw.offset)
        if coord in need:
            key, value, _ = out.get(coord, (raw.key, raw.value, None))
            out[coord] = (key, value, raw.timestamp_ms)
    return out


def _check_dlq_record(
    report: OracleReport,
    settings: Settings,
    rec: KafkaRecord,
    originals: dict[tuple[int, int], tuple[bytes | None, bytes | None, int | None]],
    listed: set[tuple[int, int]],
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
