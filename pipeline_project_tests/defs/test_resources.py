"""The settings resource: a malformed PIPELINE_* variable never stops the code location loading.

It shows where it is used, as one line: the sensor tick's skip reason, the schedule's, the failed
run's error. Also: the reprocess schedule follows PIPELINE_DLQ_REPROCESS_CRON at its tick, and a
fresh instance shows only today and the PIPELINE_PARTITION_DAYS before it (one of the two settings
read at load, with PIPELINE_SESSIONS_CRON; a malformed value is one line and the default).
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import (
    DagsterInstance,
    RunRequest,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
)

from pipeline_project.definitions import build_defs, defs
from pipeline_project.defs.dlq.reprocess import reprocess_dlq_schedule
from pipeline_project.defs.ingest.assets import EVENTS_KEY, PARTITION_WINDOW_DAYS
from pipeline_project.defs.ingest.sensor import kafka_backlog_sensor
from pipeline_project.defs.resources import PipelineSettings
from pipeline_project_tests.support import PYTHON, REPO_ROOT

BAD = {"PIPELINE_MAX_RANGE_EVENTS": "lots"}
BAD_LINE = "PIPELINE_MAX_RANGE_EVENTS='lots'"


def clean_env(home: Path) -> dict[str, str]:
    """No PIPELINE_* variable; this checkout's package first (not another editable install)."""
    return {
        "PATH": str(Path(PYTHON).parent) + ":/usr/bin:/bin",
        "DAGSTER_HOME": str(home),
        "PYTHONPATH": str(REPO_ROOT),
    }


def dagster(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(PYTHON).parent / "dagster"), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**clean_env(home), **env},
    )


def test_a_malformed_variable_does_not_stop_the_code_location_loading(tmp_path: Path) -> None:
    done = dagster("definitions", "validate", "-w", "workspace.yaml", home=tmp_path, **BAD)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lots" not in done.stdout + done.stderr  # nothing resolved it at load


def test_the_sensor_tick_shows_a_malformed_variable_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in BAD.items():
        monkeypatch.setenv(name, value)
    with DagsterInstance.ephemeral() as instance:
        context = build_sensor_context(instance=instance, resources=defs.resources)
        result = kafka_backlog_sensor(context)
    assert isinstance(result, SkipReason)
    message = result.skip_message or ""
    assert message.startswith(f"bad setting: {BAD_LINE}") and "\n" not in message


def test_a_run_fails_with_the_malformed_setting_in_one_line(tmp_path: Path) -> None:
    bad = build_defs(PipelineSettings(max_range_events=0, data_dir=str(tmp_path)))
    with DagsterInstance.ephemeral() as instance:
        run = bad.resolve_job_def("ingest_events").execute_in_process(
            instance=instance, raise_on_error=False
        )
    assert not run.success
    (failure,) = [e for e in run.all_events if e.is_step_failure]
    error = failure.step_failure_data.error
    assert error is not None
    assert error.message.splitlines()[0].endswith(
        "bad setting: PIPELINE_MAX_RANGE_EVENTS=0: Input should be greater than or equal to 1"
    )
    assert not (tmp_path / "output").exists()  # stopped before touching anything


def test_only_the_partition_window_and_the_sessions_cron_are_read_at_import() -> None:
    """Imports the code location with os.environ replaced by a spy: the PIPELINE_* looked up are
    PIPELINE_PARTITION_DAYS and PIPELINE_SESSIONS_CRON (Dagster fixes partitions and automation
    conditions when the location loads)."""
    spy = (
        "import os\n"
        "seen = []\n"
        "class Spy(dict):\n"
        "    def __getitem__(self, key):\n"
        "        seen.append(key)\n"
        "        return super().__getitem__(key)\n"
        "    def get(self, key, default=None):\n"
        "        seen.append(key)\n"
        "        return super().get(key, default)\n"
        "os.environ = Spy(os.environ)\n"
        "import pipeline_project.definitions\n"
        "print(sorted({k for k in seen if k.startswith('PIPELINE_')}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", spy], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    expected = "['PIPELINE_PARTITION_DAYS', 'PIPELINE_SESSIONS_CRON']"
    assert done.stdout.strip().splitlines()[-1] == expected


def schedule_tick(at: datetime, **settings: str) -> RunRequest | SkipReason:
    context = build_schedule_context(
        scheduled_execution_time=at, resources={"settings": PipelineSettings(**settings)}
    )
    result = reprocess_dlq_schedule(context)
    assert isinstance(result, RunRequest | SkipReason)
    return result


def test_the_reprocess_schedule_follows_the_cron_setting_at_its_tick() -> None:
    hour = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    due = schedule_tick(hour)
    assert isinstance(due, RunRequest) and due.run_key == hour.isoformat()
    early = schedule_tick(hour + timedelta(minutes=5))
    assert isinstance(early, SkipReason) and "next run at 11:00 UTC" in (early.skip_message or "")
    every_five = schedule_tick(hour + timedelta(minutes=5), dlq_reprocess_cron="*/5 * * * *")
    assert isinstance(every_five, RunRequest)
    bad = schedule_tick(hour, dlq_reprocess_cron="hourly")
    assert isinstance(bad, SkipReason)
    assert (bad.skip_message or "").startswith("bad setting: PIPELINE_DLQ_REPROCESS_CRON='hourly'")


def test_a_fresh_instance_shows_only_the_days_a_run_can_still_write() -> None:
    partitions = defs.resolve_asset_graph().get(EVENTS_KEY).partitions_def
    assert partitions is not None
    with DagsterInstance.ephemeral() as instance:
        keys = partitions.get_partition_keys(dynamic_partitions_store=instance)
    today = datetime.now(UTC).date()
    assert PARTITION_WINDOW_DAYS == 7  # the default: no PIPELINE_PARTITION_DAYS in the tests
    assert len(keys) == PARTITION_WINDOW_DAYS + 1
    assert keys[-1] == today.isoformat()
    assert keys[0] == (today - timedelta(days=PARTITION_WINDOW_DAYS)).isoformat()


PARTITION_KEYS = (
    "from dagster import AssetKey, DagsterInstance\n"
    "from pipeline_project.definitions import defs\n"
    "graph = defs.resolve_asset_graph()\n"
    "with DagsterInstance.ephemeral() as instance:\n"
    "    for key in ('events', 'sessions'):\n"
    "        part = graph.get(AssetKey(key)).partitions_def\n"
    "        print(key, ' '.join(part.get_partition_keys(dynamic_partitions_store=instance)))\n"
)


def load_location(home: Path, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs `script` in a fresh interpreter that loads the code location with these variables."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean_env(home), **env},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def partition_keys(home: Path, **env: str) -> tuple[dict[str, list[str]], str]:
    """Each daily asset's partition keys on a fresh instance of a freshly loaded location."""
    done = load_location(home, PARTITION_KEYS, **env)
    keys = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()}
    return keys, done.stderr


def test_the_partition_window_is_a_setting(tmp_path: Path) -> None:
    """PIPELINE_PARTITION_DAYS=3: a fresh instance shows today and 3 days, for events and sessions;
    a malformed value is one line and the default window, and the location still loads."""
    today = datetime.now(UTC).date()
    days = [(today - timedelta(days=n)).isoformat() for n in (3, 2, 1, 0)]
    keys, _ = partition_keys(tmp_path, PIPELINE_PARTITION_DAYS="3")
    assert keys == {"events": days, "sessions": days}
    keys, stderr = partition_keys(tmp_path, PIPELINE_PARTITION_DAYS="0")
    assert [len(k) for k in keys.values()] == [8, 8]
    [line] = [x for x in stderr.splitlines() if "PIPELINE_PARTITION_DAYS" in x]
    assert line.endswith(
        "bad setting: PIPELINE_PARTITION_DAYS='0': Input should be greater than or equal to 1; "
        "daily partitions cover the default 7 days"
    )


SESSIONS_LABEL = (
    "from dagster import AssetKey\n"
    "from pipeline_project.definitions import defs\n"
    "spec = defs.resolve_asset_graph().get(AssetKey('sessions'))\n"
    "print(spec.automation_condition.get_label())\n"
)


def test_the_sessions_cron_is_read_when_the_location_loads(tmp_path: Path) -> None:
    """PIPELINE_SESSIONS_CRON shapes the sessions condition; a malformed one is one line, the
    default (every 5 minutes) applies and the location still loads."""

    def label(**env: str) -> tuple[str, str]:
        done = load_location(tmp_path, SESSIONS_LABEL, **env)
        return done.stdout.strip().splitlines()[-1], done.stderr

    every_five = "events day updated since last request, a */5 * * * * tick since"
    assert label()[0] == every_five
    hourly = label(PIPELINE_SESSIONS_CRON="0 * * * *")[0]
    assert hourly == "events day updated since last request, a 0 * * * * tick since"
    default, stderr = label(PIPELINE_SESSIONS_CRON="often")
    assert default == every_five
    [line] = [x for x in stderr.splitlines() if "PIPELINE_SESSIONS_CRON" in x]
    assert line.endswith(
        "bad setting: PIPELINE_SESSIONS_CRON='often': is not a cron expression (minute hour day "
        "month weekday); the default '*/5 * * * *' applies"
    )
