"""DLQ reprocessing on the real broker: recovered once, parked after N attempts, safe at R1 (D4-D6).

Every test ends with `reconcile` passing: a source offset counted as DLQ by its range is also in
the lake exactly when the resolution ledger says it was recovered, and then exactly once.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
from pathlib import Path

import polars as pl
from confluent_kafka import Producer

from pipeline_project.batch.reconcile import reconcile
from pipeline_project.dlq import report, resolution
from pipeline_project.dlq.records import ATTEMPT, HEADER_NAMES, SOURCE_OFFSET
from pipeline_project.dlq.repair import RepairContext, derive_event_id
from pipeline_project.dlq.reprocess import reprocess
from pipeline_project.settings import Settings
from pipeline_project_tests.dlq.dlq_support import (
    HOPELESS,
    REPAIRABLE,
    YESTERDAY_NOON,
    by_source,
    cli,
    dlq_records,
    encode,
    event,
    ingest_partition,
    parked_records,
    produce_raw,
)
from pipeline_project_tests.ingest_support import lake_frame
from pipeline_project_tests.support import PYTHON, REPO_ROOT, env_for


def lake_files(settings: Settings) -> dict[str, bytes]:
    root = settings.lake_dir / "events"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def assert_reconciles(settings: Settings, **dlq: int) -> None:
    report = reconcile(settings)
    assert report.ok, [str(p) for p in report.problems]
    assert {k: report.dlq[k] for k in dlq} == dlq


def test_repairable_records_land_once_in_the_right_day(kafka_settings: Settings) -> None:
    settings = kafka_settings
    values = [encode(event(100 + i)) for i in range(20)]
    values[5:5] = list(REPAIRABLE.values())
    offsets = produce_raw(settings, values)
    source = dict(zip(REPAIRABLE, offsets[5:9], strict=True))
    ingest_partition(settings, len(values))
    assert len(dlq_records(settings)) == 4

    first = reprocess(settings)
    assert first.counts()["recovered"] == 4, first.summary()
    lake = lake_frame(settings)
    recovered = lake.filter(pl.col("dlq_offset").is_not_null()).sort("kafka_offset")
    assert recovered.height == 4 and lake.height == 24
    # Lineage: the source coordinates, the DLQ record, and the rules that fired.
    assert recovered["kafka_topic"].unique().to_list() == [settings.raw_topic]
    assert recovered["kafka_offset"].to_list() == sorted(source.values())
    assert recovered["dlq_partition"].null_count() == 0
    rows = {r["kafka_offset"]: r for r in recovered.iter_rows(named=True)}
    epoch = rows[source["epoch_millis"]]
    assert epoch["timestamp"] == YESTERDAY_NOON and epoch["repair_rules"] == "timestamp_epoch@1"
    assert epoch["date"] == YESTERDAY_NOON.date()  # the hive partition it was written to
    assert rows[source["shouting_type"]]["event_type"] == "page_view"
    assert rows[source["quantity_text"]]["quantity"] == 12
    no_id = rows[source["no_event_id"]]
    ctx = RepairContext(settings.raw_topic, 0, source["no_event_id"])
    assert no_id["event_id"] == derive_event_id(ctx)
    assert no_id["repair_rules"] == "event_id_derived@1"
    assert_reconciles(settings, failed=4, recovered=4, failing=0)

    # A second run, and a re-sent copy of an already recovered DLQ record, change nothing (D6).
    files = lake_files(settings)
    assert reprocess(settings).outcomes == []
    copy = dlq_records(settings)[0]
    producer = Producer({"bootstrap.servers": settings.bootstrap})
    producer.produce(
        settings.dlq_topic,
        key=copy["key"],
        value=copy["value"],
        headers=list(copy["headers"].items()),
        partition=copy["partition"],
    )
    assert producer.flush(10) == 0
    again = reprocess(settings)
    assert again.counts()["already_resolved"] == 1 and again.counts()["recovered"] == 0
    assert lake_files(settings) == files
    assert_reconciles(settings, failed=4, recovered=4, failing=0)


def test_hopeless_records_are_parked_after_n_attempts(kafka_settings: Settings) -> None:
    settings = dataclasses.replace(kafka_settings, dlq_max_attempts=3)
    values = [encode(event(200 + i)) for i in range(5)] + list(HOPELESS.values())
    offsets = produce_raw(settings, values)
    ingest_partition(settings, len(values))

    assert reprocess(settings).counts()["retried"] == 2  # attempt 2 back into the DLQ
    assert reprocess(settings).counts()["parked"] == 2  # attempt 3 = N: parked
    assert reprocess(settings).outcomes == []  # nothing left to do
    dlq, parked = by_source(dlq_records(settings)), by_source(parked_records(settings))
    originals = dict(zip(offsets, values, strict=True))
    for offset in offsets[5:]:
        copies = dlq[(0, offset)] + parked[(0, offset)]
        assert [c["headers"][ATTEMPT] for c in copies] == ["1", "2", "3"]
        for copy in copies:  # headers replaced, never piled up; the original bytes untouched
            assert sorted(copy["headers"]) == sorted(HEADER_NAMES)
            assert copy["value"] == originals[offset]
            assert copy["headers"][SOURCE_OFFSET] == str(offset)
    assert len(parked) == 2
    assert_reconciles(settings, failed=2, parked=2, failing=0)


def test_crash_at_r1_then_rerun_writes_no_duplicate(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    settings = kafka_settings
    values = [encode(event(300 + i)) for i in range(10)] + list(REPAIRABLE.values())
    produce_raw(settings, values)
    ingest_partition(settings, len(values))

    crashed = cli(settings, "dlq", "replay", PIPELINE_FAULT_POINT="R1")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-800:]
    pending = list((settings.state_dir / resolution.DLQ_STATE_DIR / "pending").glob("*.json"))
    assert len(pending) == 1
    # The first DLQ range committed, its resolutions not yet moved: they count already, and the
    # only finding is the intent the next run finishes.
    report = reconcile(settings)
    assert {p.code for p in report.problems} == {"unfinished_range"}
    committed = lake_frame(settings).filter(pl.col("dlq_offset").is_not_null()).height
    assert committed >= 1 and report.dlq["recovered"] == committed

    # The re-run is the Dagster job, as the schedule launches it.
    rerun = subprocess.run(
        [
            str(Path(PYTHON).parent / "dagster"),
            "job",
            "execute",
            "-m",
            "pipeline_project.definitions",
        ]
        + ["-j", "reprocess_dlq"],
        env=env_for(settings, DAGSTER_HOME=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert rerun.returncode == 0 and "RUN_SUCCESS" in rerun.stdout + rerun.stderr, rerun.stderr[
        -2000:
    ]
    assert not list(pending[0].parent.glob("*.json"))
    lake = lake_frame(settings)
    assert lake.height == 14 and lake.select("kafka_offset").n_unique() == 14
    assert_reconciles(settings, failed=4, recovered=4, failing=0)


def test_replay_a_slice_and_the_report_names_new_failures(kafka_settings: Settings) -> None:
    settings = kafka_settings
    values = [encode(event(400 + i)) for i in range(5)]
    values += [REPAIRABLE["epoch_millis"], HOPELESS["truncated"]]
    offsets = produce_raw(settings, values)
    ingest_partition(settings, len(values))
    first = report.build(settings)
    assert first.first and first.new_categories == ["invalid_json", "invalid_timestamp"]

    # A category slice: the timestamp is repaired now, the other record is re-sent unchanged.
    done = cli(settings, "dlq", "replay", "--category", "invalid_timestamp", "--json")
    assert done.returncode == 0, done.stderr[-800:]
    counts = json.loads(done.stdout)
    assert (counts["recovered"], counts["deferred"], counts["retried"]) == (1, 1, 0)
    waiting = by_source(dlq_records(settings))[(0, offsets[6])]
    assert [c["headers"] for c in waiting][0] == waiting[1]["headers"]  # attempt 1 still
    assert waiting[0]["value"] == waiting[1]["value"] == values[6]

    # A new failure mode arrives: the next report names it.
    more = produce_raw(settings, [HOPELESS["unknown_type"]])
    ingest_partition(settings, more[0] + 1, start=more[0])
    second = report.build(settings)
    assert (second.new_categories, second.new_rules) == (["invalid_value"], ["event_type_known"])

    # An offset slice: only the new record's DLQ copy is tried.
    (copy,) = by_source(dlq_records(settings))[(0, more[0])]
    sliced = cli(
        settings,
        "dlq",
        "replay",
        "--dlq-partition",
        str(copy["partition"]),
        "--from-offset",
        str(copy["offset"]),
        "--to-offset",
        str(copy["offset"] + 1),
        "--json",
    )
    assert sliced.returncode == 0, sliced.stderr[-800:]
    assert json.loads(sliced.stdout)["retried"] == 1
    inspect = cli(settings, "dlq", "inspect")
    assert inspect.stdout.splitlines()[-1] == "2 failing: invalid_json 1, invalid_value 1"
    assert_reconciles(settings, failed=3, recovered=1, failing=2)
