"""The local broker and topics, on a real Kafka: lifecycle, idempotence, errors, a round trip."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

from pipeline_project.kafka.broker import kafka_version
from pipeline_project.kafka.topics import list_topics
from pipeline_project.settings import Settings
from pipeline_project_tests.support import PYTHON, REPO_ROOT, env_for, free_port_pair, unique


def cli(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "pipeline_project.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def test_round_trip_through_raw_topic(kafka_settings: Settings) -> None:
    producer = Producer({"bootstrap.servers": kafka_settings.bootstrap, "enable.idempotence": True})
    payloads = [f'{{"n": {i}, "id": "{uuid.uuid4()}"}}'.encode() for i in range(50)]
    for i, value in enumerate(payloads):
        producer.produce(
            kafka_settings.raw_topic, key=f"user_{i % 5}".encode(), value=value, partition=1
        )
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_settings.bootstrap,
            "group.id": unique("g"),
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(kafka_settings.raw_topic, 1, 0)])
    seen: list[bytes] = []
    while len(seen) < len(payloads):
        msgs = consumer.consume(100, timeout=10)
        assert msgs, "no records came back within 10 s"
        seen.extend(m.value() for m in msgs if m.error() is None)
    consumer.close()
    assert seen == payloads


def test_topics_ensure_creates_configured_partitions_idempotently(kafka_settings: Settings) -> None:
    raw, dlq = unique("raw-events"), unique("dead-letter-queue")
    env = env_for(kafka_settings, PIPELINE_RAW_TOPIC=raw, PIPELINE_DLQ_TOPIC=dlq)
    first = cli("topics", "ensure", env=env)
    assert first.returncode == 0, first.stderr
    assert f"created {raw} (6 partitions)" in first.stdout
    assert f"created {dlq} (3 partitions)" in first.stdout
    second = cli("topics", "ensure", env=env)
    assert second.returncode == 0, second.stderr
    assert "created" not in second.stdout and f"exists  {raw} (6 partitions)" in second.stdout
    topics = list_topics(Settings(bootstrap=kafka_settings.bootstrap))
    assert topics[raw] == 6 and topics[dlq] == 3 and topics[f"{dlq}.parked"] == 1


def test_broker_lifecycle_start_twice_status_stop_twice(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    port = free_port_pair()
    env = env_for(
        Settings(bootstrap=f"localhost:{port}", data_dir=tmp_path / "data"),
        PIPELINE_LOCAL_DIR=str(tmp_path / "local"),
    )
    try:
        started = cli("kafka", "start", env=env)
        assert started.returncode == 0, started.stderr
        assert (
            "broker started" in started.stdout
            and "created raw-events (6 partitions)" in started.stdout
        )
        again = cli("kafka", "start", env=env)
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stdout and "exists  raw-events" in again.stdout
        status = cli("kafka", "status", env=env)
        assert status.returncode == 0, status.stderr
        assert "broker:   running" in status.stdout
        assert f"Kafka {kafka_version()}" in status.stdout and f"localhost:{port}" in status.stdout
        assert (
            "raw-events (6 partitions)" in status.stdout and "dead-letter-queue (3" in status.stdout
        )
    finally:
        stopped = cli("kafka", "stop", env=env)
    assert stopped.returncode == 0 and "broker stopped" in stopped.stdout
    again_stopped = cli("kafka", "stop", env=env)
    assert again_stopped.returncode == 0 and "broker not running" in again_stopped.stdout
    status = cli("kafka", "status", env=env)
    assert status.returncode == 1 and "broker:   stopped" in status.stdout


def test_taken_port_gives_one_clear_line(tmp_path: Path, kafka_bootstrap: str) -> None:
    env = env_for(Settings(bootstrap=kafka_bootstrap), PIPELINE_LOCAL_DIR=str(tmp_path / "local"))
    result = cli("kafka", "start", env=env)
    port = kafka_bootstrap.rsplit(":", 1)[1]
    assert result.returncode == 1
    assert result.stderr.startswith(f"pipeline-project: error: port {port} is already in use")
    assert "broker.log" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_java_too_old_gives_one_clear_line(tmp_path: Path) -> None:
    fake = tmp_path / "jdk" / "bin"
    fake.mkdir(parents=True)
    (fake / "java").write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
    (fake / "java").chmod(0o755)
    env = env_for(
        Settings(bootstrap=f"localhost:{free_port_pair()}"),
        PIPELINE_LOCAL_DIR=str(tmp_path / "local"),
        JAVA_HOME=str(tmp_path / "jdk"),
    )
    result = cli("kafka", "start", env=env)
    assert result.returncode == 1
    assert "Java 11 is too old" in result.stderr and "Traceback" not in result.stderr


def test_remote_bootstrap_is_refused_for_the_local_broker(tmp_path: Path) -> None:
    env = env_for(Settings(bootstrap="kafka.example.com:9092"), PIPELINE_LOCAL_DIR=str(tmp_path))
    result = cli("kafka", "start", env=env)
    assert result.returncode == 1 and "listens on localhost only" in result.stderr


def test_unreachable_broker_gives_clear_error_for_topics(tmp_path: Path) -> None:
    env = env_for(Settings(bootstrap=f"127.0.0.1:{free_port_pair()}"))
    result = cli("topics", "ensure", env=env, timeout=60)
    assert result.returncode == 1
    assert "did not answer within" in result.stderr and "Traceback" not in result.stderr


def test_compose_uses_the_pinned_kafka_version() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    images = {svc.get("image") for svc in compose["services"].values()}
    assert f"apache/kafka:{kafka_version()}" in images


@pytest.mark.parametrize("name", ["raw events", "a/b", ".."])
def test_bad_topic_setting_is_one_clear_line(name: str) -> None:
    env = env_for(Settings(), PIPELINE_RAW_TOPIC=name)
    result = cli("topics", "ensure", env=env, timeout=30)
    assert result.returncode == 1 and "is not a valid Kafka topic name" in result.stderr
