"""What each partition still owes the lake: committed end (from the table) against the watermarks.

Metadata and watermark calls, and one read of the events table's latest snapshot (its app
transaction versions are the committed ends), so the sensor can call it every tick.
"""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AclOperation

from pipeline_project.batch.epochs import check_watermark, identity_of
from pipeline_project.batch.plan import PartitionState
from pipeline_project.errors import KafkaUnavailableError
from pipeline_project.kafka.access import denied, unreachable
from pipeline_project.kafka.drain import METADATA_TIMEOUT_S, make_consumer, watermarks
from pipeline_project.lake.location import lake_of
from pipeline_project.lake.record import app_id
from pipeline_project.lake.table import open_table, txn_version
from pipeline_project.settings import Settings


def topic_partitions(consumer, topic: str, settings: Settings) -> list[int]:
    """Partition ids of a topic; KafkaUnavailableError when the topic or the broker is missing.

    A refused login or TLS trust is named, and so is a denied Describe (which a broker reports
    instead of "unknown topic", so as not to tell one who may not see it whether it exists).
    """
    try:
        meta = consumer.list_topics(topic, timeout=METADATA_TIMEOUT_S)
    except KafkaException as exc:
        message = f"Kafka did not answer for topic {topic}: {exc.args[0].str()}"
        raise unreachable(settings, message) from None
    info = meta.topics.get(topic)
    if info is not None and info.error is not None:
        if info.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            raise denied(settings, AclOperation.DESCRIBE, "Topic", topic)
    if info is None or info.error is not None or not info.partitions:
        raise KafkaUnavailableError(
            f"topic {topic} does not exist (run `pipeline-project topics ensure`)"
        )
    return sorted(info.partitions)


def partition_states(
    settings: Settings, consumer=None, topic: str | None = None
) -> list[PartitionState]:
    """Committed end and watermarks for every partition of `topic` (default: the raw topic).

    TopicChangedError when the topic is not the one the lake read (batch/epochs.py).
    """
    topic = topic or settings.raw_topic
    own = consumer is None
    consumer = consumer or make_consumer(settings)
    try:
        table = open_table(lake_of(settings))
        partitions = topic_partitions(consumer, topic, settings)  # names an unreachable broker
        identity = identity_of(settings, table, topic)
        states = []
        for partition in partitions:
            low, high = watermarks(consumer, topic, partition, settings)
            end = txn_version(table, app_id(topic, partition, identity.epoch))
            check_watermark(identity, partition, end, high)
            states.append(PartitionState(partition, end, low, high, identity.epoch))
        return states
    finally:
        if own:
            consumer.close()
