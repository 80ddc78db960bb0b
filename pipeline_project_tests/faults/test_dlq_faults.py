"""DLQ faults (matrix D1-D3, D7): the DLQ topic is missing or unreachable, a record near the size
limit, and an ingest run killed after its DLQ send. A range whose rejects are not confirmed by
delivery reports must not commit; DLQ copies no commit names must never be recovered.

Checks read what a user reads: rows of the Delta table, records of the DLQ topic, and
`pipeline-project reconcile`; the truth is what the broker acknowledged (fault_support.produce).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import uuid
from collections.abc import Sequence

import polars as pl
import pytest
from confluent_kafka.admin import ConfigResource, ResourceType

from pipeline_project.batch.run import ingest
from pipeline_project.dlq import publish, resolution
from pipeline_project.dlq import records as dlq_contract
from pipeline_project.dlq.reprocess import reprocess
from pipeline_project.errors import DlqDeliveryError
from pipeline_project.events.generator import Record
from pipeline_project.kafka.topics import DLQ_MAX_MESSAGE_BYTES, admin_client, ensure_topics
from pipeline_project.kafka.topics import list_topics as topic_names
from pipeline_project.lake.history import read_history
from pipeline_project.lake.location import lake_of
from pipeline_project.lake.table import open_table
from pipeline_project.settings import Settings
from pipeline_project_tests.faults.fault_support import (
    Sent,
    generated,
    produce,
    run_driver,
    start_driver,
)
from pipeline_project_tests.ingest_support import assert_reconciles, dlq_records, lake_frame
from pipeline_project_tests.support import env_for

# ---------------------------------------------------------------------------------------- checks


def auto_create_enabled(settings: Settings) -> bool:
    """The broker's auto.create.topics.enable (the local broker sets it to false)."""
    client = admin_client(settings)
    broker_id = str(next(iter(client.list_topics(timeout=10).brokers)))
    resource = ConfigResource(ResourceType.BROKER, broker_id)
    configs = client.describe_configs([resource])[resource].result(timeout=10)
    return configs["auto.create.topics.enable"].value == "true"


def good_only(n: int, seed: int) -> list[Record]:
    return [r for r in generated(n, seed=seed, bad_ratio=0.0) if r.verdict == "good"]


def lake_state(settings: Settings) -> tuple[int | None, pl.DataFrame]:
    """The table's version and rows: equal snapshots mean nothing was committed in between."""
    table = open_table(lake_of(settings))
    return (None if table is None else table.version()), lake_frame(settings)


def same_state(a: tuple[int | None, pl.DataFrame], b: tuple[int | None, pl.DataFrame]) -> bool:
    return a[0] == b[0] and a[1].equals(b[1])


def ingested_coords(settings: Settings) -> list[tuple[int, int]]:
    """(partition, offset) of every ingested row (recovered rows carry a DLQ offset)."""
    lake = lake_frame(settings)
    if lake.height == 0:
        return []
    rows = lake.filter(pl.col("dlq_offset").is_null())
    return [tuple(r) for r in rows.select("kafka_partition", "kafka_offset").rows()]


def assert_truth(settings: Settings, truth: Sequence[Sent]) -> None:
    """Every acknowledged record where its verdict says, once: good ones as lake rows, bad ones as
    a DLQ record (original bytes, the verdict's category) that the committed range names, the rest
    filtered; and `pipeline-project reconcile` passes."""
    assert_reconciles(env_for(settings))
    rows = ingested_coords(settings)
    assert len(rows) == len(set(rows)), "a record is in the lake twice"
    assert set(rows) == {(s.partition, s.offset) for s in truth if s.verdict == "good"}
    named, filtered = {}, {}
    for record in read_history(lake_of(settings)).records:
        p = record.range.partition
        named.update({(p, d.source_offset): d for d in record.dlq})
        for reason, offsets in record.filtered.items():
            filtered.update({(p, o): reason for o in offsets})
    dlq = {(r["partition"], r["offset"]): r for r in dlq_records(settings)}
    for sent in truth:
        where = (sent.partition, sent.offset)
        if sent.verdict.startswith("bad:"):
            entry = named[where]
            copy = dlq[(entry.dlq_partition, entry.dlq_offset)]
            assert (
                entry.category == sent.verdict[4:] == copy["headers"][dlq_contract.ERROR_CATEGORY]
            )
            assert copy["headers"][dlq_contract.SOURCE_OFFSET] == str(sent.offset)
            assert (copy["key"], copy["value"]) == (sent.key, sent.value)
        elif sent.verdict != "good":
            assert filtered[where] == sent.verdict, where


def assert_rerun_is_noop(settings: Settings) -> None:
    """A planned re-run commits nothing, changes no row and sends nothing to the DLQ."""
    before, dlq_before = lake_state(settings), len(dlq_records(settings))
    again = run_driver(settings)
    assert again.ok and again.result["committed"] == [], str(again)
    assert same_state(lake_state(settings), before), "a re-run changed the lake"
    assert len(dlq_records(settings)) == dlq_before


# ----------------------------------------------------------------------------------------- tests


def test_a_missing_dlq_topic_fails_the_run_and_leaves_the_lake_unchanged(
    any_settings: Settings,
) -> None:
    settings = any_settings
    if auto_create_enabled(settings):
        pytest.skip("the broker auto-creates topics, so a DLQ topic cannot be missing")
    missing = dataclasses.replace(settings, dlq_topic=f"dlq-missing-{uuid.uuid4().hex[:8]}")
    truth = produce(missing, good_only(120, seed=41))
    first = run_driver(missing)  # nothing to reject: the missing DLQ does not matter yet
    assert first.ok, str(first)
    before = lake_state(missing)

    truth += produce(missing, generated(300, seed=42, bad_ratio=0.1))
    failed = run_driver(missing, PIPELINE_DLQ_TIMEOUT_SECONDS="3")
    assert failed.code == 1 and failed.result["error"] == "DlqDeliveryError", str(failed)
    assert "nothing was committed" in failed.result["message"]
    assert same_state(lake_state(missing), before)
    assert missing.dlq_topic not in topic_names(missing), "the DLQ topic was auto-created"

    ensure_topics(missing, raw_partitions=3)
    done = run_driver(missing)
    assert done.ok, str(done)
    assert_truth(missing, truth)
    assert_rerun_is_noop(missing)


def test_an_unreachable_dlq_fails_the_run_without_commit(
    any_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = any_settings
    truth = produce(settings, generated(300, seed=43, bad_ratio=0.1))
    real_config = publish.producer_config

    def nowhere(s: Settings) -> dict[str, object]:
        return {**real_config(s), "bootstrap.servers": "127.0.0.1:1"}

    monkeypatch.setattr(publish, "producer_config", nowhere)
    quick = dataclasses.replace(settings, dlq_timeout_seconds=2.0)
    with pytest.raises(DlqDeliveryError, match="not confirmed"):
        ingest(quick)
    assert lake_state(settings)[0] is None  # not even the table was created
    assert not dlq_records(settings)

    monkeypatch.setattr(publish, "producer_config", real_config)
    done = run_driver(settings)
    assert done.ok, str(done)
    assert_truth(settings, truth)


def test_a_raw_record_of_0_99_mb_reaches_the_dlq_byte_for_byte(any_settings: Settings) -> None:
    settings = any_settings
    pad = "x" * (990_000 - 200)
    huge = json.dumps({"event_id": str(uuid.uuid4()), "event_type": "page_view", "pad": pad})
    assert 980_000 < len(huge) < 1_000_000
    records = good_only(20, seed=44)
    records.insert(10, Record(b"user_big", huge.encode(), "bad:too_large", None))
    truth = produce(settings, records, partition=0)
    done = run_driver(settings)
    assert done.ok, str(done)

    dlq = dlq_records(settings)
    assert len(dlq) == 1
    record = dlq[0]
    assert record["value"] == huge.encode() and record["key"] == b"user_big"
    assert record["headers"][dlq_contract.ERROR_CATEGORY] == "too_large"
    header_bytes = sum(len(n) + len(v) for n, v in record["headers"].items())
    assert len(record["value"]) + header_bytes < DLQ_MAX_MESSAGE_BYTES
    assert_truth(settings, truth)


@pytest.mark.parametrize("fault", ["K6", "K1"])
def test_copies_of_a_crashed_ingest_run_are_never_recovered(
    any_settings: Settings, fault: str
) -> None:
    """D7: killed before its commit, after its rejects reached the DLQ (K6: all confirmed), or
    with its parse rejects handed over before pandera's verdict (K1: some may have landed). The
    re-run sends every reject again and commits naming the new copies; reprocessing acts on those
    alone, once per record."""
    settings = any_settings
    truth = produce(settings, generated(400, seed=45, bad_ratio=0.2), partition=0)
    bad = {s.offset for s in truth if s.verdict.startswith("bad:")}
    crashed = start_driver(settings, fault=fault).finish()
    assert crashed.code == -signal.SIGKILL, str(crashed)
    assert lake_frame(settings).height == 0
    early = len(dlq_records(settings))  # named by no commit
    if fault == "K6":
        assert early == len(bad)  # sent and confirmed
    else:
        assert early < len(bad)  # parse rejects at most: pandera's were never sent
    done = run_driver(settings)
    assert done.ok, str(done)
    assert len(dlq_records(settings)) == early + len(bad)
    assert_truth(settings, truth)

    first, second = reprocess(settings), reprocess(settings)
    assert first.counts()["superseded"] == early  # the crashed run's copies
    assert first.counts()["recovered"] > 0 and second.counts()["recovered"] == 0
    handled = resolution.load_book(lake_of(settings)).latest
    assert {offset for _, _, offset in handled} == bad  # every failed record once, no other
    recovered = lake_frame(settings).filter(pl.col("dlq_offset").is_not_null())
    assert recovered.height == first.counts()["recovered"]
    assert recovered.select("kafka_offset").n_unique() == recovered.height
    assert_reconciles(env_for(settings))
