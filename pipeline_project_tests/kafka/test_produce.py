"""The producer on a real broker: truth lines match the topic, runs repeat, stops are clean.

No mocks: every test produces into fresh topics of the session's broker and reads them back.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline_project.errors import PipelineError
from pipeline_project.events.generator import EventGenerator, Record
from pipeline_project.kafka import produce
from pipeline_project.kafka.topics import ensure_topics
from pipeline_project.settings import Settings
from pipeline_project_tests.support import PYTHON, REPO_ROOT, env_for, free_port_pair, unique

Coord = tuple[int, int]


def parse_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    produce.add_arguments(parser)
    return parser.parse_args(list(argv))


def run_in_process(
    settings: Settings, capsys: pytest.CaptureFixture[str], *argv: str, clock: float
) -> tuple[int, dict]:
    code = produce.run(parse_args(*argv), settings, clock=lambda: clock)
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


def read_topic(bootstrap: str, topic: str) -> dict[Coord, tuple[bytes | None, bytes | None]]:
    """Every record of a topic, from offset 0 to the high watermark of each partition."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": unique("g"), "enable.auto.commit": False}
    )
    try:
        meta = consumer.list_topics(topic, timeout=10)
        ends = {}
        for p in meta.topics[topic].partitions:
            ends[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        consumer.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end > 0])
        records: dict[Coord, tuple[bytes | None, bytes | None]] = {}
        deadline = time.monotonic() + 30
        while len(records) < sum(ends.values()):
            assert time.monotonic() < deadline, "topic not read back within 30 s"
            for msg in consumer.consume(1_000, timeout=1):
                assert msg.error() is None, msg.error()
                coord = (int(msg.partition() or 0), int(msg.offset() or 0))
                records[coord] = (msg.key(), msg.value())
        return records
    finally:
        consumer.close()


def read_truth(path: Path) -> dict[Coord, dict]:
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    truth = {(t["partition"], t["offset"]): t for t in lines}
    assert len(truth) == len(lines), "a coordinate appears twice in the truth file"
    return truth


def by_partition(topic: dict[Coord, tuple[bytes | None, bytes | None]]) -> dict[int, list]:
    parts: dict[int, list] = defaultdict(list)
    for (p, _), kv in sorted(topic.items()):
        parts[p].append(kv)
    return parts


def test_truth_file_matches_what_a_consumer_reads(
    kafka_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth_file, now = tmp_path / "truth.jsonl", time.time()
    flags = ("--bad-ratio", "0.2", "--duplicate-ratio", "0.05", "--late-ratio", "0.2")
    code, summary = run_in_process(
        kafka_settings,
        capsys,
        "--count",
        "3000",
        "--rate",
        "0",
        "--seed",
        "11",
        *flags,
        "--truth",
        str(truth_file),
        clock=now,
    )
    assert code == 0
    assert summary["sent"] == summary["delivered"] == 3000
    assert summary["failed"] == summary["in_flight"] == 0

    topic = read_topic(kafka_settings.bootstrap, kafka_settings.raw_topic)
    truth = read_truth(truth_file)
    assert set(truth) == set(topic)
    assert len({p for p, _ in topic}) == 3
    for coord, (key, value) in topic.items():
        line = truth[coord]
        assert line["topic"] == kafka_settings.raw_topic
        assert key == line["key"].encode()
        if line["verdict"] == "bad:null_value":
            assert value is None
        if line["event_id"] is not None:
            assert orjson.loads(value or b"")["event_id"] == line["event_id"]

    # The topic holds exactly the generator's records, in generation order within each partition.
    expected: list[Record] = EventGenerator(
        11, bad_ratio=0.2, duplicate_ratio=0.05, late_ratio=0.2
    ).batch(3000, now)
    partition_of = {key: p for (p, _), (key, _) in topic.items()}
    want: dict[int, list[Record]] = defaultdict(list)
    for record in expected:
        want[partition_of[record.key]].append(record)
    got = by_partition(topic)
    truth_by_partition = defaultdict(list)
    for (p, _), line in sorted(truth.items()):
        truth_by_partition[p].append(line)
    for p, records in want.items():
        assert [(r.key, r.value) for r in records] == got[p]
        assert [(r.verdict, r.event_id) for r in records] == [
            (t["verdict"], t["event_id"]) for t in truth_by_partition[p]
        ]
    assert dict(summary["verdicts"]) == _count(r.verdict for r in expected)


def _count(items: object) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for item in items:  # type: ignore[attr-defined]
        counts[item] += 1
    return dict(counts)


def test_same_seed_gives_the_same_records(
    kafka_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = dataclasses.replace(kafka_settings, raw_topic=unique("raw"), dlq_topic=unique("dlq"))
    ensure_topics(other, raw_partitions=3)
    now = time.time()
    truths = []
    for settings in (kafka_settings, other):
        truths.append(tmp_path / f"{settings.raw_topic}.jsonl")
        flags = ("--count", "1500", "--rate", "0", "--seed", "5", "--bad-ratio", "0.1")
        code, _ = run_in_process(settings, capsys, *flags, "--truth", str(truths[-1]), clock=now)
        assert code == 0
    first = read_topic(kafka_settings.bootstrap, kafka_settings.raw_topic)
    second = read_topic(kafka_settings.bootstrap, other.raw_topic)
    assert first == second
    strip = [{c: {**t, "topic": None} for c, t in read_truth(f).items()} for f in truths]
    assert strip[0] == strip[1]


def run_cli(settings: Settings, *argv: str) -> tuple[int, dict, str]:
    """`pipeline-project produce ARGV` as a user runs it: exit code, JSON summary, stderr."""
    done = subprocess.run(
        [PYTHON, "-m", "pipeline_project.cli", "produce", *argv],
        env=env_for(settings), cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    return done.returncode, json.loads(lines[-1]) if lines else {}, done.stderr


def test_processes_share_the_count_the_topic_and_one_truth_file(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """Two processes, one run: stream 0 makes 1501 records and stream 1 makes 1500, all land once,
    and the shared truth file holds one whole line per record at the coordinate it landed at."""
    truth_file = tmp_path / "truth.jsonl"
    flags = ("--bad-ratio", "0.2", "--duplicate-ratio", "0.05")
    code, summary, err = run_cli(
        kafka_settings, "--count", "3001", "--rate", "0", "--seed", "11", *flags,
        "--truth", str(truth_file), "--processes", "2",
    )  # fmt: skip
    assert code == 0, err
    assert summary["processes"] == 2
    assert summary["sent"] == summary["delivered"] == 3001
    assert summary["failed"] == summary["in_flight"] == 0
    assert summary["stopped_by"] == "count"

    topic = read_topic(kafka_settings.bootstrap, kafka_settings.raw_topic)
    truth = read_truth(truth_file)  # every line parses: chunks of the two never interleave
    assert set(truth) == set(topic)
    for coord, (key, value) in topic.items():
        line = truth[coord]
        assert key == line["key"].encode()
        if line["event_id"] is not None:
            assert orjson.loads(value or b"")["event_id"] == line["event_id"]
    streams = [
        EventGenerator(11, stream=stream, bad_ratio=0.2, duplicate_ratio=0.05).batch(n, time.time())
        for stream, n in ((0, 1501), (1, 1500))
    ]
    made = [r for batch in streams for r in batch]
    landed = [(t["verdict"], t["event_id"], t["key"].encode()) for t in truth.values()]
    assert sorted(landed, key=repr) == sorted(
        ((r.verdict, r.event_id, r.key) for r in made), key=repr
    )
    assert summary["verdicts"] == _count(r.verdict for r in made)


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_flushes_and_summary_matches_topic(
    kafka_settings: Settings, tmp_path: Path, processes: int
) -> None:
    truth_file = tmp_path / "truth.jsonl"
    cmd = [PYTHON, "-m", "pipeline_project.cli", "produce", "--rate", "5000",
           "--bad-ratio", "0.05", "--truth", str(truth_file),
           "--processes", str(processes)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env_for(kafka_settings), cwd=REPO_ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (truth_file.exists() and truth_file.stat().st_size > 100_000):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "producer delivered nothing within 30 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=45)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stopped_by"] == "SIGTERM"
    assert summary["processes"] == processes
    topic = read_topic(kafka_settings.bootstrap, kafka_settings.raw_topic)
    assert summary["sent"] == summary["delivered"] == len(topic) > 0
    assert summary["failed"] == 0
    assert len(read_truth(truth_file)) == len(topic)
    assert out.strip().count("\n") == 0, "the summary is the only stdout line off a TTY"


def test_a_lost_process_fails_the_run_without_hanging_it(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """A child killed outright: the other finishes, the parent names the lost one and exits 1."""
    proc = spawn_produce(kafka_settings, "--rate", "2000", "--duration", "8", "--processes", "2")
    try:
        children = producer_children(proc)
        time.sleep(1.0)
        os.kill(children[-1], signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert "ended (exit code -9) before its summary" in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["errors"] == {"process_lost": 1}
    assert summary["delivered"] > 0


def spawn_produce(settings: Settings, *argv: str) -> subprocess.Popen[str]:
    """`pipeline-project produce ARGV` started in the background, its output piped."""
    return subprocess.Popen(
        [PYTHON, "-m", "pipeline_project.cli", "produce", *argv], env=env_for(settings),
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def producer_children(
    proc: subprocess.Popen[str], ready: Callable[[], bool] = lambda: True
) -> list[int]:
    """The pids of a two-process run's children, in fork order, once both exist and `ready()`."""
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, proc.communicate()
        found = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
        children = sorted(int(pid) for pid in found.stdout.split())
        if len(children) == 2 and ready():
            return children
        assert time.monotonic() < deadline, f"two producers not ready in 30 s: {children}"
        time.sleep(0.2)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit may wait for its new parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_children_of_a_killed_parent_stop_and_flush(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """The parent killed outright mid-run: its children stop within seconds instead of producing
    on forever, and every record they sent is delivered (the truth file matches the topic)."""
    truth_file = tmp_path / "truth.jsonl"
    proc = spawn_produce(
        kafka_settings, "--rate", "3000", "--processes", "2", "--truth", str(truth_file)
    )
    children: list[int] = []
    try:
        children = producer_children(
            proc, lambda: truth_file.exists() and truth_file.stat().st_size > 50_000
        )
        proc.kill()
        _, err = proc.communicate(timeout=10)
        deadline = time.monotonic() + 30
        while any(_running(pid) for pid in children):
            assert time.monotonic() < deadline, "orphaned producers still running after 30 s"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    topic = read_topic(kafka_settings.bootstrap, kafka_settings.raw_topic)
    assert len(read_truth(truth_file)) == len(topic) > 0


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_busy_metrics_port_is_one_line_before_anything_is_sent(
    kafka_settings: Settings, processes: str
) -> None:
    port = free_port_pair()
    with socket.socket() as taken:
        taken.bind(("", port))
        taken.listen()
        code, summary, err = run_cli(
            kafka_settings, "--count", "500", "--rate", "0", "--metrics-port", str(port),
            "--processes", processes,
        )  # fmt: skip
    assert code == 1
    assert summary == {}
    assert err.strip().splitlines() == [
        f"pipeline-project: error: --metrics-port {port}: Address already in use"
    ]
    assert read_topic(kafka_settings.bootstrap, kafka_settings.raw_topic) == {}


@pytest.mark.parametrize("processes", ["1", "2"])
def test_unreachable_broker_fails_fast_with_one_line(tmp_path: Path, processes: str) -> None:
    dead = dataclasses.replace(Settings(), bootstrap="127.0.0.1:1", data_dir=tmp_path)
    began = time.monotonic()
    done = subprocess.run(
        [PYTHON, "-m", "pipeline_project.cli", "produce", "--count", "10",
         "--processes", processes],  # fmt: skip
        env=env_for(dead), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    took = time.monotonic() - began
    assert done.returncode != 0
    assert took < 25, f"took {took:.1f} s"
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "127.0.0.1:1" in lines[0]
    assert "did not answer" in lines[0]


def test_missing_topic_is_a_clear_error(kafka_settings: Settings) -> None:
    args = parse_args("--count", "5", "--topic", unique("absent"))
    with pytest.raises(PipelineError, match="does not exist"):
        produce.run(args, kafka_settings)


def test_failed_deliveries_are_counted_not_dropped(
    kafka_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A topic that refuses batches over 16 KiB: the broker rejects whole batches, each rejected
    record is counted as failed by verdict, and only the delivered ones are in the truth file."""
    small = unique("small")
    admin = AdminClient({"bootstrap.servers": kafka_settings.bootstrap})
    spec = NewTopic(small, num_partitions=1, replication_factor=1,
                    config={"max.message.bytes": "16384"})  # fmt: skip
    admin.create_topics([spec])[small].result(timeout=30)
    truth_file = tmp_path / "truth.jsonl"
    code, summary = run_in_process(
        kafka_settings, capsys, "--topic", small, "--count", "400", "--rate", "0",
        "--bad-ratio", "0.5", "--seed", "3", "--truth", str(truth_file), clock=time.time(),
    )  # fmt: skip
    assert code == 1
    assert summary["failed"] > 0
    assert summary["errors"].keys() == {"MSG_SIZE_TOO_LARGE"}
    assert "bad:too_large" in summary["failed_verdicts"]
    assert summary["delivered"] + summary["failed"] == summary["sent"] == 400
    assert sum(summary["failed_verdicts"].values()) == summary["failed"]
    assert len(read_truth(truth_file)) == summary["delivered"]
    landed = read_topic(kafka_settings.bootstrap, small)
    assert len(landed) == summary["delivered"]
    assert all(len(value or b"") <= 16384 for _, value in landed.values())


@pytest.mark.parametrize("processes", ["1", "2"])
def test_rate_is_held_and_metrics_are_served(kafka_settings: Settings, processes: str) -> None:
    port = free_port_pair()
    cmd = [PYTHON, "-m", "pipeline_project.cli", "produce", "--rate", "2000", "--duration", "4",
           "--metrics-port", str(port), "--processes", processes]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env_for(kafka_settings), cwd=REPO_ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics = ""
    try:
        deadline = time.monotonic() + 20
        while 'pipeline_producer_delivered_total{verdict="good"}' not in metrics:
            assert time.monotonic() < deadline, metrics
            time.sleep(0.3)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    metrics = r.read().decode()
            except OSError:
                continue
        out, err = proc.communicate(timeout=45)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "pipeline_producer_in_flight" in metrics
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stopped_by"] == "duration"
    assert abs(summary["send_rate"] - 2000) / 2000 < 0.05
    assert abs(summary["sent"] - 8000) / 8000 < 0.05
    delivered = re.findall(
        r'^pipeline_producer_delivered_total\{verdict="good"\} (\S+)$', metrics, re.M
    )
    assert 0 < float(delivered[0]) <= summary["verdicts"]["good"]


def test_schema_flags_give_the_generator_its_mix() -> None:
    assert produce.schema_mix(parse_args()) is None  # the generator's default: version 1
    assert produce.schema_mix(parse_args("--schema-version", "2")) == {2: 1.0}
    assert produce.schema_mix(parse_args("--schema-version", "1")) == {1: 1.0}
    mix = produce.schema_mix(parse_args("--schema-mix", "1:0.5,2:0.5"))
    assert mix == {1: 0.5, 2: 0.5}
    assert EventGenerator(1, schema_mix=mix).schema_mix == mix


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--schema-version", "3"],
            "argument --schema-version: schema version 3 cannot be produced",
        ),
        (["--schema-version", "two"], "argument --schema-version: 'two' is not a version number"),
        (["--schema-mix", "1:0.5,2:0.6"], "argument --schema-mix: the shares must add up to 1"),
        (["--schema-mix", "1=0.5"], "argument --schema-mix: '1=0.5' is not VERSION:SHARE"),
        (["--schema-version", "2", "--schema-mix", "2:1"], "not allowed with argument"),
    ],
)
def test_bad_schema_flags_are_one_line_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        parse_args(*argv)
    assert raised.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in last, last
