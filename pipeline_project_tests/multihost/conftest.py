"""Fixtures of the multi-host tests: PostgreSQL (per session), Redis and the hosts (per test).

Skipped, with the reason, only where Debian's postgresql or redis-server cannot be had (.ci/run
installs both) or no S3 server can be built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline_project.lake.location import AWS_VARIABLES
from pipeline_project.lake.s3server import LocalS3
from pipeline_project_tests.faults.fault_support import fresh_settings
from pipeline_project_tests.multihost.hosts import Cluster, shared_env
from pipeline_project_tests.multihost.services import (
    LocalPostgres,
    LocalRedis,
    postgres_problem,
    redis_problem,
)
from pipeline_project_tests.support import unique

# Short enough for a test, long enough that a healthy small run never trips them.
TEST_MONITORING = {"poll_interval_seconds": 2, "max_runtime_seconds": 25}


def _served(name: str, problem: str | None, server: LocalPostgres | LocalRedis | None) -> Iterator:
    """Starts `server` for the fixture's scope, or skips naming why it cannot run here."""
    if problem:
        pytest.skip(f"{name}: {problem}")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    problem = postgres_problem()
    yield from _served("PostgreSQL", problem, None if problem else LocalPostgres())


@pytest.fixture
def redis() -> Iterator[LocalRedis]:
    problem = redis_problem()
    yield from _served("Redis", problem, None if problem else LocalRedis())


@pytest.fixture
def make_cluster(
    postgres: LocalPostgres,
    redis: LocalRedis,
    s3_server: LocalS3,
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., Cluster]]:
    """Builds the test's cluster: fresh topics (raw: `partitions`), a fresh Dagster database
    (migrated), a fresh lake prefix on versitygw; no host started yet. Hosts stop afterwards."""
    made: list[Cluster] = []

    def make(partitions: int = 4, monitoring: dict | None = None) -> Cluster:
        settings = fresh_settings(kafka_bootstrap, tmp_path / "test-data", partitions=partitions)
        settings = dataclasses.replace(
            settings, lake_uri=f"s3://{s3_server.bucket}/{unique('lake')}", min_backlog_events=1
        )
        env = shared_env(postgres, redis, s3_server)
        for name in AWS_VARIABLES:  # the test reads the lake too (reconcile, the oracle)
            if name in env:
                monkeypatch.setenv(name, env[name])
        hosts = Cluster(
            tmp_path / "hosts", settings, env, monitoring={**TEST_MONITORING, **(monitoring or {})}
        )
        made.append(hosts)
        hosts.migrate()
        return hosts

    try:
        yield make
    finally:
        for hosts in made:
            hosts.stop()


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    """A cluster on a raw topic of 4 partitions."""
    return make_cluster()
