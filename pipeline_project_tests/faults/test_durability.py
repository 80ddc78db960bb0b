"""Durability order (invariant I7 of docs/lake.md), checked by tracing: SIGKILL cannot
simulate power loss, the page cache survives a process death. One run under `strace -f -y` must
show every data file of the range and its directory fsynced before the Delta log entry that
references them is linked into `_delta_log/`, and that entry and `_delta_log/` fsynced after it
(delta-rs itself never fsyncs on a local disk).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline_project.batch.ranges import Range
from pipeline_project.settings import Settings
from pipeline_project_tests.faults import oracle
from pipeline_project_tests.faults.fault_support import DRIVER, driver_env, generated, produce
from pipeline_project_tests.support import PYTHON, REPO_ROOT

SYSCALLS = "fsync,fdatasync,link,linkat,rename,renameat,renameat2"
EVENT_RE = re.compile(r"^\d+\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")
FD_PATH_RE = re.compile(r"^\d+<(.*)>$")
QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"')
KIND = {"fdatasync": "fsync", "linkat": "link", "renameat": "rename", "renameat2": "rename"}


def trace_run(settings: Settings, trace: Path, rng: Range) -> None:
    done = subprocess.run(
        ["strace", "-f", "-y", "-s", "4096", "-e", f"trace={SYSCALLS}", "-o", str(trace)]
        + [PYTHON, "-m", DRIVER, str(rng.partition), str(rng.start), str(rng.end)],
        env=driver_env(settings),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def events(trace: Path) -> list[tuple[str, list[str]]]:
    """(syscall, paths) of every successful traced call, in order: fds resolved by `-y`."""
    out = []
    for line in trace.read_text().splitlines():
        match = EVENT_RE.match(line)
        if not match or int(match.group(3)) < 0:
            continue
        name, args = match.group(1), match.group(2)
        if name in ("fsync", "fdatasync"):
            fd = FD_PATH_RE.match(args.strip())
            paths = [fd.group(1)] if fd else []
        else:
            paths = QUOTED_RE.findall(args)
        out.append((KIND.get(name, name), paths))
    return out


def first(evts: list[tuple[str, list[str]]], name: str, pred) -> int:
    for i, (n, paths) in enumerate(evts):
        if n == name and pred(paths):
            return i
    raise AssertionError(f"no {name} matching the expectation in the trace")


def last(evts: list[tuple[str, list[str]]], name: str, pred) -> int:
    found = [i for i, (n, paths) in enumerate(evts) if n == name and pred(paths)]
    assert found, f"no {name} matching the expectation in the trace"
    return found[-1]


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_files_are_durable_before_the_commit_and_the_commit_after(
    settings: Settings, tmp_path: Path
) -> None:
    truth = produce(settings, generated(1500, seed=61), partition=0)
    rng = Range(settings.raw_topic, 0, 0, 1500)
    trace = tmp_path / "strace.txt"
    trace_run(settings, trace, rng)
    evts = events(trace)
    table = str((settings.lake_dir / "events").resolve())
    log_dir = f"{table}/_delta_log"
    data_files = sorted({p[0] for n, p in evts if n == "fsync" and p and p[0].endswith(".parquet")})
    assert data_files, "no data file was fsynced"
    commit = last(evts, "link", lambda p: len(p) == 2 and p[1].startswith(log_dir))
    entry = evts[commit][1][1]
    for path in data_files:
        assert path.startswith(table + "/date=")
        synced = first(evts, "fsync", lambda p, f=path: p == [f])
        parent = str(Path(path).parent)
        dir_synced = first(evts, "fsync", lambda p, d=parent: p == [d])
        assert synced < commit and dir_synced < commit, f"{path} not durable before the commit"
    assert last(evts, "fsync", lambda p: p == [entry]) > commit, "commit entry never fsynced"
    assert last(evts, "fsync", lambda p: p == [log_dir]) > commit, "_delta_log never fsynced"
    oracle.check(settings, truth).assert_ok()
