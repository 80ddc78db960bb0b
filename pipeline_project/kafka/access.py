"""Why a Kafka client cannot do its job, in one line: its login, its TLS trust, or an ACL.

librdkafka reports a refused login, an untrusted certificate or a plaintext client on a TLS port
only as connection errors, and the request that was waiting then times out as "Broker transport
failure". `list_topics` and `require` listen for those errors on their own client and stop as
soon as one shows; `explain_unreachable` asks again, with a short-lived client, after another
client's request failed. All of them name the cause, never a secret. `require` checks a
principal's ACLs before a run touches anything, so a missing one stops the run before the first
range is read, with the operation and the resource.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import Future, wait

from confluent_kafka import KafkaError, KafkaException, Producer, TopicCollection
from confluent_kafka.admin import AclOperation, AdminClient, ClusterMetadata

from pipeline_project.errors import KafkaAuthorizationError, KafkaUnavailableError
from pipeline_project.settings import Settings

PROBE_TIMEOUT_S = 3.0  # a refused login shows in ~0.4 s, an untrusted certificate at once
ACCESS_TIMEOUT_S = 15.0
READ, WRITE, DESCRIBE = AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE


class _Watch(logging.Logger):
    """Collects a client's connection errors and log lines, and names a security cause in them.

    A plaintext client on a TLS port shows only in the log: the broker drops the connection at
    the first request, error_cb then says only "brokers are down", while the log line says in
    which protocol state it happened.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__("pipeline_project.kafka.access.watch", level=logging.DEBUG)
        self.settings = settings
        self.seen: list[tuple[int | None, str]] = []

    def handle(self, record: logging.LogRecord) -> None:
        self.seen.append((None, record.getMessage()))

    def on_error(self, err: KafkaError) -> None:
        self.seen.append((err.code(), err.str()))

    def conf(self) -> dict[str, object]:
        """The settings' client configuration, reporting to this watch."""
        return {**self.settings.kafka_common(), "error_cb": self.on_error, "logger": self}

    def cause(self) -> str | None:
        for code, text in self.seen:
            found = _cause(self.settings, code, text)
            if found:
                return found
        return None


def unreachable(settings: Settings | None, message: str) -> KafkaUnavailableError:
    """The error to raise when Kafka did not answer: the named cause when there is one.

    Without settings (a caller that has none to hand) the message is all there is.
    """
    cause = explain_unreachable(settings) if settings is not None else None
    return KafkaUnavailableError(cause or message)


def list_topics(settings: Settings, timeout: float, **conf: object) -> ClusterMetadata:
    """Cluster metadata within `timeout`, failing as soon as a login or TLS failure shows.

    A refused login otherwise costs the whole timeout before "Broker transport failure".
    Raises KafkaUnavailableError: the named cause, else the last librdkafka error.
    """
    watch = _Watch(settings)
    admin = AdminClient({**watch.conf(), **conf})
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            return admin.list_topics(timeout=min(0.5, max(deadline - time.monotonic(), 0.01)))
        except KafkaException as exc:
            last = exc.args[0].str()
        admin.poll(0)
        cause = watch.cause()
        if cause or time.monotonic() >= deadline:
            raise KafkaUnavailableError(
                cause
                or f"Kafka at {settings.bootstrap} did not answer within {timeout:.0f} s ({last})"
            )


def explain_unreachable(settings: Settings, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """The security cause of a failed connection, in one line, or None when there is none."""
    watch = _Watch(settings)
    probe = Producer({**watch.conf(), "socket.timeout.ms": int(timeout * 1000)})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe.poll(0.1)
        cause = watch.cause()
        if cause:
            return cause
        try:
            probe.list_topics(timeout=0.3)
        except KafkaException:
            continue
        return None
    return None


def _cause(settings: Settings, code: int | None, text: str) -> str | None:
    """One line per security failure librdkafka can report on a connection."""
    where = settings.bootstrap
    config = _config_name(settings)
    protocol = (settings.kafka_property("security.protocol") or "PLAINTEXT").upper()
    if code == KafkaError._AUTHENTICATION and "SSL" not in text:
        user = settings.kafka_property("sasl.username", "?")
        return (
            f"Kafka at {where} refused the login of user {user!r}: wrong username or password "
            f"in {config}"
        )
    if "certificate verify failed" in text:
        ca = settings.kafka_property("ssl.ca.location", "the system CAs")
        return (
            f"Kafka at {where} presented a TLS certificate not signed by the CA in {ca} "
            f"(unknown CA; ssl.ca.location in {config})"
        )
    if code == KafkaError._SSL or "SSL handshake failed" in text:
        return f"TLS handshake with Kafka at {where} failed ({config}): {text}"
    plaintext = protocol in ("PLAINTEXT", "SASL_PLAINTEXT")
    if plaintext and "Disconnected" in text and "APIVERSION_QUERY" in text:
        return (
            f"Kafka at {where} closed the connection of a {protocol} client: the port expects "
            f"TLS/SASL; set security.protocol and the login in {config}"
        )
    return None


def _config_name(settings: Settings) -> str:
    path = settings.kafka_config_file
    return f"PIPELINE_KAFKA_CONFIG={path}" if path else "PIPELINE_KAFKA_CONFIG (not set)"


# -- ACLs ----------------------------------------------------------------------------------------
def require(
    settings: Settings,
    topics: Mapping[str, tuple[AclOperation, ...]],
    groups: Mapping[str, tuple[AclOperation, ...]] = {},  # noqa: B006 - read only
    outcome: str = "nothing was read or committed",
    timeout: float = ACCESS_TIMEOUT_S,
) -> None:
    """KafkaAuthorizationError naming the first operation the principal may not do.

    Uses the operations the broker says the principal may do on each resource (KIP-430); a
    resource it may not even describe allows nothing, and the first operation wanted is named
    (Read and Write imply Describe, so that is the ACL to add). A broker without an authorizer, or
    one that does not report them, is not second-guessed.

    Only for a client that logs in (security.protocol other than PLAINTEXT): that is where ACLs
    are, and the check costs an admin round trip (40-100 ms measured) that every micro-batch of a
    plaintext deployment would otherwise pay. A plaintext client still gets a named error where
    the refused operation happens.
    """
    if not logs_in(settings):
        return
    watch = _Watch(settings)
    admin = AdminClient(watch.conf())
    allowed = _topic_operations(watch, admin, list(topics), timeout)
    allowed.update(_group_operations(watch, admin, list(groups), timeout))
    wanted = {("Topic", n): ops for n, ops in topics.items()}
    wanted.update({("Group", n): ops for n, ops in groups.items()})
    for (kind, name), ops in wanted.items():
        granted = allowed.get((kind, name))
        if granted is None:
            continue
        for op in ops:
            if op not in granted and AclOperation.ALL not in granted:
                raise denied(settings, op, kind, name, outcome)


def logs_in(settings: Settings) -> bool:
    """True when the client authenticates (SASL or TLS), i.e. is a principal ACLs can name."""
    return (settings.kafka_property("security.protocol") or "PLAINTEXT").upper() != "PLAINTEXT"


def denied(
    settings: Settings,
    op: AclOperation,
    kind: str,
    name: str,
    outcome: str = "nothing was read or committed",
) -> KafkaAuthorizationError:
    """The one line for a missing ACL: who, which operation, which resource."""
    user = settings.kafka_property("sasl.username")
    who = f"User:{user}" if user else "this client"
    verb = op.name.replace("_", " ").title().replace(" ", "")
    return KafkaAuthorizationError(
        f"not authorized: {who} may not {verb} {kind}:{name} (missing ACL: ALLOW {verb} on "
        f"{kind}:{name}); {outcome}"
    )


def _topic_operations(
    watch: _Watch, admin: AdminClient, names: list[str], timeout: float
) -> dict[tuple[str, str], set[AclOperation]]:
    if not names:
        return {}
    futures = admin.describe_topics(
        TopicCollection(names), include_authorized_operations=True, request_timeout=timeout
    )
    return _operations(watch, admin, "Topic", futures, timeout)


def _group_operations(
    watch: _Watch, admin: AdminClient, names: list[str], timeout: float
) -> dict[tuple[str, str], set[AclOperation]]:
    if not names:
        return {}
    futures = admin.describe_consumer_groups(
        names, include_authorized_operations=True, request_timeout=timeout
    )
    return _operations(watch, admin, "Group", futures, timeout)


def _operations(
    watch: _Watch, admin: AdminClient, kind: str, futures: Mapping[str, Future], timeout: float
) -> dict[tuple[str, str], set[AclOperation]]:
    """Each resource's authorized operations; a login or TLS failure is named as soon as seen."""
    settings = watch.settings
    silent = f"Kafka at {settings.bootstrap} did not answer within {timeout:.0f} s"
    deadline = time.monotonic() + timeout + 1  # the requests' own timeout fires first
    while wait(list(futures.values()), timeout=0.1).not_done:
        admin.poll(0)
        cause = watch.cause()
        if cause:
            raise KafkaUnavailableError(cause)
        if time.monotonic() > deadline:
            raise KafkaUnavailableError(silent)
    found: dict[tuple[str, str], set[AclOperation]] = {}
    for name, future in futures.items():
        try:
            description = future.result()
        except KafkaException as exc:
            code = exc.args[0].code()
            if code in (
                KafkaError.TOPIC_AUTHORIZATION_FAILED,
                KafkaError.GROUP_AUTHORIZATION_FAILED,
            ):
                found[(kind, name)] = set()  # may not even describe it: nothing is allowed
            elif code in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._AUTHENTICATION):
                admin.poll(0)
                cause = watch.cause() or f"{silent} ({exc.args[0].str()})"
                raise KafkaUnavailableError(cause) from None
            continue  # e.g. a group not created yet, or no coordinator: not ours to judge here
        if description.authorized_operations:
            found[(kind, name)] = set(description.authorized_operations)
    return found
