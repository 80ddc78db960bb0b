"""Crash at every protocol step (SIGKILL at K1-K8), run again: the same lake byte for byte.

Also: two runs on one range at once (the second fails fast on the partition lock), an all-bad range
and an empty range (no empty Parquet file is ever published).
"""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Producer

from pipeline_project.batch import ledger
from pipeline_project.settings import Settings
from pipeline_project_tests.ingest_support import assert_reconciles
from pipeline_project_tests.support import PYTHON, REPO_ROOT, env_for

NOW = datetime(2026, 11, 25, 0, 30, tzinfo=UTC)  # just after midnight: events fall on two days
UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0.0.0 Safari/537.36"


def event(i: int, when: datetime) -> bytes:
    return json.dumps(
        {
            "event_id": str(uuid.UUID(int=i + 1)),
            "event_type": "page_view",
            "timestamp": when.isoformat().replace("+00:00", "Z"),
            "user_id": f"user_{i % 50}",
            "session_id": f"sess_{i % 80}",
            "page_url": f"/p/item-{i}",
            "user_agent": UA,
            "properties": {"product_id": f"sku_{i % 30}"},
        }
    ).encode()


def load_range(settings: Settings, n: int = 3_000, bad_every: int = 40) -> int:
    """n records into partition 0 over two UTC days, every bad_every-th malformed; the end."""
    producer = Producer({"bootstrap.servers": settings.bootstrap, "enable.idempotence": True})
    for i in range(n):
        when = NOW - timedelta(minutes=(i % 120))
        value = b'{"truncated": ' if i % bad_every == 7 else event(i, when)
        producer.produce(
            settings.raw_topic, key=f"user_{i % 50}".encode(), value=value, partition=0
        )
    assert producer.flush(30) == 0
    return n


def drive(
    settings: Settings, data: Path, end: int, fault: str | None = None, start: int = 0
) -> subprocess.CompletedProcess[str]:
    extra = {"PIPELINE_DATA_DIR": str(data)}
    if fault:
        extra["PIPELINE_FAULT_POINT"] = fault
    return subprocess.run(
        [
            PYTHON,
            "-m",
            "pipeline_project_tests.range_driver",
            "0",
            str(start),
            str(end),
            "run-fixed",
            NOW.isoformat(),
        ],
        env=env_for(settings, **extra),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO_ROOT,
    )


def lake_bytes(data: Path) -> dict[str, bytes]:
    root = data / "output"
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def reconcile_ok(settings: Settings, data: Path) -> None:
    assert_reconciles(env_for(settings, PIPELINE_DATA_DIR=str(data)))


@pytest.fixture
def loaded(kafka_settings: Settings, tmp_path: Path) -> tuple[Settings, int, dict[str, bytes]]:
    """A loaded partition and the reference lake from one clean run."""
    end = load_range(kafka_settings)
    ref = tmp_path / "reference"
    done = drive(kafka_settings, ref, end)
    assert done.returncode == 0, done.stderr
    reference = lake_bytes(ref)
    assert len([p for p in reference if p.endswith(".parquet")]) == 2, "expected files on two days"
    return kafka_settings, end, reference


@pytest.mark.parametrize("fault", ["K1", "K2", "K3", "K4", "K5", "K6", "K7", "K8"])
def test_crash_at_each_step_then_rerun_gives_the_same_lake(
    loaded: tuple[Settings, int, dict[str, bytes]], tmp_path: Path, fault: str
) -> None:
    settings, end, reference = loaded
    data = tmp_path / f"crash-{fault}"
    crashed = drive(settings, data, end, fault=fault)
    assert crashed.returncode == -signal.SIGKILL, f"{fault} did not fire: {crashed.stderr[-500:]}"
    rerun = drive(settings, data, end)
    assert rerun.returncode == 0, rerun.stderr
    assert lake_bytes(data) == reference
    reconcile_ok(settings, data)
    again = drive(settings, data, end)
    assert again.returncode == 0 and lake_bytes(data) == reference


def test_torn_manifest_is_treated_as_absent(
    loaded: tuple[Settings, int, dict[str, bytes]], tmp_path: Path
) -> None:
    settings, end, reference = loaded
    data = tmp_path / "torn"
    assert drive(settings, data, end).returncode == 0
    manifest = next((data / "state" / "manifests").rglob("*.json"))
    manifest.write_bytes(manifest.read_bytes()[:100])
    rerun = drive(settings, data, end)
    assert rerun.returncode == 0, rerun.stderr
    assert lake_bytes(data) == reference
    reconcile_ok(settings, data)


def test_two_runs_on_one_range_the_second_fails_fast(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    end = load_range(kafka_settings, n=500)
    data = tmp_path / "data"
    state = data / "state"
    with ledger.partition_lock(state, kafka_settings.raw_topic, 0):
        blocked = drive(kafka_settings, data, end)
    assert blocked.returncode == 1
    assert "lock" in blocked.stderr.lower() and "Traceback" not in blocked.stderr
    assert not (data / "output" / "events").exists() or not any(
        (data / "output").rglob("*.parquet")
    )
    first = drive(kafka_settings, data, end)
    assert first.returncode == 0, first.stderr
    files = lake_bytes(data)
    second = drive(kafka_settings, data, end)
    assert second.returncode == 0 and "already committed" in second.stdout
    assert lake_bytes(data) == files
    reconcile_ok(kafka_settings, data)


def test_all_bad_range_and_empty_range_publish_no_file(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    producer = Producer({"bootstrap.servers": kafka_settings.bootstrap})
    for i in range(100):
        producer.produce(kafka_settings.raw_topic, value=b"\xff\xfe not json %d" % i, partition=0)
    assert producer.flush(30) == 0
    data = tmp_path / "data"
    done = drive(kafka_settings, data, 100)
    assert done.returncode == 0, done.stderr
    assert not list((data / "output").rglob("*.parquet"))
    empty = drive(kafka_settings, data, 100, start=100)
    assert empty.returncode == 0, empty.stderr
    assert not list((data / "output").rglob("*.parquet"))
    manifests = sorted((data / "state" / "manifests").rglob("*.json"))
    counts = [json.loads(p.read_text())["counts"] for p in manifests]
    assert {"records": 100, "written": 0, "dlq": 100} == {
        k: counts[0][k] for k in ("records", "written", "dlq")
    }
    reconcile_ok(kafka_settings, data)
