"""Runs whose process is gone: found by the worker tag and marked failed, not left STARTED.

The default run launcher (and `dagster job execute`) cannot tell Dagster's run monitoring whether
a run's process is alive, so a run worker killed without a word stays STARTED for ever, and the
sensor, which counts unfinished runs per partition, would never plan that partition again. The
`ingest` op tags its run with its process (`pipeline/worker`); a STARTED run whose process on this
host no longer exists is reported failed (`report_run_failed`, visible in the UI and the event
log). Runs of other hosts are left to dagster.yaml's `run_monitoring.max_runtime_seconds`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

from pipeline_project.defs.tags import WORKER_TAG


def _start_ticks(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: tells a reused pid from the process that was tagged."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def this_worker() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or ''}"


def _local(tag: str) -> tuple[int, str] | None:
    """(pid, start ticks) of a `host:pid:ticks` worker tag written on this host, else None."""
    host, _, rest = tag.partition(":")
    pid, _, ticks = rest.partition(":")
    return (int(pid), ticks) if host == socket.gethostname() and pid.isdigit() else None


def local_pid(tag: str) -> int | None:
    """The tagged process's pid when it ran on this host, else None."""
    local = _local(tag)
    return local[0] if local is not None else None


def worker_gone(tag: str) -> bool:
    """True only when the tagged process was on this host and no longer exists."""
    local = _local(tag)
    if local is None:
        return False
    pid, ticks = local
    return _start_ticks(pid) != (ticks or None)


def fail_dead_runs(instance: DagsterInstance, runs: list[DagsterRun]) -> list[DagsterRun]:
    """Marks STARTED runs whose worker died failed; returns the runs still alive (or unknown)."""
    alive = []
    for run in runs:
        tag = run.tags.get(WORKER_TAG)
        if run.status == DagsterRunStatus.STARTED and tag and worker_gone(tag):
            instance.report_run_failed(
                run,
                f"run worker {tag} is gone (killed without a word): marked failed by "
                "kafka_backlog_sensor; its range commits whole or not at all, the next run "
                "drains what it did not commit",
            )
            continue
        alive.append(run)
    return alive
