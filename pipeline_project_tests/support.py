"""Helpers shared by tests: environments for subprocesses, free ports, unique names."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar

import pytest

from pipeline_project.lake.location import AWS_VARIABLES
from pipeline_project.lake.s3server import LocalS3, find_versitygw
from pipeline_project.local_server import free_port_pair  # noqa: F401 - re-exported for tests
from pipeline_project.settings import Settings, read_kafka_properties, reveal_properties

REPO_ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a subprocess needs to see the same settings as the test."""
    env = dict(os.environ)
    env.update(
        {
            "PIPELINE_KAFKA_BOOTSTRAP": settings.bootstrap,
            "PIPELINE_RAW_TOPIC": settings.raw_topic,
            "PIPELINE_DLQ_TOPIC": settings.dlq_topic,
            "PIPELINE_DATA_DIR": str(settings.data_dir),
            "PIPELINE_LAKE_URI": settings.lake_uri,
            "PIPELINE_CONSUMER_GROUP": settings.consumer_group,
        }
    )
    if settings.kafka_config_file is not None:  # a secured cluster's login (test_secure.py)
        env["PIPELINE_KAFKA_CONFIG"] = str(settings.kafka_config_file)
    env.update(extra)
    return env


def pipeline_cli(
    env: Mapping[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`pipeline-project ARGS` as a user runs it: a child process with `env`, output captured."""
    return subprocess.run(
        [PYTHON, "-m", "pipeline_project.cli", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def plain_properties(path: Path) -> dict[str, str]:
    """A Kafka properties file's values as plain text, for a test's own librdkafka client."""
    return reveal_properties(read_kafka_properties(path))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class S3Lake(NamedTuple):
    """A fresh table location on the session's S3 server and the delta-rs options to reach it.

    A tuple, so `uri, options = s3_lake` works as well as the attribute names.
    """

    uri: str
    storage_options: dict[str, str]


@contextlib.contextmanager
def running_s3(home: Path) -> Iterator[LocalS3]:
    """A versitygw on a free port with its files under `home`, stopped and deleted afterwards.

    Skips only when versitygw cannot be had at all (no binary and no go to build one); a failed
    build or start is an error, not a skip.
    """
    if find_versitygw() is None and shutil.which("go") is None:
        pytest.skip("versitygw not found and go is not installed to build it (make install)")
    shutil.rmtree(home, ignore_errors=True)
    with started(LocalS3(home=home, port=free_port_pair()), home) as server:
        yield server


class Server(Protocol):
    """A local server a test starts and stops (LocalBroker, LocalS3)."""

    def start(self) -> str: ...

    def stop(self) -> str: ...


ServerT = TypeVar("ServerT", bound=Server)


@contextlib.contextmanager
def started(server: ServerT, home: Path) -> Iterator[ServerT]:
    """`server` started, then stopped and its `home` deleted, whatever the test did."""
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


def point_aws_at(monkeypatch: pytest.MonkeyPatch, options: Mapping[str, str]) -> None:
    """Sets the AWS_* variables of these storage options, for in-process calls and subprocesses
    (env_for copies the environment) alike; undone at the end of the test."""
    for name in AWS_VARIABLES:
        if name in options:
            monkeypatch.setenv(name, options[name])
