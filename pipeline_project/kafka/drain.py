"""Reads one exact offset range [start, end) of one partition, and nothing else.

assign() at an explicit offset, no group subscription, no auto commit, `auto.offset.reset=error` (a
deleted start offset is an error, never a silent jump), read_committed. The loop stops by offset or
position, never by record count: transaction markers and compaction take offsets (faults KF5, KF6
in docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from pipeline_project.batch.faults import fault_point
from pipeline_project.batch.ranges import Range
from pipeline_project.batch.records import RawBatch
from pipeline_project.errors import DataLossError, DrainError, KafkaAuthorizationError
from pipeline_project.kafka.access import unreachable
from pipeline_project.kafka.native_reader import Blobs, RangeConsumer
from pipeline_project.perf import paused_gc
from pipeline_project.settings import Settings

log = logging.getLogger(__name__)

CONSUME_BATCH = 10_000
# Records a drain hands over at a time when asked to (a range is parsed part by part while read).
PART_RECORDS = 50_000
METADATA_TIMEOUT_S = 10.0
FIRST_QUERY_TIMEOUT_S = 0.15
LEADER_RETRY_S = 0.2
LEADER_MOVING = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE})


def consumer_config(settings: Settings) -> dict[str, object]:
    """Exact-range consumer settings; the group id is only used for the lag-dashboard commit.

    Fetch sizes stay at librdkafka's defaults: measured here, raising max.partition.fetch.bytes to
    16 MiB made a 200k-record drain four times slower (115k/s against 450k/s).
    """
    return {
        **settings.kafka_common(),
        "group.id": settings.consumer_group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "error",
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
        # librdkafka stops fetching for fetch.queue.backoff.ms (default 1000) whenever its local
        # queue is over queued.min.messages (default 100k): a 200k drain then stalled for up to
        # a second, measured in about one run in three. Keep fetching; the queue stays bounded by
        # queued.max.messages.kbytes.
        "fetch.queue.backoff.ms": 0,
        "queued.min.messages": 1_000_000,
        # A new client first talks to the bootstrap address, then reconnects to the broker by its
        # id, no sooner than half this backoff after the last attempt: 50 ms at the default (100),
        # measured in half the runs' first request. Reconnects after an outage still back off
        # exponentially, to reconnect.backoff.max.ms.
        "reconnect.backoff.ms": 10,
        # A fetch at the log end waits at the broker for new data, up to this long, and the next
        # fetch (the next range's, after a new assign) queues behind it: with the default 500 ms,
        # every range after the first of a run started half a second late.
        "fetch.wait.max.ms": 20,
        "log_level": 3,
    }


def make_consumer(settings: Settings) -> RangeConsumer:
    """A consumer that drains ranges natively where it can (PIPELINE_NATIVE_PARSE, the default)."""
    return RangeConsumer(consumer_config(settings), native=settings.native_parse)


def watermarks(
    consumer: Consumer, topic: str, partition: int, settings: Settings | None = None
) -> tuple[int, int]:
    """(low, high) watermarks of a partition; KafkaUnavailableError if the broker is silent.

    A short first try, then the full bound: a new client's first leader query can go out on the
    bootstrap connection just as librdkafka swaps it for the broker's own, and is then lost and
    only re-sent ~0.7 s later (measured: 3 of 100 fresh consumers, and about one bench run in
    six). A second query goes out at once, on the new connection.
    """
    where = TopicPartition(topic, partition)
    try:
        return consumer.get_watermark_offsets(where, timeout=FIRST_QUERY_TIMEOUT_S)
    except KafkaException:
        pass  # asked again below, with the full bound and its error
    deadline = time.monotonic() + METADATA_TIMEOUT_S
    while True:
        left = deadline - time.monotonic()
        try:
            return consumer.get_watermark_offsets(where, timeout=max(left, 0.1))
        except KafkaException as exc:
            error = exc.args[0]
            # A leader moving or just elected (a new topic, a broker restart) answers at once with
            # a retriable error: ask again until the bound, as librdkafka refreshes its metadata.
            if error.code() in LEADER_MOVING and time.monotonic() + LEADER_RETRY_S < deadline:
                time.sleep(LEADER_RETRY_S)
                continue
            message = (
                f"could not read offsets of {topic}[{partition}] within "
                f"{METADATA_TIMEOUT_S:.0f} s: {error.str()}"
            )
            raise unreachable(settings, message) from None


def check_available(consumer: Consumer, rng: Range) -> None:
    """Fails loudly before reading when retention already deleted part of the range."""
    low, _high = watermarks(consumer, rng.topic, rng.partition)
    if low > rng.start:
        raise DataLossError(
            f"{rng.topic}[{rng.partition}] offsets [{rng.start}, {min(low, rng.end)}) were "
            "deleted by "
            f"retention before they reached the lake (low watermark {low}); refusing to skip them"
        )


def drain_range(
    consumer: Consumer,
    rng: Range,
    timeout_s: float,
    *,
    with_headers: bool = False,
    on_part: Callable[[RawBatch], None] | None = None,
    part_records: int = PART_RECORDS,
    stop: threading.Event | None = None,
) -> RawBatch:
    """Every record of `rng`, in offset order; DrainError if it cannot be completed in time.

    `with_headers` keeps each record's headers too (the DLQ's reason and source coordinates).
    `on_part` is handed each consecutive part of about `part_records` records as soon as it is
    read (and the last, shorter one at the end), so a caller can work on them during the drain.
    `stop`, once set, ends the drain with a DrainError (its run stopped; nothing was committed).
    """
    native = consumer.native() if isinstance(consumer, RangeConsumer) and not with_headers else None
    if native is None:
        batch = RawBatch(rng.topic, rng.partition, [], [], [], [], [] if with_headers else None)
    else:  # the records' bytes stay in the native reader's buffers
        batch = RawBatch(rng.topic, rng.partition, [], [], Blobs(), Blobs())
    if rng.size == 0:
        return batch
    check_available(consumer, rng)
    parts = _Parts(batch, on_part, part_records)
    deadline = time.monotonic() + timeout_s
    if native is None:
        consumer.assign([TopicPartition(rng.topic, rng.partition, rng.start)])
        try:
            with paused_gc():
                _consume_until_end(consumer, rng, batch, deadline, parts, stop)
        finally:
            consumer.unassign()
    else:
        native.assign(rng.topic, rng.partition, rng.start)
        try:
            with paused_gc():
                _read_until_end(native, rng, batch, deadline, parts, stop)
        finally:
            native.unassign()
    parts.hand_over(last=True)
    return batch


class _Parts:
    """Hands the drained records over in consecutive parts, each once."""

    def __init__(
        self, batch: RawBatch, on_part: Callable[[RawBatch], None] | None, size: int
    ) -> None:
        self._batch, self._on_part, self._size, self._done = batch, on_part, size, 0

    def hand_over(self, *, last: bool = False) -> None:
        end = len(self._batch)
        if (
            self._on_part is None
            or end == self._done
            or (end - self._done < self._size and not last)
        ):
            return
        self._on_part(self._batch.part(self._done, end))
        self._done = end


def _consume_until_end(
    consumer: Consumer,
    rng: Range,
    batch: RawBatch,
    deadline: float,
    parts: _Parts,
    stop: threading.Event | None = None,
) -> None:
    offsets, stamps, keys, values = batch.offsets, batch.timestamps_ms, batch.keys, batch.values
    headers = batch.headers
    last = rng.end - 1
    transient = ""  # the last transient error, so a timeout says "broker down" when it was
    while True:
        _check_bounds(rng, offsets, deadline, stop, transient)
        # Never ask for more than the range still holds: consume() waits out its timeout for a
        # batch it cannot fill, which made every range under 10k records take at least 0.5 s.
        left = rng.end - (offsets[-1] + 1 if offsets else rng.start)
        msgs = consumer.consume(max(1, min(CONSUME_BATCH, left)), timeout=0.5)
        if _take_whole(msgs, rng, batch):
            if offsets[-1] >= last:
                return
            msgs = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if _handle_error(err, msg.offset(), rng):
                    return
                if err.code() != KafkaError._PARTITION_EOF:
                    transient = err.str()
                continue
            offset = msg.offset()
            if offset >= rng.end:
                return
            offsets.append(offset)
            stamps.append(msg.timestamp()[1])
            keys.append(msg.key())
            values.append(msg.value())
            if headers is not None:
                headers.append(msg.headers())
            if offset >= last:
                return
        if offsets:
            fault_point("K1a")  # tests: the range is half read (broker faults mid-drain)
            parts.hand_over()
        if _position(consumer, rng) >= rng.end:
            return


def _check_bounds(
    rng: Range,
    offsets: list[int],
    deadline: float,
    stop: threading.Event | None,
    transient: str,
) -> None:
    """DrainError when the run stopped or the time bound passed before the range was read."""
    if stop is not None and stop.is_set():
        raise DrainError(f"{rng.range_id}: the run stopped while the range was read")
    if time.monotonic() > deadline:
        got = offsets[-1] if offsets else None
        cause = "the range ends beyond the log end, an open transaction blocks it"
        if transient:
            cause += f", or the broker is unreachable (last error: {transient})"
        raise DrainError(
            f"{rng.range_id}: reached offset {got} of [{rng.start}, {rng.end}) "
            f"before the time bound; {cause}"
        )


def _read_until_end(
    native: Any,
    rng: Range,
    batch: RawBatch,
    deadline: float,
    parts: _Parts,
    stop: threading.Event | None = None,
) -> None:
    """The native reader's loop: the Python loop's rules, a read of up to 10k records a turn.

    Each read fills buffers outside the GIL and stops at the range's end or at the first error
    message, which is judged here exactly as the Python drain judges it (`_handle_error`).
    """
    offsets = batch.offsets
    transient = ""
    while True:
        _check_bounds(rng, offsets, deadline, stop, transient)
        left = rng.end - (offsets[-1] + 1 if offsets else rng.start)
        got, stamps, keys, values, error, done = native.read(
            rng.end, max(1, min(CONSUME_BATCH, left)), 0.5
        )
        if got:
            offsets.extend(got)
            batch.timestamps_ms.extend(stamps)
            batch.keys.extend(keys)
            batch.values.extend(values)
        if done:
            return
        if error is not None:
            code, reason, fatal, at = error
            err = KafkaError(code, reason, fatal)
            if _handle_error(err, at if at >= 0 else None, rng):
                return
            if code != KafkaError._PARTITION_EOF:
                transient = err.str()
        if got:
            fault_point("K1a")  # tests: the range is half read (broker faults mid-drain)
            parts.hand_over()
        if native.position(rng.topic, rng.partition) >= rng.end:
            return


def _take_whole(msgs: list[Message], rng: Range, batch: RawBatch) -> bool:
    """Appends a whole consumed batch at once when it is all records of the range (the usual case).

    One C-level pass per field (`map` over the Message methods) instead of a Python loop with a
    branch per record: the drain runs beside the threads mapping earlier parts, so its share of
    the GIL is their loss (measured 30-45 ms per 200k records, against 47-55 ms as list
    comprehensions). False (nothing appended) when any message is an error or past the range's
    end: the caller then looks at each message.
    """
    if not msgs or any(map(_ERROR, msgs)):  # a KafkaError is always truthy
        return False
    offsets = list(map(_OFFSET, msgs))
    if offsets[-1] >= rng.end:
        return False
    batch.offsets.extend(offsets)
    batch.timestamps_ms.extend(map(_SECOND, map(_TIMESTAMP, msgs)))
    batch.keys.extend(map(_KEY, msgs))
    batch.values.extend(map(_VALUE, msgs))
    if batch.headers is not None:
        batch.headers.extend(map(_HEADERS, msgs))
    return True


# The Message methods, unbound, for `_take_whole`'s C-level passes.
_ERROR, _OFFSET, _TIMESTAMP = Message.error, Message.offset, Message.timestamp
_KEY, _VALUE, _HEADERS = Message.key, Message.value, Message.headers
_SECOND = itemgetter(1)


def _handle_error(err: KafkaError, offset: int | None, rng: Range) -> bool:
    """True if the error proves the range complete; raises on loss; False if transient."""
    code = err.code()
    if code == KafkaError._PARTITION_EOF:
        return offset is not None and offset >= rng.end
    if code == KafkaError._AUTO_OFFSET_RESET or code == KafkaError.OFFSET_OUT_OF_RANGE:
        raise DataLossError(
            f"{rng.range_id}: offset out of range while reading ({err.str()}); "
            "retention deleted records this range still owed to the lake"
        )
    if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        raise KafkaAuthorizationError(
            f"{rng.range_id}: not authorized to Read Topic:{rng.topic} (missing ACL: ALLOW Read "
            f"on Topic:{rng.topic}); nothing of this range was committed"
        )
    if err.fatal() or code == KafkaError.UNKNOWN_TOPIC_OR_PART:
        raise DrainError(f"{rng.range_id}: {err.str()}")
    log.warning("transient consumer error on %s: %s", rng.range_id, err.str())
    return False


def _position(consumer: Consumer, rng: Range) -> int:
    pos = consumer.position([TopicPartition(rng.topic, rng.partition)])[0].offset
    return pos if pos >= 0 else -1
