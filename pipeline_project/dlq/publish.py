"""Sends records to the DLQ and proves each one arrived, before the range may commit.

An idempotent producer (acks=all), a bounded message timeout, and a delivery report required for
every record: `flush()` returning 0 is not proof (fault D2, docs/ARCHITECTURE.md), a per-record
report without error is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from pipeline_project.batch.faults import fault_point
from pipeline_project.dlq.records import DlqRecord
from pipeline_project.errors import DlqDeliveryError
from pipeline_project.kafka.topics import DLQ_MAX_MESSAGE_BYTES
from pipeline_project.settings import Settings

log = logging.getLogger(__name__)

DELIVERY_TIMEOUT_MS = 30_000  # the default of PIPELINE_DLQ_TIMEOUT_SECONDS


@dataclass(frozen=True)
class DlqDelivery:
    """Where a DLQ record landed: its source offset and its DLQ coordinates.

    The source topic and partition tell deliveries of one publish apart when it mixes source
    partitions (reprocessing does).
    """

    source_offset: int
    category: str
    dlq_partition: int
    dlq_offset: int
    source_topic: str = ""
    source_partition: int = -1


def producer_config(settings: Settings) -> dict[str, object]:
    return {
        **settings.kafka_common(),
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "zstd",
        "linger.ms": 20,
        "message.timeout.ms": int(settings.dlq_timeout_seconds * 1000),
        "message.max.bytes": DLQ_MAX_MESSAGE_BYTES + 64 * 1024,
        "log_level": 3,
    }


@dataclass
class DlqSend:
    """Records handed to the producer, and their delivery reports as they come."""

    records: list[DlqRecord]
    deliveries: list[DlqDelivery] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


class DlqPublisher:
    """One idempotent producer for a whole run, created early.

    Its connection and producer id are then ready by the time the first range has rejects (that
    set-up cost ~0.4 s per range otherwise).
    """

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self._timeout_s = settings.dlq_timeout_seconds
        self._producer = Producer(producer_config(settings))
        self._producer.poll(0)

    def publish(self, records: Sequence[DlqRecord]) -> list[DlqDelivery]:
        """Produces every record and waits for all reports; DlqDeliveryError if any failed."""
        return self.confirm([self.send(records)])

    def send(self, records: Sequence[DlqRecord]) -> DlqSend:
        """Hands the records to the producer without waiting; `confirm` proves they arrived.

        A range sends its parse rejects while its last parts are still mapped, and confirms
        them with pandera's rejects: the waits for acknowledgements then overlap.
        """
        sent = DlqSend(list(records))

        def on_delivery(err: KafkaError | None, msg: Message, record: DlqRecord) -> None:
            if err is not None:
                sent.failures.append(f"source offset {record.source_offset}: {err.str()}")
            else:
                sent.deliveries.append(
                    DlqDelivery(
                        record.source_offset,
                        record.category,
                        msg.partition(),
                        msg.offset(),
                        record.source_topic,
                        record.source_partition,
                    )
                )

        for record in sent.records:
            _produce(
                self._producer,
                self.topic,
                record,
                lambda err, msg, r=record: on_delivery(err, msg, r),
            )
        return sent

    def confirm(self, sends: Sequence[DlqSend]) -> list[DlqDelivery]:
        """Waits for the reports of every record of `sends`; DlqDeliveryError if any failed.

        Returns the deliveries by source offset. Only these records' reports decide: another
        range read ahead may be sending meanwhile, and the flush waits for its records too.
        """
        total = sum(len(s.records) for s in sends)
        if not total:
            return []
        fault_point("K6a")  # tests: records handed over, none confirmed yet (broker faults)
        remaining = self._producer.flush(self._timeout_s + 10)
        deliveries = [d for s in sends for d in s.deliveries]
        failures = [f for s in sends for f in s.failures]
        if failures or len(deliveries) != total:
            raise DlqDeliveryError(
                f"{total - len(deliveries)} of {total} DLQ records to {self.topic} were not "
                f"confirmed ({'; '.join(failures[:3]) or f'{remaining} still in flight'}); "
                "nothing was committed"
            )
        deliveries.sort(key=lambda d: d.source_offset)
        return deliveries

    def close(self) -> None:
        self._producer.flush(5)


def publish(settings: Settings, topic: str, records: Sequence[DlqRecord]) -> list[DlqDelivery]:
    """One-shot publish with its own producer (reprocessing and tools); see DlqPublisher."""
    publisher = DlqPublisher(settings, topic)
    try:
        return publisher.publish(records)
    finally:
        publisher.close()


def _produce(producer: Producer, topic: str, record: DlqRecord, callback) -> None:
    """produce(), waiting for queue space instead of failing when the local queue is full."""
    while True:
        try:
            producer.produce(
                topic,
                key=record.key,
                value=record.value,
                headers=record.headers(),
                on_delivery=callback,
            )
            return
        except BufferError:
            producer.poll(0.1)
        except KafkaException as exc:
            raise DlqDeliveryError(
                f"DLQ record for source offset {record.source_offset} was refused "
                f"by the client: {exc.args[0].str()}; nothing was committed"
            ) from None
