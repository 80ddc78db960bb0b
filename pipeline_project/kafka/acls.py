"""The least-privilege ACLs of the pipeline's and the producer's principals, and their SCRAM users.

One list, `grants()`, is what the secure local broker creates, what the tests run under and what
docs/operations.md documents: each grant carries the reason it exists. Anything not listed is
denied (the broker runs with allow.everyone.if.no.acl.found=false).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from pipeline_project.errors import BrokerError
from pipeline_project.kafka.secure import SCRAM_ITERATIONS
from pipeline_project.settings import Settings

ADMIN_TIMEOUT_S = 15.0
PIPELINE = "User:pipeline"
PRODUCER = "User:producer"


@dataclass(frozen=True)
class Grant:
    """One ALLOW ACL on a literal resource name, and why the principal needs it."""

    principal: str
    resource: ResourceType
    name: str
    operation: AclOperation
    reason: str

    def binding(self) -> AclBinding:
        return AclBinding(
            self.resource,
            self.name,
            ResourcePatternType.LITERAL,
            self.principal,
            "*",
            self.operation,
            AclPermissionType.ALLOW,
        )


def grants(settings: Settings) -> list[Grant]:
    """Every ACL the two principals get, named from the settings' topics and consumer group."""
    topic, group = ResourceType.TOPIC, ResourceType.GROUP
    read, write, describe = AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE
    raw, dlq, parked = settings.raw_topic, settings.dlq_topic, settings.parked_topic
    return [
        Grant(PIPELINE, topic, raw, read, "ingest and the sensor read exact offset ranges"),
        Grant(PIPELINE, topic, raw, describe, "metadata and watermarks (sensor, health)"),
        Grant(PIPELINE, group, settings.consumer_group, read, "commit the lag-dashboard offset"),
        Grant(PIPELINE, topic, dlq, write, "publish rejected records (ingest, reprocess)"),
        Grant(PIPELINE, topic, dlq, read, "reprocess and the DLQ report read the DLQ back"),
        Grant(PIPELINE, topic, dlq, describe, "DLQ metadata and watermarks"),
        Grant(PIPELINE, topic, parked, write, "reprocess parks records that keep failing"),
        Grant(PIPELINE, topic, parked, describe, "parked topic metadata (health)"),
        Grant(PRODUCER, topic, raw, write, "produce events"),
        Grant(PRODUCER, topic, raw, describe, "the producer's metadata check"),
    ]


def create_acls(admin: AdminClient, wanted: list[Grant]) -> int:
    """Creates the grants (an existing identical ACL is a no-op); returns how many were sent.

    Returns once the broker enforces them: the controller acknowledges an ACL before the broker's
    authorizer has loaded it, and a client started in that gap is denied (seen in the tests).
    """
    futures = admin.create_acls([g.binding() for g in wanted], request_timeout=ADMIN_TIMEOUT_S)
    for binding, future in futures.items():
        try:
            future.result(timeout=ADMIN_TIMEOUT_S)
        except KafkaException as exc:
            raise BrokerError(f"creating ACL {binding} failed: {exc.args[0].str()}") from None
    _wait_enforced(admin, wanted)
    return len(futures)


def _wait_enforced(admin: AdminClient, wanted: list[Grant]) -> None:
    """Polls the broker's own ACL view (DescribeAcls is answered from its authorizer)."""
    every = AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        None,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    missing = {_key(g.binding()) for g in wanted}
    deadline = time.monotonic() + ADMIN_TIMEOUT_S
    while time.monotonic() < deadline:
        found = admin.describe_acls(every, request_timeout=ADMIN_TIMEOUT_S).result()
        missing -= {_key(b) for b in found}
        if not missing:
            return
        time.sleep(0.05)
    raise BrokerError(
        f"{len(missing)} ACL(s) created but not enforced after {ADMIN_TIMEOUT_S:.0f} s"
    )


def _key(binding: AclBinding) -> tuple[str, str, str, str, str]:
    return (
        binding.principal,
        binding.restype.name,
        binding.name,
        binding.operation.name,
        binding.permission_type.name,
    )


def upsert_users(admin: AdminClient, passwords: dict[str, str]) -> None:
    """Creates or re-keys SCRAM-SHA-512 users; the error names the user, never the password."""
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    upserts = [UserScramCredentialUpsertion(u, info, p.encode()) for u, p in passwords.items()]
    futures = admin.alter_user_scram_credentials(upserts, request_timeout=ADMIN_TIMEOUT_S)
    for user, future in futures.items():
        try:
            future.result(timeout=ADMIN_TIMEOUT_S)
        except KafkaException as exc:
            raise BrokerError(
                f"setting the SCRAM password of {user} failed: {exc.args[0].str()}"
            ) from None


def provision(
    settings: Settings, bootstrap: str, admin: dict[str, str], topics: bool = True, **topic_args
) -> list[str]:
    """As the broker's own principal: the pipeline's topics, then the ACLs; a line per step.

    The two principals cannot create topics themselves (no Create ACL), so this is the one
    place they come from on a secured cluster.
    """
    from pipeline_project.kafka.topics import admin_client_for, ensure_topics

    as_admin = dataclasses.replace(
        settings, bootstrap=bootstrap, kafka_extra=admin, kafka_config_file=None
    )
    lines = ensure_topics(as_admin, **topic_args) if topics else []
    sent = create_acls(admin_client_for(bootstrap, admin), grants(settings))
    lines.append(f"ACLs: {sent} for {PIPELINE} and {PRODUCER} (see docs/operations.md)")
    return lines
