"""End to end on the real broker: producer truth → sensor → ingest runs → lake, DLQ, reconcile."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

from dagster import (
    AssetKey,
    DagsterInstance,
    RunRequest,
    SensorResult,
    SkipReason,
    build_sensor_context,
)

from pipeline_project.defs.ingest.job import ingest_events
from pipeline_project.defs.ingest.sensor import kafka_backlog_sensor
from pipeline_project.defs.resources import PipelineSettings
from pipeline_project.defs.tags import PARTITION_TAG, RANGE_TAG
from pipeline_project.lake.history import read_history
from pipeline_project.lake.location import lake_of
from pipeline_project.settings import Settings
from pipeline_project_tests.ingest_support import (
    assert_reconciles,
    dagster_resources,
    dlq_records,
    lake_frame,
    produce,
)
from pipeline_project_tests.support import PYTHON, REPO_ROOT, env_for


def tick_until_caught_up(
    instance: DagsterInstance, resources: dict[str, PipelineSettings], max_ticks: int = 40
) -> list[RunRequest]:
    """Ticks the sensor and executes what it asks for, until it says it is caught up."""
    cursor, launched = None, []
    for _ in range(max_ticks):
        context = build_sensor_context(instance=instance, cursor=cursor, resources=resources)
        result = kafka_backlog_sensor(context)
        if isinstance(result, SkipReason):
            assert "caught up" in (result.skip_message or ""), result.skip_message
            return launched
        assert isinstance(result, SensorResult)
        cursor = result.cursor
        for request in result.run_requests or []:
            assert request.run_key.startswith(request.tags[RANGE_TAG])
            run = ingest_events.execute_in_process(
                run_config=request.run_config,
                instance=instance,
                tags=request.tags,
                resources=resources,
            )
            assert run.success
            launched.append(request)
    raise AssertionError("the sensor never caught up")


def test_fifty_thousand_events_land_exactly_once(lake_settings: Settings, tmp_path: Path) -> None:
    kafka_settings = lake_settings  # on each backend: local disk, then versitygw
    truth = produce(
        kafka_settings,
        tmp_path / "truth.jsonl",
        50_000,
        "--bad-ratio",
        "0.05",
        "--duplicate-ratio",
        "0.02",
        "--late-ratio",
        "0.02",
    )
    assert len(truth) == 50_000
    resources = dagster_resources(kafka_settings, min_backlog_events=1, max_range_events=8000)
    with DagsterInstance.ephemeral() as instance:
        requests = tick_until_caught_up(instance, resources)
        # One partition per run, ranges of at most 8000 offsets, each key used once.
        assert len({r.run_key for r in requests}) == len(requests) >= 3
        assert {r.tags[PARTITION_TAG] for r in requests} == {
            f"{kafka_settings.raw_topic}-{p}" for p in range(3)
        }

        # Every good event is in the lake exactly once, and nothing else is.
        lake = lake_frame(kafka_settings)
        verdicts = Counter(t["verdict"] for t in truth)
        good_ids = sorted(t["event_id"] for t in truth if t["verdict"] == "good")
        assert lake.height == len(good_ids)
        assert sorted(lake.get_column("event_id").to_list()) == good_ids
        assert lake.select("kafka_partition", "kafka_offset").n_unique() == lake.height
        by_coord = {(t["partition"], t["offset"]): t for t in truth}
        for row in lake.select("kafka_partition", "kafka_offset", "event_id").iter_rows():
            assert by_coord[(row[0], row[1])]["event_id"] == row[2]

        # Every bad record is in the DLQ once, with its class, original bytes and contract headers.
        dlq = dlq_records(kafka_settings)
        bad = {
            (t["partition"], t["offset"]): t["verdict"]
            for t in truth
            if t["verdict"].startswith("bad:")
        }
        got = {
            (
                int(d["headers"]["dlq.source.partition"]),
                int(d["headers"]["dlq.source.offset"]),
            ): "bad:" + d["headers"]["dlq.error.category"]
            for d in dlq
        }
        assert len(dlq) == len(got) == len(bad)
        assert got == bad
        for record in dlq[:200]:
            h = record["headers"]
            assert h["dlq.source.topic"] == kafka_settings.raw_topic and h["dlq.attempt"] == "1"
            assert h["dlq.error.stage"] in ("parse", "validate") and h["dlq.error.rule"]
            assert len(h["dlq.error.message"]) <= 500

        # Filtered counts match the truth, reason by reason (read back from the Delta log).
        filtered: Counter[str] = Counter()
        for record in read_history(lake_of(kafka_settings)).records:
            for reason, offsets in record.filtered.items():
                filtered[reason] += len(offsets)
        assert filtered["duplicate"] == verdicts["duplicate"] > 0
        assert filtered["bot"] == verdicts["bot"] > 0
        assert filtered["test_user"] == verdicts["test_user"] > 0

        # Dagster saw daily materializations with the run metadata.
        mats = instance.fetch_materializations(AssetKey("events"), limit=1000)
        days = {m.partition_key for m in mats.records}
        assert days == {d.isoformat() for d in lake.get_column("event_date").unique().to_list()}
        meta = mats.records[0].asset_materialization.metadata
        for name in (
            "rows",
            "commits",
            "delta_versions",
            "offset_ranges",
            "run_dlq",
            "events_per_s",
            "latency_p99_ms",
        ):
            assert name in meta

        # A second round is a no-op: the sensor is caught up at once.
        assert tick_until_caught_up(instance, resources) == []

    assert_reconciles(env_for(kafka_settings))


def test_dagster_job_execute_drains_from_a_shell(lake_settings: Settings, tmp_path: Path) -> None:
    kafka_settings = lake_settings
    truth = produce(kafka_settings, tmp_path / "truth.jsonl", 3_000, "--bad-ratio", "0.05")
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = env_for(kafka_settings, DAGSTER_HOME=str(home))
    done = subprocess.run(
        [
            str(Path(PYTHON).parent / "dagster"),
            "job",
            "execute",
            "-m",
            "pipeline_project.definitions",
            "-j",
            "ingest_events",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RUN_SUCCESS" in done.stdout + done.stderr
    lake = lake_frame(kafka_settings)
    assert lake.height == sum(1 for t in truth if t["verdict"] == "good")
    assert_reconciles(env)
