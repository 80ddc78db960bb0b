"""kafka_backlog_sensor on the real broker: skip reasons, run keys, tags, run config and cursor."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Producer
from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context

from pipeline_project.defs.jobs import PARTITION_TAG, RANGE_TAG
from pipeline_project.defs.sensors import kafka_backlog_sensor
from pipeline_project.settings import Settings
from pipeline_project_tests.ingest_support import pipeline_env


def fill(settings: Settings, partition: int, n: int) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap})
    for i in range(n):
        producer.produce(settings.raw_topic, value=b"{}", key=str(i).encode(), partition=partition)
    assert producer.flush(30) == 0


def test_sensor_skips_when_caught_up_then_requests_one_run_per_partition(
    kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        pipeline_env(
            monkeypatch,
            kafka_settings,
            PIPELINE_MIN_BACKLOG_EVENTS="100",
            PIPELINE_MAX_WAIT_SECONDS="3600",
            PIPELINE_MAX_RANGE_EVENTS="150",
        ),
        DagsterInstance.ephemeral() as instance,
    ):
        first = kafka_backlog_sensor(build_sensor_context(instance=instance))
        assert isinstance(first, SkipReason) and "caught up" in first.skip_message

        fill(kafka_settings, 0, 400)
        fill(kafka_settings, 2, 10)
        result = kafka_backlog_sensor(build_sensor_context(instance=instance))
        assert isinstance(result, SensorResult)
        (request,) = result.run_requests
        topic = kafka_settings.raw_topic
        assert request.run_key == f"{topic}-0-{0:019d}-{150:019d}"
        assert request.tags == {PARTITION_TAG: f"{topic}-0", RANGE_TAG: request.run_key}
        assert request.run_config == {
            "ops": {"ingest": {"config": {"ranges": [{"partition": 0, "start": 0, "end": 150}]}}}
        }
        cursor = json.loads(result.cursor)
        assert set(cursor["first_seen"]) == {f"{topic}-2"}  # the small backlog waits, remembered

        # The small backlog goes once it has waited long enough.
        monkeypatch.setenv("PIPELINE_MAX_WAIT_SECONDS", "0")
        later = kafka_backlog_sensor(build_sensor_context(instance=instance, cursor=result.cursor))
        assert isinstance(later, SensorResult)
        assert sorted(r.tags[PARTITION_TAG] for r in later.run_requests) == [
            f"{topic}-0",
            f"{topic}-2",
        ]


def test_sensor_reports_an_unreachable_broker_as_a_skip(
    monkeypatch: pytest.MonkeyPatch, kafka_settings: Settings
) -> None:
    with (
        pipeline_env(monkeypatch, kafka_settings, PIPELINE_KAFKA_BOOTSTRAP="127.0.0.1:1"),
        DagsterInstance.ephemeral() as instance,
    ):
        result = kafka_backlog_sensor(build_sensor_context(instance=instance))
    assert isinstance(result, SkipReason) and "cannot read Kafka" in result.skip_message


def test_sensor_skips_a_partition_whose_run_is_still_running(
    kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster import DagsterRunStatus
    from dagster._core.test_utils import create_run_for_test

    topic = kafka_settings.raw_topic
    with (
        pipeline_env(monkeypatch, kafka_settings, PIPELINE_MIN_BACKLOG_EVENTS="1"),
        DagsterInstance.ephemeral() as instance,
    ):
        fill(kafka_settings, 0, 20)
        fill(kafka_settings, 1, 20)
        busy = create_run_for_test(
            instance,
            job_name="ingest_events",
            status=DagsterRunStatus.STARTED,
            tags={PARTITION_TAG: f"{topic}-0"},
        )
        result = kafka_backlog_sensor(build_sensor_context(instance=instance))
        assert isinstance(result, SensorResult)
        assert [r.tags[PARTITION_TAG] for r in result.run_requests] == [f"{topic}-1"]

        # A failed run of a range is retried under a new key (Dagster never reuses a run key).
        failed_key = result.run_requests[0].run_key
        create_run_for_test(
            instance,
            job_name="ingest_events",
            status=DagsterRunStatus.FAILURE,
            tags={PARTITION_TAG: f"{topic}-1", RANGE_TAG: failed_key},
        )
        instance.delete_run(busy.run_id)  # the partition-0 run has finished
        again = kafka_backlog_sensor(build_sensor_context(instance=instance))
        assert isinstance(again, SensorResult)
        keys = sorted(r.run_key for r in again.run_requests)
        assert keys == sorted([f"{failed_key}#retry1", f"{topic}-0-{0:019d}-{20:019d}"])
