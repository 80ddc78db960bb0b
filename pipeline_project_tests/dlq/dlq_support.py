"""Hand-made raw events (good, repairable, hopeless) for the DLQ tests, readers of topics, and the
checks every reprocessing test ends with."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
from confluent_kafka import Consumer, Producer, TopicPartition

from pipeline_project.batch.ranges import Range
from pipeline_project.batch.run import ingest
from pipeline_project.dlq import report, resolution
from pipeline_project.dlq.records import decode_headers
from pipeline_project.lake.location import lake_of
from pipeline_project.settings import Settings
from pipeline_project_tests import ingest_support
from pipeline_project_tests.ingest_support import lake_frame
from pipeline_project_tests.support import env_for, pipeline_cli, unique

UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0.0.0 Safari/537.36"
NOW = datetime.now(UTC).replace(microsecond=0)
YESTERDAY_NOON = (NOW - timedelta(days=1)).replace(hour=12, minute=0, second=0)


def event(i: int, when: datetime = NOW, **changes: Any) -> dict[str, Any]:
    """A valid event; `changes` override fields (None deletes one)."""
    body: dict[str, Any] = {
        "event_id": str(uuid.UUID(int=10_000 + i)),
        "event_type": "page_view",
        "timestamp": when.isoformat().replace("+00:00", "Z"),
        "user_id": f"user_{i % 7}",
        "session_id": f"sess_{i % 5}",
        "page_url": f"/p/item-{i}",
        "user_agent": UA,
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


# Repairable, one defect each: the four kinds the issue names.
REPAIRABLE: dict[str, bytes] = {
    "epoch_millis": encode(event(1, timestamp=int(YESTERDAY_NOON.timestamp() * 1000))),
    "shouting_type": encode(event(2, event_type=" PAGE_VIEW ")),
    "quantity_text": encode(
        event(
            3,
            event_type="add_to_cart",
            properties={"product_id": "sku_1", "price": 9.5, "currency": "EUR", "quantity": "12"},
        )
    ),
    "no_event_id": encode(event(4, event_id=None)),
}
# Hopeless: no rule can fix these.
HOPELESS: dict[str, bytes] = {
    "unknown_type": encode(event(5, event_type="teleport")),
    "truncated": b'{"event_id": "x", "event_type": ',
}


def produce_raw(
    settings: Settings, values: list[bytes], partition: int = 0, key: bytes | None = None
) -> list[int]:
    """Produces `values` to one raw partition in order; returns their offsets.

    One `key` for all puts every DLQ copy of them in one DLQ partition (the DLQ is keyed).
    """
    producer = Producer({"bootstrap.servers": settings.bootstrap, "enable.idempotence": True})
    offsets: dict[int, int] = {}

    def delivered(err: Any, msg: Any, index: int) -> None:
        assert err is None, err
        offsets[index] = msg.offset()

    for index, value in enumerate(values):
        producer.produce(
            settings.raw_topic,
            key=key or f"user_{index % 7}".encode(),
            value=value,
            partition=partition,
            on_delivery=lambda err, msg, i=index: delivered(err, msg, i),
        )
    assert producer.flush(30) == 0
    return [offsets[i] for i in range(len(values))]


def ingest_partition(settings: Settings, end: int, partition: int = 0, start: int = 0) -> None:
    result = ingest(settings, [Range(settings.raw_topic, partition, start, end)])
    assert result.accounting_ok()


def read_topic(settings: Settings, topic: str) -> list[dict]:
    """Every record of `topic` like ingest_support.dlq_records, polling one record at a time.

    (A batch consume waits its whole timeout when fewer records exist: seconds per partition.)
    """
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": unique("read")})
    out: list[dict] = []
    try:
        for partition in sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            consumer.assign([TopicPartition(topic, partition, low)])
            offset = low - 1
            while offset < high - 1:
                msg = consumer.poll(10)
                assert msg is not None and msg.error() is None, "read stalled"
                offset = msg.offset()
                out.append(
                    {
                        "key": msg.key(),
                        "value": msg.value(),
                        "headers": decode_headers(msg.headers()),
                        "partition": partition,
                        "offset": offset,
                    }
                )
    finally:
        consumer.close()
    return out


def dlq_records(settings: Settings) -> list[dict]:
    return read_topic(settings, settings.dlq_topic)


def parked_records(settings: Settings) -> list[dict]:
    return read_topic(settings, settings.parked_topic)


def by_source(records: list[dict]) -> dict[tuple[int, int], list[dict]]:
    """DLQ records grouped by source (partition, offset), in DLQ order."""
    grouped: dict[tuple[int, int], list[dict]] = {}
    for record in sorted(records, key=lambda r: (r["partition"], r["offset"])):
        h = record["headers"]
        key = (int(h["dlq.source.partition"]), int(h["dlq.source.offset"]))
        grouped.setdefault(key, []).append(record)
    return grouped


def cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`pipeline-project ARGS` in a child process with the test's settings."""
    return pipeline_cli(env_for(settings, **env), *args, timeout=180)


def statuses(settings: Settings) -> Counter[str]:
    """Failed source records by status (recovered, filtered, parked, failing) as the report counts
    them, read-only: every DLQ record folded per source, joined with the ledger in the table's log.
    """
    log = report.read_new(settings, {})
    records = report.per_source(log, resolution.load_book(lake_of(settings)))
    return Counter({"failed": records.height, **Counter(records.get_column("status").to_list())})


def recovered_rows(settings: Settings) -> pl.DataFrame:
    lake = lake_frame(settings)
    return lake.filter(pl.col("dlq_offset").is_not_null()) if lake.height else lake


def assert_reconciles(settings: Settings, **status: int) -> None:
    """`pipeline-project reconcile` passes, each recovered record is one lake row named by exactly
    the resolution that recovered it, and the failed records count `status` by status."""
    ingest_support.assert_reconciles(env_for(settings))
    rows = recovered_rows(settings)
    coords = (
        [tuple(r) for r in rows.select("kafka_topic", "kafka_partition", "kafka_offset").rows()]
        if rows.height
        else []
    )
    assert len(coords) == len(set(coords)), "a source record was recovered twice"
    book = resolution.load_book(lake_of(settings))
    assert {r.source for r in book.with_outcome(resolution.RECOVERED)} == set(coords)
    counts = statuses(settings)
    assert {k: counts.get(k, 0) for k in status} == status
