"""The run protocol: check, drain, process, DLQ confirmed, one Delta commit per range.

Each range commits on its own, so a run that fails half-way keeps the ranges it finished. The commit
(lake/commit.py) is the fence and the commit point at once: it carries the range's rows, its end
offset as the partition's app transaction and its accounting, or nothing at all. A crash anywhere
before it leaves no trace a reader can see; the next run drains the range again. Kill points (test
only, see faults.py): K1 after the drain, K6 after the DLQ is confirmed, KC after the commit's
fence check, K7 after the commit.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path

import polars as pl
from confluent_kafka import Consumer, TopicPartition
from deltalake import DeltaTable

from pipeline_project.batch import epochs
from pipeline_project.batch.backlog import partition_states
from pipeline_project.batch.faults import fault_point
from pipeline_project.batch.plan import plan_ranges
from pipeline_project.batch.process import (
    CommittedIds,
    GatheredRows,
    Identity,
    MappedPart,
    MappedRows,
    Verdict,
    finish_batch,
    gather_parts,
    judge_suspects,
    map_part,
    map_rows,
    with_verdict,
)
from pipeline_project.batch.ranges import Range
from pipeline_project.batch.records import BatchResult, RawBatch, Reject, SourceRecord
from pipeline_project.dlq.publish import DlqPublisher, DlqSend
from pipeline_project.dlq.records import DlqRecord
from pipeline_project.errors import ContiguityError, DataLossError, PipelineError
from pipeline_project.events.contract import FILTER_REASONS
from pipeline_project.kafka.access import DESCRIBE, READ, WRITE, require
from pipeline_project.kafka.drain import drain_range, make_consumer
from pipeline_project.lake import read
from pipeline_project.lake.commit import StagedFiles, check_start, commit_range, stage_files
from pipeline_project.lake.files import file_rows
from pipeline_project.lake.id_cache import IdCache
from pipeline_project.lake.location import TABLE_EVENTS, Lake, lake_of
from pipeline_project.lake.probe import check_commit_support
from pipeline_project.lake.record import DlqEntry, RangeRecord, offsets_digest
from pipeline_project.lake.table import open_table, txn_version
from pipeline_project.perf import StepClock, paused_gc, quick_gil_handoff
from pipeline_project.settings import Settings
from pipeline_project.utc import utc_text

log = logging.getLogger(__name__)

UNBOUNDED = 1_000_000_000


@dataclass
class RangeOutcome:
    """What one range did: committed now, or found already committed (an idempotent re-run)."""

    range: Range
    status: str  # "committed" | "already_committed"
    record: RangeRecord | None = None  # None when already committed: this run changed nothing
    seconds: float = 0.0
    latency_ms: list[float] = field(
        default_factory=list
    )  # p50, p99 of ingested_at - kafka_timestamp
    steps: dict[str, float] = field(default_factory=dict)  # seconds per protocol step
    version: int | None = None  # the Delta table version of the commit
    read_ahead: bool = False  # drained while the range before it was written (run_ranges)

    @property
    def records(self) -> int:
        return self.record.records if self.record else 0

    @property
    def written(self) -> int:
        return self.record.written if self.record else 0

    @property
    def dlq(self) -> int:
        return len(self.record.dlq) if self.record else 0

    @property
    def filtered(self) -> dict[str, int]:
        if self.record is None:
            return {}
        return {reason: len(offs) for reason, offs in self.record.filtered.items()}


@dataclass
class DayStats:
    rows: int = 0
    versions: list[int] = field(default_factory=list)
    ranges: list[str] = field(default_factory=list)


@dataclass
class IngestResult:
    """Everything a run committed, summed for Dagster metadata and the CLI."""

    run_id: str
    outcomes: list[RangeOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def committed(self) -> list[RangeOutcome]:
        return [o for o in self.outcomes if o.status == "committed"]

    @property
    def records(self) -> int:
        return sum(o.records for o in self.committed)

    @property
    def written(self) -> int:
        return sum(o.written for o in self.committed)

    @property
    def dlq_count(self) -> int:
        return sum(o.dlq for o in self.committed)

    def filtered(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for outcome in self.committed:
            total.update(outcome.filtered)
        return dict(sorted(total.items()))

    def dlq_by_category(self) -> dict[str, int]:
        categories = Counter(
            d.category for o in self.committed if o.record is not None for d in o.record.dlq
        )
        return dict(sorted(categories.items()))

    def days(self) -> dict[date, DayStats]:
        """Rows, commit versions and ranges per UTC day the run wrote."""
        days: dict[date, DayStats] = {}
        for outcome in self.committed:
            for day, rows in (outcome.record.days if outcome.record else {}).items():
                stats = days.setdefault(date.fromisoformat(day), DayStats())
                stats.rows += rows
                if outcome.version is not None:
                    stats.versions.append(outcome.version)
                stats.ranges.append(outcome.range.range_id)
        return days

    def accounting_ok(self) -> bool:
        return all(o.records == o.written + o.dlq + sum(o.filtered.values()) for o in self.outcomes)

    def latency(self) -> tuple[float, float]:
        """Worst p50 and p99 latency (ms) over the run's committed ranges."""
        values = [o.latency_ms for o in self.committed if o.latency_ms]
        if not values:
            return (0.0, 0.0)
        return (max(v[0] for v in values), max(v[1] for v in values))

    def run_metadata(self) -> dict[str, float | int]:
        """Numeric metadata with stable names, so the UI plots them over time."""
        p50, p99 = self.latency()
        filtered = self.filtered()
        return {
            "run_records": self.records,
            "run_written": self.written,
            "run_dlq": self.dlq_count,
            "run_filtered": sum(filtered.values()),
            **{
                f"run_filtered_{reason}": filtered.get(reason, 0)
                for reason in sorted(set(FILTER_REASONS) | set(filtered))
            },
            "run_seconds": round(self.seconds, 3),
            "events_per_s": round(self.records / self.seconds, 1) if self.seconds else 0.0,
            "latency_p50_ms": round(p50, 1),
            "latency_p99_ms": round(p99, 1),
        }

    def summary(self) -> str:
        done = len(self.committed)
        again = len(self.outcomes) - done
        return (
            f"{done} range(s) committed, {again} already committed: {self.records} records -> "
            f"{self.written} rows, {self.dlq_count} to DLQ, filtered {self.filtered()} "
            f"in {self.seconds:.2f} s"
        )


def ingest(
    settings: Settings,
    ranges: Sequence[Range] | None = None,
    *,
    run_id: str | None = None,
    log: logging.Logger | logging.LoggerAdapter | None = None,
    now: Callable[[], datetime] | None = None,
    result: IngestResult | None = None,
    after: Predecessor | None = None,
) -> IngestResult:
    """Runs the protocol for `ranges`, or for every partition's backlog up to the high watermark.

    A `result` passed in is filled range by range (its run_id wins), so the caller still knows what
    committed when a later range fails or the run is interrupted. `after`: the run whose ranges
    end where these begin (a successor run, `Predecessor`).
    """
    logger = log or logging.getLogger(__name__)
    clock = now or (lambda: datetime.now(UTC))
    if result is None:
        result = IngestResult(run_id=run_id or f"cli-{uuid.uuid4()}")
    started = time.perf_counter()
    lake = preflight(settings)
    require_ingest_access(settings)
    consumer, reader = make_consumer(settings), make_consumer(settings)
    dlq = DlqPublisher(settings, settings.dlq_topic)
    try:
        topic = epochs.guard(settings, lake, consumer, settings.raw_topic)
        todo = list(ranges) if ranges is not None else plan_all(settings, consumer)
        for rng in todo:
            if rng.topic != settings.raw_topic:
                raise PipelineError(
                    f"range {rng.range_id} is not of the raw topic {settings.raw_topic}"
                )
        outcomes = run_ranges(
            settings,
            lake,
            (consumer, reader),
            dlq,
            interleaved(todo),
            result.run_id,
            clock,
            topic,
            after,
        )
        with closing(outcomes):  # a stop here stops the range being read ahead, before the close
            for outcome in outcomes:
                logger.info(
                    "%s: %s (%d records, %d rows, %d DLQ, filtered %s)",
                    outcome.range.range_id,
                    outcome.status,
                    outcome.records,
                    outcome.written,
                    outcome.dlq,
                    outcome.filtered,
                )
                result.outcomes.append(outcome)
        epochs.remember(lake, topic)
    finally:
        consumer.close()
        reader.close()
        dlq.close()
        result.seconds = time.perf_counter() - started
    return result


def preflight(settings: Settings) -> Lake:
    """The lake of these settings, reachable and ours, before anything is consumed.

    Opening the events table proves the URI, the bucket and the credentials (one clear LakeError
    line otherwise) and refuses a table this pipeline did not write.
    """
    lake = lake_of(settings.check())
    if not lake.is_s3:
        check_writable(Path(lake.root))
        check_commit_support(Path(lake.root))
    open_table(lake)
    return lake


def check_writable(root: Path) -> None:
    """A local lake root that cannot take a file fails the run before anything is consumed.

    access(2) reports EROFS on a read-only mount even for root; the probe write proves the rest
    (quota, permissions). The probe sits beside the tables, where no Delta reader looks.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK):
            raise PermissionError(13, "not writable")
        probe = root / f".write-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PipelineError(
            f"{root} is not writable ({exc.strerror}); nothing was consumed"
        ) from None


def require_ingest_access(settings: Settings) -> None:
    """Stops before the first range when an ACL the run needs is missing (see kafka/acls.py).

    Without it a missing Write on the DLQ would surface only after a range was read and
    processed, and a missing group Read only as a warning per committed range.
    """
    topics = {settings.raw_topic: (READ, DESCRIBE), settings.dlq_topic: (WRITE, DESCRIBE)}
    require(settings, topics, {settings.consumer_group: (READ,)})


def plan_all(settings: Settings, consumer: Consumer) -> list[Range]:
    """Every partition from its committed end to the high watermark seen now, in max-size ranges."""
    plan = plan_ranges(
        settings.raw_topic,
        partition_states(settings, consumer),
        settings.max_range_events,
        max_ranges_per_partition=UNBOUNDED,
    )
    if plan.lost:
        lost = ", ".join(r.range_id for r in plan.lost)
        raise DataLossError(f"offsets deleted by retention before they reached the lake: {lost}")
    return plan.ranges


def committed_end(lake: Lake, rng: Range) -> int | None:
    """The partition's committed end (its app transaction version) in the table's latest state."""
    return txn_version(open_table(lake), rng.source)


def run_ranges(
    settings: Settings,
    lake: Lake,
    consumers: tuple[Consumer, Consumer],
    dlq: DlqPublisher,
    todo: Sequence[Range],
    run_id: str,
    clock: Callable[[], datetime],
    topic: epochs.TopicIdentity | None = None,
    after: Predecessor | None = None,
) -> Iterator[RangeOutcome]:
    """Each range's outcome in turn; the next range is read while this one is written.

    Reading (librdkafka, the parser) and writing (Parquet, DLQ confirmations, the commit) use
    different cores, so a backlog of several partitions overlaps them (which ranges:
    `reads_ahead`). Reading ahead checks nothing this commit could change, and commits stay in
    range order, so a failure still stops the run at the failed range.
    `consumers`: the main thread's (ranges not read ahead, group offsets) and the reading thread's.
    """
    main, reader = consumers
    stop = threading.Event()
    cache = id_cache_of(settings, lake)

    def read(rng: Range, consumer: Consumer) -> DrainedRange | RangeOutcome:
        return drain_stage(settings, lake, consumer, dlq, rng, run_id, clock, topic, stop, after)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as pool:
        try:
            ahead: Future[DrainedRange | RangeOutcome] | None = None
            for index, rng in enumerate(todo):
                # Read here (the main consumer is warm) unless it was read ahead.
                was_ahead = ahead is not None
                drained = ahead.result() if ahead is not None else read(rng, main)
                following = todo[index + 1] if index + 1 < len(todo) else None
                ahead = None

                def read_next(following: Range | None = following, rng: Range = rng) -> None:
                    nonlocal ahead
                    if following is not None and reads_ahead(settings, rng, following):
                        ahead = pool.submit(read, following, reader)

                if isinstance(drained, RangeOutcome):
                    read_next()
                    outcome = drained
                else:
                    outcome = commit_stage(lake, main, dlq, drained, topic, read_next, cache)
                outcome.read_ahead = was_ahead
                yield outcome
        finally:
            stop.set()  # a range read ahead for a run that stopped is dropped, uncommitted


def reads_ahead(settings: Settings, current: Range, following: Range) -> bool:
    """Whether `following` is read while `current` is written.

    Only a range of another partition (the next one of the same partition starts where this one
    ends, and its start check needs this commit first), and only when the two together are no
    bigger than one range may be: a run never holds more than PIPELINE_MAX_RANGE_EVENTS records
    in memory, so its peak stays that of one full range. Smaller ranges (a sensor run's, a
    lower PIPELINE_MAX_RANGE_EVENTS) overlap; two full ones run one after the other.
    """
    if following.partition == current.partition:
        return False
    return current.size + following.size <= settings.max_range_events


def interleaved(ranges: Sequence[Range]) -> list[Range]:
    """Each partition's ranges in their order, the partitions taking turns.

    run_ranges reads a range ahead only when it is of another partition than the one written.
    """
    seen: Counter[int] = Counter()
    turns = []
    for rng in ranges:
        turns.append(seen[rng.partition])
        seen[rng.partition] += 1
    return [rng for _turn, rng in sorted(zip(turns, ranges, strict=True), key=lambda pair: pair[0])]


@dataclass
class DrainedRange:
    """A range read and mapped in memory, with what its commit still needs."""

    range: Range
    table: DeltaTable | None  # the snapshot its start was checked against (None: no table yet)
    identity: Identity
    history_start: int | None
    offsets: list[int]
    sources: dict[int, SourceRecord]  # the rejected and suspect records, for the DLQ
    mapped: GatheredRows | None  # None once filtered
    verdict: Future[Verdict]  # pandera's, on the range's suspects: judged during the filter
    steps: StepClock
    started: float
    sent: list[DlqSend]  # its parse and transform rejects, sent (unconfirmed) once drained


@dataclass(frozen=True)
class Predecessor:
    """The run whose ranges end where this run's begin: this run was started while it ran.

    A sensor starts the next run of a partition while the last one still works, so the next
    one's process start-up (seconds of Python and Dagster imports) is off the freshness path.
    Its ranges wait for the predecessor's commits; nothing else changes, and the Delta commit
    still fences every writer (the start must equal the committed end, checked again at commit).
    """

    run_id: str
    running: Callable[[], bool]  # False once the predecessor ended, whatever its outcome
    wait_seconds: float


AWAIT_POLL_SECONDS = 0.25


def await_start(
    lake: Lake,
    rng: Range,
    table: DeltaTable | None,
    done: int | None,
    after: Predecessor,
    stop: threading.Event | None = None,
) -> tuple[DeltaTable | None, int | None]:
    """The table once the partition is committed up to `rng.start` by the run before this one.

    Waits while that run is alive, at most `after.wait_seconds`; then one last look. ContiguityError
    when the start is still not reached (the predecessor failed or stalled): this run commits
    nothing, and the sensor plans the partition again from what was committed. A successor never
    takes "nothing committed yet" as its start: its start is the end of a range that must commit.
    """
    deadline = time.monotonic() + after.wait_seconds
    while (done is None or done < rng.start) and time.monotonic() < deadline:
        if stop is not None and stop.is_set():
            break
        alive = after.running()
        time.sleep(AWAIT_POLL_SECONDS)
        table = open_table(lake)
        done = txn_version(table, rng.source)
        if not alive:
            break
    if done is None or done < rng.start:
        seen = "nothing" if done is None else f"up to offset {done}"
        raise ContiguityError(
            f"{rng.range_id}: follows run {after.run_id}, which ended or stalled before "
            f"committing {rng.source} up to {rng.start} (committed: {seen}); this run committed "
            "nothing, and the partition is planned again from its committed end"
        )
    return table, done


def drain_stage(
    settings: Settings,
    lake: Lake,
    consumer: Consumer,
    dlq: DlqPublisher,
    rng: Range,
    run_id: str,
    clock: Callable[[], datetime],
    topic: epochs.TopicIdentity | None = None,
    stop: threading.Event | None = None,
    after: Predecessor | None = None,
) -> DrainedRange | RangeOutcome:
    """Checks the range's start, drains and maps it; nothing is written yet.

    `after`: the run this one follows; the range waits for it to commit up to its start.
    `dlq`: where its parse and transform rejects are sent once the range is drained, while its
    last parts are mapped (the commit stage confirms them with pandera's): a DLQ copy no commit
    names is superseded, as after a crash (dlq/reprocess.py).
    """
    with paused_gc():
        table = open_table(lake)
        done = txn_version(table, rng.source)
        if after is not None:
            table, done = await_start(lake, rng, table, done, after, stop)
        if done is not None and done >= rng.end and (done > rng.start or rng.size == 0):
            return RangeOutcome(rng, "already_committed")  # an empty range at the end included
        started = time.perf_counter()
        steps = StepClock()
        moment = clock()
        identity = Identity(
            run_id, moment, moment, settings.max_lateness_days, settings.max_clock_skew_seconds
        )
        check_start(_probe(rng, run_id, moment), done)  # fail before draining a doomed range
        history_start = epochs.check_range(settings, consumer, topic, rng, done)
        send = partial(send_part, dlq, rng, identity)
        raw, mapped, sent = drain_and_map(settings, consumer, rng, identity, steps, send, stop)
        verdict = judge_later(mapped, rng, identity)
        fault_point("K1")
        # The values are parsed; the rejects' and suspects' are kept in `mapped.sources`: ~100 MB
        # are freed on return.
        offsets = raw.offsets
        del raw  # before the collector's pass at the block's end, which would walk its lists
        steps.lap("map")
        return DrainedRange(
            rng,
            table,
            identity,
            history_start,
            offsets,
            mapped.sources,
            mapped,
            verdict,
            steps,
            started,
            sent,
        )


def send_part(dlq: DlqPublisher, rng: Range, identity: Identity, part: MappedPart) -> DlqSend:
    """A mapped part's parse and transform rejects, handed to the DLQ producer (unconfirmed)."""
    return dlq.send(dlq_records(rng, part.sources, part.rejects, identity))


def judge_later(mapped: GatheredRows, rng: Range, identity: Identity) -> Future[Verdict]:
    """Pandera's verdict on the range's suspects, judged on a thread of its own.

    Its fixed ~0.1 s a call then overlaps the filter and the staging of the files, which need
    only the clean rows; the DLQ sends wait for it.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="judge")
    try:
        return pool.submit(judge_suspects, mapped.suspects, rng.topic, rng.partition, identity)
    finally:
        pool.shutdown(wait=False)  # the thread ends with its one task


def commit_stage(
    lake: Lake,
    consumer: Consumer,
    dlq: DlqPublisher,
    drained: DrainedRange,
    topic: epochs.TopicIdentity | None = None,
    filtered: Callable[[], None] | None = None,
    cache: IdCache | None = None,
) -> RangeOutcome:
    """Filters, stages the files while the DLQ confirms the rejects, then the one commit.

    `filtered` is called once the range is filtered, its mapped rows dropped: the run reads the
    next range from then on, so two ranges' rows before the filter never share the memory.
    """
    rng, steps, identity = drained.range, drained.steps, drained.identity
    with paused_gc():
        steps.lap("wait")  # for the range before it to commit (0 unless read ahead)
        known = committed_ids_of(lake, cache)
        gathered, drained.mapped = drained.mapped, None  # ~150 MB less once filtered
        # Filtered before pandera's verdict, which adds rejects only (the screen doubts only rows
        # failing a rule): the files are staged while it judges and the DLQ sends wait for it.
        batch = finish_batch(MappedRows(gathered.rows, gathered.rejects), known)
        del gathered
        steps.lap("filter")
        if filtered is not None:
            filtered()
        token = uuid.uuid4().hex
        staged, (full, deliveries) = stage_while_sending(
            lambda: stage_files(lake, rng.range_id, token, epochs.with_epoch(batch.good, rng)),
            lambda: judge_and_send(dlq, drained, batch, known),
        )
        if full.good is not batch.good:  # pandera passed a suspect: stage the rows with it
            token = uuid.uuid4().hex  # the files staged without it stay unreferenced
            staged = stage_files(lake, rng.range_id, token, epochs.with_epoch(full.good, rng))
        batch = full
        steps.lap("dlq_and_files")
        fault_point("K6")
        record = range_record(
            rng, "ingest", identity, drained.offsets, batch, deliveries, token=token
        )
        record = epochs.stamp(record, topic, drained.history_start)
        committed = commit_range(lake, record, staged, table=drained.table, checked_start=True)
        steps.lap("commit")
        if committed.status == "committed":
            remember_ids(cache, staged, batch.good)
        fault_point("K7")
        commit_group_offset(consumer, rng)
        steps.lap("after_commit")
        if committed.status == "already_committed":
            return RangeOutcome(rng, "already_committed")
        return RangeOutcome(
            rng,
            "committed",
            record,
            time.perf_counter() - drained.started,
            latency_ms(batch.good),
            steps.steps,
            committed.version,
        )


def _probe(rng: Range, run_id: str, moment: datetime) -> RangeRecord:
    """A record with just the range, for the start check before anything is drained."""
    return RangeRecord(rng, "ingest", run_id, moment, moment, 0, "")


def range_record(
    rng: Range,
    kind: str,
    identity: Identity,
    offsets: Sequence[int],
    batch: BatchResult,
    deliveries: Sequence[DlqEntry],
    extra: dict | None = None,
    token: str | None = None,
) -> RangeRecord:
    """The range's accounting: every consumed offset in the lake, the DLQ or filtered.

    `token`: the one its files were staged under, if they were staged before the record existed.
    """
    days = batch.good.get_column("event_date").value_counts() if batch.good.height else None
    rows_by_day = {d.isoformat(): int(n) for d, n in days.iter_rows()} if days is not None else {}
    return RangeRecord(
        range=rng,
        kind=kind,
        run_id=identity.run_id,
        ingested_at=identity.ingested_at,
        reference_time=identity.now,
        records=len(offsets),
        record_offsets_sha256=offsets_digest(offsets),
        days=rows_by_day,
        dlq=tuple(sorted(deliveries)),
        filtered={reason: tuple(offs) for reason, offs in batch.filtered.items() if offs},
        extra=extra or {},
        **({"token": token} if token else {}),
    )


def stage_while_sending(
    stage: Callable[[], StagedFiles], send: Callable[[], list[DlqEntry]]
) -> tuple[StagedFiles, list[DlqEntry]]:
    """Writes the range's files on a worker thread while this one sends and confirms its rejects.

    The two are independent: staged files stay invisible until the commit, and the commit waits
    for both. Writing (pyarrow, outside the GIL) and waiting for DLQ acknowledgements overlap
    instead of adding up. An error of either is raised once both have finished.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stage-files") as pool:
        staging = pool.submit(stage)
        try:
            deliveries = send()
        finally:
            staged = staging.result()
    return staged, deliveries


def process(
    settings: Settings,
    raw: RawBatch,
    identity: Identity,
    known_ids: CommittedIds,
) -> BatchResult:
    """Parse, validate, transform, then filter duplicates against the lake's committed ids."""
    mapped = map_rows(raw, identity, native=settings.native_parse)
    return finish_batch(mapped, known_ids)


def drain_and_map(
    settings: Settings,
    consumer: Consumer,
    rng: Range,
    identity: Identity,
    steps: StepClock,
    send: Callable[[MappedPart], DlqSend],
    stop: threading.Event | None = None,
) -> tuple[RawBatch, GatheredRows, list[DlqSend]]:
    """Drains the range and maps each part on a worker thread while the next is read.

    Reading is mostly librdkafka's fetching and building message objects; mapping a part (parse,
    screen, transform) mostly the native decoder's and polars' work, outside the GIL. Two mapping
    threads, so a part waiting on the GIL never leaves a core idle. pandera then judges the
    range's suspects once (`judge_later`): it costs a fixed amount per call. Once the range is
    drained, `send` hands each mapped part's rejects to the DLQ, in part order, while the last
    parts are still mapped.
    """
    futures: list[Future[MappedPart]] = []
    native = settings.native_parse
    with (
        quick_gil_handoff(),
        ThreadPoolExecutor(max_workers=2, thread_name_prefix="map-parts") as pool,
    ):

        def map_later(part: RawBatch) -> None:
            futures.append(pool.submit(map_part, part, identity, native=native))

        raw = drain_range(
            consumer, rng, settings.drain_timeout_seconds, on_part=map_later, stop=stop
        )
        steps.lap("drain")
        parts: list[MappedPart] = []
        sent: list[DlqSend] = []
        for future in futures:
            parts.append(future.result())
            sent.append(send(parts[-1]))
        parts = parts or [map_part(raw, identity, native=native)]  # no records: no rejects
    return raw, gather_parts(parts), sent


def committed_ids_of(lake: Lake, cache: IdCache | None = None) -> CommittedIds:
    """The day's committed event ids from every source (raw partitions and DLQ recoveries)."""

    def committed(days: list[date], ids: pl.Series) -> pl.DataFrame:
        return read.committed_ids(lake, days, among=ids, cache=cache)

    return committed


def id_cache_of(settings: Settings, lake: Lake) -> IdCache:
    """This host's cache of the events table's id hashes (a cache: deleting it loses nothing)."""
    return IdCache(settings.state_dir / "event-ids", lake.table_uri(TABLE_EVENTS))


def remember_ids(cache: IdCache | None, staged: StagedFiles, good: pl.DataFrame) -> None:
    """The committed files' id hashes into the cache, so the next range need not read them."""
    if cache is None:
        return
    files = []
    for action in staged.actions:
        day, rows = file_rows(action, good)
        files.append((day, action.path, rows.get_column("event_id")))
    try:
        cache.remember(files)
    except Exception as exc:  # noqa: BLE001 - a committed range must not fail for a cache
        log.warning("id cache not updated (the next lookup reads the files): %s", exc)


def judge_and_send(
    dlq: DlqPublisher, drained: DrainedRange, batch: BatchResult, known: CommittedIds
) -> tuple[BatchResult, list[DlqEntry]]:
    """The range's result with pandera's verdict, and its rejects sent to the DLQ and confirmed.

    The parse and transform rejects went when the range was drained (`drained.sent`); only
    pandera's follow, then every report is awaited.
    """
    verdict = drained.verdict.result()
    full = with_judged(batch, verdict, known)
    late = dlq.send(dlq_records(drained.range, drained.sources, verdict.rejects, drained.identity))
    deliveries = dlq.confirm([*drained.sent, late])
    entries = [
        DlqEntry(d.source_offset, d.category, d.dlq_partition, d.dlq_offset) for d in deliveries
    ]
    return full, entries


def with_judged(batch: BatchResult, verdict: Verdict, known: CommittedIds) -> BatchResult:
    """A range filtered before pandera's verdict, with it: its rejects, and any suspect it passed.

    A passed suspect (none by design) is filtered with the range's kept rows: a duplicate keeps
    its lowest offset, and the rows the first filter dropped are no copy the second could keep, so
    the two steps drop exactly what one filter of every row would have.
    """
    mapped = with_verdict(batch.good, batch.rejects, verdict)
    if not verdict.passed.height:
        return BatchResult(batch.good, mapped.rejects, batch.filtered)
    again = finish_batch(MappedRows(mapped.rows, []), known)
    filtered = {
        reason: sorted([*batch.filtered.get(reason, []), *again.filtered.get(reason, [])])
        for reason in FILTER_REASONS
    }
    return BatchResult(again.good, mapped.rejects, filtered)


def dlq_records(
    rng: Range, sources: dict[int, SourceRecord], rejects: Sequence[Reject], identity: Identity
) -> list[DlqRecord]:
    """Each rejected record's DLQ copy: its original key and value, and its reason."""
    failed_at = utc_text(identity.ingested_at)
    records = []
    for reject in rejects:
        source = sources[reject.offset]
        records.append(
            DlqRecord(
                source_topic=rng.topic,
                source_partition=rng.partition,
                source_offset=reject.offset,
                source_timestamp_ms=source.timestamp_ms,
                key=source.key,
                value=source.value,
                stage=reject.stage,
                category=reject.category,
                rule=reject.rule,
                field=reject.field,
                message=reject.message,
                attempt=1,
                run_id=identity.run_id,
                failed_at=failed_at,
            )
        )
    return records


def commit_group_offset(consumer: Consumer, rng: Range) -> None:
    """Best effort, for lag dashboards only: the ledger, not the group, is the source of truth."""
    try:
        consumer.commit(
            offsets=[TopicPartition(rng.topic, rng.partition, rng.end)], asynchronous=False
        )
    except Exception as exc:  # noqa: BLE001 - a failed dashboard commit must not fail a committed range
        log.warning(
            "group offset commit for %s failed (lag dashboards may lag): %s", rng.range_id, exc
        )


def latency_ms(good: pl.DataFrame) -> list[float]:
    """p50 and p99 of ingested_at - kafka_timestamp over the range's lake rows, in milliseconds."""
    if good.height == 0:
        return []
    lag = (
        good.get_column("ingested_at") - good.get_column("kafka_timestamp")
    ).dt.total_milliseconds()
    return [float(lag.quantile(0.5) or 0.0), float(lag.quantile(0.99) or 0.0)]
