"""Fixtures of the fault suite: settings on the session broker, a broker and an S3 server of our
own to kill.

Tests that stop, SIGTERM or SIGKILL a broker use `own_broker` (free ports, home under a temp dir),
never the session's, so every other test keeps its broker; tests that stop the S3 store use
`own_s3`, never the session's versitygw.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline_project.kafka.broker import LocalBroker
from pipeline_project.lake.s3server import LocalS3
from pipeline_project.local_server import free_port_pair
from pipeline_project.settings import Settings
from pipeline_project_tests.faults.fault_support import fresh_settings, mount_problem
from pipeline_project_tests.support import running_s3, started

FAULTS_DIR = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this directory carries the `faults` marker (`-m "not faults"` skips them)."""
    for item in items:
        if FAULTS_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.faults)


@pytest.fixture
def settings(kafka_bootstrap: str, tmp_path: Path) -> Settings:
    """Fresh topics (raw: 3 partitions) on the session broker, a fresh data dir, own group."""
    return fresh_settings(kafka_bootstrap, tmp_path / "data")


@pytest.fixture
def any_settings(settings: Settings, backend: str) -> Settings:
    """`settings` with the lake on the parametrised backend (local disk, then versitygw)."""
    return dataclasses.replace(settings, lake_uri=backend)


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A broker this module may kill and restart; stopped and deleted afterwards."""
    home = tmp_path_factory.mktemp("own-kafka")
    with started(LocalBroker(home=home, port=free_port_pair(), heap="512m"), home) as broker:
        yield broker


@pytest.fixture
def own_settings(own_broker: LocalBroker, tmp_path: Path) -> Settings:
    """Fresh topics on `own_broker`, restarted first if an earlier test left it down."""
    if own_broker.pid() is None:
        own_broker.start()
    return fresh_settings(own_broker.bootstrap, tmp_path / "data")


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[LocalS3]:
    """A versitygw this test may stop and start again (its objects stay in its data dir)."""
    with running_s3(tmp_path / "s3") as server:
        yield server


@pytest.fixture
def mounts() -> None:
    """Skips (with the reason) where tmpfs / bind mounts are impossible."""
    problem = mount_problem()
    if problem:
        pytest.skip(f"needs mount(2): {problem}")
