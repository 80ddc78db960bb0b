"""Waiting on a multi-host deployment as a user would: through the shared instance and the lake."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Sequence

from dagster import DagsterInstance, DagsterRunStatus

from pipeline_project.batch.ranges import Range
from pipeline_project.batch.run import committed_end
from pipeline_project.lake.location import lake_of
from pipeline_project.settings import Settings
from pipeline_project_tests.faults.fault_support import process_state
from pipeline_project_tests.multihost.hosts import BIN, FINISHED, Host, runs_of, tail

INGEST_JOB = "ingest_events"


def wait_until(what: str, check: Callable[[], bool], timeout: float, hosts: Sequence[Host] = ()):
    """Polls `check` every half second; on timeout fails with the hosts' log tails."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {h.name}\n{tail(h.log)}" for h in hosts)
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")
        time.sleep(0.5)


def committed_ends(settings: Settings, partitions: int) -> dict[int, int]:
    """Partition → committed end in the lake (0 where nothing is committed yet)."""
    lake = lake_of(settings)
    return {
        p: committed_end(lake, Range(settings.raw_topic, p, 0, 0)) or 0 for p in range(partitions)
    }


def caught_up(settings: Settings, ends: dict[int, int]) -> Callable[[], bool]:
    """True once every partition's committed end reached `ends`."""

    def check() -> bool:
        now = committed_ends(settings, max(ends) + 1)
        return all(now[p] >= end for p, end in ends.items())

    return check


def finished(instance: DagsterInstance, run_id: str) -> bool:
    run = instance.get_run_by_id(run_id)
    return run is not None and run.status in FINISHED


def all_finished(instance: DagsterInstance, job: str) -> bool:
    runs = runs_of(instance, job)
    return bool(runs) and all(r.dagster_run.status in FINISHED for r in runs)


def launch(control: Host, job: str) -> str:
    """`dagster job launch` on the control host (the run goes through the queue like any other);
    the run's id."""
    workspace = control.root / "work" / "workspace.yaml"
    run_id = str(uuid.uuid4())
    done = subprocess.run(
        [str(BIN / "dagster"), "job", "launch", "-w", str(workspace), "-j", job]
        + ["--run-id", run_id],
        cwd=control.root / "work",
        env=control.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return run_id


def stopped(host: Host) -> list[int]:
    """The host's processes that froze themselves at their kill point."""
    return [pid for pid in host.pids() if process_state(pid) == "T"]


def overlapping(a: list, b: list) -> bool:
    """Some run of `a` ran while some run of `b` ran."""
    return any(
        x.start_time < y.end_time and y.start_time < x.end_time
        for x in a
        for y in b
        if x.start_time and y.start_time and x.end_time and y.end_time
    )


def succeeded(record) -> bool:
    return record.dagster_run.status == DagsterRunStatus.SUCCESS
