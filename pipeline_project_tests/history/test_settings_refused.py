"""Case 4 of issue 21: settings that can never work are refused before anything is read.

A DLQ topic equal to the raw topic made `topics ensure` crash and ingestion read its own rejects
back for ever; the parked topic (`<dlq>.parked`) equal to the raw topic parked records where they
are ingested again. Each is one line and a non-zero exit, and nothing is created or read.
"""

from __future__ import annotations

import pytest

from pipeline_project.kafka.topics import list_topics
from pipeline_project.settings import Settings
from pipeline_project_tests.history.history_support import cli
from pipeline_project_tests.support import unique


@pytest.mark.parametrize("command", [("topics", "ensure"), ("dlq", "inspect"), ("reconcile",)])
def test_a_dlq_topic_equal_to_the_raw_topic_is_one_line(
    kafka_settings: Settings, command: tuple[str, ...]
) -> None:
    raw = unique("same")
    done = cli(kafka_settings, *command, PIPELINE_RAW_TOPIC=raw, PIPELINE_DLQ_TOPIC=raw)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"pipeline-project: error: PIPELINE_DLQ_TOPIC='{raw}' is also PIPELINE_RAW_TOPIC: "
        "ingestion would read its own rejects back for ever; give the dead-letter queue its own "
        "topic"
    ]
    assert raw not in list_topics(kafka_settings)


def test_a_raw_topic_equal_to_the_parked_topic_is_one_line(kafka_settings: Settings) -> None:
    dlq = unique("dlq")
    done = cli(
        kafka_settings,
        "topics",
        "ensure",
        PIPELINE_RAW_TOPIC=f"{dlq}.parked",
        PIPELINE_DLQ_TOPIC=dlq,
    )
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert "is the parked topic of PIPELINE_DLQ_TOPIC" in line
    assert not {dlq, f"{dlq}.parked"} & set(list_topics(kafka_settings))


def test_health_with_such_a_setting_is_down(kafka_settings: Settings) -> None:
    raw = unique("same")
    done = cli(kafka_settings, "health", PIPELINE_RAW_TOPIC=raw, PIPELINE_DLQ_TOPIC=raw)
    assert done.returncode == 2
    assert "PIPELINE_DLQ_TOPIC" in done.stderr and "Traceback" not in done.stderr
