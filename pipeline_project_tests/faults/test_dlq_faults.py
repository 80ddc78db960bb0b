"""DLQ faults (matrix D1-D3): the DLQ topic is missing or unreachable, and a record near the size
limit. A range whose rejects are not confirmed by delivery reports must not commit.
"""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest
from confluent_kafka.admin import ConfigResource, ResourceType

from pipeline_project.batch.run import ingest
from pipeline_project.dlq import publish
from pipeline_project.dlq import records as dlq_contract
from pipeline_project.errors import DlqDeliveryError
from pipeline_project.events.generator import Record
from pipeline_project.kafka.topics import DLQ_MAX_MESSAGE_BYTES, admin_client, ensure_topics
from pipeline_project.kafka.topics import list_topics as topic_names
from pipeline_project.settings import Settings
from pipeline_project_tests.faults import oracle
from pipeline_project_tests.faults.fault_support import (
    NOTHING_COMMITTED,
    committed_state,
    generated,
    produce,
    run_driver,
)


def auto_create_enabled(settings: Settings) -> bool:
    """The broker's auto.create.topics.enable (the local broker sets it to false)."""
    client = admin_client(settings)
    broker_id = str(next(iter(client.list_topics(timeout=10).brokers)))
    resource = ConfigResource(ResourceType.BROKER, broker_id)
    configs = client.describe_configs([resource])[resource].result(timeout=10)
    return configs["auto.create.topics.enable"].value == "true"


def good_only(n: int, seed: int) -> list[Record]:
    return [r for r in generated(n, seed=seed, bad_ratio=0.0) if r.verdict == "good"]


def test_a_missing_dlq_topic_fails_the_run_and_leaves_the_lake_unchanged(
    settings: Settings,
) -> None:
    if auto_create_enabled(settings):
        pytest.skip("the broker auto-creates topics, so a DLQ topic cannot be missing")
    missing = dataclasses.replace(settings, dlq_topic=f"dlq-missing-{uuid.uuid4().hex[:8]}")
    truth = produce(missing, good_only(120, seed=41))
    first = run_driver(missing)  # nothing to reject: the missing DLQ does not matter yet
    assert first.ok, str(first)
    before = committed_state(missing)

    truth += produce(missing, generated(300, seed=42, bad_ratio=0.1))
    failed = run_driver(missing, PIPELINE_DLQ_TIMEOUT_SECONDS="3")
    assert failed.code == 1 and failed.result["error"] == "DlqDeliveryError", str(failed)
    assert "nothing was committed" in failed.result["message"]
    assert committed_state(missing) == before
    assert missing.dlq_topic not in topic_names(missing), "the DLQ topic was auto-created"

    ensure_topics(missing, raw_partitions=3)
    done = run_driver(missing)
    assert done.ok, str(done)
    oracle.check(missing, truth).assert_ok()
    oracle.assert_rerun_is_noop(missing)


def test_an_unreachable_dlq_fails_the_run_without_commit(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    truth = produce(settings, generated(300, seed=43, bad_ratio=0.1))
    real_config = publish.producer_config

    def nowhere(s: Settings) -> dict[str, object]:
        return {**real_config(s), "bootstrap.servers": "127.0.0.1:1"}

    monkeypatch.setattr(publish, "producer_config", nowhere)
    quick = dataclasses.replace(settings, dlq_timeout_seconds=2.0)
    with pytest.raises(DlqDeliveryError, match="not confirmed"):
        ingest(quick)
    assert committed_state(settings) == NOTHING_COMMITTED
    assert not [r for r in oracle.read_topic(settings.bootstrap, settings.dlq_topic)]

    monkeypatch.setattr(publish, "producer_config", real_config)
    done = run_driver(settings)
    assert done.ok, str(done)
    oracle.check(settings, truth).assert_ok()


def test_a_raw_record_of_0_99_mb_reaches_the_dlq_byte_for_byte(settings: Settings) -> None:
    pad = "x" * (990_000 - 200)
    huge = json.dumps({"event_id": str(uuid.uuid4()), "event_type": "page_view", "pad": pad})
    assert 980_000 < len(huge) < 1_000_000
    records = good_only(20, seed=44)
    records.insert(10, Record(b"user_big", huge.encode(), "bad:too_large", None))
    truth = produce(settings, records, partition=0)
    done = run_driver(settings)
    assert done.ok, str(done)

    dlq = oracle.read_topic(settings.bootstrap, settings.dlq_topic)
    assert len(dlq) == 1
    record = dlq[0]
    assert record.value == huge.encode() and record.key == b"user_big"
    headers = dlq_contract.decode_headers(record.headers)
    assert headers[dlq_contract.ERROR_CATEGORY] == "too_large"
    assert len(record.value) + sum(len(n) + len(v) for n, v in record.headers) < (
        DLQ_MAX_MESSAGE_BYTES
    )
    oracle.check(settings, truth).assert_ok()
