"""DLQ reprocessing: ranges of the DLQ topic through the same commit protocol as ingestion.

Per range [start, end) of DLQ partition p (app id `<dlq topic>-<p>`): start check → drain (with
headers) → K1 → classify each copy against the resolution ledger and the raw ranges' DLQ entries →
repair and re-validate the live ones with the ingest path's `process` → re-send the ones still
failing (attempt + 1, fresh headers, original bytes) or park them after PIPELINE_DLQ_MAX_ATTEMPTS
→ K6 → one `commit_range` (KC inside, K7 after). The commit carries the recovered rows, the
re-sent copies as DLQ entries, the skipped and parked offsets as filtered reasons and the range's
resolutions in its record's `extra`: every DLQ offset lands in exactly one of a lake row, a re-sent
copy or a filtered reason, and the resolution ledger is the table's log (resolution.py). A crash
anywhere before the commit leaves only re-sent copies that no committed record names: the next run
drains the range again and those copies are superseded.

Recovered rows keep their source coordinates in kafka_topic/partition/offset (and the source
record's timestamp); `dlq_partition`/`dlq_offset` name the DLQ record, `repair_rules` the rules
that fired.

Liveness: each failed source record has one *head*, the one DLQ copy allowed to act: the copy its
latest resolution produced or, before any resolution, the copy its committed raw range names. Other
copies (re-sent by a crashed attempt of ingestion or reprocessing) are "superseded", copies of a
resolved record "already_resolved", a second copy in one range a "repeat": so a source record is
recovered at most once however many copies the DLQ holds. Heads live in one DLQ partition at a
time, and a run refuses to commit when another reprocess run committed after it read the ledger,
so two runs never act on one record (the Dagster job runs one at a time anyway).
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

from pipeline_project.batch import epochs
from pipeline_project.batch.backlog import partition_states
from pipeline_project.batch.faults import fault_point
from pipeline_project.batch.plan import plan_ranges
from pipeline_project.batch.process import CommittedIds, Identity
from pipeline_project.batch.ranges import Range
from pipeline_project.batch.records import BatchResult, RawBatch, Reject
from pipeline_project.batch.run import (
    UNBOUNDED,
    IngestResult,
    RangeOutcome,
    committed_end,
    committed_ids_of,
    id_cache_of,
    preflight,
    process,
    range_record,
)
from pipeline_project.batch.transform import empty_lake_frame
from pipeline_project.columns import (
    DATE_COLUMN,
    DLQ_OFFSET_COLUMN,
    DLQ_PARTITION_COLUMN,
    KAFKA_TIMESTAMP_COLUMN,
    OFFSET_COLUMN,
    REPAIR_RULES_COLUMN,
)
from pipeline_project.dlq import resolution
from pipeline_project.dlq.publish import DlqDelivery, DlqPublisher
from pipeline_project.dlq.records import DlqRecord
from pipeline_project.dlq.repair import RepairContext, repair
from pipeline_project.dlq.resolution import Book, Coords, Resolution, Segment
from pipeline_project.errors import DataLossError, FencingError, LedgerError
from pipeline_project.events.contract import UNSUPPORTED_VERSION
from pipeline_project.kafka.access import DESCRIBE, READ, WRITE, require
from pipeline_project.kafka.drain import drain_range, make_consumer
from pipeline_project.lake.commit import check_start, commit_range
from pipeline_project.lake.history import History, read_history
from pipeline_project.lake.location import Lake
from pipeline_project.lake.record import METADATA_KEY, DlqEntry, RangeRecord
from pipeline_project.lake.table import lake_errors, open_table
from pipeline_project.perf import paused_gc
from pipeline_project.settings import Settings
from pipeline_project.utc import utc_text

log = logging.getLogger(__name__)

# Filter reasons of DLQ offsets whose record is not acted on (in DLQ ranges' records).
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
# Why a tried record is re-sent without counting an attempt: its schema version is still newer than
# the code's contract. It is held, not broken, so it is never parked; once the code knows the
# version, the next run brings it in.
WAITING = "waiting_for_contract"
# At most this many DLQ records per range: a range's resolutions ride in its commit's metadata
# (~150 bytes each), which every reader of the log parses; 20k keeps one commit near 3 MB.
MAX_DLQ_RANGE_EVENTS = 20_000
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


@dataclass
class Sources:
    """What committed raw ranges say: which DLQ copy each sent, and how far each is committed.

    Only a source record its committed range counts as DLQ may be recovered; otherwise the lake
    could hold it twice (reconcile checks the same). The copy that range names is the record's
    first head.
    """

    heads: dict[Coords, tuple[int, int]] = field(default_factory=dict)
    ends: dict[tuple[str, int], int] = field(default_factory=dict)

    @classmethod
    def of(cls, history: History) -> Sources:
        sources = cls()
        for record in history.records:
            rng = record.range
            if record.kind == resolution.KIND:
                continue
            key = (rng.topic, rng.partition)
            sources.ends[key] = max(sources.ends.get(key, 0), rng.end)
            for d in record.dlq:
                sources.heads[(rng.topic, rng.partition, d.source_offset)] = (
                    d.dlq_partition,
                    d.dlq_offset,
                )
        return sources

    def status(self, source: Coords) -> str:
        """Empty if recoverable; SOURCE_UNCOMMITTED (wait) or FOREIGN (never) otherwise."""
        if source in self.heads:
            return ""
        if source[2] >= self.ends.get((source[0], source[1]), 0):
            return SOURCE_UNCOMMITTED
        return FOREIGN


@dataclass(frozen=True)
class Verdict:
    """A DLQ message and why it is skipped ("" when it is live: this copy acts for its record)."""

    message: DlqMessage
    skip: str = ""


def classify(messages: Sequence[DlqMessage], book: Book, sources: Sources) -> list[Verdict]:
    """Decides, per copy, whether it is its record's head (see the module docstring)."""
    seen: set[Coords] = set()
    verdicts = []
    for message in messages:
        record = message.record
        if record is None:
            verdicts.append(Verdict(message, MALFORMED))
            continue
        here = (message.partition, message.offset)
        known = book.get(record.coordinates)
        head = known.to if known is not None else sources.heads.get(record.coordinates, here)
        if known is not None and known.terminal:
            skip = ALREADY_RESOLVED
        elif head != here:
            skip = SUPERSEDED
        elif record.coordinates in seen:
            skip = REPEAT
        else:
            skip = ""
            seen.add(record.coordinates)
        verdicts.append(Verdict(message, skip))
    return verdicts


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
    lake: Lake
    consumer: Consumer
    dlq_out: DlqPublisher
    parked_out: DlqPublisher
    book: Book
    sources: Sources
    seen_version: int  # the table version the book and sources were read at (-1: no table)
    selection: Selection
    run_id: str
    clock: Callable[[], datetime]
    tokens: set[str] = field(default_factory=set)  # this run's own commits


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
    """The protocol for one DLQ range; its commit is its only write to the lake."""
    done = committed_end(run.lake, rng)
    if done is not None and done >= rng.end and done > rng.start:
        return RangeOutcome(rng, "already_committed"), None
    started = time.perf_counter()
    identity = _identity(run)
    check_start(
        RangeRecord(rng, resolution.KIND, run.run_id, identity.now, identity.now, 0, ""), done
    )
    raw = drain_range(run.consumer, rng, run.settings.drain_timeout_seconds, with_headers=True)
    fault_point("K1")
    plan = _Plan(rng)
    tries = _sort_out(run, plan, classify(decode_batch(raw), run.book, run.sources))
    tried = _retry(run, rng, identity, tries)
    _decide(run, plan, identity, tries, tried)
    deliveries = _send(run, plan)
    fault_point("K6")
    segment = Segment(rng, run.run_id, tuple(plan.entries))
    batch = BatchResult(good=tried.good, filtered=plan.filtered)
    record = range_record(
        rng, resolution.KIND, identity, raw.offsets, batch, deliveries, segment.to_extra()
    )
    _check_book_current(run, rng)
    committed = commit_range(
        run.lake, record, epochs.with_epoch(tried.good, rng, epochs.DLQ_EPOCH_COLUMN)
    )
    fault_point("K7")
    if committed.status == "already_committed":
        return RangeOutcome(rng, "already_committed"), None
    run.tokens.add(record.token)
    run.book.add(segment)
    seconds = time.perf_counter() - started
    return RangeOutcome(rng, "committed", record, seconds, version=committed.version), segment


def _identity(run: _Run) -> Identity:
    moment = run.clock()
    settings = run.settings
    return Identity(
        run.run_id, moment, moment, settings.max_lateness_days, settings.max_clock_skew_seconds
    )


def _check_book_current(run: _Run, rng: Range) -> None:
    """Refuses to commit on a stale ledger: another reprocess run committed since it was read.

    Its resolutions may have moved a head this range judged (a record recovered twice, or its new
    head skipped as superseded). Commits of other app ids do not conflict in Delta, so this check
    is ours; nothing of the range is committed and its re-sent copies are superseded next time.
    """
    table = open_table(run.lake)
    latest = -1 if table is None else table.version()
    if table is None or latest <= run.seen_version:
        return
    with lake_errors(run.lake, "reading the events table's latest commits"):
        entries = table.history(limit=latest - run.seen_version)
    for entry in entries:
        meta = entry.get(METADATA_KEY)
        if not isinstance(meta, dict) or meta.get("kind") != resolution.KIND:
            continue
        if meta.get("token") not in run.tokens:
            raise FencingError(
                f"{rng.range_id}: another reprocess run committed DLQ ranges (version "
                f"{entry.get('version')}) while this run was reprocessing; this range committed "
                "nothing, run again"
            )


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


def _retry(run: _Run, rng: Range, identity: Identity, tries: list[Live]) -> _Tried:
    """Repairs, then re-validates with the ingest path's `process`, one source partition at a time.

    Source partitions are batched apart so lake rows get the source coordinates as lineage; the
    duplicate check sees the table's ids and what earlier groups of this range accepted.
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
    committed = committed_ids_of(run.lake, id_cache_of(settings, run.lake))

    def known_ids(days: list[date], ids: pl.Series) -> pl.DataFrame:
        found = committed(days, ids)
        ours = [f.select(found.columns).filter(pl.col(DATE_COLUMN).is_in(days)) for f in accepted]
        return pl.concat([found, *ours])

    for (topic, partition), group in sorted(groups.items()):
        good = _validate_group(run, rng, identity, topic, partition, group, known_ids, tried)
        accepted.append(good)
    if accepted:
        tried.good = pl.concat(accepted).sort(DLQ_OFFSET_COLUMN)
    return tried


def _validate_group(
    run: _Run,
    rng: Range,
    identity: Identity,
    topic: str,
    partition: int,
    group: Group,
    known_ids: CommittedIds,
    tried: _Tried,
) -> pl.DataFrame:
    """One source partition's repaired records through `process`; returns its lake rows."""
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
    result = process(settings, raw, identity, known_ids)
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

    `process` judges the window at reprocess time; this keeps an event whose clock ran ahead
    from passing just because time went by since ingestion rejected it.
    """
    ts, arrived = pl.col("timestamp"), pl.col(KAFKA_TIMESTAMP_COLUMN)
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
        for offset, when, at in late.select(
            OFFSET_COLUMN, "timestamp", KAFKA_TIMESTAMP_COLUMN
        ).rows()
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


def _decide(run: _Run, plan: _Plan, identity: Identity, tries: list[Live], tried: _Tried) -> None:
    """Outcome per tried record: recovered, filtered, re-sent with attempt + 1, or parked.

    A record whose version the contract still does not know is re-sent as it was tried (WAITING):
    its attempt stays, so waiting for a release never parks it.
    """
    failed_at = utc_text(identity.now)
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
                run_id=identity.run_id,
                failed_at=failed_at,
            )
            if reject.category == UNSUPPORTED_VERSION:
                plan.resend.append((message, replace(again, attempt=record.attempt), WAITING))
            elif attempt >= run.settings.dlq_max_attempts:
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
        """The lake side (days, versions, rows written), in the ingest run's terms."""
        return IngestResult(self.run_id, self.outcomes, self.seconds)

    def counts(self) -> dict[str, int]:
        """Handled records by outcome, plus skipped copies by reason; zeros included."""
        counts = Counter(r.outcome for r in self.resolutions)
        for outcome in self.lake.committed:
            filtered = outcome.record.filtered if outcome.record else {}
            for reason in SKIPPED_REASONS:
                counts[reason] += len(filtered.get(reason, ()))
        names = (*sorted(resolution.OUTCOMES), *SKIPPED_REASONS)
        return {name: counts.get(name, 0) for name in names}

    def waiting(self) -> int:
        """Records re-sent because their schema version is newer than the code (WAITING)."""
        return sum(
            r.outcome == resolution.DEFERRED and r.detail == WAITING for r in self.resolutions
        )

    def summary(self) -> str:
        done = len(self.lake.committed)
        counts = ", ".join(f"{name} {n}" for name, n in self.counts().items() if n)
        waiting = self.waiting()
        held = f" ({waiting} of them waiting for a newer contract)" if waiting else ""
        return (
            f"{done} DLQ range(s) committed, {len(self.outcomes) - done} already committed: "
            f"{counts or 'nothing to do'}{held} in {self.seconds:.2f} s"
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
    lake = preflight(settings)
    dlq, parked = settings.dlq_topic, settings.parked_topic
    require(settings, {dlq: (READ, WRITE, DESCRIBE), parked: (WRITE, DESCRIBE)})
    consumer = make_consumer(settings)
    try:
        with _open_run(settings, lake, consumer, selection, result.run_id, now) as run:
            for rng in plan_dlq_ranges(settings, consumer, selection):
                with paused_gc():
                    outcome, segment = reprocess_range(run, rng)
                result.outcomes.append(outcome)
                if segment is not None:
                    result.resolutions.extend(segment.entries)
                logger.info("%s: %s", rng.range_id, outcome.status)
        epochs.remember_topic(settings, lake, dlq)  # a recreated DLQ is then known by its id
    finally:
        consumer.close()
        result.seconds = time.perf_counter() - started
    return result


@dataclass(frozen=True)
class Ledger:
    """The resolution ledger and the raw ranges' DLQ entries, read from one snapshot of the log."""

    book: Book
    sources: Sources
    version: int  # -1 when the table does not exist yet


def read_ledger(lake: Lake) -> Ledger:
    """One history scan of the events table: folded resolutions, sources, and its version.

    A commit whose record cannot be read could hide resolutions (a record recovered twice), so
    reprocessing stops until it is repaired.
    """
    table = open_table(lake)
    history = read_history(lake, table)
    if history.unreadable:
        version, why = history.unreadable[0]
        raise LedgerError(
            f"lake {lake.describe()}: commit {version} has an unreadable range record ({why}); "
            "reprocessing needs every resolution, fix the record first"
        )
    try:
        segments = resolution.load_segments(lake, history)
    except ValueError as exc:
        raise LedgerError(f"lake {lake.describe()}: {exc}") from None
    version = -1 if table is None else table.version()
    return Ledger(resolution.load_book(lake, segments), Sources.of(history), version)


@contextlib.contextmanager
def _open_run(
    settings: Settings,
    lake: Lake,
    consumer: Consumer,
    selection: Selection,
    run_id: str,
    now: Callable[[], datetime] | None,
) -> Iterator[_Run]:
    """The ledger read from the log, producers open; nothing to lock or recover first."""
    ledger = read_ledger(lake)
    with contextlib.ExitStack() as stack:
        yield _Run(
            settings=settings,
            lake=lake,
            consumer=consumer,
            dlq_out=stack.enter_context(
                contextlib.closing(DlqPublisher(settings, settings.dlq_topic))
            ),
            parked_out=stack.enter_context(
                contextlib.closing(DlqPublisher(settings, settings.parked_topic))
            ),
            book=ledger.book,
            sources=ledger.sources,
            seen_version=ledger.version,
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
    size = min(settings.max_range_events, MAX_DLQ_RANGE_EVENTS)
    plan = plan_ranges(settings.dlq_topic, states, size, max_ranges_per_partition=UNBOUNDED)
    if plan.lost:
        lost = ", ".join(r.range_id for r in plan.lost)
        raise DataLossError(f"DLQ records deleted by retention before reprocessing: {lost}")
    return plan.ranges


def failing_now(settings: Settings) -> list[DlqMessage]:
    """The live heads not reprocessed yet: what is failing right now (read-only)."""
    ledger = read_ledger(preflight(settings))
    require(settings, {settings.dlq_topic: (READ, DESCRIBE)})
    consumer = make_consumer(settings)
    try:
        messages: list[DlqMessage] = []
        for rng in plan_dlq_ranges(settings, consumer):
            raw = drain_range(consumer, rng, settings.drain_timeout_seconds, with_headers=True)
            messages.extend(decode_batch(raw))
    finally:
        consumer.close()
    return [v.message for v in classify(messages, ledger.book, ledger.sources) if not v.skip]
