"""Creates the pipeline's topics idempotently, with documented retention and size limits.

raw-events keeps 7 days so a stopped pipeline can catch up after a long weekend; the DLQ keeps 30
days and the parked topic 90, because a human has to look at those. Raw messages up to 1 MiB are
accepted (the parser rejects events over 64 KiB); the DLQ topics take 2 MiB so a raw record plus its
bounded headers always fits.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AclOperation, AdminClient, NewTopic
from pydantic import SecretStr

from pipeline_project.errors import KafkaUnavailableError
from pipeline_project.kafka import access
from pipeline_project.kafka.access import denied
from pipeline_project.settings import Settings, reveal_properties

log = logging.getLogger(__name__)

RAW_PARTITIONS = 6
DAY_MS = 24 * 3600 * 1000
MAX_MESSAGE_BYTES = 1_048_576
# Twice the raw limit, so any raw record plus its bounded DLQ headers always fits (fault D3 in
# docs/ARCHITECTURE.md).
DLQ_MAX_MESSAGE_BYTES = 2 * MAX_MESSAGE_BYTES
ADMIN_TIMEOUT_S = 15.0
AUTHORIZATION_FAILED = (
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
)


@dataclass(frozen=True)
class TopicSpec:
    """A topic we own: name, partitions and the configs we set on creation."""

    name: str
    partitions: int
    retention_days: int
    max_message_bytes: int = MAX_MESSAGE_BYTES

    def configs(self) -> dict[str, str]:
        return {
            "retention.ms": str(self.retention_days * DAY_MS),
            "max.message.bytes": str(self.max_message_bytes),
            "cleanup.policy": "delete",
        }


def topic_specs(settings: Settings, raw_partitions: int = RAW_PARTITIONS) -> list[TopicSpec]:
    """The topics the pipeline needs, named from the settings."""
    return [
        TopicSpec(settings.raw_topic, raw_partitions, retention_days=7),
        TopicSpec(
            settings.dlq_topic, 3, retention_days=30, max_message_bytes=DLQ_MAX_MESSAGE_BYTES
        ),
        TopicSpec(
            settings.parked_topic, 1, retention_days=90, max_message_bytes=DLQ_MAX_MESSAGE_BYTES
        ),
    ]


def admin_client(settings: Settings) -> AdminClient:
    """An admin client that stays quiet: errors reach the user as one line, not librdkafka logs."""
    return AdminClient({**settings.kafka_common(), "socket.timeout.ms": 10_000, "log_level": 0})


def admin_client_for(bootstrap: str, extra: Mapping[str, SecretStr | str]) -> AdminClient:
    """The same quiet admin client for a login other than the settings' (the broker's own)."""
    login = reveal_properties(extra)
    conf = {"bootstrap.servers": bootstrap, **login, "socket.timeout.ms": 10_000, "log_level": 0}
    return AdminClient(conf)


def list_topics(settings: Settings, timeout: float = ADMIN_TIMEOUT_S) -> dict[str, int]:
    """Topic name → partition count; KafkaUnavailableError when the cluster does not answer."""
    meta = access.list_topics(settings, timeout, **{"socket.timeout.ms": 10_000})
    return {name: len(t.partitions) for name, t in meta.topics.items() if not name.startswith("__")}


def ensure_topics(settings: Settings, raw_partitions: int = RAW_PARTITIONS) -> list[str]:
    """Creates missing topics; never deletes or shrinks. Returns a line per topic on what it did."""
    settings.check()
    existing = list_topics(settings)
    specs = topic_specs(settings, raw_partitions)
    missing = [s for s in specs if s.name not in existing]
    lines = [_existing_line(s, existing[s.name]) for s in specs if s.name in existing]
    if missing:
        new = [
            NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, config=s.configs())
            for s in missing
        ]
        admin = admin_client(settings)  # keep a reference: the futures die with the client
        futures = admin.create_topics(new, request_timeout=ADMIN_TIMEOUT_S)
        for spec in missing:
            try:
                futures[spec.name].result(timeout=ADMIN_TIMEOUT_S)
                lines.append(f"created {spec.name} ({spec.partitions} partitions)")
            except KafkaException as exc:
                if exc.args[0].code() in AUTHORIZATION_FAILED:
                    raise denied(
                        settings, AclOperation.CREATE, "Topic", spec.name, "nothing was created"
                    ) from None
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise KafkaUnavailableError(
                        f"creating {spec.name} failed: {exc.args[0].str()}"
                    ) from None
                lines.append(f"exists  {spec.name}")
    return lines


def _existing_line(spec: TopicSpec, partitions: int) -> str:
    note = "" if partitions >= spec.partitions else f" (fewer than the {spec.partitions} we create)"
    return f"exists  {spec.name} ({partitions} partitions{note})"
