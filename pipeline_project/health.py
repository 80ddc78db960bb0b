"""`pipeline-project health`: is the pipeline up and keeping up? One line per check; exit 0/1/2.

Checks: broker reachable, topics present, lag per partition (records: high watermark - committed
end, the events table's app transaction version for the partition, which is the truth of progress,
not the consumer group; seconds: age of the record at the committed end, read with one bounded
fetch), last successful ingest (the newest range commit's `committed_at` in the Delta log) and its
age, DLQ rate over a recent window (the range records committed in it), lake size and files (the
latest snapshot's add actions: committed files only, never a directory walk), and free disk for a
local lake. `fail` means the pipeline cannot run (exit 2, "down"), `warn` that a threshold is
crossed (exit 1, "degraded"). Every Kafka call is bounded, so an unreachable broker is reported in
about KAFKA_TIMEOUT_S, never a hang; an unreachable lake is one `fail` line, not a traceback.

Only the log's tail is read on each call: the commits of the DLQ-rate window and back to the newest
ingest (lake/history.read_tail), so a scrape costs the same on the first day and the hundredth.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import ClusterMetadata

from pipeline_project.batch.epochs import NOTE_KINDS, check_watermark, identity_of
from pipeline_project.batch.loss import LOSS_KIND
from pipeline_project.batch.parse import parse_path
from pipeline_project.errors import (
    KafkaUnavailableError,
    LakeError,
    PipelineError,
    TopicChangedError,
)
from pipeline_project.kafka import access
from pipeline_project.kafka.drain import consumer_config
from pipeline_project.kafka.native_reader import drain_path
from pipeline_project.lake.history import read_tail
from pipeline_project.lake.location import Lake, lake_of
from pipeline_project.lake.record import RangeRecord, app_id
from pipeline_project.lake.table import lake_errors, open_table, txn_version
from pipeline_project.settings import Settings
from pipeline_project.utc import utc_text

OK, WARN, FAIL = "ok", "warn", "fail"
EXIT_CODES = {OK: 0, WARN: 1, FAIL: 2}
STATES = {0: "healthy", 1: "degraded", 2: "down"}
KAFKA_TIMEOUT_S = 5.0  # per metadata/watermark call; the whole report stays near 10 s at worst
RECORD_READ_TIMEOUT_S = 3.0  # one bounded fetch: the next record's age, every lagging partition
MIB = 1024 * 1024


class _Silent(logging.Logger):
    """Drops librdkafka's connection-refused chatter: the report says it in one line."""

    def __init__(self) -> None:
        super().__init__("pipeline_project.health.silent", level=logging.CRITICAL + 1)


_SILENT = _Silent()


@dataclass(frozen=True)
class Check:
    """One line of the report: `status  name  detail`, plus machine-readable values."""

    name: str
    status: str
    detail: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PartitionLag:
    """How far the lake is behind one raw-topic partition."""

    partition: int
    committed_end: int | None
    low: int
    high: int
    records: int
    seconds: float | None  # age of the oldest record not yet in the lake; None if caught up/unknown


@dataclass(frozen=True)
class LakeState:
    """The events table as health sees it: latest snapshot's files and the log's range records."""

    lake: Lake
    version: int | None = None  # None: no table yet
    files: int = 0
    bytes: int = 0
    records: tuple[RangeRecord, ...] = ()
    error: str | None = None  # the lake could not be read: this line instead of figures

    def ingested(self, topic: str) -> list[RangeRecord]:
        """Range records of `topic` that consumed records (a loss acknowledgement does not)."""
        return [r for r in self.records if is_ingest(r, topic)]


def is_ingest(record: RangeRecord, topic: str) -> bool:
    """A range of `topic` that consumed records (not a loss acknowledgement or a note)."""
    return record.range.topic == topic and record.kind not in (LOSS_KIND, *NOTE_KINDS)


def read_lake(lake: Lake, topic: str, since: datetime) -> LakeState:
    """The events table's snapshot size and its range records since `since`.

    Records: those committed since then and back to the newest ingest of `topic` (the log's tail,
    not its whole history: a day at 20k events/s is tens of thousands of commits). A LakeError
    becomes `error`.
    """
    try:
        table = open_table(lake)
        if table is None:
            return LakeState(lake)
        with lake_errors(lake, "listing the events files"):
            adds = pa.table(table.get_add_actions(flatten=True))
        size = pc.sum(adds.column("size_bytes")).as_py() if adds.num_rows else 0
        tail = read_tail(lake, table, since, want=lambda r: is_ingest(r, topic))
    except LakeError as exc:
        return LakeState(lake, error=str(exc))
    return LakeState(lake, table.version(), adds.num_rows, int(size or 0), tuple(tail.records))


@dataclass
class HealthReport:
    """All checks; the worst status decides the exit code."""

    checks: list[Check]
    partitions: list[PartitionLag] = field(default_factory=list)
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def exit_code(self) -> int:
        return max((EXIT_CODES[c.status] for c in self.checks), default=0)

    @property
    def state(self) -> str:
        return STATES[self.exit_code]

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "exit_code": self.exit_code,
            "checked_at": utc_text(self.checked_at, "seconds"),
            "checks": [asdict(c) for c in self.checks],
            "partitions": [asdict(p) for p in self.partitions],
        }

    def render(self) -> str:
        width = max((len(c.name) for c in self.checks), default=0)
        lines = [f"{c.status:<4}  {c.name:<{width}}  {c.detail}" for c in self.checks]
        return "\n".join([*lines, f"state: {self.state}"])


def _age(seconds: float) -> str:
    """A short human duration: 42 s, 12 min, 3.5 h, 2.0 d."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


# ------------------------------------------------------------------------------------------ kafka


def cluster_metadata(settings: Settings) -> ClusterMetadata | None:
    """All topics' metadata within KAFKA_TIMEOUT_S, or None when the cluster does not answer."""
    return metadata_or_cause(settings)[0]


def metadata_or_cause(settings: Settings) -> tuple[ClusterMetadata | None, str | None]:
    """The metadata, or None and why: a refused login or an untrusted certificate is named."""
    try:
        conf = {"socket.timeout.ms": int(KAFKA_TIMEOUT_S * 1000)}
        return access.list_topics(settings, KAFKA_TIMEOUT_S, **conf), None
    except KafkaUnavailableError as exc:
        return None, str(exc)


def _consumer(settings: Settings) -> Consumer:
    return Consumer({**consumer_config(settings), "logger": _SILENT, "log_level": 0})


def partition_lags(
    settings: Settings, partitions: Iterable[int], now: datetime | None = None
) -> list[PartitionLag]:
    """Lag of each raw-topic partition: watermarks (bounded) against the table's committed end.

    The committed end is the partition's app transaction version in the latest snapshot
    (LakeError when the lake cannot be read).
    """
    moment = now or datetime.now(UTC)
    table = open_table(lake_of(settings))
    topic = identity_of(settings, table, settings.raw_topic)  # TopicChangedError: down
    consumer = _consumer(settings)
    try:
        lags: list[PartitionLag] = []
        for partition in sorted(partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(settings.raw_topic, partition), timeout=KAFKA_TIMEOUT_S
            )
            end = txn_version(table, app_id(settings.raw_topic, partition, topic.epoch))
            check_watermark(topic, partition, end, high)
            start = low if end is None else end
            lags.append(PartitionLag(partition, end, low, high, max(high - start, 0), None))
        ages = record_ages(consumer, settings.raw_topic, _starts(lags), moment)
    finally:
        consumer.close()
    return [PartitionLag(**{**asdict(lag), "seconds": ages.get(lag.partition)}) for lag in lags]


def _starts(lags: Sequence[PartitionLag]) -> dict[int, int]:
    """First offset the lake still owes, for the partitions that lag."""
    return {
        lag.partition: (lag.low if lag.committed_end is None else lag.committed_end)
        for lag in lags
        if lag.records > 0
    }


def record_ages(
    consumer: Consumer, topic: str, starts: dict[int, int], now: datetime
) -> dict[int, float]:
    """Seconds since the Kafka timestamp of the first record at each start offset.

    One assignment and a fetch bounded by RECORD_READ_TIMEOUT_S; partitions that yield nothing in
    time are left out (their age is unknown, not zero).
    """
    if not starts:
        return {}
    consumer.assign([TopicPartition(topic, p, offset) for p, offset in starts.items()])
    ages: dict[int, float] = {}
    deadline = time.monotonic() + RECORD_READ_TIMEOUT_S
    try:
        while len(ages) < len(starts) and time.monotonic() < deadline:
            for msg in consumer.consume(len(starts), timeout=0.2):
                partition = msg.partition()
                if msg.error() is not None or partition is None or partition in ages:
                    continue
                _kind, millis = msg.timestamp()
                if millis >= 0:
                    ages[partition] = max(now.timestamp() - millis / 1000, 0.0)
    finally:
        consumer.unassign()
    return ages


# ----------------------------------------------------------------------------------------- checks


def check_broker(
    settings: Settings, meta: ClusterMetadata | None, seconds: float, cause: str | None = None
) -> Check:
    """Reachable or not; when not, the login/TLS cause if one was found (never a secret)."""
    if meta is None:
        return Check(
            "broker",
            FAIL,
            cause or f"{settings.bootstrap} did not answer within {KAFKA_TIMEOUT_S:.0f} s",
            {"reachable": False},
        )
    brokers = len(meta.brokers)
    return Check(
        "broker",
        OK,
        f"{settings.bootstrap} answered in {seconds * 1000:.0f} ms ({brokers} broker(s))",
        {"reachable": True, "brokers": brokers, "seconds": round(seconds, 3)},
    )


def check_topics(settings: Settings, meta: ClusterMetadata) -> Check:
    """The raw and DLQ topics are required (fail); the parked topic only warns."""
    present = {
        name: len(info.partitions) for name, info in meta.topics.items() if info.error is None
    }
    denied = [n for n, i in meta.topics.items() if n in _our_topics(settings) and _denied(i.error)]
    if denied:
        detail = f"not authorized to Describe Topic:{', Topic:'.join(sorted(denied))} (missing ACL)"
        return Check("topics", FAIL, detail, {"present": {}, "denied": sorted(denied)})
    missing = [t for t in (settings.raw_topic, settings.dlq_topic) if t not in present]
    optional = [] if settings.parked_topic in present else [settings.parked_topic]
    values = {"present": {t: present.get(t) for t in _our_topics(settings)}}
    if missing:
        return Check("topics", FAIL, f"missing {', '.join(missing)} (run `topics ensure`)", values)
    listing = ", ".join(f"{t} ({present[t]})" for t in _our_topics(settings) if t in present)
    if optional:
        return Check("topics", WARN, f"{listing}; missing {optional[0]}", values)
    return Check("topics", OK, listing, values)


def _denied(error: KafkaError | None) -> bool:
    return error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def _our_topics(settings: Settings) -> tuple[str, ...]:
    return (settings.raw_topic, settings.dlq_topic, settings.parked_topic)


def check_lag(settings: Settings, lags: Sequence[PartitionLag]) -> Check:
    """Warns when any partition is more than the record or the seconds threshold behind."""
    total = sum(lag.records for lag in lags)
    over = [
        lag
        for lag in lags
        if lag.records > settings.health_max_lag_records
        or (lag.seconds or 0.0) > settings.health_max_lag_seconds
    ]
    oldest = max((lag.seconds for lag in lags if lag.seconds is not None), default=0.0)
    values = {"records": total, "max_seconds": round(oldest, 1), "partitions_over": len(over)}
    limits = (
        f"limits {settings.health_max_lag_records} records, {_age(settings.health_max_lag_seconds)}"
    )
    detail = f"{total} records behind, oldest {_age(oldest)} ({limits})"
    if over:
        worst = ", ".join(
            f"[{lag.partition}] {lag.records} rec/{_age(lag.seconds or 0.0)}" for lag in over[:4]
        )
        return Check("lag", WARN, f"{detail}; over: {worst}", values)
    return Check("lag", OK, detail, values)


def check_last_ingest(
    settings: Settings, latest: datetime | None, backlog: int | None, now: datetime
) -> Check:
    """Old is only a problem when there is something to ingest: idle and caught up is ok."""
    limit = settings.health_max_ingest_age_seconds
    if latest is None:
        if backlog:
            return Check("last_ingest", WARN, f"nothing committed yet, {backlog} records waiting")
        why = "lag unknown" if backlog is None else "nothing to ingest"
        return Check("last_ingest", OK, f"nothing committed yet ({why})")
    age = max((now - latest).total_seconds(), 0.0)
    at = utc_text(latest, "seconds")
    values = {"committed_at": at, "age_seconds": round(age, 1)}
    detail = f"{at} ({_age(age)} ago, limit {_age(limit)})"
    if age <= limit:
        return Check("last_ingest", OK, detail, values)
    if backlog == 0:
        return Check("last_ingest", OK, f"{detail}; idle: every partition caught up", values)
    why = "lag unknown" if backlog is None else f"{backlog} records waiting"
    return Check("last_ingest", WARN, f"{detail}; stalled: {why}", values)


def window_start(settings: Settings, now: datetime) -> datetime:
    """Where the DLQ-rate window (PIPELINE_HEALTH_WINDOW_SECONDS) ending `now` starts."""
    return now - timedelta(seconds=settings.health_window_seconds)


def check_dlq_rate(settings: Settings, records: Sequence[RangeRecord], now: datetime) -> Check:
    """DLQ entries / records over the raw topic's ranges committed in the window."""
    window = settings.health_window_seconds
    since = window_start(settings, now)
    recent = [r for r in records if r.committed_at is not None and r.committed_at >= since]
    consumed = sum(r.records for r in recent)
    dlq = sum(len(r.dlq) for r in recent)
    rate = dlq / consumed if consumed else 0.0
    values = {"records": consumed, "dlq": dlq, "rate": round(rate, 6), "window_seconds": window}
    detail = (
        f"{rate:.2%} ({dlq} of {consumed} records in the last {_age(window)}, "
        f"limit {settings.health_max_dlq_rate:.2%})"
    )
    status = WARN if consumed and rate > settings.health_max_dlq_rate else OK
    return Check("dlq_rate", status, detail, values)


def check_lake(settings: Settings, state: LakeState) -> Check:
    """Committed size and files of the events table's latest snapshot, and its version.

    Down when the lake cannot be read, or when a local lake or the state dir is not writable.
    """
    where = state.lake.describe()
    if state.error is not None:
        return Check("lake", FAIL, state.error, {"reachable": False})
    values = {"files": state.files, "bytes": state.bytes, "version": state.version}
    if state.version is None:
        detail = f"{where}: no events table yet"
    else:
        detail = (
            f"{where}: {state.files} files, {state.bytes / MIB:.1f} MiB, version {state.version}"
        )
    local = [] if state.lake.is_s3 else [Path(state.lake.root)]
    for directory in (*local, settings.state_dir):
        if directory.exists() and not os.access(directory, os.W_OK):
            return Check("lake", FAIL, f"{directory} is not writable; {detail}", values)
    return Check("lake", OK, detail, values)


def check_disk(settings: Settings, lake: Lake) -> Check:
    """Free space where a local lake lives (nearest existing ancestor); nothing to watch on S3."""
    if lake.is_s3:
        return Check("disk", OK, f"lake on {lake.describe()}: no local disk to watch", {})
    probe = Path(lake.root)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    free_mb = usage.free / MIB
    values = {"free_bytes": usage.free, "total_bytes": usage.total}
    detail = (
        f"{free_mb:.0f} MiB free of {usage.total / MIB:.0f} MiB "
        f"(limit {settings.health_min_free_disk_mb} MiB)"
    )
    status = WARN if free_mb < settings.health_min_free_disk_mb else OK
    return Check("disk", status, detail, values)


def check_parser(settings: Settings) -> Check:
    """Which parse path and drain ingestion uses; both give the same results, native is faster."""
    path = parse_path(settings.native_parse)
    drain = drain_path(settings.native_parse)
    values = {"native": path.startswith("native"), "native_drain": drain == "native"}
    return Check("parser", OK, f"{path}; drain: {drain}", values)


def _unknown(name: str, why: str) -> Check:
    return Check(name, WARN, f"unknown: {why}")


# ----------------------------------------------------------------------------------------- report


def collect(settings: Settings, now: datetime | None = None) -> HealthReport:
    """Runs every check; Kafka-dependent ones are skipped (warn, unknown) if the broker is down."""
    moment = now or datetime.now(UTC)
    started = time.monotonic()
    meta, cause = metadata_or_cause(settings)
    checks = [check_broker(settings, meta, time.monotonic() - started, cause)]
    state = read_lake(lake_of(settings), settings.raw_topic, window_start(settings, moment))
    lags: list[PartitionLag] = []
    backlog: int | None = None
    if meta is None:
        checks += [_unknown("topics", "broker unreachable"), _unknown("lag", "broker unreachable")]
    else:
        checks.append(check_topics(settings, meta))
        lag_check, lags = _lag_check(settings, meta, state, moment)
        checks.append(lag_check)
        backlog = sum(lag.records for lag in lags) if lags else None
    checks += _lake_checks(settings, state, backlog, moment)
    return HealthReport(checks, lags, moment)


def _lag_check(
    settings: Settings, meta: ClusterMetadata, state: LakeState, moment: datetime
) -> tuple[Check, list[PartitionLag]]:
    """The lag line and the partitions' lags (none when the topic or the lake cannot be read)."""
    raw = meta.topics.get(settings.raw_topic)
    if raw is None or raw.error is not None:
        return _unknown("lag", f"topic {settings.raw_topic} missing"), []
    if state.error is not None:
        return _unknown("lag", "lake unreadable"), []
    try:
        lags = partition_lags(settings, raw.partitions, moment)
    except KafkaException as exc:
        return _unknown("lag", f"watermarks unavailable ({exc.args[0].str()})"), []
    except TopicChangedError as exc:
        return Check("lag", FAIL, str(exc), {"topic_changed": True}), []
    except (LakeError, KafkaUnavailableError) as exc:
        return _unknown("lag", str(exc)), []
    return check_lag(settings, lags), lags


def _lake_checks(
    settings: Settings, state: LakeState, backlog: int | None, moment: datetime
) -> list[Check]:
    """last_ingest and dlq_rate from the log's range records, then lake, disk and parser."""
    if state.error is not None:
        checks = [
            _unknown("last_ingest", "lake unreadable"),
            _unknown("dlq_rate", "lake unreadable"),
        ]
    else:
        ingested = state.ingested(settings.raw_topic)
        checks = [
            check_last_ingest(settings, last_commit(ingested), backlog, moment),
            check_dlq_rate(settings, ingested, moment),
        ]
    return [
        *checks,
        check_lake(settings, state),
        check_disk(settings, state.lake),
        check_parser(settings),
    ]


def last_commit(records: Sequence[RangeRecord]) -> datetime | None:
    """When the newest range was committed: the last successful ingest."""
    return max((r.committed_at for r in records if r.committed_at is not None), default=None)


def events_freshness(
    settings: Settings, last_update: datetime | None, now: datetime | None = None
) -> Check:
    """The `events` freshness verdict of the Dagster check, with the CLI's last_ingest rules.

    Fresh when updated within PIPELINE_HEALTH_MAX_INGEST_AGE_SECONDS, or when older but Kafka has
    nothing waiting (an idle source is not a stale lake); Kafka is asked only in the second case.
    """
    moment = now or datetime.now(UTC)
    limit = settings.health_max_ingest_age_seconds
    if last_update is not None and (moment - last_update).total_seconds() <= limit:
        return check_last_ingest(settings, last_update, None, moment)
    meta = cluster_metadata(settings)
    raw = meta.topics.get(settings.raw_topic) if meta is not None else None
    backlog = None
    if raw is not None and raw.error is None:
        try:
            backlog = sum(lag.records for lag in partition_lags(settings, raw.partitions, moment))
        except (KafkaException, PipelineError):
            backlog = None  # unknown: judged as stalled, like an unreachable broker
    return check_last_ingest(settings, last_update, backlog, moment)


def config_error(settings: Settings, exc: KafkaException) -> str | None:
    """The one line for a client configuration librdkafka refuses, None for other errors.

    A typo in the properties file (`securty.protocol=...`) fails the first client created.
    """
    error = exc.args[0] if exc.args else None
    if not isinstance(error, KafkaError) or error.code() != KafkaError._INVALID_ARG:
        return None
    where = (
        f"PIPELINE_KAFKA_CONFIG={settings.kafka_config_file}: "
        if settings.kafka_config_file
        else ""
    )
    return f"{where}{error.str()} (fix the property name or value)"


def main(settings: Settings, as_json: bool) -> int:
    """The CLI body: prints the report (lines or JSON); returns 0 healthy, 1 degraded, 2 down."""
    try:
        report = collect(settings)
    except KafkaException as exc:  # librdkafka refused the configuration: nothing can connect
        line = config_error(settings, exc)
        if line is None:
            raise
        report = HealthReport([Check("kafka_config", FAIL, line)], [], datetime.now(UTC))
    if as_json:
        sys.stdout.write(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(report.render() + "\n")
    return report.exit_code


# ------------------------------------------------------------------------------------------ serve


class HealthCollector:
    """Prometheus collector: runs the checks on each scrape (bounded like the CLI), as gauges."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        report = collect(self.settings)
        state = GaugeMetricFamily(
            "pipeline_health_state", "0 healthy, 1 degraded, 2 down", value=report.exit_code
        )
        status = GaugeMetricFamily(
            "pipeline_health_check_status", "0 ok, 1 warn, 2 fail", labels=["check"]
        )
        for check in report.checks:
            status.add_metric([check.name], EXIT_CODES[check.status])
        yield from (state, status, *self._lag(report), *self._figures(report))

    def _lag(self, report: HealthReport) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        labels = ["topic", "partition"]
        records = GaugeMetricFamily(
            "pipeline_lag_records", "high watermark - committed end", labels=labels
        )
        seconds = GaugeMetricFamily(
            "pipeline_lag_seconds", "age of the oldest record not in the lake", labels=labels
        )
        for lag in report.partitions:
            key = [self.settings.raw_topic, str(lag.partition)]
            records.add_metric(key, lag.records)
            seconds.add_metric(key, lag.seconds or 0.0)
        return (records, seconds)

    @staticmethod
    def _figures(report: HealthReport) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        values = {check.name: check.values for check in report.checks}
        figures = (
            ("pipeline_last_ingest_age_seconds", "last_ingest", "age_seconds", "since the commit"),
            ("pipeline_dlq_rate", "dlq_rate", "rate", "DLQ records / records in the window"),
            ("pipeline_lake_bytes", "lake", "bytes", "committed lake size"),
            ("pipeline_disk_free_bytes", "disk", "free_bytes", "free space of the data dir"),
        )
        for name, check, key, text in figures:
            value = values.get(check, {}).get(key)
            if value is not None:
                yield GaugeMetricFamily(name, text, value=value)


def serve(settings: Settings, port: int) -> int:
    """Serves the health gauges on http://0.0.0.0:PORT/metrics until SIGINT or SIGTERM."""
    import signal
    import threading

    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(HealthCollector(settings))  # type: ignore[arg-type]
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server, thread = start_http_server(port, registry=registry)
    sys.stderr.write(f"health metrics on http://0.0.0.0:{port}/metrics\n")
    stop.wait()
    server.shutdown()
    thread.join(5)
    return 0
