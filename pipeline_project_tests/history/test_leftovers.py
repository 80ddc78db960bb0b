"""Case 5 of issue 21: leftovers that stalled the pipeline or misled an operator."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipeline_project.batch.ranges import Range
from pipeline_project.batch.run import ingest
from pipeline_project.errors import PipelineError
from pipeline_project.events.generator import Record
from pipeline_project.settings import Settings
from pipeline_project_tests.faults.fault_support import generated, produce
from pipeline_project_tests.history.history_support import cli, reconcile
from pipeline_project_tests.ingest_support import lake_frame


def test_a_range_of_a_partition_that_does_not_exist_is_refused(kafka_settings: Settings) -> None:
    settings = kafka_settings  # 3 partitions
    with pytest.raises(PipelineError, match=r"has no partition 7 \(it has 0-2\)"):
        ingest(settings, [Range(settings.raw_topic, 7, 0, 10)])
    code, report = reconcile(settings)
    assert code == 0, report["problems"]
    assert report["partitions"] == []


def test_a_typo_in_the_kafka_properties_file_is_one_line_and_down(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    properties = tmp_path / "client.properties"
    properties.write_text("securty.protocol=PLAINTEXT\n")
    done = cli(kafka_settings, "health", PIPELINE_KAFKA_CONFIG=str(properties))
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    assert 'No such configuration property: "securty.protocol"' in done.stdout
    assert "state: down" in done.stdout


def _as_user(record: Record, user_id: str) -> bytes:
    event = orjson.loads(record.value)
    event["user_id"] = user_id
    return orjson.dumps(event)


def test_test_users_are_filtered_whatever_the_letter_case(kafka_settings: Settings) -> None:
    settings = kafka_settings
    good = [r for r in generated(40, seed=9, bad_ratio=0.0) if r.verdict == "good"][:4]
    users = ["TEST_x", "Test_y", "test_z", "tester_1"]
    records = [
        Record(r.key, _as_user(r, user), r.verdict, r.event_id)
        for r, user in zip(good, users, strict=True)
    ]
    produce(settings, records, partition=0)
    result = ingest(settings)
    assert result.filtered().get("test_user") == 3
    assert lake_frame(settings).get_column("user_id").to_list() == ["tester_1"]
    code, report = reconcile(settings)
    assert code == 0, report["problems"]
