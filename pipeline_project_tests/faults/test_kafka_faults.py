"""Kafka-side faults on the session broker (fault matrix KF3-KF9, docs/ARCHITECTURE.md).

Retention, ranges past the log end, transactions (aborted and open), consumer-group offsets that
lie, partitions added mid-run.
"""

from __future__ import annotations

import functools
import subprocess
import time

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, Message, Producer
from confluent_kafka import TopicPartition as TP
from confluent_kafka.admin import NewPartitions

from pipeline_project.batch.ranges import Range
from pipeline_project.errors import DataLossError
from pipeline_project.events.generator import Record
from pipeline_project.kafka import drain
from pipeline_project.kafka.topics import admin_client
from pipeline_project.settings import Settings
from pipeline_project_tests.faults import oracle
from pipeline_project_tests.faults.fault_support import (
    NOTHING_COMMITTED,
    Sent,
    committed_state,
    ends,
    generated,
    produce,
    records,
    run_driver,
    start_driver,
)
from pipeline_project_tests.ingest_support import assert_reconciles
from pipeline_project_tests.support import PYTHON, env_for


def admin(settings: Settings, method: str, *args: object, **kwargs: object) -> None:
    """One AdminClient call, awaited (the client must outlive its futures)."""
    client = admin_client(settings)
    for future in getattr(client, method)(*args, **kwargs).values():
        future.result(timeout=30)


def spans(settings: Settings) -> dict[int, list[tuple[int, int]]]:
    """Partition → committed (start, end) ranges, sorted."""
    out: dict[int, list[tuple[int, int]]] = {}
    for r in records(settings):
        out.setdefault(r.range.partition, []).append((r.range.start, r.range.end))
    return {p: sorted(r) for p, r in out.items()}


# ----------------------------------------------------------------------------- KF3 retention


def test_start_offset_deleted_by_retention_fails_loudly_and_commits_nothing(
    any_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = any_settings
    topic = settings.raw_topic
    truth = produce(settings, generated(200, seed=21), partition=0)
    assert run_driver(settings, [Range(topic, 0, 0, 100)]).ok
    before = committed_state(settings)
    admin(settings, "delete_records", [TP(topic, 0, 110)], operation_timeout=10)

    planned = run_driver(settings)
    assert planned.code == 1 and planned.result["error"] == "DataLossError", str(planned)
    assert f"{topic}-0-{100:019d}-{110:019d}" in planned.result["message"]
    explicit = run_driver(settings, [Range(topic, 0, 100, 200)])
    assert explicit.code == 1 and explicit.result["error"] == "DataLossError", str(explicit)
    assert "[100, 110)" in explicit.result["message"]
    assert committed_state(settings) == before, "a run skipped deleted offsets"

    # Without the watermark pre-check, librdkafka's offset reset (auto.offset.reset=error) is
    # still a loud DataLossError, never a silent jump to the next available offset.
    monkeypatch.setattr(drain, "check_available", lambda consumer, rng: None)
    consumer = drain.make_consumer(settings)
    try:
        with pytest.raises(DataLossError, match="out of range"):
            drain.drain_range(consumer, Range(topic, 0, 100, 200), timeout_s=20)
    finally:
        consumer.close()
    # The committed part is still exact; the failed range's "started" intent stays for the
    # operator's decision (it is recovered by the next run that can read the partition).
    oracle.check(settings, truth, complete=False, allow=["unfinished_range"]).assert_ok()


def test_an_acknowledged_loss_lets_the_partition_go_on_and_reconcile_pass(
    any_settings: Settings,
) -> None:
    settings = any_settings
    topic = settings.raw_topic
    produce(settings, generated(200, seed=23), partition=0)
    assert run_driver(settings, [Range(topic, 0, 0, 100)]).ok
    admin(settings, "delete_records", [TP(topic, 0, 110)], operation_timeout=10)
    assert run_driver(settings).result["error"] == "DataLossError"

    env = env_for(settings)
    cli = [PYTHON, "-m", "pipeline_project.cli", "loss"]
    refused = subprocess.run(
        [*cli, "acknowledge", "--partition", "0"], env=env, capture_output=True
    )
    assert refused.returncode == 2 and b"--reason" in refused.stderr  # a reason is required
    done = subprocess.run(
        [*cli, "acknowledge", "--partition", "0", "--partition", "1", "--reason", "test: gone"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert f"{topic}[0]: offsets [100, 110) acknowledged as lost" in done.stdout
    assert f"{topic}[1]: nothing lost" in done.stdout
    listed = subprocess.run([*cli, "list"], env=env, capture_output=True, text=True)
    assert f"{topic}-0-{100:019d}-{110:019d}" in listed.stdout and "test: gone" in listed.stdout

    resumed = run_driver(settings)
    assert resumed.ok, str(resumed)
    assert spans(settings)[0] == [(0, 100), (100, 110), (110, 200)]
    assert_reconciles(env)
    again = subprocess.run([*cli, "acknowledge", "--partition", "0", "--reason", "x"], env=env)
    assert again.returncode == 0 and spans(settings)[0][-1] == (110, 200)  # nothing more to give up


# ------------------------------------------------------------------- KF4 end beyond the log end


def test_a_range_past_the_high_watermark_times_out_without_commit(any_settings: Settings) -> None:
    settings = any_settings
    topic = settings.raw_topic
    truth = produce(settings, generated(100, seed=22), partition=0)
    started = time.monotonic()
    beyond = run_driver(settings, [Range(topic, 0, 0, 150)], PIPELINE_DRAIN_TIMEOUT_SECONDS="2")
    assert time.monotonic() - started < 20, "the wait for offsets past the log end is unbounded"
    assert beyond.code == 1 and beyond.result["error"] == "DrainError", str(beyond)
    assert "before the time bound" in beyond.result["message"]
    assert committed_state(settings) == NOTHING_COMMITTED
    caught_up = run_driver(settings)
    assert caught_up.ok, str(caught_up)
    oracle.check(settings, truth).assert_ok()
    oracle.assert_rerun_is_noop(settings)


# ----------------------------------------------------------------------- KF5/KF6 transactions


def transactional(settings: Settings) -> Producer:
    prod = Producer(
        {
            "bootstrap.servers": settings.bootstrap,
            "transactional.id": f"fault-{settings.raw_topic}",
            "linger.ms": 5,
        }
    )
    prod.init_transactions(30)
    return prod


def produce_txn(prod: Producer, settings: Settings, records: list[Record]) -> list[Sent]:
    """One transaction's records into partition 0, flushed (in the log, not yet decided)."""
    sent: list[Sent] = []

    def report(rec: Record, err: KafkaError | None, msg: Message) -> None:
        assert err is None, err
        sent.append(Sent(0, msg.offset(), rec.verdict, rec.key, rec.value, rec.event_id))

    prod.begin_transaction()
    for rec in records:
        prod.produce(
            settings.raw_topic,
            key=rec.key,
            value=rec.value,
            partition=0,
            on_delivery=functools.partial(report, rec),
        )
    assert prod.flush(30) == 0
    return sent


def test_aborted_transactions_are_absent_and_the_range_still_terminates(
    any_settings: Settings,
) -> None:
    settings = any_settings
    records = generated(100, seed=23)
    prod = transactional(settings)
    truth = produce_txn(prod, settings, records[:50])
    prod.commit_transaction(30)
    aborted = produce_txn(prod, settings, records[50:70])
    prod.abort_transaction(30)
    truth += produce_txn(prod, settings, records[70:])
    prod.commit_transaction(30)
    consumer = drain.make_consumer(settings)
    _, high = drain.watermarks(consumer, settings.raw_topic, 0)
    consumer.close()
    assert high == 103  # 100 records + 3 transaction markers: offsets are not records

    done = run_driver(settings, PIPELINE_DRAIN_TIMEOUT_SECONDS="20")
    assert done.ok and done.result["records"] == 80, str(done)
    assert spans(settings) == {0: [(0, 103)]}
    report = oracle.check(settings, truth)  # aborted offsets would show up as "never produced"
    report.assert_ok()
    assert report.counts["checked"] == 80 and {(0, s.offset) for s in aborted}.isdisjoint(
        {(0, s.offset) for s in truth}
    )
    oracle.assert_rerun_is_noop(settings)


def test_an_open_transaction_blocks_only_ranges_past_the_stable_offset(
    any_settings: Settings,
) -> None:
    """A read_committed consumer's high watermark is the last stable offset (LSO): the planner
    never plans into an open transaction; a range that reaches into one waits, bounded, and fails
    with a clear error; once the producer aborts, the range commits with no record of it.
    """
    settings = any_settings
    topic = settings.raw_topic
    truth = produce(settings, generated(60, seed=24), partition=0)
    prod = transactional(settings)
    hanging = produce_txn(prod, settings, generated(10, seed=25))  # flushed, never committed
    assert [s.offset for s in hanging] == list(range(60, 70))

    planned = run_driver(settings, PIPELINE_DRAIN_TIMEOUT_SECONDS="3")
    assert planned.ok and planned.result["committed"] == [f"{topic}-0-{0:019d}-{60:019d}"]
    before = committed_state(settings)
    started = time.monotonic()
    blocked = run_driver(settings, [Range(topic, 0, 60, 70)], PIPELINE_DRAIN_TIMEOUT_SECONDS="3")
    assert time.monotonic() - started < 25, "the wait on an open transaction is unbounded"
    assert blocked.code == 1 and blocked.result["error"] == "DrainError", str(blocked)
    assert "open transaction" in blocked.result["message"]
    assert committed_state(settings) == before

    prod.abort_transaction(30)  # the producer gives up: its records become invisible
    done = run_driver(settings)
    assert done.ok and done.result["records"] == 0, str(done)
    assert spans(settings) == {0: [(0, 60), (60, 71)]}  # 10 aborted records + the abort marker
    oracle.check(settings, truth).assert_ok()
    oracle.assert_rerun_is_noop(settings)


# ------------------------------------------------------------------ KF8 consumer group offsets


def committed_group(settings: Settings) -> dict[int, int]:
    consumer = drain.make_consumer(settings)
    try:
        got = consumer.committed([TP(settings.raw_topic, p) for p in range(3)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in got}


def set_group(settings: Settings, offset: int) -> None:
    request = ConsumerGroupTopicPartitions(
        settings.consumer_group, [TP(settings.raw_topic, p, offset) for p in range(3)]
    )
    admin(settings, "alter_consumer_group_offsets", [request])


def test_the_ledger_wins_over_reset_or_deleted_group_offsets(any_settings: Settings) -> None:
    settings = any_settings
    truth = produce(settings, generated(600, seed=26))
    assert run_driver(settings).ok
    assert committed_group(settings) == ends(truth)  # written last, for lag dashboards only

    set_group(settings, 0)  # rewound: must not re-ingest
    truth += produce(settings, generated(300, seed=27))
    assert run_driver(settings).ok
    set_group(settings, 1_000_000)  # far ahead: must not skip
    truth += produce(settings, generated(300, seed=28))
    assert run_driver(settings).ok
    admin(settings, "delete_consumer_groups", [settings.consumer_group])
    truth += produce(settings, generated(300, seed=29))
    assert run_driver(settings).ok

    for partition, ranges in spans(settings).items():
        assert ranges[0][0] == 0 and ranges[-1][1] == ends(truth)[partition]
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False)), ranges
    assert committed_group(settings) == ends(truth)
    oracle.check(settings, truth).assert_ok()


# ---------------------------------------------------------------------- KF9 partitions added


def test_partitions_added_while_a_run_is_in_flight_start_at_zero(any_settings: Settings) -> None:
    # More than one consume() batch in partition 0, so K1a finds the drain half-way.
    settings = any_settings
    truth = produce(settings, generated(25_000, seed=30), partition=0)
    truth += produce(settings, generated(300, seed=33))
    run = start_driver(settings, fault="K1a", stop=True)
    run.wait_stopped()
    admin(settings, "create_partitions", [NewPartitions(settings.raw_topic, 5)])
    extra = [produce(settings, generated(200, seed=31 + p), partition=p)[0:200] for p in (3, 4)]
    truth += [s for group in extra for s in group]
    run.cont()
    first = run.finish()
    assert first.ok and all("-3-" not in r and "-4-" not in r for r in first.result["committed"])
    second = run_driver(settings)
    assert second.ok, str(second)
    got = spans(settings)
    assert got[3] == [(0, 200)] and got[4] == [(0, 200)], got
    assert committed_state(settings)[0] is not None
    oracle.check(settings, truth).assert_ok()
    oracle.assert_rerun_is_noop(settings)
