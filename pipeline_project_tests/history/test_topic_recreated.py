"""Case 1 of issue 21: the raw topic deleted and recreated under the lake.

Offsets restart below the lake's committed end. Before, the planner saw nothing to do, `health`
said 0 lag and `reconcile` passed while the new events were never read. Now every reader stops
with one line naming the topic and both ids, reconcile fails, and `topic new-epoch` lets the
pipeline read the new topic as epoch 1, after which reconcile accounts for both epochs.
"""

from __future__ import annotations

import pytest
from dagster import DagsterInstance, SkipReason, build_sensor_context

from pipeline_project.batch.epochs import kafka_topic_id
from pipeline_project.batch.run import ingest
from pipeline_project.defs.ingest.sensor import kafka_backlog_sensor
from pipeline_project.errors import TopicChangedError
from pipeline_project.settings import Settings
from pipeline_project_tests.faults.fault_support import generated, produce
from pipeline_project_tests.history.history_support import (
    cli,
    problem_codes,
    reconcile,
    recreate_topic,
)
from pipeline_project_tests.ingest_support import dagster_resources, lake_frame


def test_recreated_raw_topic_stops_loudly_then_a_new_epoch_accounts_for_both(
    kafka_settings: Settings,
) -> None:
    settings = kafka_settings
    produce(settings, generated(300, seed=3))
    first = ingest(settings)
    assert first.records == 300
    rows_before = lake_frame(settings).height
    old_id = kafka_topic_id(settings, settings.raw_topic)

    recreate_topic(settings, settings.raw_topic)
    new_id = kafka_topic_id(settings, settings.raw_topic)
    assert new_id != old_id
    sent = produce(settings, generated(60, seed=4))
    assert max(s.offset for s in sent) < 100  # below every committed end: invisible before

    with pytest.raises(TopicChangedError) as stopped:
        ingest(settings)
    message = str(stopped.value)
    assert settings.raw_topic in message and old_id in message and new_id in message
    assert "topic new-epoch" in message
    assert lake_frame(settings).height == rows_before  # nothing read, nothing committed

    with DagsterInstance.ephemeral() as instance:
        context = build_sensor_context(instance=instance, resources=dagster_resources(settings))
        tick = kafka_backlog_sensor(context)
    assert isinstance(tick, SkipReason) and tick.skip_message.startswith("STOPPED: topic")
    health = cli(settings, "health")
    assert health.returncode == 2, health.stdout
    assert "fail" in health.stdout and "new-epoch" in health.stdout
    code, report = reconcile(settings)
    assert code == 1 and "topic_changed" in problem_codes(report)

    again = cli(settings, "topic", "new-epoch", settings.raw_topic, "--reason", "recreated")
    assert again.returncode == 0, again.stderr
    assert "epoch 1" in again.stdout
    refused = cli(settings, "topic", "new-epoch", settings.raw_topic, "--reason", "again")
    assert refused.returncode == 1 and "has not changed" in refused.stderr

    second = ingest(settings)
    assert second.records == 60
    assert all(o.range.epoch == 1 for o in second.committed)
    frame = lake_frame(settings)
    assert frame.height == rows_before + second.written
    assert frame.filter(frame["kafka_epoch"] == 1).height == second.written
    code, report = reconcile(settings)
    assert code == 0, report["problems"]
    sources = {p["app_id"] for p in report["partitions"]}
    assert f"{settings.raw_topic}-0" in sources and f"{settings.raw_topic}@1-0" in sources
