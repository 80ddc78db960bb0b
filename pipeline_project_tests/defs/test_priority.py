"""Runs that are not ingestion leave the CPU to it: PIPELINE_BACKGROUND_NICE.

A background run (sessions, DLQ jobs, upkeep, checks) lowers the niceness of its process when
Dagster started that process for it alone: a run the webserver or the daemon launches through the
code server (a multiprocessing child of it), or `dagster job execute`. Executed in another process
(`execute_in_process`), the run leaves that process's priority alone. The niceness a run logs is
read back from the operating system. And the run queue gives all of them one slot at a time.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import yaml
from dagster import DagsterInstance

from pipeline_project.definitions import build_defs, defs
from pipeline_project.defs.resources import PipelineSettings
from pipeline_project.defs.tags import BACKGROUND, LANE_TAG
from pipeline_project.perf import niceness
from pipeline_project_tests.defs.test_resources import dagster
from pipeline_project_tests.support import PYTHON, REPO_ROOT
from pipeline_project_tests.ui.dagster_ui import DagsterWebserver

# Runs launch at once, without a daemon to dequeue them (Dagster queues by default).
DIRECT = """run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
"""
JOB = "expire_lake_days"  # a background job that needs neither Kafka nor a lake
LOGGED = "background work: CPU niceness {} (PIPELINE_BACKGROUND_NICE)"
LAUNCH = """
mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) {
    __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }
"""
STATUS = "query Status($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
MESSAGES = """
query Logs($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {
    ... on MessageEvent { message } } } } }
"""


def test_a_run_the_webserver_launches_lowers_its_own_priority(tmp_path: Path) -> None:
    """The path of the UI and the daemon: the default run launcher, through the code server."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DIRECT)
    env = {
        "PATH": str(Path(PYTHON).parent) + ":/usr/bin:/bin",
        "DAGSTER_HOME": str(home),
        "PIPELINE_DATA_DIR": str(tmp_path / "data"),
        "PIPELINE_BACKGROUND_NICE": "6",
    }
    server = DagsterWebserver(env, tmp_path / "webserver.log").start()
    try:
        params = {
            "selector": {
                "repositoryLocationName": "pipeline_project",
                "repositoryName": "__repository__",
                "jobName": JOB,
            },
            "runConfigData": {},
        }
        launched = server.graphql(LAUNCH, {"params": params})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        status = wait_finished(server, run_id)
        messages = [
            e.get("message", "")
            for e in server.graphql(MESSAGES, {"id": run_id})["logsForRun"]["events"]
        ]
    finally:
        server.stop()
    assert status == "SUCCESS", server.log()
    assert LOGGED.format(6) in messages


def wait_finished(server: DagsterWebserver, run_id: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    status = "?"
    while time.monotonic() < deadline:
        status = server.graphql(STATUS, {"id": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} still {status} after {timeout:.0f} s:\n{server.log()}")


def test_dagster_job_execute_lowers_it_and_in_process_leaves_it(tmp_path: Path) -> None:
    """`dagster job execute` gets its own process: niced; 0 leaves it; in process, nothing."""
    job = ("job", "execute", "-m", "pipeline_project.definitions", "-j", JOB)
    data = {"PIPELINE_DATA_DIR": str(tmp_path / "data")}
    niced = dagster(*job, home=tmp_path, PIPELINE_BACKGROUND_NICE="7", **data)
    assert niced.returncode == 0, niced.stderr[-3000:]
    assert LOGGED.format(7) in niced.stderr
    plain = dagster(*job, home=tmp_path, PIPELINE_BACKGROUND_NICE="0", **data)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "background work" not in plain.stderr

    before = niceness()
    settings = PipelineSettings(background_nice=7, data_dir=str(tmp_path / "data"))
    with DagsterInstance.ephemeral() as instance:
        run = build_defs(settings).resolve_job_def(JOB).execute_in_process(instance=instance)
    assert run.success and niceness() == before


def test_lowering_priority_reaches_every_thread_and_never_raises_it() -> None:
    """Linux keeps a niceness per thread: a pool started before the call is lowered too."""
    script = (
        "import os, threading\n"
        "from pipeline_project.perf import lower_priority\n"
        "done = threading.Event()\n"
        "pool = threading.Thread(target=done.wait)\n"
        "pool.start()\n"
        "first = lower_priority(12)\n"
        "again = lower_priority(5)\n"
        "tasks = os.listdir('/proc/self/task')\n"
        "print(first, again, sorted({os.getpriority(os.PRIO_PROCESS, int(t)) for t in tasks}),"
        " len(tasks))\n"
        "done.set()\n"
    )
    done = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    first, again, values, threads = done.stdout.split(" ", 3)
    assert (first, again, values) == ("12", "12", "[12]") and int(threads) >= 2


def test_every_run_but_ingestion_is_in_the_background_lane_the_queue_limits() -> None:
    """One background run holds a run slot at a time (dagster.yaml): the rest stay for ingestion.

    Every job but `ingest_events`, and the automation sensor's runs, carry pipeline/lane=background.
    """
    jobs = {job.name: job for job in defs.resolve_all_job_defs() if not job.name.startswith("__")}
    assert jobs["ingest_events"].tags.get(LANE_TAG) is None
    background = {name for name, job in jobs.items() if job.tags.get(LANE_TAG) == BACKGROUND}
    assert background == set(jobs) - {"ingest_events"}
    assert {"reprocess_dlq", "dlq_report_job", "compact_events"} <= background
    sensor = defs.resolve_sensor_def("pipeline_automation_sensor")
    assert sensor.run_tags[LANE_TAG] == BACKGROUND
    limits = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())["run_queue"]
    lane = [x for x in limits["tag_concurrency_limits"] if x["key"] == LANE_TAG]
    assert lane == [{"key": LANE_TAG, "value": BACKGROUND, "limit": 1}]
    assert limits["max_concurrent_runs"] > 1  # a slot is always left to ingestion
