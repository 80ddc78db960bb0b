"""Test fixtures: one real Kafka broker per test session, fresh topics and a fresh data dir per
test; one real S3 server (versitygw) per session that needs it, a fresh table location per test.

Tests start their own broker (on free ports, data under .local/test-kafka) unless
PIPELINE_KAFKA_BOOTSTRAP points at a reachable cluster, in which case they use that one. The
security tests start a second, secured one (`secure_kafka`) only when they run.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline_project.kafka.acls import provision
from pipeline_project.kafka.broker import LocalBroker, metadata_ok
from pipeline_project.kafka.topics import ensure_topics
from pipeline_project.lake.s3server import LocalS3
from pipeline_project.settings import Settings, read_kafka_properties
from pipeline_project_tests.support import (
    REPO_ROOT,
    S3Lake,
    free_port_pair,
    plain_properties,
    point_aws_at,
    running_s3,
    unique,
)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A reachable Kafka: the configured one, or a broker this session starts and stops."""
    configured = os.environ.get("PIPELINE_KAFKA_BOOTSTRAP")
    if configured and metadata_ok(configured, timeout=5.0):
        yield configured
        return
    home = REPO_ROOT / ".local" / f"test-kafka-{os.getpid()}"
    shutil.rmtree(home, ignore_errors=True)
    broker = LocalBroker(home=home, port=free_port_pair())
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def local_broker(kafka_bootstrap: str) -> LocalBroker | None:
    """The session's LocalBroker if this session started it (fault tests need its pid)."""
    home = REPO_ROOT / ".local" / f"test-kafka-{os.getpid()}"
    return (
        LocalBroker(home=home, port=int(kafka_bootstrap.rsplit(":", 1)[1]))
        if home.exists()
        else None
    )


@pytest.fixture
def kafka_settings(kafka_bootstrap: str, tmp_path: Path) -> Settings:
    """Settings with fresh, already-created topics (raw: 3 partitions) and a fresh data dir."""
    settings = dataclasses.replace(
        Settings(),
        bootstrap=kafka_bootstrap,
        raw_topic=unique("raw"),
        dlq_topic=unique("dlq"),
        data_dir=tmp_path / "data",
    )
    ensure_topics(settings, raw_partitions=3)
    return settings


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3]:
    """The session's versitygw on a free port (data under .local/test-s3-<pid>); see running_s3."""
    with running_s3(REPO_ROOT / ".local" / f"test-s3-{os.getpid()}") as server:
        yield server


@pytest.fixture
def s3_lake(s3_server: LocalS3) -> S3Lake:
    """A fresh s3://<bucket>/<unique prefix> table location and its delta-rs storage options."""
    return S3Lake(
        uri=f"s3://{s3_server.bucket}/{unique('table')}",
        storage_options=s3_server.storage_options(),
    )


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The lake of a test that must hold on every backend: "" (local disk under the data dir) or
    a fresh s3:// location on the session's versitygw, whose AWS_* variables are then set for
    in-process calls and subprocesses alike."""
    if request.param == "local":
        return ""
    uri, options = request.getfixturevalue("s3_lake")
    point_aws_at(monkeypatch, options)
    return uri


@pytest.fixture
def lake_settings(kafka_settings: Settings, backend: str) -> Settings:
    """kafka_settings with the lake on the parametrised backend."""
    return dataclasses.replace(kafka_settings, lake_uri=backend)


@dataclasses.dataclass(frozen=True)
class SecureKafka:
    """The session's secured broker: its bootstrap and the properties file of each principal."""

    broker: LocalBroker
    pipeline: Path
    producer: Path
    admin: Path

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def password(self, name: str) -> str:
        path = {"pipeline": self.pipeline, "producer": self.producer, "admin": self.admin}[name]
        return plain_properties(path)["sasl.password"]


@pytest.fixture(scope="session")
def secure_kafka() -> Iterator[SecureKafka]:
    """A SASL_SSL/SCRAM broker with the authorizer on, started for this session on free ports."""
    # <local dir>/kafka-secure, as `kafka start --secure` lays it out with PIPELINE_LOCAL_DIR.
    local_dir = REPO_ROOT / ".local" / f"test-secure-{os.getpid()}"
    shutil.rmtree(local_dir, ignore_errors=True)
    broker = LocalBroker(home=local_dir / "kafka-secure", port=free_port_pair(), secure=True)
    broker.start()
    files = broker.files
    try:
        yield SecureKafka(
            broker,
            files.properties("pipeline"),
            files.properties("producer"),
            files.properties("admin"),
        )
    finally:
        broker.stop()
        shutil.rmtree(local_dir, ignore_errors=True)


@pytest.fixture
def secure_settings(secure_kafka: SecureKafka, tmp_path: Path) -> Settings:
    """The pipeline principal's settings, on fresh topics (raw: 3 partitions) with exactly the
    documented ACLs, its own consumer group and a fresh data dir."""
    settings = dataclasses.replace(
        Settings(),
        bootstrap=secure_kafka.bootstrap,
        kafka_config_file=secure_kafka.pipeline,
        kafka_extra=read_kafka_properties(secure_kafka.pipeline),
        raw_topic=unique("raw"),
        dlq_topic=unique("dlq"),
        consumer_group=unique("group"),
        data_dir=tmp_path / "data",
    )
    admin = read_kafka_properties(secure_kafka.admin)
    provision(settings, secure_kafka.bootstrap, admin, raw_partitions=3)
    return settings
