"""`pipeline-project health` on the real broker: healthy, degraded (lag, DLQ rate, stalled), down.

Exit codes and lines through the real CLI; thresholds through PIPELINE_HEALTH_* variables.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import time
import urllib.request
from datetime import UTC, datetime, timedelta

from pipeline_project import health
from pipeline_project.batch.run import ingest
from pipeline_project.lake.location import parse_lake_uri
from pipeline_project.settings import Settings
from pipeline_project_tests.sessions.session_support import raw_event, send
from pipeline_project_tests.support import PYTHON, REPO_ROOT, env_for, free_port_pair, unique

BAD = b"\xff not json"


def events(n: int) -> list[dict | bytes]:
    now = datetime.now(UTC)
    return [
        raw_event(f"s{i % 3}", "u1", "page_view", now - timedelta(seconds=i), "/") for i in range(n)
    ]


def cli_health(
    settings: Settings, *args: str, **env: str
) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(
        [PYTHON, "-m", "pipeline_project.cli", "health", *args],
        env=env_for(settings, **env),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    return done, time.monotonic() - started


def statuses(report: health.HealthReport) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def test_healthy_then_degraded_by_lag_and_a_stalled_ingest(kafka_settings: Settings) -> None:
    send(kafka_settings, events(10))
    ingest(kafka_settings)
    done, _ = cli_health(kafka_settings, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["state"] == "healthy"
    assert {c["name"]: c["status"] for c in report["checks"]} == {
        "broker": "ok",
        "topics": "ok",
        "lag": "ok",
        "last_ingest": "ok",
        "dlq_rate": "ok",
        "lake": "ok",
        "disk": "ok",
        "parser": "ok",
    }
    values = {c["name"]: c["values"] for c in report["checks"]}
    # From the Delta log and snapshot: one range per partition with records, committed just now;
    # version 2: the run then recorded the topic's Kafka id in the table (batch/epochs.py).
    assert values["lake"]["version"] == 2
    assert values["lake"]["files"] >= 1 and values["lake"]["bytes"] > 0
    assert values["last_ingest"]["age_seconds"] < 60
    assert values["disk"]["free_bytes"] > 0
    parser = next(c for c in report["checks"] if c["name"] == "parser")
    assert parser["detail"].startswith("native" if parser["values"]["native"] else "python")
    drain = "drain: native" if parser["values"]["native_drain"] else "drain: python ("
    assert drain in parser["detail"]
    assert [p["records"] for p in report["partitions"]] == [0, 0, 0]

    # Old, but nothing waits: idle, not stalled.
    quiet = dataclasses.replace(kafka_settings, health_max_ingest_age_seconds=0.5)
    time.sleep(0.6)
    assert statuses(health.collect(quiet))["last_ingest"] == "ok"

    send(kafka_settings, events(30), partition=1)
    done, _ = cli_health(kafka_settings, PIPELINE_HEALTH_MAX_LAG_RECORDS="20")
    assert done.returncode == 1, done.stdout
    lines = done.stdout.splitlines()
    assert lines[-1] == "state: degraded"
    assert any(line.startswith("warn  lag") and "30 records behind" in line for line in lines)

    report_now = health.collect(quiet)
    lag = {p.partition: p for p in report_now.partitions}
    assert (lag[0].records, lag[1].records, lag[2].records) == (0, 30, 0)
    assert lag[1].seconds is not None and lag[1].seconds < 120
    assert statuses(report_now)["last_ingest"] == "warn"  # stalled: old and records waiting


def test_dlq_rate_over_its_threshold_is_degraded(kafka_settings: Settings) -> None:
    send(kafka_settings, [*events(6), BAD, BAD, BAD, BAD])
    ingest(kafka_settings)
    report = health.collect(kafka_settings)
    assert statuses(report)["dlq_rate"] == "warn" and report.exit_code == 1
    dlq = next(c for c in report.checks if c.name == "dlq_rate")
    assert (dlq.values["records"], dlq.values["dlq"]) == (10, 4)
    relaxed = dataclasses.replace(kafka_settings, health_max_dlq_rate=0.5)
    assert health.collect(relaxed).exit_code == 0


def test_unreachable_broker_is_down_within_the_bound(kafka_settings: Settings) -> None:
    done, seconds = cli_health(
        kafka_settings, PIPELINE_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port_pair()}"
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.splitlines()[0].startswith("fail  broker")
    assert done.stdout.splitlines()[-1] == "state: down"
    assert seconds < 12, f"took {seconds:.1f} s"


def test_an_unreadable_lake_is_down_in_one_line(kafka_settings: Settings) -> None:
    send(kafka_settings, events(3))
    ingest(kafka_settings)
    log = kafka_settings.lake_dir / "events" / "_delta_log"
    for commit in log.glob("*.json"):
        commit.write_text("not a delta commit\n")
    done, _ = cli_health(kafka_settings)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("fail  lake") and "events" in line for line in lines), lines
    assert any(line.startswith("warn  last_ingest") and "unknown" in line for line in lines)
    assert "Traceback" not in done.stderr


def test_an_s3_lake_has_no_local_disk_to_watch(kafka_settings: Settings) -> None:
    lake = parse_lake_uri("s3://bucket/lake", {})
    check = health.check_disk(kafka_settings, lake)
    assert check.status == health.OK and "no local disk" in check.detail


def test_missing_raw_topic_is_down(kafka_settings: Settings) -> None:
    missing = dataclasses.replace(kafka_settings, raw_topic=unique("absent"))
    report = health.collect(missing)
    assert statuses(report)["topics"] == "fail" and report.state == "down"


def test_serve_exposes_lag_gauges_and_stops_on_sigterm(kafka_settings: Settings) -> None:
    send(kafka_settings, events(7), partition=2)
    port = free_port_pair()
    proc = subprocess.Popen(
        [PYTHON, "-m", "pipeline_project.cli", "health", "--serve", str(port)],
        env=env_for(kafka_settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    try:
        body = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not body:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=15) as r:
                    body = r.read().decode()
            except OSError:
                time.sleep(0.3)
        topic = kafka_settings.raw_topic
        assert f'pipeline_lag_records{{partition="2",topic="{topic}"}} 7.0' in body
        assert "pipeline_health_state 1.0" in body or "pipeline_health_state 0.0" in body
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_events_freshness_is_idle_when_caught_up_and_stale_when_records_wait(
    kafka_settings: Settings,
) -> None:
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    recent = health.events_freshness(kafka_settings, datetime.now(UTC) - timedelta(seconds=5))
    assert recent.status == health.OK
    assert health.events_freshness(kafka_settings, None).status == health.OK  # empty topic
    idle = health.events_freshness(kafka_settings, hour_ago)
    assert idle.status == health.OK and "idle" in idle.detail, idle.detail
    send(kafka_settings, events(3))
    stale = health.events_freshness(kafka_settings, hour_ago)
    assert stale.status == health.WARN and "3 records waiting" in stale.detail
