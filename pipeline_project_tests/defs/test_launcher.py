"""PrewarmedRunLauncher (the repo's dagster.yaml): runs forked from a process holding the code.

What a user would notice: a run launched the way the daemon launches it succeeds and lands its
rows (reconcile passes); a background run in its forked process still lowers its own priority;
terminating a run from the UI cancels it and commits nothing; a run of code the fork server did
not import goes to Dagster's own launcher. Launched here with `dagster job launch`, which uses
the instance's run launcher, with Dagster's DefaultRunCoordinator so no daemon must dequeue.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from pipeline_project.defs.launcher import PrewarmedRunLauncher
from pipeline_project.defs.tags import WORKER_TAG
from pipeline_project.lake.location import lake_of
from pipeline_project.lake.table import open_table, txn_version
from pipeline_project.settings import Settings
from pipeline_project_tests.ingest_support import assert_reconciles, produce
from pipeline_project_tests.support import PYTHON, REPO_ROOT, env_for

DAGSTER = str(Path(PYTHON).with_name("dagster"))
DIRECT = {
    "run_coordinator": {
        "module": "dagster._core.run_coordinator",
        "class": "DefaultRunCoordinator",
    }
}
FORKED = "Started process for run (pid: {})."


def instance_home(tmp_path: Path) -> Path:
    """A DAGSTER_HOME with the repo's run launcher and runs launched at once."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    repo = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    assert repo["run_launcher"]["class"] == PrewarmedRunLauncher.__name__
    config = {"run_launcher": repo["run_launcher"], **DIRECT}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


def launch(home: Path, env: dict[str, str], job: str, *args: str) -> str:
    """`dagster job launch`; the new run's id. Output to a file: the run outlives the command."""
    with DagsterInstance.from_config(str(home)) as instance:
        before = {r.run_id for r in instance.get_runs()}
    log = home / f"launch-{len(before)}.log"
    with log.open("w") as out:
        done = subprocess.run(
            [DAGSTER, "job", "launch", "-m", "pipeline_project.definitions", "-j", job, *args],
            cwd=REPO_ROOT,
            env={**env, "DAGSTER_HOME": str(home)},
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=180,
        )
    assert done.returncode == 0, log.read_text()[-3000:]
    with DagsterInstance.from_config(str(home)) as instance:
        (run_id,) = {r.run_id for r in instance.get_runs()} - before
    return run_id


def wait_for(home: Path, run_id: str, check, what: str, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with DagsterInstance.from_config(str(home)) as instance:
            run = instance.get_run_by_id(run_id)
            if check(run):
                return run
        time.sleep(0.5)
    raise AssertionError(f"run {run_id}: no {what} within {timeout:.0f} s ({run.status})")


def messages(home: Path, run_id: str) -> list[str]:
    with DagsterInstance.from_config(str(home)) as instance:
        return [entry.message for entry in instance.all_logs(run_id)]


def test_an_ingest_run_forked_by_the_launcher_commits_its_ranges(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    truth = produce(kafka_settings, tmp_path / "truth.jsonl", 600, "--bad-ratio", "0.05")
    home, env = instance_home(tmp_path), env_for(kafka_settings)
    run_id = launch(home, env, "ingest_events")
    run = wait_for(home, run_id, lambda r: r.is_finished, "end")
    logged = messages(home, run_id)
    assert run.status == DagsterRunStatus.SUCCESS, logged[-20:]
    # Forked by this launcher, not started through a code server (which tags its address).
    assert ".dagster/grpc_info" not in run.tags
    pid = int(run.tags[WORKER_TAG].split(":")[1])
    assert FORKED.format(pid) in logged
    assert_reconciles(env)
    table = open_table(lake_of(kafka_settings))
    ends = [txn_version(table, f"{kafka_settings.raw_topic}-{p}") or 0 for p in range(3)]
    assert sum(ends) == len(truth)  # every produced offset committed


def test_a_background_run_in_a_forked_process_still_lowers_its_priority(tmp_path: Path) -> None:
    home = instance_home(tmp_path)
    env = {
        "PATH": str(Path(PYTHON).parent) + ":/usr/bin:/bin",
        "PIPELINE_DATA_DIR": str(tmp_path / "data"),
        "PIPELINE_BACKGROUND_NICE": "5",
    }
    run_id = launch(home, env, "expire_lake_days")
    run = wait_for(home, run_id, lambda r: r.is_finished, "end")
    logged = messages(home, run_id)
    assert run.status == DagsterRunStatus.SUCCESS, logged[-20:]
    assert "background work: CPU niceness 5 (PIPELINE_BACKGROUND_NICE)" in logged


def test_terminating_a_forked_run_cancels_it_and_commits_nothing(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    produce(kafka_settings, tmp_path / "truth.jsonl", 50)
    home, env = instance_home(tmp_path), env_for(kafka_settings)
    # A range past the log end: its drain waits (up to PIPELINE_DRAIN_TIMEOUT_SECONDS) for records.
    config = tmp_path / "range.yaml"
    ranges = [{"partition": p, "start": 0, "end": 100_000} for p in range(3)]
    config.write_text(yaml.safe_dump({"ops": {"ingest": {"config": {"ranges": ranges}}}}))
    run_id = launch(home, env, "ingest_events", "-c", str(config))
    wait_for(home, run_id, lambda r: WORKER_TAG in r.tags, "op start")
    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.run_launcher.terminate(run_id)  # as the UI's Terminate does
    run = wait_for(home, run_id, lambda r: r.is_finished, "end", timeout=60)
    assert run.status == DagsterRunStatus.CANCELED
    with DagsterInstance.from_config(str(home)) as instance:
        canceled = instance.all_logs(run_id, of_type=DagsterEventType.RUN_CANCELED)
    assert canceled
    table = open_table(lake_of(kafka_settings))
    source = f"{kafka_settings.raw_topic}-0"
    assert table is None or txn_version(table, source) is None


def test_code_the_fork_server_did_not_import_goes_to_dagsters_launcher(tmp_path: Path) -> None:
    home = instance_home(tmp_path)
    env = {
        "PATH": str(Path(PYTHON).parent) + ":/usr/bin:/bin",
        "PIPELINE_DATA_DIR": str(tmp_path / "data"),
    }
    run_id = launch(home, env, "expire_lake_days")
    wait_for(home, run_id, lambda r: r.is_finished, "end")
    with DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_run_by_id(run_id)
        launcher = instance.run_launcher
        assert isinstance(launcher, PrewarmedRunLauncher)
        assert launcher._forkable(run)
        origin = run.job_code_origin
        elsewhere = origin.repository_origin._replace(executable_path="/usr/bin/python3")
        other = origin._replace(repository_origin=elsewhere)
        assert not launcher._forkable(run._replace(job_code_origin=other))
        assert not PrewarmedRunLauncher(preload=["another.module"])._forkable(run)
