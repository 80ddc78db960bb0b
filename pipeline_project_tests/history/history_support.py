"""Shared steps of the history tests: recreate a topic, run the CLI, read reconcile's verdict."""

from __future__ import annotations

import json
import subprocess
import time

from confluent_kafka import KafkaException

from pipeline_project.kafka.topics import admin_client, ensure_topics, list_topics
from pipeline_project.settings import Settings
from pipeline_project_tests.support import env_for, pipeline_cli


def recreate_topic(settings: Settings, topic: str, partitions: int = 3) -> None:
    """Deletes `topic` and creates it again (same name, new id, offsets from 0), as an operator
    would with kafka-topics.sh --delete / --create."""
    client = admin_client(settings)
    for future in client.delete_topics([topic], operation_timeout=30).values():
        future.result(timeout=30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if topic not in list_topics(settings):
            try:
                ensure_topics(settings, raw_partitions=partitions)
            except Exception:  # noqa: BLE001 - still being deleted: try again
                time.sleep(0.5)
                continue
            if topic in list_topics(settings):
                return
        time.sleep(0.5)
    raise AssertionError(f"{topic} could not be recreated")


def cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`pipeline-project <args>` as a user runs it."""
    return pipeline_cli(env_for(settings, **env), *args, timeout=180)


def reconcile(settings: Settings) -> tuple[int, dict]:
    """Reconcile's exit status and its JSON report."""
    done = cli(settings, "reconcile", "--json")
    assert done.stdout.strip(), done.stderr[-2000:]
    return done.returncode, json.loads(done.stdout)


def problem_codes(report: dict) -> set[str]:
    return {p["code"] for p in report["problems"]}


__all__ = ["KafkaException", "cli", "problem_codes", "reconcile", "recreate_topic"]
