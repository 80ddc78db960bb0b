"""Test fixtures: one real Kafka broker per test session, fresh topics and a fresh data dir per
test.

Tests start their own broker (on free ports, data under .local/test-kafka) unless
PIPELINE_KAFKA_BOOTSTRAP points at a reachable cluster, in which case they use that one.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline_project.kafka.broker import LocalBroker, metadata_ok
from pipeline_project.kafka.topics import ensure_topics
from pipeline_project.settings import Settings
from pipeline_project_tests.support import REPO_ROOT, free_port_pair, unique


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
