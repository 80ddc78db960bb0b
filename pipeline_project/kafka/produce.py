"""The long-running event producer: generated events into the raw topic, every delivery counted.

Idempotent (acks=all), keyed by user_id, rate-limited by a token bucket refilled per batch.
Each record's delivery report is counted by verdict; a failure is counted and reported, never
dropped, and the exit code is 0 only when every record sent was delivered. `--truth` writes one
JSON line per delivered record with the partition and offset from its delivery report: the ground
truth the pipeline is checked against. `--processes N` runs N such producers as one
(`kafka/fanout.py`): one core's Python makes and sends ~75-90k events a second.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from pipeline_project.errors import PipelineError
from pipeline_project.events.generator import (
    EventGenerator,
    Pools,
    Record,
    check_schema_mix,
    parse_schema_mix,
)
from pipeline_project.kafka.access import WRITE, require, unreachable
from pipeline_project.perf import frozen_heap, paused_gc
from pipeline_project.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_RATE = 1_000.0
METADATA_TIMEOUT_S = 10.0
TOPIC_WAIT_S = 3.0
FLUSH_TIMEOUT_S = 30.0
MAX_BATCH = 2_000  # records generated per loop turn at full speed (~10 ms of work)
TICK_S = 0.01  # at a set rate, records are released in batches of rate * TICK_S
MAX_DEBT_S = 1.0  # after a stall, catch up at most this much backlog, then drop the debt
STATUS_INTERVAL_S = 0.5
# zstd: on this 2-core box it delivered 139-158k ev/s vs lz4's 103-161k, and stored 500k events
# in 42 MB vs 77 MB (benchmarks/produce_bench.py compares them).
COMPRESSIONS = ("zstd", "lz4", "snappy", "gzip", "none")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `produce` flags to a parser (their names are part of the project's CLI contract)."""
    parser.add_argument(
        "--rate",
        type=_non_negative,
        default=DEFAULT_RATE,
        metavar="EPS",
        help=f"events per second, 0 = as fast as possible (default {DEFAULT_RATE:g})",
    )
    parser.add_argument("--count", type=_positive_int, metavar="N", help="stop after N events")
    parser.add_argument("--duration", type=_non_negative, metavar="S", help="stop after S seconds")
    parser.add_argument(
        "--bad-ratio",
        type=_ratio,
        default=0.0,
        metavar="F",
        help="share of records with exactly one defect, spread over every category",
    )
    parser.add_argument(
        "--duplicate-ratio",
        type=_ratio,
        default=0.0,
        metavar="F",
        help="share of records that re-send an earlier good record byte for byte",
    )
    parser.add_argument(
        "--late-ratio",
        type=_ratio,
        default=0.0,
        metavar="F",
        help="share of events minutes to hours old, some from before UTC midnight",
    )
    parser.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="generator seed (default: random, printed in the summary)",
    )
    parser.add_argument(
        "--truth",
        type=Path,
        metavar="FILE",
        help="append one JSON line per delivered record (partition, offset, verdict)",
    )
    parser.add_argument(
        "--metrics-port", type=int, metavar="P", help="serve Prometheus metrics on this port"
    )
    parser.add_argument(
        "--processes",
        type=_positive_int,
        default=1,
        metavar="N",
        help="producer processes sharing --count and --rate, each its own stream of the seed "
        "(default 1; one process makes and sends ~75-90k events/s)",
    )
    versions = parser.add_mutually_exclusive_group()
    versions.add_argument(
        "--schema-version",
        type=_schema_version,
        metavar="N",
        help="contract version of every event (default 1)",
    )
    versions.add_argument(
        "--schema-mix",
        type=_schema_mix,
        metavar="V:F,...",
        help="share of events per contract version, e.g. 1:0.5,2:0.5 (shares add up to 1)",
    )
    parser.add_argument("--topic", help="topic to produce to (default: PIPELINE_RAW_TOPIC)")
    parser.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        default=COMPRESSIONS[0],
        help=f"producer compression codec (default {COMPRESSIONS[0]})",
    )


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _schema_version(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number")
    version = int(text)
    try:
        check_schema_mix({version: 1.0})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return version


def _schema_mix(text: str) -> dict[int, float]:
    try:
        return parse_schema_mix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def schema_mix(args: argparse.Namespace) -> dict[int, float] | None:
    """The mix the flags ask for; None (the generator's default, version 1) without either."""
    mix = getattr(args, "schema_mix", None)
    version = getattr(args, "schema_version", None)
    return mix if mix is not None else None if version is None else {version: 1.0}


def _non_negative(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a finite number >= 0")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number >= 1")
    return value


def producer_config(settings: Settings, compression: str = COMPRESSIONS[0]) -> dict[str, Any]:
    """Idempotent, throughput-tuned producer settings (benchmarks/produce_bench.py: codecs)."""
    return {
        **settings.kafka_common(),
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": compression,
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 512 * 1024,
        "message.timeout.ms": 120_000,
        "socket.timeout.ms": int(METADATA_TIMEOUT_S * 1000),
    }


class TruthFile:
    """Truth lines gathered in memory and appended in whole chunks by one `write` each.

    Opened with O_APPEND, so the producer processes of one run can share the file: on a local
    file system each chunk lands whole at the end, never interleaved with another's.
    """

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.lines: list[bytes] = []
        self.add = self.lines.append

    def flush(self) -> None:
        """Appends the lines gathered so far."""
        if not self.lines:
            return
        view = memoryview(b"".join(self.lines))
        self.lines.clear()
        while view:  # after a short write (a signal), the rest follows; an error raises
            view = view[os.write(self.fd, view) :]

    def close(self) -> None:
        """Appends what is left and closes the file."""
        try:
            self.flush()
        finally:
            os.close(self.fd)


@dataclass
class Tally:
    """Counts by verdict, filled by `produce()` and the delivery callbacks."""

    sent: Counter[str] = field(default_factory=Counter)
    delivered: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    truth: TruthFile | None = None

    def on_delivery(self, verdict: str, err: KafkaError | None, msg: Message) -> None:
        """Delivery report for a record sent without a truth file: count it."""
        if err is None:
            self.delivered[verdict] += 1
        else:
            self.fail(verdict, err.name(), err.str())

    def on_delivery_truth(
        self,
        verdict: str,
        event_id: str | None,
        key: bytes | None,
        err: KafkaError | None,
        msg: Message,
    ) -> None:
        """Delivery report with a truth line at the partition and offset the broker assigned."""
        if err is not None:
            self.fail(verdict, err.name(), err.str())
            return
        self.delivered[verdict] += 1
        line = {
            "topic": msg.topic(),
            "partition": msg.partition(),
            "offset": msg.offset(),
            "event_id": event_id,
            "verdict": verdict,
            "key": None if key is None else key.decode("utf-8", "replace"),
        }
        if self.truth is not None:
            self.truth.add(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))

    def fail(self, verdict: str, name: str, text: str) -> None:
        """Counts a record that will never be delivered; logs the first few of each error."""
        self.failed[verdict] += 1
        self.errors[name] += 1
        if self.errors[name] <= 3:
            log.error("delivery failed (%s): %s", name, text)


class _Stop:
    """Set by SIGINT/SIGTERM: the first stops generation, the second also cuts the flush short."""

    def __init__(self) -> None:
        self.requested = False
        self.aborted = False
        self.reason = ""
        self._previous: dict[int, Any] = {}

    def install(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals can only be handled in the main thread; embedders stop us otherwise
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            self.aborted = True
        self.request(signal.Signals(signum).name)

    def request(self, reason: str) -> None:
        if not self.requested:
            self.requested, self.reason = True, reason


class _ErrorLog:
    """librdkafka client errors: fatal ones stop the run; others are logged at most every 10 s."""

    def __init__(self, stop: _Stop) -> None:
        self.stop = stop
        self.quiet = True  # during the broker check, the check itself reports the failure
        self.fatal: KafkaError | None = None
        self._last: dict[str, float] = {}

    def __call__(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = err
            log.error("fatal producer error: %s", err.str())
            self.stop.request("fatal")
            return
        now = time.monotonic()
        if not self.quiet and now - self._last.get(err.name(), -math.inf) > 10.0:
            self._last[err.name()] = now
            log.warning("kafka: %s", err.str())


class _Librdkafka(logging.Logger):
    """librdkafka's own log lines, at DEBUG: errors that matter reach us through error_cb."""

    def __init__(self) -> None:
        super().__init__(f"{__name__}.librdkafka")
        self.parent = log

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:  # noqa: D102
        super().log(logging.DEBUG, msg, *args, **kwargs)


class Metrics:
    """Prometheus counters by verdict and an in-flight gauge, updated from the tally in deltas."""

    def __init__(self, port: int) -> None:
        from prometheus_client import CollectorRegistry, Gauge, start_http_server
        from prometheus_client import Counter as PCounter

        self.registry = CollectorRegistry()
        labels = ["verdict"]
        self.sent = PCounter(
            "pipeline_producer_sent",
            "Records handed to the producer",
            labels,
            registry=self.registry,
        )
        self.delivered = PCounter(
            "pipeline_producer_delivered",
            "Records the broker acknowledged",
            labels,
            registry=self.registry,
        )
        self.failed = PCounter(
            "pipeline_producer_failed",
            "Records whose delivery failed",
            labels,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "pipeline_producer_in_flight",
            "Records awaiting a delivery report",
            registry=self.registry,
        )
        self._seen: dict[str, Counter[str]] = {
            "sent": Counter(),
            "delivered": Counter(),
            "failed": Counter(),
        }
        try:
            self.server, self.thread = start_http_server(port, registry=self.registry)
        except OSError as exc:
            raise metrics_port_error(port, exc) from None

    def update(self, tally: Tally, in_flight: int) -> None:
        for name, metric in (
            ("sent", self.sent),
            ("delivered", self.delivered),
            ("failed", self.failed),
        ):
            current: Counter[str] = getattr(tally, name)
            seen = self._seen[name]
            for verdict, count in current.items():
                if count > seen[verdict]:
                    metric.labels(verdict).inc(count - seen[verdict])
                    seen[verdict] = count
        self.in_flight.set(in_flight)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def metrics_port_error(port: int, exc: OSError) -> PipelineError:
    """The one line for a --metrics-port that cannot be served."""
    return PipelineError(f"--metrics-port {port}: {exc.strerror}")


Tick = Callable[[Tally, int], None]


class Status:
    """Every STATUS_INTERVAL_S: truth flushed, `on_tick` told, a live line on stderr if a TTY."""

    def __init__(
        self,
        tally: Tally,
        in_flight: Callable[[], int],
        on_tick: Tick | None,
        tty: bool | None = None,
    ) -> None:
        self.tally, self.in_flight, self.on_tick = tally, in_flight, on_tick
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._last_t = time.monotonic()
        self._last_delivered = 0
        self._next = self._last_t + STATUS_INTERVAL_S

    def maybe_update(self, force: bool = False) -> None:
        now = time.monotonic()
        if now < self._next and not force:
            return
        self._next = now + STATUS_INTERVAL_S
        in_flight = self.in_flight()
        if self.tally.truth is not None:
            self.tally.truth.flush()  # a killed producer loses at most half a second of truth
        if self.on_tick is not None:
            self.on_tick(self.tally, in_flight)
        if not self.tty:
            return
        delivered = self.tally.delivered.total()
        rate = (delivered - self._last_delivered) / max(now - self._last_t, 1e-9)
        self._last_t, self._last_delivered = now, delivered
        sys.stderr.write(
            f"\r{rate:>9,.0f} ev/s  sent {self.tally.sent.total():,}  delivered {delivered:,}  "
            f"failed {self.tally.failed.total():,}  in flight {in_flight:,}   "
        )
        sys.stderr.flush()

    def close(self) -> None:
        self.maybe_update(force=True)
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def check_broker(producer: Producer, settings: Settings, topic: str) -> int:
    """Fails fast, in one line, when the cluster does not answer or the topic is missing.

    A topic created a moment ago may take a second to reach every broker's metadata, so a missing
    topic is looked up again for up to TOPIC_WAIT_S. Returns the topic's partition count.
    """
    deadline = time.monotonic() + TOPIC_WAIT_S
    while True:
        try:
            meta = producer.list_topics(timeout=METADATA_TIMEOUT_S)
        except KafkaException as exc:
            raise unreachable(
                settings,
                f"Kafka at {settings.bootstrap} did not answer within {METADATA_TIMEOUT_S:.0f} s "
                f"({exc.args[0].str()})",
            ) from None
        info = meta.topics.get(topic)
        if info is not None and info.error is None and info.partitions:
            return len(info.partitions)
        if time.monotonic() >= deadline:
            raise PipelineError(
                f"topic {topic!r} does not exist on {settings.bootstrap}; "
                "create it with `pipeline-project topics ensure`"
            )
        time.sleep(0.25)


def _produce_one(
    producer: Producer, topic: str, record: Record, callback: Any, tally: Tally, stop: _Stop
) -> bool:
    """Hands one record to librdkafka, waiting while its queue is full. False if it never went."""
    while True:
        try:
            producer.produce(topic, record.value, record.key, on_delivery=callback)
            return True
        except BufferError:
            producer.poll(0.05)  # serve delivery reports so the queue drains
            if stop.requested:
                return False  # never handed over, so never counted as sent
        except KafkaException as exc:  # e.g. a message over message.max.bytes: counted, not lost
            err = exc.args[0]
            tally.sent[record.verdict] += 1
            tally.fail(record.verdict, err.name(), err.str())
            return False


def _produce_loop(
    producer: Producer,
    topic: str,
    gen: EventGenerator,
    args: argparse.Namespace,
    tally: Tally,
    stop: _Stop,
    status: Status,
) -> float:
    """Generates and sends until count, duration or a signal; returns the seconds it ran."""
    rate = float(args.rate)
    limit = args.count if args.count is not None else math.inf
    start = time.monotonic()
    deadline = start + args.duration if args.duration is not None else math.inf
    min_batch = max(1, int(rate * TICK_S))
    sent = 0
    callbacks: dict[str, Callable[[KafkaError | None, Message], None]] = {}
    with_truth = tally.truth is not None
    while not stop.requested and sent < limit:
        now = time.monotonic()
        if now >= deadline:
            stop.request("duration")
            break
        if rate > 0:
            due = int((now - start) * rate) - sent
            if due > rate * MAX_DEBT_S:  # stalled (full queue, broker away): forgive old debt
                start += (due - rate * MAX_DEBT_S) / rate
                due = int(rate * MAX_DEBT_S)
            if due < min(min_batch, limit - sent):
                wait = (sent + min_batch) / rate - (now - start)
                producer.poll(min(max(wait, 0.0), deadline - now, 0.05))
                status.maybe_update()
                continue
            n = int(min(due, MAX_BATCH, limit - sent))
        else:
            n = int(min(MAX_BATCH, limit - sent))
        with paused_gc():  # the batch's records and callbacks are no cycles: spare the scans
            for record in gen.batch(n):
                callback: Callable[[KafkaError | None, Message], None] | None
                if with_truth:
                    callback = partial(
                        tally.on_delivery_truth, record.verdict, record.event_id, record.key
                    )
                else:
                    callback = callbacks.get(record.verdict)
                    if callback is None:
                        callback = callbacks[record.verdict] = partial(
                            tally.on_delivery, record.verdict
                        )
                if not _produce_one(producer, topic, record, callback, tally, stop):
                    if stop.requested:
                        break
                    continue
                tally.sent[record.verdict] += 1
            sent += n
            producer.poll(0)
        status.maybe_update()
    if sent >= limit:
        stop.request("count")
    return time.monotonic() - start


def _flush(producer: Producer, stop: _Stop, status: Status) -> int:
    """Waits up to FLUSH_TIMEOUT_S for delivery reports; purges the rest so each one fails loudly.

    Returns how many were purged (their reports count them as failed: they may or may not be in the
    topic, since an in-flight request can still land).
    """
    deadline = time.monotonic() + FLUSH_TIMEOUT_S
    while len(producer) > 0 and time.monotonic() < deadline and not stop.aborted:
        producer.flush(min(0.5, max(deadline - time.monotonic(), 0.0)))
        status.maybe_update()
    left = len(producer)
    if left:
        log.error(
            "%d records still in flight after %.0f s; purging them (counted as failed)",
            left,
            FLUSH_TIMEOUT_S,
        )
        producer.purge(in_queue=True, in_flight=True)
        producer.flush(5.0)
    return left


def summary(
    tally: Tally,
    args: argparse.Namespace,
    topic: str,
    seed: int,
    reason: str,
    seconds: float,
    produce_seconds: float,
    in_flight: int,
) -> dict[str, Any]:
    """The one JSON object printed last on stdout."""
    delivered = tally.delivered.total()
    return {
        "topic": topic,
        "seed": seed,
        "sent": tally.sent.total(),
        "delivered": delivered,
        "failed": tally.failed.total(),
        "in_flight": in_flight,
        "verdicts": dict(sorted(tally.delivered.items())),
        "failed_verdicts": dict(sorted(tally.failed.items())),
        "errors": dict(sorted(tally.errors.items())),
        "stopped_by": reason,
        "rate": args.rate,
        "processes": args.processes,
        "schema_mix": {str(v): share for v, share in (schema_mix(args) or {1: 1.0}).items()},
        "send_rate": round(tally.sent.total() / produce_seconds, 1) if produce_seconds else 0.0,
        "seconds": round(seconds, 3),
        "events_per_s": round(delivered / seconds, 1) if seconds else 0.0,
    }


@dataclass
class Outcome:
    """What a producer did: its tally, what stayed in flight, how long it took, why it stopped."""

    tally: Tally
    in_flight: int
    seconds: float
    produce_seconds: float
    reason: str
    fatal: bool


def run(
    args: argparse.Namespace, settings: Settings, clock: Callable[[], float] = time.time
) -> int:
    """Produces until count/duration/signal, flushes, prints a JSON summary; 0 iff all delivered.

    `clock` stamps the events (tests inject a fixed one to compare bytes across runs).
    """
    topic = args.topic or settings.raw_topic
    if args.bad_ratio + args.duplicate_ratio > 1.0:
        raise PipelineError("--bad-ratio plus --duplicate-ratio must be at most 1")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    if args.processes > 1:
        from pipeline_project.kafka import fanout

        return fanout.run(args, settings, clock, topic, seed)
    metrics = Metrics(args.metrics_port) if args.metrics_port is not None else None
    try:
        tick = None if metrics is None else metrics.update
        outcome = produce_stream(args, settings, clock, topic, seed, on_tick=tick)
    finally:
        if metrics is not None:
            metrics.close()
    return report(outcome, args, topic, seed)


def connect(
    settings: Settings, topic: str, compression: str, errors: _ErrorLog | None = None
) -> Producer:
    """A producer whose cluster answered and whose topic exists; one clear error line otherwise."""
    errors = _ErrorLog(_Stop()) if errors is None else errors
    conf = {
        **producer_config(settings, compression),
        "error_cb": errors,
        "logger": _Librdkafka(),
    }
    # Before the metadata check: it names a refused login or TLS trust at once, not after 10 s.
    require(settings, {topic: (WRITE,)}, outcome="nothing was sent", timeout=METADATA_TIMEOUT_S)
    producer = Producer(conf)
    check_broker(producer, settings, topic)
    errors.quiet = False
    return producer


def produce_stream(
    args: argparse.Namespace,
    settings: Settings,
    clock: Callable[[], float],
    topic: str,
    seed: int,
    *,
    stream: int = 0,
    pools: Pools | None = None,
    on_tick: Tick | None = None,
    tty: bool | None = None,
    signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
) -> Outcome:
    """One generator stream of the seed into the topic, flushed: what `run` does in one process."""
    stop = _Stop()
    errors = _ErrorLog(stop)
    producer = connect(settings, topic, args.compression, errors)
    gen = EventGenerator(
        seed,
        bad_ratio=args.bad_ratio,
        duplicate_ratio=args.duplicate_ratio,
        late_ratio=args.late_ratio,
        clock=clock,
        schema_mix=schema_mix(args),
        stream=stream,
        pools=pools,
    )
    tally = Tally()
    tally.truth = TruthFile(args.truth) if args.truth is not None else None
    status = Status(tally, producer.__len__, on_tick, tty)
    began = time.monotonic()
    stop.install(signals)
    try:
        with frozen_heap():
            produce_seconds = _produce_loop(producer, topic, gen, args, tally, stop, status)
            in_flight = _flush(producer, stop, status)
    finally:
        stop.restore()
        status.close()
        if tally.truth is not None:
            tally.truth.close()
    reason = "fatal" if errors.fatal is not None else stop.reason
    seconds = time.monotonic() - began
    return Outcome(tally, in_flight, seconds, produce_seconds, reason, errors.fatal is not None)


def report(outcome: Outcome, args: argparse.Namespace, topic: str, seed: int) -> int:
    """Prints the JSON summary as stdout's last line; 0 iff every record sent was delivered."""
    result = summary(
        outcome.tally,
        args,
        topic,
        seed,
        outcome.reason,
        outcome.seconds,
        outcome.produce_seconds,
        outcome.in_flight,
    )
    print(orjson.dumps(result).decode(), flush=True)
    ok = result["failed"] == 0 and result["delivered"] == result["sent"] and not outcome.fatal
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Standalone entry, the same as `pipeline-project produce`."""
    parser = argparse.ArgumentParser(prog="produce", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return run(args, Settings.from_env())
    except PipelineError as exc:
        print(f"produce: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
