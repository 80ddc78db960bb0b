"""Shared steps of the ingestion tests: produce with a truth file, read lake, DLQ, reconcile."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import polars as pl
from confluent_kafka import Consumer, TopicPartition
from dagster import Definitions

from pipeline_project.definitions import build_defs
from pipeline_project.defs.resources import SETTINGS_KEY, PipelineSettings
from pipeline_project.dlq.records import decode_headers
from pipeline_project.lake.location import lake_of
from pipeline_project.lake.table import open_table
from pipeline_project.settings import Settings
from pipeline_project_tests.support import PYTHON, REPO_ROOT, env_for, unique


def produce(settings: Settings, truth: Path, count: int, *extra: str, seed: int = 7) -> list[dict]:
    """Runs the real producer CLI and returns its truth file, one dict per delivered record."""
    done = subprocess.run(
        [
            PYTHON,
            "-m",
            "pipeline_project.cli",
            "produce",
            "--count",
            str(count),
            "--rate",
            "0",
            "--seed",
            str(seed),
            "--truth",
            str(truth),
            *extra,
        ],
        env=env_for(settings),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in truth.read_text().splitlines()]


def lake_frame(settings: Settings) -> pl.DataFrame:
    """Every row of the lake's events table, read the way a user would (through the Delta log)."""
    lake = lake_of(settings)
    if open_table(lake) is None:
        return pl.DataFrame()
    return pl.read_delta(lake.table_uri("events"), storage_options=lake.polars_options())


def dlq_records(settings: Settings) -> list[dict]:
    """Every record of the DLQ topic: headers decoded, key and value bytes as sent."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap,
            "group.id": unique("dlq-read"),
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    meta = consumer.list_topics(settings.dlq_topic, timeout=10)
    parts = sorted(meta.topics[settings.dlq_topic].partitions)
    out: list[dict] = []
    for p in parts:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(settings.dlq_topic, p), timeout=10
        )
        if high <= low:
            continue
        consumer.assign([TopicPartition(settings.dlq_topic, p, low)])
        got = 0
        while got < high - low:
            # Ask for exactly what is left: consume() returns once it has that many, whereas a
            # larger batch waits out the whole timeout (10 s per partition read, every call).
            msgs = consumer.consume(min(1000, high - low - got), timeout=10)
            assert msgs, "DLQ read stalled"
            for m in msgs:
                if m.error():
                    continue
                got += 1
                out.append(
                    {
                        "key": m.key(),
                        "value": m.value(),
                        "headers": decode_headers(m.headers()),
                        "partition": p,
                        "offset": m.offset(),
                    }
                )
    consumer.close()
    return out


def dagster_resources(settings: Settings, **overrides: Any) -> dict[str, PipelineSettings]:
    """The code location's resources pointed at the test's topics and data dir, plus `overrides`
    (Settings field names), whatever PIPELINE_* variables the test process has."""
    return {SETTINGS_KEY: PipelineSettings.of(settings, **overrides)}


def defs_for(settings: Settings, **overrides: Any) -> Definitions:
    """The code location as deployed, with `dagster_resources(settings, **overrides)`."""
    return build_defs(dagster_resources(settings, **overrides)[SETTINGS_KEY])


def assert_reconciles(env: dict[str, str]) -> dict:
    """Runs `pipeline-project reconcile --json` as a user would; asserts exit 0 and ok."""
    done = subprocess.run(
        [PYTHON, "-m", "pipeline_project.cli", "reconcile", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    report = json.loads(done.stdout)
    assert report["ok"] is True
    return report
