"""Crash at every protocol step (SIGKILL at each kill point), run again: the same lake rows.

Also: two runs on one range at once (exactly one commits), an all-bad range and an empty range
(their offsets are committed, no data file is), and a crashed attempt's files (never referenced,
never read, counted for vacuum).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from confluent_kafka import Producer

from pipeline_project.lake.history import read_history
from pipeline_project.lake.location import lake_of
from pipeline_project.lake.table import open_table
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


def at(settings: Settings, data: Path) -> Settings:
    """The settings of one data dir: its own lake (on S3, its own prefix of the backend's)."""
    uri = f"{settings.lake_uri}/{data.name}" if settings.lake_uri else ""
    return dataclasses.replace(settings, data_dir=data, lake_uri=uri)


def _drive_args(settings: Settings, data: Path, end: int, fault: str | None, start: int):
    extra = {"PIPELINE_DATA_DIR": str(data), "PIPELINE_LAKE_URI": at(settings, data).lake_uri}
    if fault:
        extra["PIPELINE_FAULT_POINT"] = fault
    args = [PYTHON, "-m", "pipeline_project_tests.range_driver", "0", str(start), str(end)]
    return args + ["run-fixed", NOW.isoformat()], env_for(settings, **extra)


def drive(
    settings: Settings, data: Path, end: int, fault: str | None = None, start: int = 0
) -> subprocess.CompletedProcess[str]:
    args, env = _drive_args(settings, data, end, fault, start)
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=180, cwd=REPO_ROOT)


def start_drive(settings: Settings, data: Path, end: int) -> subprocess.Popen[str]:
    args, env = _drive_args(settings, data, end, None, 0)
    return subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )


def lake_rows(settings: Settings, data: Path) -> pl.DataFrame:
    """The events table as a reader sees it (through the Delta log), in offset order."""
    lake = lake_of(at(settings, data))
    if open_table(lake) is None:
        return pl.DataFrame()
    rows = pl.read_delta(lake.table_uri("events"), storage_options=lake.polars_options())
    return rows.sort("kafka_partition", "kafka_offset")


def reconcile_ok(settings: Settings, data: Path) -> dict:
    return assert_reconciles(env_for(at(settings, data)))


@pytest.fixture
def loaded(lake_settings: Settings, tmp_path: Path) -> tuple[Settings, int, pl.DataFrame]:
    """A loaded partition and the reference lake from one clean run (on each backend)."""
    end = load_range(lake_settings)
    ref = tmp_path / "reference"
    done = drive(lake_settings, ref, end)
    assert done.returncode == 0, done.stderr
    reference = lake_rows(lake_settings, ref)
    assert reference.get_column("date").n_unique() == 2, "expected rows on two days"
    return lake_settings, end, reference


@pytest.mark.parametrize("fault", ["K1", "K2", "K4", "K5", "K6", "KC", "K7"])
def test_crash_at_each_step_then_rerun_gives_the_same_lake(
    loaded: tuple[Settings, int, pl.DataFrame], tmp_path: Path, fault: str
) -> None:
    settings, end, reference = loaded
    data = tmp_path / f"crash-{fault}"
    crashed = drive(settings, data, end, fault=fault)
    assert crashed.returncode == -signal.SIGKILL, f"{fault} did not fire: {crashed.stderr[-500:]}"
    committed_before = fault == "K7"
    assert lake_rows(settings, data).height == (reference.height if committed_before else 0)
    rerun = drive(settings, data, end)
    assert rerun.returncode == 0, rerun.stderr
    assert lake_rows(settings, data).equals(reference)
    report = reconcile_ok(settings, data)
    if fault in ("K4", "K5"):  # the crashed attempt's files: never referenced, vacuum removes them
        assert report["unreferenced_files"] >= 1
    again = drive(settings, data, end)
    assert again.returncode == 0 and "already committed" in again.stdout
    assert lake_rows(settings, data).equals(reference)


def test_two_runs_on_one_range_at_once_commit_it_once(
    loaded: tuple[Settings, int, pl.DataFrame], tmp_path: Path
) -> None:
    settings, end, reference = loaded
    data = tmp_path / "data"
    procs = [start_drive(settings, data, end) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes in ([0, 0], [0, 1]), outs
    text = " ".join(o + e for o, e in outs)
    assert "1 range(s) committed" in text
    if codes == [0, 1]:
        assert "FencingError" in text or "another writer" in text
    assert lake_rows(settings, data).equals(reference)
    reconcile_ok(settings, data)


def test_all_bad_range_and_empty_range_commit_offsets_and_no_file(
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
    lake = lake_of(at(kafka_settings, data))
    (record,) = read_history(lake).records
    assert (record.records, record.written, len(record.dlq)) == (100, 0, 100)
    reconcile_ok(kafka_settings, data)
