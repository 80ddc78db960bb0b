"""DLQ reprocessing on the real broker: recovered once, parked after N attempts, crash-safe (D4-D6).

Every test ends with `pipeline-project reconcile` passing and the recovered rows in the lake being
exactly the records the resolution ledger (the table's log) says were recovered, once each.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from pipeline_project.dlq import report
from pipeline_project.dlq import reprocess as reprocess_module
from pipeline_project.dlq.records import ATTEMPT, HEADER_NAMES, SOURCE_OFFSET, DlqRecord
from pipeline_project.dlq.repair import RepairContext, derive_event_id
from pipeline_project.dlq.reprocess import DlqMessage, Sources, classify, read_ledger, reprocess
from pipeline_project.dlq.resolution import RETRIED, Book, Resolution
from pipeline_project.errors import FencingError
from pipeline_project.events.contract import CONTRACT, UNSUPPORTED_VERSION
from pipeline_project.lake.location import lake_of
from pipeline_project.lake.table import open_table
from pipeline_project.settings import Settings
from pipeline_project_tests.dlq.dlq_support import (
    HOPELESS,
    REPAIRABLE,
    YESTERDAY_NOON,
    assert_reconciles,
    by_source,
    cli,
    dlq_records,
    encode,
    event,
    ingest_partition,
    parked_records,
    produce_raw,
    recovered_rows,
)
from pipeline_project_tests.ingest_support import lake_frame
from pipeline_project_tests.support import PYTHON, REPO_ROOT, env_for


def table_version(settings: Settings) -> int | None:
    table = open_table(lake_of(settings))
    return None if table is None else table.version()


def resend(settings: Settings, copy: dict, **headers: str) -> None:
    """Produces a DLQ record again (headers changed as given), as a tool or a crashed run would."""
    producer = Producer({"bootstrap.servers": settings.bootstrap})
    producer.produce(
        settings.dlq_topic,
        key=copy["key"],
        value=copy["value"],
        headers=list({**copy["headers"], **headers}.items()),
        partition=copy["partition"],
    )
    assert producer.flush(10) == 0


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
    version, rows = table_version(settings), lake_frame(settings)
    assert reprocess(settings).outcomes == []
    assert table_version(settings) == version
    copy = dlq_records(settings)[0]
    resend(settings, copy)
    # A copy naming a source record its range committed as a lake row is never recovered.
    good_offset = offsets[0]
    resend(settings, copy, **{SOURCE_OFFSET: str(good_offset)})
    again = reprocess(settings)
    counts = again.counts()
    assert (counts["already_resolved"], counts["foreign"], counts["recovered"]) == (1, 1, 0)
    assert lake_frame(settings).equals(rows)
    assert_reconciles(settings, failed=5, recovered=4, failing=1)


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


def test_a_newer_version_waits_then_lands_once_when_the_code_learns_it(
    kafka_settings: Settings,
) -> None:
    """Issue 16: records of a version the code does not know wait in the DLQ (no attempt counted,
    never parked, `dlq inspect` and the report say so); once version 9 is taught, reprocessing
    brings them into the lake exactly once and reconcile passes."""
    settings = dataclasses.replace(kafka_settings, dlq_max_attempts=2)
    values = [encode(event(500 + i)) for i in range(4)]
    values += [encode(event(510 + i, schema_version=9)) for i in range(3)]
    offsets = produce_raw(settings, values)
    ingest_partition(settings, len(values))
    assert {c["headers"]["dlq.error.category"] for c in dlq_records(settings)} == {
        UNSUPPORTED_VERSION
    }

    for _ in range(settings.dlq_max_attempts + 1):  # more runs than attempts allowed
        waited = reprocess(settings)
        counts = waited.counts()
        assert (counts["deferred"], counts["retried"], counts["parked"]) == (3, 0, 0)
        assert "(3 of them waiting for a newer contract)" in waited.summary()
    assert parked_records(settings) == []
    copies = by_source(dlq_records(settings))
    assert sorted(copies) == [(0, o) for o in offsets[4:]]
    for offset in offsets[4:]:
        assert [c["headers"][ATTEMPT] for c in copies[(0, offset)]] == ["1"] * 4
        assert {c["value"] for c in copies[(0, offset)]} == {values[offsets.index(offset)]}
    inspect = cli(settings, "dlq", "inspect")
    assert inspect.returncode == 0, inspect.stderr[-800:]
    assert inspect.stdout.splitlines()[-1] == (
        "3 of them come from a newer schema version (unsupported_schema_version): they wait for "
        "a newer contract; reprocessing re-sends them without counting an attempt"
    )
    assert report.build(settings).waiting_versions() == {"9": 3}
    assert_reconciles(settings, failed=3, failing=3)

    with CONTRACT.taught(9):
        assert reprocess(settings).counts()["recovered"] == 3
        version, rows = table_version(settings), lake_frame(settings)
        assert reprocess(settings).outcomes == []  # the second run adds nothing
    assert reprocess(settings).outcomes == []  # nor a run after the version is forgotten
    assert table_version(settings) == version and lake_frame(settings).equals(rows)
    recovered = recovered_rows(settings).sort("kafka_offset")
    assert recovered["kafka_offset"].to_list() == offsets[4:]
    assert recovered["schema_version"].to_list() == [9, 9, 9]
    assert rows.height == len(values)
    assert report.build(settings).waiting_versions() == {}
    assert_reconciles(settings, failed=3, recovered=3, failing=0)


def dagster_reprocess(settings: Settings, home: Path) -> None:
    """The `reprocess_dlq` job run as the schedule launches it."""
    rerun = subprocess.run(
        [
            str(Path(PYTHON).parent / "dagster"),
            "job",
            "execute",
            "-m",
            "pipeline_project.definitions",
        ]
        + ["-j", "reprocess_dlq"],
        env=env_for(settings, DAGSTER_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0 and "RUN_SUCCESS" in output, output[-2000:]


@pytest.mark.parametrize("point", ["K1", "K6", "KC", "K7"])
def test_a_crash_anywhere_then_reruns_recover_each_record_once(
    kafka_settings: Settings, tmp_path: Path, point: str
) -> None:
    settings = kafka_settings
    values = [encode(event(300 + i)) for i in range(10)] + list(REPAIRABLE.values())
    values += list(HOPELESS.values())
    produce_raw(settings, values, key=b"one-dlq-partition")  # so the crash hits all six copies
    ingest_partition(settings, len(values))
    ingested = lake_frame(settings)

    crashed = cli(settings, "dlq", "replay", PIPELINE_FAULT_POINT=point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-800:]
    # Whatever the point, the lake is consistent: before the commit nothing of the range shows,
    # after it the whole range does. From K6 on the two hopeless records' attempt-2 copies are in
    # the DLQ, named by no commit unless the range committed (K7).
    committed = point == "K7"
    assert recovered_rows(settings).height == (4 if committed else 0)
    assert lake_frame(settings).filter(pl.col("dlq_offset").is_null()).equals(ingested)
    assert len(dlq_records(settings)) == (6 if point == "K1" else 8)
    assert_reconciles(settings, failed=6, recovered=4 if committed else 0)

    runs = []
    if committed:
        dagster_reprocess(settings, tmp_path)  # the re-run as the schedule launches it
    for _ in range(3):  # retried records are parked at attempt 3 (PIPELINE_DLQ_MAX_ATTEMPTS)
        runs.append(reprocess(settings))
    assert runs[-1].outcomes == []
    # The stale copies of the crashed attempt never act: their records' heads are elsewhere.
    superseded = sum(r.counts()["superseded"] for r in runs)
    assert superseded == (2 if point in ("K6", "KC") else 0)
    lake = lake_frame(settings)
    assert lake.height == 14 and lake.select("kafka_offset").n_unique() == 14
    parked = by_source(parked_records(settings))
    assert sorted(len(copies) for copies in parked.values()) == [1, 1]
    assert_reconciles(settings, failed=6, recovered=4, parked=2, failing=0)


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
    assert report.build(settings).counts("status") == {"recovered": 1, "failing": 2}


def copy_of(offset: int, at: int, partition: int = 0) -> DlqMessage:
    """A DLQ copy at `partition`@`at` of raw record `offset`."""
    record = DlqRecord("raw", 0, offset, 0, None, b"{}", "validate", "c", "r", "", "m", 1, "", "")
    return DlqMessage(partition, at, record)


def test_only_the_head_copy_of_a_record_acts() -> None:
    """Before any resolution the head is the copy the committed raw range names; after one, the
    copy that resolution produced. Every other copy is skipped, whatever its partition."""
    sources = Sources(heads={("raw", 0, 1): (0, 5), ("raw", 0, 2): (1, 0)}, ends={("raw", 0): 10})
    book = Book()
    book.latest[("raw", 0, 2)] = Resolution(("raw", 0, 2), RETRIED, (1, 0), 2, to=(2, 7))
    messages = [copy_of(1, 4), copy_of(1, 5), copy_of(1, 6), copy_of(2, 0, partition=1)]
    messages += [copy_of(2, 7, partition=2), copy_of(20, 8), copy_of(20, 9)]
    skips = [v.skip for v in classify(messages, book, sources)]
    # A source offset beyond the committed end has no head yet: its first copy waits (deferred).
    assert skips == ["superseded", "", "superseded", "superseded", "", "", "repeat"]


def test_a_run_on_a_stale_ledger_commits_nothing(
    kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs at once: the one that read the ledger before the other committed must not judge
    the new heads by it (it would skip them as superseded, and they would never be tried)."""
    settings = kafka_settings
    produce_raw(settings, list(HOPELESS.values()), key=b"one-dlq-partition")
    ingest_partition(settings, len(HOPELESS))
    stale = read_ledger(lake_of(settings))
    assert reprocess(settings).counts()["retried"] == 2  # the other run: new heads at attempt 2
    version = table_version(settings)

    monkeypatch.setattr(reprocess_module, "read_ledger", lambda lake: stale)
    with pytest.raises(FencingError, match="another reprocess run committed"):
        reprocess(settings)
    assert table_version(settings) == version
    monkeypatch.undo()
    assert reprocess(settings).counts()["parked"] == 2  # the heads were tried after all
    assert_reconciles(settings, failed=2, parked=2, failing=0)


def wait_for_leaders(settings: Settings, topic: str, timeout: float = 30.0) -> None:
    """Until every partition of a just-created topic answers watermark requests."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": "leaders"})
    deadline = time.monotonic() + timeout
    try:
        for partition in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
            while True:
                try:
                    consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
                    break
                except KafkaException:
                    assert time.monotonic() < deadline, f"{topic}[{partition}] has no leader"
                    time.sleep(0.2)
    finally:
        consumer.close()


def test_an_empty_lake_and_dlq_leave_nothing_to_do(kafka_settings: Settings) -> None:
    settings = kafka_settings
    wait_for_leaders(settings, settings.dlq_topic)  # topics made a moment ago
    assert reprocess(settings).outcomes == []
    assert table_version(settings) is None  # reprocessing nothing creates nothing
    inspect = cli(settings, "dlq", "inspect")
    assert inspect.returncode == 0, inspect.stderr[-800:]
    assert inspect.stdout.splitlines()[-1] == "0 failing: nothing"
