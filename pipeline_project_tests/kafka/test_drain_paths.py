"""The native drain and the Python drain read exactly the same records, and fail the same way.

Ranges are drained on the real broker by both: confluent-kafka's message objects (the Python
drain) and the native reader's buffers over the same librdkafka. What a user would notice if they
differed: a record's offset, timestamp, key or value changed or missing, a transaction marker or
an aborted record taken for a record, a range that never ends, a different error.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest
from confluent_kafka import Producer

from pipeline_project.batch.ranges import Range
from pipeline_project.batch.records import RawBatch
from pipeline_project.errors import DrainError
from pipeline_project.kafka import drain
from pipeline_project.kafka.native_reader import RangeConsumer, Reader
from pipeline_project.settings import Settings

pytestmark = pytest.mark.skipif(Reader is None, reason="the native module is not built")

PATHS = ("native", "python")


def consumer_for(settings: Settings, path: str) -> RangeConsumer:
    native = path == "native"
    consumer = drain.make_consumer(dataclasses.replace(settings, native_parse=native))
    assert (consumer.native() is not None) == native
    return consumer


def drained(settings: Settings, rng: Range, path: str, **kwargs) -> tuple[RawBatch, list]:
    consumer = consumer_for(settings, path)
    parts: list[RawBatch] = []
    try:
        batch = drain.drain_range(consumer, rng, 20, on_part=parts.append, **kwargs)
    finally:
        consumer.close()
    return batch, parts


def rows(batch: RawBatch) -> list[tuple]:
    return list(
        zip(batch.offsets, batch.timestamps_ms, list(batch.keys), list(batch.values), strict=True)
    )


def produce(settings: Settings, records: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = Producer(  # idempotent: the records keep their order on the new topic's retries
        {"bootstrap.servers": settings.bootstrap, "linger.ms": 5, "enable.idempotence": True}
    )
    for key, value in records:
        producer.produce(settings.raw_topic, key=key, value=value, partition=0)
    assert producer.flush(30) == 0


def transactional(settings: Settings) -> Producer:
    producer = Producer(
        {"bootstrap.servers": settings.bootstrap, "transactional.id": settings.raw_topic}
    )
    producer.init_transactions(30)
    return producer


def in_transaction(producer: Producer, settings: Settings, n: int, tag: bytes) -> None:
    producer.begin_transaction()
    for i in range(n):
        producer.produce(settings.raw_topic, key=b"k", value=tag + b"%d" % i, partition=0)
    assert producer.flush(30) == 0


def test_both_drains_read_the_same_records_and_parts(kafka_settings: Settings) -> None:
    records = [(b"key-%d" % i, b'{"n": %d}' % i + b"x" * (i % 700)) for i in range(25_000)]
    records[10] = (None, b"no key")
    records[11] = (b"no value", None)
    records[12] = (b"", b"")
    produce(kafka_settings, records)
    rng = Range(kafka_settings.raw_topic, 0, 3, 24_990)

    native, native_parts = drained(kafka_settings, rng, "native", part_records=4000)
    python, python_parts = drained(kafka_settings, rng, "python", part_records=4000)

    assert rows(native) == rows(python)
    assert native.offsets == list(range(3, 24_990))
    read = {offset: (key, value) for offset, _ts, key, value in rows(native)}
    assert [read[offset] for offset in (10, 11, 13)] == [records[10], records[11], records[13]]
    assert read[12] in ((b"", b""), (None, b""), (b"", None), (None, None))  # as Kafka keeps it
    assert [rows(p) for p in native_parts] == [rows(p) for p in python_parts]
    assert sum(len(p) for p in native_parts) == len(native) and len(native_parts) >= 3
    sources = native.sources([3, 24_989])
    assert sources[24_989].value == records[24_989][1] and sources[3].key == b"key-3"


def test_transaction_markers_and_aborted_records_are_no_records(kafka_settings: Settings) -> None:
    producer = transactional(kafka_settings)
    in_transaction(producer, kafka_settings, 30, b"kept-a")
    producer.commit_transaction(30)
    in_transaction(producer, kafka_settings, 20, b"aborted")
    producer.abort_transaction(30)
    in_transaction(producer, kafka_settings, 30, b"kept-b")
    producer.commit_transaction(30)
    rng = Range(kafka_settings.raw_topic, 0, 0, 83)  # 80 records and three markers

    got = {path: drained(kafka_settings, rng, path)[0] for path in PATHS}

    assert rows(got["native"]) == rows(got["python"])
    values = list(got["native"].values)
    assert len(values) == 60 and not any(v.startswith(b"aborted") for v in values)
    assert got["native"].offsets[-1] == 81  # the range ends on the last commit marker


@pytest.mark.parametrize("path", PATHS)
def test_a_range_past_the_log_end_fails_within_the_bound(
    kafka_settings: Settings, path: str
) -> None:
    produce(kafka_settings, [(b"k", b"v")] * 10)
    consumer = consumer_for(kafka_settings, path)
    try:
        with pytest.raises(DrainError, match=r"reached offset 9 of \[0, 15\) before the time"):
            drain.drain_range(consumer, Range(kafka_settings.raw_topic, 0, 0, 15), 2)
    finally:
        consumer.close()


@pytest.mark.parametrize("path", PATHS)
def test_a_stopped_run_stops_the_drain(kafka_settings: Settings, path: str) -> None:
    produce(kafka_settings, [(b"k", b"v")] * 10)
    stop = threading.Event()
    stop.set()
    consumer = consumer_for(kafka_settings, path)
    try:
        with pytest.raises(DrainError, match="the run stopped while the range was read"):
            drain.drain_range(consumer, Range(kafka_settings.raw_topic, 0, 0, 10), 5, stop=stop)
    finally:
        consumer.close()


def test_a_native_reader_that_cannot_open_leaves_the_python_drain(
    kafka_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    produce(kafka_settings, [(b"k", b"v%d" % i) for i in range(5)])
    config = drain.consumer_config(kafka_settings) | {"no.such.property": "1"}
    consumer = RangeConsumer({k: v for k, v in config.items() if k != "no.such.property"})
    consumer._config = config  # what the native reader is opened with
    try:
        batch = drain.drain_range(consumer, Range(kafka_settings.raw_topic, 0, 0, 5), 10)
    finally:
        consumer.close()
    assert isinstance(batch.values, list) and batch.values == [b"v%d" % i for i in range(5)]
    assert "native drain unavailable" in caplog.text and "no.such.property" in caplog.text


def test_a_closed_consumer_refuses_to_drain_with_an_error(kafka_settings: Settings) -> None:
    produce(kafka_settings, [(b"k", b"v")] * 3)
    consumer = consumer_for(kafka_settings, "native")
    reader = consumer.native()
    consumer.close()
    with pytest.raises(RuntimeError, match="the native reader is closed"):
        reader.read(3, 3, 0.1)
    assert consumer.native() is None  # a closed consumer opens no new reader
