"""Which Kafka topic the lake's commits came from, and where each partition's history starts.

Kafka names a record by (topic, partition, offset), but a topic deleted and recreated, a cluster
restored from a backup or another cluster behind the same address starts its offsets again below
what the lake committed. Read naively, the planner then sees nothing to do and the new records are
never read. So the lake keeps, in the events table's configuration, each topic's Kafka topic id
(`pipeline.topic.<topic>.id`) and the lake's epoch of it (`pipeline.topic.<topic>.epoch`, absent =
0); every range record carries the topic id it was read from. A run, the sensor, `dlq inspect`,
reprocessing and `health` stop with TopicChangedError when the id differs or a partition's high
watermark is below its committed end. `pipeline-project topic new-epoch <topic>` is the operator's
way on: one commit per partition (kind "epoch") opening app id `<topic>@<n>-<partition>` at the new
topic's low watermark, after which offsets restart there and both epochs reconcile.

History start: a partition's first commit also sets the app transaction `<app id>#start` to the
offset its history starts at (the low watermark at first ingestion, or 0). A first range that
vanished from the log (a damaged log, a partial restore) is then a gap reconcile names; a first
range that would skip offsets below it is refused before anything is read.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import polars as pl
from confluent_kafka import KafkaException, TopicCollection
from deltalake import CommitProperties, DeltaTable

from pipeline_project.batch.ranges import Range
from pipeline_project.errors import (
    ContiguityError,
    HistoryError,
    KafkaUnavailableError,
    PipelineError,
    TopicChangedError,
)
from pipeline_project.kafka.drain import watermarks
from pipeline_project.lake.location import Lake
from pipeline_project.lake.record import METADATA_KEY, RangeRecord, app_id, start_app_id
from pipeline_project.lake.table import lake_errors, open_table, txn_version
from pipeline_project.settings import Settings

if TYPE_CHECKING:
    from pipeline_project.lake.audit import Problem
    from pipeline_project.lake.history import History

log = logging.getLogger(__name__)

DESCRIBE_TIMEOUT_S = 15.0
EPOCH_KIND = "epoch"
HISTORY_KIND = "history"
NOTE_KINDS = (EPOCH_KIND, HISTORY_KIND)


def id_key(topic: str) -> str:
    return f"pipeline.topic.{topic}.id"


def epoch_key(topic: str) -> str:
    return f"pipeline.topic.{topic}.epoch"


@dataclass(frozen=True)
class TopicIdentity:
    """A topic as Kafka has it now and as the lake recorded it."""

    topic: str
    kafka_id: str | None  # None: the broker did not say (an older broker)
    lake_id: str | None  # None: not recorded yet
    epoch: int

    def describe(self) -> str:
        return f"topic id {self.lake_id or 'unrecorded'}, epoch {self.epoch}"


def kafka_topic_id(settings: Settings, topic: str) -> str | None:
    """The topic's id as the cluster reports it (describe_topics), None when it has none."""
    from pipeline_project.kafka.topics import admin_client

    admin = admin_client(settings)  # keep a reference: the futures die with the client
    try:
        futures = admin.describe_topics(
            TopicCollection([topic]), request_timeout=DESCRIBE_TIMEOUT_S
        )
        found = futures[topic].result(timeout=DESCRIBE_TIMEOUT_S)
    except KafkaException as exc:
        raise KafkaUnavailableError(
            f"could not describe topic {topic}: {exc.args[0].str()}"
        ) from None
    except TimeoutError:
        raise KafkaUnavailableError(
            f"could not describe topic {topic} within {DESCRIBE_TIMEOUT_S:.0f} s"
        ) from None
    text = str(found.topic_id) if found.topic_id is not None else ""
    return text or None


def lake_epoch(table: DeltaTable | None, topic: str) -> int:
    """The lake's current epoch of `topic` (0 until `topic new-epoch`)."""
    if table is None:
        return 0
    return int(table.metadata().configuration.get(epoch_key(topic), "0"))


def lake_topic_id(table: DeltaTable | None, topic: str) -> str | None:
    if table is None:
        return None
    return table.metadata().configuration.get(id_key(topic))


def committed_end(table: DeltaTable | None, topic: str, partition: int) -> int | None:
    """A partition's committed end in the topic's current epoch."""
    return txn_version(table, app_id(topic, partition, lake_epoch(table, topic)))


def identity_of(settings: Settings, table: DeltaTable | None, topic: str) -> TopicIdentity:
    """Kafka's and the lake's view of `topic`; TopicChangedError when the ids differ."""
    found = TopicIdentity(
        topic,
        kafka_topic_id(settings, topic),
        lake_topic_id(table, topic),
        lake_epoch(table, topic),
    )
    if found.kafka_id and found.lake_id and found.kafka_id != found.lake_id:
        raise TopicChangedError(
            f"topic {topic} is not the topic the lake read: Kafka's topic id is now "
            f"{found.kafka_id}, the lake's commits were read from {found.lake_id} (epoch "
            f"{found.epoch}); nothing was read. {_way_out(settings, topic)}"
        )
    return found


def check_watermark(identity: TopicIdentity, partition: int, end: int | None, high: int) -> None:
    """A high watermark below the committed end: the offsets restarted under the lake."""
    if end is None or high >= end:
        return
    raise TopicChangedError(
        f"topic {identity.topic} partition {partition}: Kafka's high watermark {high} is below "
        f"the lake's committed end {end} ({identity.describe()}; Kafka's topic id now "
        f"{identity.kafka_id or 'unknown'}): the topic was recreated or the "
        "cluster restored or replaced; nothing was read. "
        f"{_way_out(None, identity.topic)}"
    )


def _way_out(settings: Settings | None, topic: str) -> str:
    where = f" (PIPELINE_KAFKA_BOOTSTRAP={settings.bootstrap})" if settings else ""
    return (
        f"If this is the wrong cluster{where}, fix the address; if the topic was recreated on "
        f"purpose, run `pipeline-project topic new-epoch {topic} --reason '...'` to read it from "
        "its low watermark as a new epoch (docs/troubleshooting.md)"
    )


def guard(settings: Settings, lake: Lake, consumer, topic: str) -> TopicIdentity:
    """Run start: the topic is the lake's (id, watermarks); records its id the first time."""
    table = open_table(lake)
    identity = guard_readonly(settings, table, consumer, topic)
    return remember(lake, identity, table)


def remember(lake: Lake, identity: TopicIdentity, table: DeltaTable | None = None) -> TopicIdentity:
    """Records the topic's id in the table the first time it is read.

    Called at run start and again at its end: a run that found no table creates it with its first
    commit, and the id is recorded then.
    """
    table = table if table is not None else open_table(lake)
    if table is None or identity.lake_id is not None or not identity.kafka_id:
        return identity
    if lake_topic_id(table, identity.topic) is None:
        try:
            record_identity(lake, table, identity.topic, identity.kafka_id, identity.epoch)
        except PipelineError as exc:  # e.g. a concurrent run recorded it first: the next run will
            log.warning("topic %s: its id was not recorded this time: %s", identity.topic, exc)
            return identity
    return replace(identity, lake_id=identity.kafka_id)


def remember_topic(settings: Settings, lake: Lake, topic: str) -> None:
    """`remember` for a caller that holds no identity yet (DLQ reprocessing)."""
    table = open_table(lake)
    if table is not None and lake_topic_id(table, topic) is None:
        remember(lake, identity_of(settings, table, topic), table)


def record_identity(lake: Lake, table: DeltaTable, topic: str, topic_id: str, epoch: int) -> None:
    """Keeps the topic's id and epoch in the table's configuration (a metadata commit)."""
    with lake_errors(lake, f"recording the identity of topic {topic}"):
        table.alter.set_table_properties(
            {id_key(topic): topic_id, epoch_key(topic): str(epoch)}, raise_if_not_exists=False
        )


def check_range(
    settings: Settings,
    consumer,
    identity: TopicIdentity | None,
    rng: Range,
    done: int | None,
) -> int | None:
    """Before a range is drained: epoch, partition and, for a first range, its history start.

    The range's epoch must be the topic's, its partition must exist, and a partition's first range
    must start at its low watermark. Returns the history start to record (None if not first).
    """
    from pipeline_project.batch.backlog import topic_partitions

    if identity is not None and rng.epoch != identity.epoch:
        raise ContiguityError(
            f"range {rng.range_id} is of epoch {rng.epoch} of topic {rng.topic}, but the lake is "
            f"in epoch {identity.epoch}: nothing was read"
        )
    partitions = topic_partitions(consumer, rng.topic, settings)
    if rng.partition not in partitions:
        raise PipelineError(
            f"range {rng.range_id}: topic {rng.topic} has no partition {rng.partition} (it has "
            f"{_spans(partitions)}); nothing was read or committed"
        )
    if done is not None:
        return None
    low, _high = watermarks(consumer, rng.topic, rng.partition, settings)
    if rng.start != low:
        raise HistoryError(
            f"range {rng.range_id} would be the first of {rng.source}, but the partition's "
            f"history starts at its low watermark {low}: a first range must start there "
            f"(offsets [{min(low, rng.start)}, {max(low, rng.start)}) would be unaccounted for); "
            "nothing was read"
        )
    return low


EPOCH_COLUMN = "kafka_epoch"
DLQ_EPOCH_COLUMN = "dlq_epoch"  # the DLQ topic's epoch of a row recovered by reprocessing


def with_epoch(rows: pl.DataFrame, rng: Range, column: str = EPOCH_COLUMN) -> pl.DataFrame:
    """Rows of an epoch after the first carry it (`kafka_epoch`): their offsets repeat.

    The column appears with the first such range; rows written before it read null (= epoch 0).
    """
    if rng.epoch == 0:
        return rows
    return rows.with_columns(pl.lit(rng.epoch, dtype=pl.Int32).alias(column))


def _spans(partitions: Sequence[int]) -> str:
    return f"{min(partitions)}-{max(partitions)}" if partitions else "none"


def stamp(
    record: RangeRecord, identity: TopicIdentity | None, history_start: int | None
) -> RangeRecord:
    """The record with the topic id it was read from and, on a first range, its history start."""
    return replace(
        record,
        topic_id=identity.kafka_id if identity is not None else None,
        history_start=history_start,
    )


# ------------------------------------------------------------------------------- operator commands


@dataclass(frozen=True)
class EpochResult:
    """What `topic new-epoch` did."""

    topic: str
    epoch: int
    topic_id: str | None
    starts: dict[int, int]  # partition → offset the new epoch starts at

    def summary(self) -> str:
        parts = ", ".join(f"[{p}] from {s}" for p, s in sorted(self.starts.items()))
        return (
            f"topic {self.topic}: epoch {self.epoch} started (topic id {self.topic_id}); "
            f"partitions {parts}. `pipeline-project reconcile` accounts for every epoch."
        )


def new_epoch(settings: Settings, topic: str, reason: str) -> EpochResult:
    """Opens epoch n+1 of `topic`: per partition a record-only commit at its low watermark.

    Refused when nothing changed (same id, no watermark below a committed end): an epoch is not a
    way to skip offsets. Resumable: partitions already opened are skipped, the configuration is
    switched last.
    """
    from pipeline_project.batch.backlog import topic_partitions
    from pipeline_project.batch.transform import empty_lake_frame
    from pipeline_project.kafka.drain import make_consumer
    from pipeline_project.lake.commit import commit_range
    from pipeline_project.lake.location import lake_of

    if topic not in (settings.raw_topic, settings.dlq_topic):
        raise PipelineError(
            f"topic {topic} is neither PIPELINE_RAW_TOPIC ({settings.raw_topic}) nor "
            f"PIPELINE_DLQ_TOPIC ({settings.dlq_topic})"
        )
    lake = lake_of(settings)
    table = open_table(lake)
    if table is None:
        raise PipelineError(f"lake {lake.describe()}: no events table: nothing to start anew")
    consumer = make_consumer(settings)
    try:
        old = TopicIdentity(
            topic,
            kafka_topic_id(settings, topic),
            lake_topic_id(table, topic),
            lake_epoch(table, topic),
        )
        marks = {
            p: watermarks(consumer, topic, p, settings)
            for p in topic_partitions(consumer, topic, settings)
        }
    finally:
        consumer.close()
    ends = {p: txn_version(table, app_id(topic, p, old.epoch)) for p in marks}
    changed = (old.kafka_id and old.lake_id and old.kafka_id != old.lake_id) or any(
        end is not None and marks[p][1] < end for p, end in ends.items()
    )
    if not changed:
        raise PipelineError(
            f"topic {topic} has not changed ({old.describe()}, every partition at or past its "
            "committed end): no new epoch started"
        )
    epoch = old.epoch + 1
    moment = datetime.now(UTC)
    for partition, (low, _high) in sorted(marks.items()):
        if txn_version(open_table(lake), app_id(topic, partition, epoch)) is not None:
            continue
        record = _note(
            Range(topic, partition, low, low, epoch),
            EPOCH_KIND,
            "new-epoch",
            moment,
            {
                "reason": reason,
                "previous_epoch": old.epoch,
                "previous_topic_id": old.lake_id,
                "previous_end": ends.get(partition),
            },
            topic_id=old.kafka_id,
        )
        commit_range(lake, record, empty_lake_frame())
    record_identity(lake, open_table(lake) or table, topic, old.kafka_id or "", epoch)
    return EpochResult(topic, epoch, old.kafka_id, {p: low for p, (low, _h) in marks.items()})


def _note(
    at: Range,
    kind: str,
    run_prefix: str,
    moment: datetime,
    extra: dict,
    topic_id: str | None = None,
) -> RangeRecord:
    """A record-only commit's record (no records): an operator's act at one offset, with why."""
    return RangeRecord(
        range=at,
        kind=kind,
        run_id=f"{run_prefix}-{uuid.uuid4().hex[:12]}",
        ingested_at=moment,
        reference_time=moment,
        records=0,
        record_offsets_sha256=_empty_digest(),
        extra=extra,
        topic_id=topic_id,
        history_start=at.start,
    )


def acknowledge_start(
    settings: Settings, partition: int, reason: str, topic: str | None = None
) -> str:
    """The operator's word that partition's history in the lake starts at its first range.

    For a table written before history starts were recorded, or after an operator has accepted
    that the offsets below its first range are gone. A record-only commit (kind "history") that
    sets `<app id>#start`; the first range itself is read from the log.
    """
    from pipeline_project.lake.history import read_history
    from pipeline_project.lake.location import lake_of

    topic = topic or settings.raw_topic
    lake = lake_of(settings)
    table = open_table(lake)
    epoch = lake_epoch(table, topic)
    app = app_id(topic, partition, epoch)
    firsts = [r for r in read_history(lake, table).records if r.app_id == app]
    if table is None or not firsts:
        raise PipelineError(f"{app}: nothing committed, nothing to acknowledge")
    start = firsts[0].range.start
    known = txn_version(table, start_app_id(app))
    if known == start:
        return f"{app}: history already starts at {start}"
    moment = datetime.now(UTC)
    note = _note(
        Range(topic, partition, start, start, epoch),
        HISTORY_KIND,
        "history",
        moment,
        {"reason": reason, "previous_start": known},
    )
    commit_note(lake, table, note)
    return f"{app}: history acknowledged to start at {start} (was {known})"


def commit_note(lake: Lake, table: DeltaTable, note: RangeRecord) -> None:
    """A commit with no rows whose only effect is the note's record and its history start."""
    from deltalake import Transaction

    if note.history_start is None:
        raise ValueError(f"{note.app_id}: a history note needs its start")
    props = CommitProperties(
        custom_metadata={METADATA_KEY: note.to_metadata(datetime.now(UTC))},
        app_transactions=[
            Transaction(app_id=start_app_id(note.app_id), version=note.history_start)
        ],
    )
    with lake_errors(lake, f"recording the history start of {note.app_id}"):
        table.create_write_transaction(
            [],
            mode="append",
            schema=table.schema(),
            partition_by=["date"],
            commit_properties=props,
        )


def _empty_digest() -> str:
    from pipeline_project.lake.record import offsets_digest

    return offsets_digest([])


# ------------------------------------------------------------------------------- the audit's part


def history_problems(table: DeltaTable, ranges: History) -> list[Problem]:
    """Per source: the first range starts where its history does; one topic id throughout.

    History notes (`history acknowledge`) count through the `#start` transaction they set.
    """
    from pipeline_project.lake.audit import Problem

    problems: list[Problem] = []
    for app, records in sorted(ranges.by_app_id().items()):
        first = records[0]
        marked = txn_version(table, start_app_id(app))
        start = marked if marked is not None else first.history_start
        if start is None and first.range.start != 0:
            problems.append(
                Problem(
                    "history_start",
                    f"the first committed range {first.range.range_id} (commit {first.version}) "
                    f"starts at {first.range.start} and nothing records where this partition's "
                    f"history starts: offsets below {first.range.start} are unaccounted for (a "
                    "lost first commit, a partial restore, or a table from before history starts "
                    "were kept); if they are truly gone: `pipeline-project history acknowledge "
                    f"--partition {first.range.partition} --reason '...'`",
                    app,
                )
            )
        elif start is not None and start != first.range.start:
            problems.append(
                Problem(
                    "history_start",
                    f"the partition's history starts at {start}, but its first committed range "
                    f"{first.range.range_id} (commit {first.version}) starts at "
                    f"{first.range.start}: the commits holding [{min(start, first.range.start)}, "
                    f"{max(start, first.range.start)}) are missing from the log",
                    app,
                )
            )
        ids = sorted({r.topic_id for r in records if r.topic_id})
        if len(ids) > 1:
            problems.append(
                Problem(
                    "topic_changed",
                    f"ranges of one epoch were read from different Kafka topics (ids "
                    f"{', '.join(ids)}): offsets of the one repeat offsets of the other",
                    app,
                )
            )
    return problems


def kafka_problems(settings: Settings, lake: Lake) -> tuple[list[Problem], str | None]:
    """The lake against Kafka now: each topic it read is still the topic, no offsets restarted.

    Returns the problems, and a note when Kafka could not be asked (the lake alone is judged).
    """
    from pipeline_project.kafka.drain import make_consumer
    from pipeline_project.lake.audit import Problem

    table = open_table(lake)
    if table is None:
        return [], None
    problems: list[Problem] = []
    try:
        consumer = make_consumer(settings)
    except PipelineError as exc:
        return [], f"Kafka not checked: {exc}"
    try:
        for topic in (settings.raw_topic, settings.dlq_topic):
            if lake_topic_id(table, topic) is None and committed_end(table, topic, 0) is None:
                continue  # never read: nothing to compare
            try:
                guard_readonly(settings, table, consumer, topic)
            except TopicChangedError as exc:
                problems.append(Problem("topic_changed", str(exc)))
    except (PipelineError, KafkaException) as exc:  # unreachable, not authorized: say so
        return problems, f"Kafka not checked: {exc}"
    finally:
        consumer.close()
    return problems, None


def guard_readonly(
    settings: Settings, table: DeltaTable | None, consumer, topic: str
) -> TopicIdentity:
    """`guard` without recording anything (reconcile uses it too); the topic's identity."""
    from pipeline_project.batch.backlog import topic_partitions

    partitions = topic_partitions(consumer, topic, settings)  # names an unreachable broker
    identity = identity_of(settings, table, topic)
    for partition in partitions:
        _low, high = watermarks(consumer, topic, partition, settings)
        end = txn_version(table, app_id(topic, partition, identity.epoch))
        check_watermark(identity, partition, end, high)
    return identity
