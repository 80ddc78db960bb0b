"""Case 3 of issue 21: history lost under the lake.

Each partition's first commit records where its history starts (the `<app id>#start` app
transaction: the low watermark at first ingestion). A first range that would skip offsets below it
is refused at run start; a first range that vanished from the log is named by reconcile, and
`history acknowledge` is the operator's way on once the offsets are known to be gone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from deltalake import DeltaTable

from pipeline_project.batch.ranges import Range
from pipeline_project.batch.run import ingest
from pipeline_project.errors import HistoryError
from pipeline_project.lake.history import read_history
from pipeline_project.lake.location import lake_of
from pipeline_project.settings import Settings
from pipeline_project_tests.faults.fault_support import generated, produce
from pipeline_project_tests.history.history_support import cli, problem_codes, reconcile
from pipeline_project_tests.ingest_support import lake_frame


def test_a_first_range_past_the_low_watermark_is_refused_before_anything_is_read(
    kafka_settings: Settings,
) -> None:
    settings = kafka_settings
    produce(settings, generated(60, seed=5), partition=0)
    with pytest.raises(HistoryError, match=r"history starts at its low watermark 0"):
        ingest(settings, [Range(settings.raw_topic, 0, 10, 20)])
    assert lake_frame(settings).height == 0  # offsets [0, 10) were not skipped silently
    first = ingest(settings, [Range(settings.raw_topic, 0, 0, 20)])
    assert first.records == 20
    code, report = reconcile(settings)
    assert code == 0, report["problems"]


def test_a_lost_first_commit_fails_reconcile_until_acknowledged(kafka_settings: Settings) -> None:
    settings = kafka_settings
    produce(settings, generated(90, seed=6), partition=0)
    ingest(settings, [Range(settings.raw_topic, 0, 0, 40)])
    ingest(settings, [Range(settings.raw_topic, 0, 40, 90)])
    code, report = reconcile(settings)
    assert code == 0, report["problems"]

    # A partial restore: the first range's rows and its log entry are gone; a checkpoint keeps
    # the table readable. Every remaining commit still adds up on its own.
    table = DeltaTable(lake_of(settings).table_uri("events"))
    first = read_history(lake_of(settings)).records[0].version
    assert first is not None
    table.delete("kafka_partition = 0 AND kafka_offset < 40")
    DeltaTable(lake_of(settings).table_uri("events")).create_checkpoint()
    log = Path(lake_of(settings).table_uri("events")) / "_delta_log"
    (log / f"{first:020d}.json").unlink()

    code, report = reconcile(settings)
    assert code == 1
    assert "history_start" in problem_codes(report)
    text = next(p["text"] for p in report["problems"] if p["code"] == "history_start")
    assert "[0, 40)" in text

    ack = cli(settings, "history", "acknowledge", "--partition", "0", "--reason", "restore")
    assert ack.returncode == 0, ack.stderr
    code, report = reconcile(settings)
    assert code == 0, report["problems"]
