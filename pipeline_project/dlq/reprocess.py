"""DLQ reprocessing: ranges of the DLQ topic through the same lake protocol as ingestion.

A run holds every DLQ partition's lock, recovers them, then per range [start, end) of DLQ offsets:
intent → drain (with headers) → classify each record against the resolution ledger → repair and
re-validate the live ones with the same `process_batch` → stage → re-send the ones still failing
(attempt + 1, fresh headers, original bytes) or park them after PIPELINE_DLQ_MAX_ATTEMPTS → pending
resolutions → prepare → publish → manifest (the commit point) → R1 → resolutions applied. Every DLQ
offset lands in exactly one of: a lake row, a re-sent DLQ copy, or a filtered reason — the ledger's
accounting identity, checked before the commit like any range.

Recovered rows keep their source coordinates in kafka_topic/partition/offset (and the source
record's timestamp); `dlq_partition`/`dlq_offset` name the DLQ record, `repair_rules` the rules
that fired.

Liveness: the ledger knows each source record's *head*, the one DLQ copy allowed to act. Older
copies (re-sent by a crashed attempt, or a DLQ re-send of the ingest protocol) are "superseded",
copies of a resolved record "already_resolved", a second copy in one range a "repeat": so a source
record is recovered at most once however many copies the DLQ holds.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime

import polars as pl
from confluent_kafka import Consumer

from pipeline_project.batch import lake, ledger
from pipeline_project.batch.backlog import partition_states
from pipeline_project.batch.faults import fault_point
from pipeline_project.batch.lake import (
    DLQ_OFFSET_COLUMN,
    DLQ_PARTITION_COLUMN,
    OFFSET_COLUMN,
    REPAIR_RULES_COLUMN,
)
from pipeline_project.batch.ledger import DlqEntry
from pipeline_project.batch.plan import plan_ranges
from pipeline_project.batch.process import CommittedIds
from pipeline_project.batch.ranges import Range
from pipeline_project.batch.records import RawBatch, Reject
from pipeline_project.batch.recover import recover
from pipeline_project.batch.run import UNBOUNDED, IngestResult, RangeOutcome, preflight, process
from pipeline_project.batch.transform import DATE_COLUMN, empty_lake_frame
from pipeline_project.dlq import resolution
from pipeline_project.dlq.publish import DlqDelivery, DlqPublisher
from pipeline_project.dlq.records import DlqRecord
from pipeline_project.dlq.repair import RepairContext, repair
from pipeline_project.dlq.resolution import Book, Coords, Resolution, Segment
from pipeline_project.errors import DataLossError
from pipeline_project.kafka.access import DESCRIBE, READ, WRITE, require
from pipeline_project.kafka.drain import drain_range, make_consumer
from pipeline_project.perf import paused_gc
from pipeline_project.settings import Settings

log = logging.getLogger(__name__)

# Filter reasons of DLQ offsets whose record is not acted on (DLQ-range manifests).
ALREADY_RESOLVED = "already_resolved"
SUPERSEDED = "superseded"
REPEAT = "repeat"
MALFORMED = "malformed"  # no usable dlq.source.* headers: left in the DLQ, counted by the report
FOREIGN = "foreign"  # source offset committed as something other than DLQ: never recovered
PARKED_REASON = "parked"
SKIPPED_REASONS = (ALREADY_RESOLVED, SUPERSEDED, REPEAT, MALFORMED, FOREIGN)
# Why a live record is re-sent unchanged instead of tried now.
NOT_SELECTED = "not_selected"
SOURCE_UNCOMMITTED = "source_uncommitted"
# The event-time window judged at the source record's arrival, as ingestion judged it then.
ARRIVAL_RULE = "timestamp_in_window_at_arrival"
ARRIVAL_CATEGORY = "timestamp_out_of_range"


# ------------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class DlqMessage:
    """One consumed DLQ record: where it sits in the DLQ, and its decoded contract (None if bad)."""

    partition: int
    offset: int
    record: DlqRecord | None


def decode_batch(raw: RawBatch) -> list[DlqMessage]:
    """A drained DLQ range (with headers) as DlqMessages, in offset order."""
    headers = raw.headers if raw.headers is not None else [None] * len(raw)
    messages = []
    for offset, key, value, items in zip(raw.offsets, raw.keys, raw.values, headers, strict=True):
        try:
            record: DlqRecord | None = DlqRecord.from_message(key, value, items)
        except ValueError:
            record = None
        messages.append(DlqMessage(raw.partition, offset, record))
    return messages


@dataclass(frozen=True)
class Verdict:
    """A DLQ message and why it is skipped ("" when it is live: this copy acts for its record)."""

    message: DlqMessage
    skip: str = ""


def classify(messages: Sequence[DlqMessage], book: Book) -> list[Verdict]:
    """Decides, per copy, whether it acts for its source record (see the module docstring)."""
    seen: set[Coords] = set()
    verdicts = []
    for message in messages:
        record = message.record
        if record is None:
            verdicts.append(Verdict(message, MALFORMED))
            continue
        known = book.get(record.coordinates)
        if known is not None and known.terminal:
            skip = ALREADY_RESOLVED
        elif known is not None and known.to != (message.partition, message.offset):
            skip = SUPERSEDED
        elif record.coordinates in seen:
            skip = REPEAT
        else:
            skip = ""
            seen.add(record.coordinates)
        verdicts.append(Verdict(message, skip))
    return verdicts


@dataclass
class Sources:
    """What committed source ranges say: which offsets went to the DLQ, how far each is committed.

    Only a source record its committed range counts as DLQ may be recovered; otherwise the lake
    could hold it twice (reconcile checks the same).
    """

    dlq: set[Coords] = field(default_factory=set)
    ends: dict[tuple[str, int], int] = field(default_factory=dict)

    @classmethod
    def load(cls, settings: Settings, dlq_topics: set[str]) -> Sources:
        sources = cls()
        for manifest in ledger.load_manifests(settings.state_dir):
            rng = manifest.range
            if rng.topic in dlq_topics:
                continue
            key = (rng.topic, rng.partition)
            sources.ends[key] = max(sources.ends.get(key, 0), rng.end)
            sources.dlq.update((rng.topic, rng.partition, d.source_offset) for d in manifest.dlq)
        return sources

    def status(self, source: Coords) -> str:
        """Empty if recoverable; SOURCE_UNCOMMITTED (wait) or FOREIGN (never) otherwise."""
        if source in self.dlq:
            return ""
        if source[2] >= self.ends.get((source[0], source[1]), 0):
            return SOURCE_UNCOMMITTED
        return FOREIGN


@dataclass(frozen=True)
class Selection:
    """Which live records a run tries (`dlq replay`); the others are re-sent unchanged.

    The default selects everything (the scheduled run). Times are the source record's arrival
    (its Kafka timestamp), `until` exclusive; `to_offset` (exclusive) also ends the ranges planned.
    """

    categories: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    dlq_partition: int | None = None
    from_offset: int | None = None
    to_offset: int | None = None

    def picks(self, message: DlqMessage) -> bool:
        record = message.record
        if record is None or (self.categories and record.category not in self.categories):
            return False
        when = record.source_time
        if self.since is not None and (when is None or when < self.since):
            return False
        if self.until is not None and (when is None or when >= self.until):
            return False
        return self.from_offset is None or message.offset >= self.from_offset


EVERYTHING = Selection()


# ------------------------------------------------------------------------------------ one range


@dataclass
class _Run:
    """What every range of one reprocess run shares."""

    settings: Settings
    consumer: Consumer
    dlq_out: DlqPublisher
    parked_out: DlqPublisher
    book: Book
    sources: Sources
    selection: Selection
    run_id: str
    clock: Callable[[], datetime]


@dataclass
class _Tried:
    """What re-validation made of the records tried in one range."""

    good: pl.DataFrame
    recovered: set[Coords] = field(default_factory=set)
    filtered: dict[Coords, str] = field(default_factory=dict)
    rejects: dict[Coords, Reject] = field(default_factory=dict)
    rules: dict[Coords, tuple[str, ...]] = field(default_factory=dict)


@dataclass
class _Plan:
    """Per range: where each DLQ offset goes (filtered, re-sent, parked) and the resolutions."""

    rng: Range
    filtered: dict[str, list[int]] = field(default_factory=dict)
    # (the copy handled, the record to send, RETRIED or why it is deferred)
    resend: list[tuple[DlqMessage, DlqRecord, str]] = field(default_factory=list)
    park: list[tuple[DlqMessage, DlqRecord]] = field(default_factory=list)
    entries: list[Resolution] = field(default_factory=list)

    def skip(self, reason: str, offset: int) -> None:
        self.filtered.setdefault(reason, []).append(offset)


def reprocess_range(run: _Run, rng: Range) -> tuple[RangeOutcome, Segment | None]:
    """The protocol for one DLQ range; the caller holds the partition's lock."""
    state, lake_dir, settings = run.settings.state_dir, run.settings.lake_dir, run.settings
    existing = ledger.read_manifest(state, rng)
    if existing is not None:
        return RangeOutcome(rng, "already_committed", existing), None
    started = time.perf_counter()
    moment = run.clock()
    intent = ledger.write_intent(state, rng, run.run_id, ingested_at=moment, now=moment)
    raw = drain_range(run.consumer, rng, settings.drain_timeout_seconds, with_headers=True)
    plan = _Plan(rng)
    tries = _sort_out(run, plan, classify(decode_batch(raw), run.book))
    tried = _retry(run, rng, intent, tries)
    _decide(run, plan, intent, tries, tried)
    staged = lake.stage_days(lake.staging_dir(state, rng), rng, tried.good)
    dlq_entries = _send(run, plan)
    segment = Segment(
        rng, run.book.next_seq, intent.run_id, tuple(sorted(dlq_entries)), tuple(plan.entries)
    )
    resolution.write_pending(state, segment)
    intent = ledger.prepare_intent(state, intent, staged, dlq_entries, plan.filtered, raw.offsets)
    lake.publish_all(intent.files, lake_dir)
    manifest = ledger.commit_manifest(state, lake_dir, intent, committed_at=run.clock())
    fault_point("R1")  # committed, resolutions still pending: readers count them already
    resolution.apply_pending(state, rng)
    ledger.finish_range(state, rng)
    run.book.add(segment)
    return RangeOutcome(rng, "committed", manifest, time.perf_counter() - started), segment


Live = tuple[DlqMessage, DlqRecord]


def _sort_out(run: _Run, plan: _Plan, verdicts: list[Verdict]) -> list[Live]:
    """Skips, defers or keeps each copy; returns the live copies to try now."""
    tries: list[Live] = []
    for verdict in verdicts:
        message, record = verdict.message, verdict.message.record
        if verdict.skip or record is None:
            plan.skip(verdict.skip or MALFORMED, message.offset)
            continue
        why = run.sources.status(record.coordinates)
        if why == FOREIGN:
            log.warning(
                "DLQ %s[%d]@%d names %s, which its range did not send to the DLQ",
                plan.rng.topic,
                message.partition,
                message.offset,
                record.coordinates,
            )
            plan.skip(FOREIGN, message.offset)
        elif why or not run.selection.picks(message):
            plan.resend.append((message, record, why or NOT_SELECTED))
        else:
            tries.append((message, record))
    return tries


Group = list[tuple[DlqRecord, int, bytes | None]]  # record, its DLQ offset, repaired value


def _retry(run: _Run, rng: Range, intent: ledger.Intent, tries: list[Live]) -> _Tried:
    """Repairs, then re-validates with process_batch, one source partition at a time.

    Source partitions are batched apart so lake rows get the source coordinates as lineage; the
    duplicate check sees what earlier groups of this range accepted.
    """
    settings = run.settings
    tried = _Tried(good=empty_lake_frame())
    groups: dict[tuple[str, int], Group] = {}
    for message, record in tries:
        ctx = RepairContext(*record.coordinates, naive_as_utc=settings.dlq_naive_as_utc)
        fixed = repair(record.value, ctx)
        tried.rules[record.coordinates] = fixed.rules
        key = (record.source_topic, record.source_partition)
        groups.setdefault(key, []).append((record, message.offset, fixed.value))
    accepted: list[pl.DataFrame] = []

    def known_ids(days: list[date], ids: pl.Series) -> pl.DataFrame:
        committed = ledger.committed_ids(
            settings.lake_dir, days, state_dir=settings.state_dir, among=ids
        )
        ours = [
            f.select(committed.columns).filter(pl.col(DATE_COLUMN).is_in(days)) for f in accepted
        ]
        return pl.concat([committed, *ours])

    for (topic, partition), group in sorted(groups.items()):
        good = _validate_group(run, rng, intent, topic, partition, group, known_ids, tried)
        accepted.append(good)
    if accepted:
        tried.good = pl.concat(accepted).sort(DLQ_OFFSET_COLUMN)
    return tried


def _validate_group(
    run: _Run,
    rng: Range,
    intent: ledger.Intent,
    topic: str,
    partition: int,
    group: Group,
    known_ids: CommittedIds,
    tried: _Tried,
) -> pl.DataFrame:
    """One source partition's repaired records through process_batch; returns its lake rows."""
    settings = run.settings
    group.sort(key=lambda item: item[0].source_offset)
    raw = RawBatch(
        topic,
        partition,
        [record.source_offset for record, _, _ in group],
        [record.source_timestamp_ms for record, _, _ in group],
        [record.key for record, _, _ in group],
        [value for _, _, value in group],
    )
    result = process(settings, raw, intent, known_ids)
    good, late = _arrival_window(result.good, settings)
    dlq_offsets = {record.source_offset: offset for record, offset, _ in group}
    good = _with_dlq_lineage(good, rng.partition, dlq_offsets, tried.rules, topic, partition)
    for offset in good.get_column(OFFSET_COLUMN).to_list():
        tried.recovered.add((topic, partition, offset))
    for reason, offsets in result.filtered.items():
        tried.filtered.update({(topic, partition, o): reason for o in offsets})
    for reject in [*result.rejects, *late]:
        tried.rejects[(topic, partition, reject.offset)] = reject
    return good


def _arrival_window(good: pl.DataFrame, settings: Settings) -> tuple[pl.DataFrame, list[Reject]]:
    """Rows outside the event-time window around their source record's arrival become rejects.

    process_batch judges the window at reprocess time; this keeps an event whose clock ran ahead
    from passing just because time went by since ingestion rejected it.
    """
    ts, arrived = pl.col("timestamp"), pl.col("kafka_timestamp")
    outside = arrived.is_not_null() & (
        (ts > arrived + pl.duration(seconds=settings.max_clock_skew_seconds))
        | (ts < arrived - pl.duration(days=settings.max_lateness_days))
    )
    late = good.filter(outside)
    rejects = [
        Reject.of(
            offset,
            ARRIVAL_CATEGORY,
            ARRIVAL_RULE,
            "timestamp",
            f"{ARRIVAL_RULE} failed for timestamp={when.isoformat()} (arrived {at.isoformat()})",
        )
        for offset, when, at in late.select(OFFSET_COLUMN, "timestamp", "kafka_timestamp").rows()
    ]
    return good.filter(~outside), rejects


def _with_dlq_lineage(
    good: pl.DataFrame,
    dlq_partition: int,
    dlq_offsets: dict[int, int],
    rules: dict[Coords, tuple[str, ...]],
    topic: str,
    partition: int,
) -> pl.DataFrame:
    """Fills dlq_partition/dlq_offset/repair_rules of one source partition's recovered rows."""
    if good.height == 0:
        return good
    rule_text = {o: ",".join(rules[(topic, partition, o)]) for o in dlq_offsets}
    source = pl.col(OFFSET_COLUMN)
    return good.with_columns(
        pl.lit(dlq_partition, dtype=pl.Int32).alias(DLQ_PARTITION_COLUMN),
        source.replace_strict(dlq_offsets, return_dtype=pl.Int64).alias(DLQ_OFFSET_COLUMN),
        source.replace_strict(rule_text, return_dtype=pl.String).alias(REPAIR_RULES_COLUMN),
    )


def _decide(
    run: _Run, plan: _Plan, intent: ledger.Intent, tries: list[Live], tried: _Tried
) -> None:
    """Outcome per tried record: recovered, filtered, re-sent with attempt + 1, or parked."""
    failed_at = intent.now.astimezone(UTC).isoformat().replace("+00:00", "Z")
    for message, record in tries:
        source, where = record.coordinates, (plan.rng.partition, message.offset)
        attempt = record.attempt + 1
        rules = tried.rules[source]
        if source in tried.recovered:
            plan.entries.append(
                Resolution(source, resolution.RECOVERED, where, attempt, rules=rules)
            )
        elif source in tried.filtered:
            reason = tried.filtered[source]
            plan.skip(reason, message.offset)
            plan.entries.append(
                Resolution(source, resolution.FILTERED, where, attempt, detail=reason, rules=rules)
            )
        else:
            reject = tried.rejects[source]
            again = replace(
                record,
                stage=reject.stage,
                category=reject.category,
                rule=reject.rule,
                field=reject.field,
                message=reject.message,
                attempt=attempt,
                run_id=intent.run_id,
                failed_at=failed_at,
            )
            if attempt >= run.settings.dlq_max_attempts:
                plan.park.append((message, again))
            else:
                plan.resend.append((message, again, resolution.RETRIED))


def _send(run: _Run, plan: _Plan) -> list[DlqEntry]:
    """Re-sends and parks, confirmed; records resolutions; returns the range's DLQ entries."""
    rng = plan.rng
    sent = _by_source(run.dlq_out.publish([record for _, record, _ in plan.resend]))
    parked = _by_source(run.parked_out.publish([record for _, record in plan.park]))
    entries = []
    for message, record, why in plan.resend:
        out = sent[record.coordinates]
        to = (out.dlq_partition, out.dlq_offset)
        entries.append(DlqEntry(message.offset, record.category, *to))
        outcome = resolution.RETRIED if why == resolution.RETRIED else resolution.DEFERRED
        detail = record.category if outcome == resolution.RETRIED else why
        plan.entries.append(
            Resolution(
                record.coordinates,
                outcome,
                (rng.partition, message.offset),
                record.attempt,
                to=to,
                detail=detail,
            )
        )
    for message, record in plan.park:
        out = parked[record.coordinates]
        plan.skip(PARKED_REASON, message.offset)
        plan.entries.append(
            Resolution(
                record.coordinates,
                resolution.PARKED,
                (rng.partition, message.offset),
                record.attempt,
                to=(out.dlq_partition, out.dlq_offset),
                detail=record.category,
            )
        )
    return entries


def _by_source(deliveries: list[DlqDelivery]) -> dict[Coords, DlqDelivery]:
    return {(d.source_topic, d.source_partition, d.source_offset): d for d in deliveries}


# ------------------------------------------------------------------------------------------ a run


@dataclass
class ReprocessResult:
    """Everything one reprocess run committed."""

    run_id: str
    outcomes: list[RangeOutcome] = field(default_factory=list)
    resolutions: list[Resolution] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def lake(self) -> IngestResult:
        """The lake side (days, files, rows written), in the ingest run's terms."""
        return IngestResult(self.run_id, self.outcomes, self.seconds)

    def counts(self) -> dict[str, int]:
        """Handled records by outcome, plus skipped copies by reason; zeros included."""
        counts = Counter(r.outcome for r in self.resolutions)
        for outcome in self.lake.committed:
            for reason in SKIPPED_REASONS:
                counts[reason] += len(outcome.manifest.filtered.get(reason, ()))
        names = (*sorted(resolution.OUTCOMES), *SKIPPED_REASONS)
        return {name: counts.get(name, 0) for name in names}

    def summary(self) -> str:
        done = len(self.lake.committed)
        counts = ", ".join(f"{name} {n}" for name, n in self.counts().items() if n)
        return (
            f"{done} DLQ range(s) committed, {len(self.outcomes) - done} already committed: "
            f"{counts or 'nothing to do'} in {self.seconds:.2f} s"
        )


def reprocess(
    settings: Settings,
    selection: Selection = EVERYTHING,
    *,
    run_id: str | None = None,
    log: logging.Logger | logging.LoggerAdapter | None = None,
    now: Callable[[], datetime] | None = None,
) -> ReprocessResult:
    """Reprocesses the DLQ from each partition's committed end to its high watermark seen now."""
    logger = log or logging.getLogger(__name__)
    result = ReprocessResult(run_id or f"cli-{uuid.uuid4()}")
    started = time.perf_counter()
    preflight(settings)
    dlq, parked = settings.dlq_topic, settings.parked_topic
    require(settings, {dlq: (READ, WRITE, DESCRIBE), parked: (WRITE, DESCRIBE)})
    consumer = make_consumer(settings)
    try:
        with _locked_run(settings, consumer, selection, result.run_id, now, logger) as run:
            for rng in plan_dlq_ranges(settings, consumer, selection):
                with paused_gc():
                    outcome, segment = reprocess_range(run, rng)
                result.outcomes.append(outcome)
                if segment is not None:
                    result.resolutions.extend(segment.entries)
                logger.info("%s: %s", rng.range_id, outcome.status)
    finally:
        consumer.close()
        result.seconds = time.perf_counter() - started
    return result


@contextlib.contextmanager
def _locked_run(
    settings: Settings,
    consumer: Consumer,
    selection: Selection,
    run_id: str,
    now: Callable[[], datetime] | None,
    logger: logging.Logger | logging.LoggerAdapter,
) -> Iterator[_Run]:
    """Every DLQ partition locked and recovered, the ledger loaded, producers open.

    All partitions are locked because a source record's copies may sit in several of them and the
    ledger's segment order must be one sequence: one reprocess at a time, fenced like ingestion.
    """
    state, topic = settings.state_dir, settings.dlq_topic
    with contextlib.ExitStack() as stack:
        partitions = [s.partition for s in partition_states(settings, consumer, topic)]
        for partition in partitions:
            stack.enter_context(ledger.partition_lock(state, topic, partition))
        for partition in partitions:
            recover(settings.lake_dir, state, topic, partition)
            for line in resolution.recover_pending(state, topic, partition):
                logger.warning(line)
        book = resolution.load_book(state)
        yield _Run(
            settings=settings,
            consumer=consumer,
            dlq_out=stack.enter_context(contextlib.closing(DlqPublisher(settings, topic))),
            parked_out=stack.enter_context(
                contextlib.closing(DlqPublisher(settings, settings.parked_topic))
            ),
            book=book,
            sources=Sources.load(settings, book.dlq_topics | {topic}),
            selection=selection,
            run_id=run_id,
            clock=now or (lambda: datetime.now(UTC)),
        )


def plan_dlq_ranges(
    settings: Settings, consumer: Consumer, selection: Selection = EVERYTHING
) -> list[Range]:
    """Per DLQ partition (the selected one), from the committed end to the high watermark."""
    states = [
        replace(s, high=s.high if selection.to_offset is None else min(s.high, selection.to_offset))
        for s in partition_states(settings, consumer, settings.dlq_topic)
        if selection.dlq_partition in (None, s.partition)
    ]
    plan = plan_ranges(
        settings.dlq_topic, states, settings.max_range_events, max_ranges_per_partition=UNBOUNDED
    )
    if plan.lost:
        lost = ", ".join(r.range_id for r in plan.lost)
        raise DataLossError(f"DLQ records deleted by retention before reprocessing: {lost}")
    return plan.ranges


def failing_now(settings: Settings) -> list[DlqMessage]:
    """The live heads not reprocessed yet: what is failing right now (read-only, no locks)."""
    book = resolution.load_book(settings.state_dir)
    require(settings, {settings.dlq_topic: (READ, DESCRIBE)})
    consumer = make_consumer(settings)
    try:
        messages: list[DlqMessage] = []
        for rng in plan_dlq_ranges(settings, consumer):
            raw = drain_range(consumer, rng, settings.drain_timeout_seconds, with_headers=True)
            messages.extend(decode_batch(raw))
    finally:
        consumer.close()
    return [v.message for v in classify(messages, book) if not v.skip]
