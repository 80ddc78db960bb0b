"""kafka_backlog_sensor on the real broker: skip reasons, run keys, tags, run config and cursor."""

from __future__ import annotations

import json

from confluent_kafka import Producer
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    SensorResult,
    SkipReason,
    build_sensor_context,
)

from pipeline_project.defs.ingest.job import ingest_events
from pipeline_project.defs.ingest.sensor import kafka_backlog_sensor
from pipeline_project.defs.tags import PARTITION_TAG, RANGE_TAG
from pipeline_project.settings import Settings
from pipeline_project_tests.ingest_support import dagster_resources


def fill(settings: Settings, partition: int, n: int) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap})
    for i in range(n):
        producer.produce(settings.raw_topic, value=b"{}", key=str(i).encode(), partition=partition)
    assert producer.flush(30) == 0


def test_sensor_skips_when_caught_up_then_requests_one_run_per_partition(
    kafka_settings: Settings,
) -> None:
    resources = dagster_resources(
        kafka_settings, min_backlog_events=100, max_wait_seconds=3600, max_range_events=150
    )
    with DagsterInstance.ephemeral() as instance:
        first = kafka_backlog_sensor(build_sensor_context(instance=instance, resources=resources))
        assert isinstance(first, SkipReason) and "caught up" in first.skip_message

        fill(kafka_settings, 0, 400)
        fill(kafka_settings, 2, 10)
        result = kafka_backlog_sensor(build_sensor_context(instance=instance, resources=resources))
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
        waited = dagster_resources(
            kafka_settings, min_backlog_events=100, max_wait_seconds=0, max_range_events=150
        )
        later = kafka_backlog_sensor(
            build_sensor_context(instance=instance, cursor=result.cursor, resources=waited)
        )
        assert isinstance(later, SensorResult)
        assert sorted(r.tags[PARTITION_TAG] for r in later.run_requests) == [
            f"{topic}-0",
            f"{topic}-2",
        ]


def test_sensor_reports_an_unreachable_broker_as_a_skip(kafka_settings: Settings) -> None:
    resources = dagster_resources(kafka_settings, bootstrap="127.0.0.1:1")
    with DagsterInstance.ephemeral() as instance:
        result = kafka_backlog_sensor(build_sensor_context(instance=instance, resources=resources))
    assert isinstance(result, SkipReason) and "cannot read Kafka" in result.skip_message


def add_run(instance: DagsterInstance, status: DagsterRunStatus, tags: dict[str, str]) -> str:
    """A run of ingest_events in `status`, stored the way the run launcher would; its id."""
    run = DagsterRun(job_name=ingest_events.name, status=status, tags=tags)
    return instance.add_run(run).run_id


def test_sensor_skips_a_partition_whose_run_is_still_running(kafka_settings: Settings) -> None:
    topic = kafka_settings.raw_topic
    resources = dagster_resources(kafka_settings, min_backlog_events=1)
    with DagsterInstance.ephemeral() as instance:
        fill(kafka_settings, 0, 20)
        fill(kafka_settings, 1, 20)
        busy = add_run(instance, DagsterRunStatus.STARTED, {PARTITION_TAG: f"{topic}-0"})
        result = kafka_backlog_sensor(build_sensor_context(instance=instance, resources=resources))
        assert isinstance(result, SensorResult)
        assert [r.tags[PARTITION_TAG] for r in result.run_requests] == [f"{topic}-1"]

        # A failed run of a range is retried under a new key (Dagster never reuses a run key).
        failed_key = result.run_requests[0].run_key
        add_run(
            instance,
            DagsterRunStatus.FAILURE,
            {PARTITION_TAG: f"{topic}-1", RANGE_TAG: failed_key},
        )
        instance.delete_run(busy)  # the partition-0 run has finished
        again = kafka_backlog_sensor(build_sensor_context(instance=instance, resources=resources))
        assert isinstance(again, SensorResult)
        keys = sorted(r.run_key for r in again.run_requests)
        assert keys == sorted([f"{failed_key}#retry1", f"{topic}-0-{0:019d}-{20:019d}"])


def test_partitions_per_run_puts_several_partitions_in_one_run(kafka_settings: Settings) -> None:
    """PIPELINE_PARTITIONS_PER_RUN=2: three ready partitions make two runs, each partition in one;
    a partition of a run not launched yet is busy, whichever run it is in."""
    topic = kafka_settings.raw_topic
    resources = dagster_resources(kafka_settings, min_backlog_events=1, partitions_per_run=2)
    with DagsterInstance.ephemeral() as instance:
        for partition in (0, 1, 2):
            fill(kafka_settings, partition, 10 + partition)
        result = kafka_backlog_sensor(build_sensor_context(instance=instance, resources=resources))
        assert isinstance(result, SensorResult)
        first, second = result.run_requests
        assert first.tags[PARTITION_TAG] == f"{topic}-0 {topic}-1"
        assert (
            first.run_key
            == first.tags[RANGE_TAG]
            == (f"{topic}-0-{0:019d}-{10:019d} {topic}-1-{0:019d}-{11:019d}")
        )
        assert first.run_config["ops"]["ingest"]["config"]["ranges"] == [
            {"partition": 0, "start": 0, "end": 10},
            {"partition": 1, "start": 0, "end": 11},
        ]
        assert second.tags[PARTITION_TAG] == f"{topic}-2"

        add_run(instance, DagsterRunStatus.NOT_STARTED, first.tags)
        fill(kafka_settings, 0, 5)
        fill(kafka_settings, 2, 5)
        later = kafka_backlog_sensor(build_sensor_context(instance=instance, resources=resources))
        assert isinstance(later, SensorResult)
        assert [r.tags[PARTITION_TAG] for r in later.run_requests] == [f"{topic}-2"]


def test_a_working_run_gets_one_successor_from_where_its_ranges_end(
    kafka_settings: Settings,
) -> None:
    """While a run works, its partitions' next run starts (and waits for its commit): planned from
    the working run's range ends, only for partitions with a new backlog, one successor at most,
    and none while a run waits in the queue for a slot."""
    topic = kafka_settings.raw_topic
    resources = dagster_resources(kafka_settings, min_backlog_events=1, partitions_per_run=3)
    with DagsterInstance.ephemeral() as instance:
        for partition in (0, 1, 2):
            fill(kafka_settings, partition, 10)
        (request,) = kafka_backlog_sensor(
            build_sensor_context(instance=instance, resources=resources)
        ).run_requests
        working = add_run(instance, DagsterRunStatus.STARTED, request.tags)

        fill(kafka_settings, 0, 5)
        fill(kafka_settings, 2, 7)
        result = kafka_backlog_sensor(build_sensor_context(instance=instance, resources=resources))
        assert isinstance(result, SensorResult)
        (successor,) = result.run_requests
        assert successor.tags[PARTITION_TAG] == f"{topic}-0 {topic}-2"
        assert successor.run_config["ops"]["ingest"]["config"] == {
            "ranges": [
                {"partition": 0, "start": 10, "end": 15},
                {"partition": 2, "start": 10, "end": 17},
            ],
            "after_run": working,
        }

        # The successor is in flight: both partitions have their two runs, the third waits.
        add_run(instance, DagsterRunStatus.STARTED, successor.tags)
        fill(kafka_settings, 0, 5)
        busy = kafka_backlog_sensor(build_sensor_context(instance=instance, resources=resources))
        assert isinstance(busy, SkipReason) and f"{topic}-0 busy" in busy.skip_message

        # A run not launched yet (queued for a slot): no successor takes one more.
        fill(kafka_settings, 1, 5)
        add_run(instance, DagsterRunStatus.NOT_STARTED, {PARTITION_TAG: f"{topic}-5"})
        queued = kafka_backlog_sensor(build_sensor_context(instance=instance, resources=resources))
        assert isinstance(queued, SkipReason) and f"{topic}-1 busy" in queued.skip_message
