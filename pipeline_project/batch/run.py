"""The run protocol (docs/ARCHITECTURE.md): lock, recover, intent, drain, process, stage, commit.

Each range commits on its own, so a run that fails half-way keeps the ranges it finished. The intent
fixes a range's run_id, ingested_at and reference time on its first attempt; a retry adopts them, so
a range always produces byte-identical files however often it is re-run. Kill points K1-K8
(test-only, see faults.py) sit between the steps.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import polars as pl
import pyarrow as pa
from confluent_kafka import Consumer, TopicPartition

from pipeline_project.batch import id_index, lake, ledger
from pipeline_project.batch.backlog import partition_states
from pipeline_project.batch.faults import fault_point
from pipeline_project.batch.plan import plan_ranges
from pipeline_project.batch.process import CommittedIds, Identity, finish_batch, map_rows
from pipeline_project.batch.ranges import Range
from pipeline_project.batch.records import BatchResult, RawBatch, SourceRecord
from pipeline_project.batch.recover import recover
from pipeline_project.dlq.publish import DlqPublisher
from pipeline_project.dlq.records import DlqRecord
from pipeline_project.errors import DataLossError, PipelineError, StorageError
from pipeline_project.events.contract import FILTER_REASONS
from pipeline_project.kafka.drain import drain_range, make_consumer
from pipeline_project.perf import StepClock, paused_gc, quick_gil_handoff
from pipeline_project.settings import Settings

log = logging.getLogger(__name__)

UNBOUNDED = 1_000_000_000


@dataclass
class RangeOutcome:
    """What one range did: committed now, or found already committed (an idempotent re-run)."""

    range: Range
    status: str  # "committed" | "already_committed"
    manifest: ledger.Manifest
    seconds: float = 0.0
    latency_ms: list[float] = field(
        default_factory=list
    )  # p50, p99 of ingested_at - kafka_timestamp
    steps: dict[str, float] = field(default_factory=dict)  # seconds per protocol step

    @property
    def records(self) -> int:
        return self.manifest.records

    @property
    def written(self) -> int:
        return self.manifest.written

    @property
    def dlq(self) -> int:
        return len(self.manifest.dlq)

    @property
    def filtered(self) -> dict[str, int]:
        return {reason: len(offs) for reason, offs in self.manifest.filtered.items()}


@dataclass
class DayStats:
    rows: int = 0
    files: list[str] = field(default_factory=list)
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
        return dict(
            sorted(Counter(d.category for o in self.committed for d in o.manifest.dlq).items())
        )

    def days(self) -> dict[date, DayStats]:
        days: dict[date, DayStats] = {}
        for outcome in self.committed:
            for item in outcome.manifest.files:
                stats = days.setdefault(item.day, DayStats())
                stats.rows += item.rows
                stats.files.append(item.path)
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
) -> IngestResult:
    """Runs the protocol for `ranges`, or for every partition's backlog up to the high watermark.

    A `result` passed in is filled range by range (its run_id wins), so the caller still knows what
    committed when a later range fails or the run is interrupted.
    """
    logger = log or logging.getLogger(__name__)
    clock = now or (lambda: datetime.now(UTC))
    if result is None:
        result = IngestResult(run_id=run_id or f"cli-{uuid.uuid4()}")
    started = time.perf_counter()
    preflight(settings)
    consumer = make_consumer(settings)
    dlq = DlqPublisher(settings, settings.dlq_topic)
    try:
        todo = list(ranges) if ranges is not None else plan_all(settings, consumer)
        for rng in todo:
            if rng.topic != settings.raw_topic:
                raise PipelineError(
                    f"range {rng.range_id} is not of the raw topic {settings.raw_topic}"
                )
            try:
                outcome = run_range(settings, consumer, dlq, rng, result.run_id, clock)
            except OSError as exc:
                error = storage_error(exc, rng, settings)
                if error is exc:
                    raise
                raise error from exc
            logger.info(
                "%s: %s (%d records, %d rows, %d DLQ, filtered %s)",
                rng.range_id,
                outcome.status,
                outcome.records,
                outcome.written,
                outcome.dlq,
                outcome.filtered,
            )
            result.outcomes.append(outcome)
    finally:
        consumer.close()
        dlq.close()
        result.seconds = time.perf_counter() - started
    return result


# Write failures an operator fixes on the machine (free space, remount, quota), not in the code.
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)


def storage_error(exc: OSError, rng: Range, settings: Settings) -> OSError:
    """A storage failure of a range as one StorageError line; any other OSError as it was.

    Nothing of the range is committed then (the manifest is the last write), and the next run
    recovers whatever the failure left in staging.
    """
    code = _errno_of(exc)
    if isinstance(exc, PipelineError) or code not in STORAGE_ERRNOS:
        return exc
    where = f" ({exc.filename})" if exc.filename else ""
    return StorageError(
        code,
        f"{rng.range_id}: {os.strerror(code)}{where} under {settings.data_dir}; nothing of "
        "this range was committed: fix the disk (space, mount, permissions) and run again",
    )


def _errno_of(exc: OSError) -> int | None:
    """The errno, also from Arrow's IO errors, which carry it only in their text."""
    if exc.errno is not None:
        return exc.errno
    found = re.search(r"\[errno (\d+)\]", str(exc), re.IGNORECASE)
    return int(found.group(1)) if found else None


def preflight(settings: Settings) -> None:
    """Fails before consuming anything when the lake or state directory is not writable (F4).

    access(2) reports EROFS on a read-only mount even for root; the state dir also gets a real probe
    write (it is ours, readers never look there), the lake root none (readers do).
    """
    for directory in (settings.lake_dir, settings.state_dir):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if not os.access(directory, os.W_OK):
                raise PermissionError(13, "not writable")
            if directory == settings.state_dir:
                probe = directory / f".write-probe-{uuid.uuid4().hex}"
                probe.write_bytes(b"")
                probe.unlink()
        except OSError as exc:
            raise PipelineError(
                f"{directory} is not writable ({exc.strerror}); nothing was consumed"
            ) from None


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


def run_range(
    settings: Settings,
    consumer: Consumer,
    dlq: DlqPublisher,
    rng: Range,
    run_id: str,
    clock: Callable[[], datetime],
) -> RangeOutcome:
    """The protocol for one range, under the partition's lock."""
    state, lake_dir = settings.state_dir, settings.lake_dir
    with ledger.partition_lock(state, rng.topic, rng.partition), paused_gc():
        recover(lake_dir, state, rng.topic, rng.partition)
        existing = ledger.read_manifest(state, rng)
        if existing is not None:
            return RangeOutcome(rng, "already_committed", existing)
        started = time.perf_counter()
        steps = StepClock()
        moment = clock()
        intent = ledger.write_intent(state, rng, run_id, ingested_at=moment, now=moment)
        raw = drain_range(consumer, rng, settings.drain_timeout_seconds)
        steps.lap("drain")
        fault_point("K1")
        batch = process(settings, raw, intent)
        steps.lap("process")
        offsets, sources = raw.offsets, raw.sources(r.offset for r in batch.rejects)
        del raw  # the values are parsed, and the rejects' kept in `sources`: free ~100 MB
        staged, deliveries = stage_and_send(settings, dlq, rng, sources, batch, intent)
        steps.lap("stage_and_dlq")
        fault_point("K6")
        intent = ledger.prepare_intent(state, intent, staged, deliveries, batch.filtered, offsets)
        steps.lap("prepare")
        fault_point("K3")
        ledger.assert_locked(state, rng.topic, rng.partition)  # fence: a zombie must not publish
        lake.publish_all(intent.files, lake_dir)
        steps.lap("publish")
        fault_point("K5")
        ids = ids_by_file(batch.good, staged)
        manifest = ledger.commit_manifest(state, lake_dir, intent, committed_at=clock(), ids=ids)
        steps.lap("commit")
        ledger.finish_range(state, rng)
        fault_point("K7")
        commit_group_offset(consumer, rng)
        steps.lap("after_commit")
        return RangeOutcome(
            rng,
            "committed",
            manifest,
            time.perf_counter() - started,
            latency_ms(batch.good),
            steps.steps,
        )


def ids_by_file(good: pl.DataFrame, staged: list[lake.StagedFile]) -> dict[str, pa.Table]:
    """Each staged events file's (event_date, event_id): the rows of its day, as written."""
    if not staged:
        return {}
    ids = good.select(id_index.ID_COLUMNS).partition_by(lake.DATE_COLUMN, as_dict=True)
    return {
        s.path: ids[(s.day,)].to_arrow(compat_level=pl.CompatLevel.oldest())
        for s in staged
        if s.table == lake.TABLE_EVENTS and (s.day,) in ids
    }


def stage_and_send(
    settings: Settings,
    dlq: DlqPublisher,
    rng: Range,
    sources: dict[int, SourceRecord],
    batch: BatchResult,
    intent: ledger.Intent,
) -> tuple[list[lake.StagedFile], list[ledger.DlqEntry]]:
    """Stages the day files while the DLQ records are produced and confirmed, in parallel.

    Parquet encoding releases the GIL, so the two overlap on two cores (measured: ~0.1 s of a
    200k-record range). Both must finish before the intent is prepared; if staging fails after
    the DLQ send, a re-run re-sends the same records, which readers recognise by their source
    coordinates (the same outcome as a crash at K6).
    """
    with (
        quick_gil_handoff(),
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlq-send") as pool,
    ):
        sending = pool.submit(send_rejects, dlq, rng, sources, batch, intent)
        staged = lake.stage_days(lake.staging_dir(settings.state_dir, rng), rng, batch.good)
        return staged, sending.result()


def process(
    settings: Settings,
    raw: RawBatch,
    intent: ledger.Intent,
    known_ids: CommittedIds | None = None,
) -> BatchResult:
    """Parse, validate, transform with the intent's identity, so a retry is byte-identical.

    `known_ids` defaults to the day's committed ids from every source (raw partitions and DLQ
    recoveries): an event id already in the lake for that day is a duplicate wherever its first
    copy came from.
    """
    mapped = map_rows(raw, identity_of(settings, intent), native=settings.native_parse)
    return finish_batch(mapped, known_ids or committed_ids_of(settings))


def identity_of(settings: Settings, intent: ledger.Intent) -> Identity:
    """The intent's identity and the window settings every part of its range is judged with."""
    return Identity(
        intent.run_id,
        intent.ingested_at,
        intent.now,
        settings.max_lateness_days,
        settings.max_clock_skew_seconds,
    )


def committed_ids_of(settings: Settings) -> CommittedIds:
    """The day's committed event ids from every source (raw partitions and DLQ recoveries)."""

    def committed(days: list[date], ids: pl.Series) -> pl.DataFrame:
        return ledger.committed_ids(
            settings.lake_dir, days, state_dir=settings.state_dir, among=ids
        )

    return committed


def send_rejects(
    dlq: DlqPublisher,
    rng: Range,
    sources: dict[int, SourceRecord],
    batch: BatchResult,
    intent: ledger.Intent,
) -> list[ledger.DlqEntry]:
    """Every rejected record to the DLQ with its reason; returns only confirmed deliveries."""
    if not batch.rejects:
        return []
    failed_at = intent.now.astimezone(UTC).isoformat().replace("+00:00", "Z")
    records = []
    for reject in batch.rejects:
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
                run_id=intent.run_id,
                failed_at=failed_at,
            )
        )
    deliveries = dlq.publish(records)
    return [
        ledger.DlqEntry(d.source_offset, d.category, d.dlq_partition, d.dlq_offset)
        for d in deliveries
    ]


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
