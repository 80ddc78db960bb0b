"""Helpers shared by tests: environments for subprocesses, free ports, unique names."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import NamedTuple

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
