"""Durability order (invariant I7 of docs/lake.md), checked by tracing: SIGKILL cannot
simulate power loss, the page cache survives a process death. One run under `strace -f -y` must
show every data file of the range and its directory fsynced before the Delta log entry that
references them is linked into `_delta_log/`, and that entry and `_delta_log/` fsynced after it
(delta-rs itself never fsyncs on a local disk).

On S3 a completed PUT is the durability point, so the order is traced on the store: versitygw,
under `strace -f -y -p`, must have put every data object of the range in place before the log
entry naming them.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

from pipeline_project.batch.ranges import Range
from pipeline_project.lake.s3server import LocalS3
from pipeline_project.settings import Settings
from pipeline_project_tests.faults import oracle
from pipeline_project_tests.faults.fault_support import (
    DRIVER,
    committed_state,
    driver_env,
    generated,
    produce,
    run_driver,
)
from pipeline_project_tests.support import PYTHON, REPO_ROOT

SYSCALLS = "fsync,fdatasync,link,linkat,rename,renameat,renameat2"
EVENT_RE = re.compile(r"^\d+\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")
FD_PATH_RE = re.compile(r"^\d+<(.*)>$")
QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"')
KIND = {"fdatasync": "fsync", "linkat": "link", "renameat": "rename", "renameat2": "rename"}
# A path argument as `strace -y` shows it: a directory fd (or AT_FDCWD) with its path, then a name.
AT_PATH_RE = re.compile(r'(?:AT_FDCWD|\d+)<([^>]*)>,\s*"((?:[^"\\]|\\.)*)"')


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


UNFINISHED_RE = re.compile(r"^(\d+)\s+(.*) <unfinished \.\.\.>$")
RESUMED_RE = re.compile(r"^(\d+)\s+<\.\.\. \w+ resumed>(.*)$")


def joined_lines(text: str) -> Iterator[str]:
    """The trace's lines, with a call another thread interrupted joined back into one line.

    A run writes its files on a worker thread while the main thread works, so `strace -f` splits
    such calls into `<unfinished ...>` and `<... fsync resumed>` halves; they complete in the
    order of their resumed halves.
    """
    pending: dict[str, str] = {}
    for line in text.splitlines():
        if started := UNFINISHED_RE.match(line):
            pending[started.group(1)] = started.group(2)
        elif resumed := RESUMED_RE.match(line):
            pid = resumed.group(1)
            yield f"{pid} {pending.pop(pid, '')}{resumed.group(2)}"
        else:
            yield line


def events(trace: Path) -> list[tuple[str, list[str]]]:
    """(syscall, paths) of every successful traced call, in order: fds resolved by `-y`."""
    out = []
    for line in joined_lines(trace.read_text()):
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
    # The range's commit: the log entry that adds the data files (a run also makes metadata
    # commits of its own, e.g. the table's creation and the topic's identity).
    names = [Path(f).name for f in data_files]
    commit = last(
        evts,
        "link",
        lambda p: (
            len(p) == 2
            and p[1].startswith(log_dir)
            and all(n in Path(p[1]).read_text() for n in names)
        ),
    )
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


def placed(trace: Path) -> list[str]:
    """Where each successful link or rename of a traced server put a file, in order.

    versitygw writes an object to an unnamed temporary file, then links it under its key (or
    renames it there): that call is the moment the object exists for every reader.
    """
    out = []
    for line in trace.read_text().splitlines():
        match = EVENT_RE.match(line)
        if not match or int(match.group(3)) < 0:
            continue
        if KIND.get(match.group(1), match.group(1)) not in ("link", "rename"):
            continue
        pairs = AT_PATH_RE.findall(match.group(2))
        if pairs:
            directory, name = pairs[-1]
            out.append(name if name.startswith("/") else f"{directory}/{name}")
    return out


@contextlib.contextmanager
def traced(pid: int, trace: Path) -> Iterator[None]:
    """`strace -f -y` attached to a running process (all its threads) until the block ends."""
    tracer = subprocess.Popen(
        ["strace", "-f", "-y", "-s", "4096", "-e", f"trace={SYSCALLS}", "-o", str(trace)]
        + ["-p", str(pid)],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while "TracerPid:\t0" in Path(f"/proc/{pid}/status").read_text():
        assert tracer.poll() is None, f"strace could not attach: {tracer.communicate()[1]}"
        assert time.monotonic() < deadline, "strace never attached"
        time.sleep(0.05)
    try:
        yield
    finally:
        tracer.send_signal(signal.SIGINT)  # detaches; the traced server runs on
        tracer.wait(timeout=30)


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_on_s3_every_data_object_is_stored_before_the_log_entry_naming_it(
    any_settings: Settings, s3_server: LocalS3, tmp_path: Path
) -> None:
    settings = any_settings
    truth = produce(settings, generated(3000, seed=62))  # three partitions: three ranges
    pid = s3_server.pid()
    assert pid is not None
    trace = tmp_path / "strace.txt"
    with traced(pid, trace):
        done = run_driver(settings, timeout=180)
    assert done.ok, str(done)
    order = placed(trace)
    table = s3_server.data_dir.resolve() / settings.lake_uri.removeprefix("s3://") / "events"
    entries = sorted((table / "_delta_log").glob("*.json"))
    assert len(entries) >= 4, entries  # the table's creation, then one commit per range
    stored = 0
    for entry in entries:
        assert str(entry) in order, f"{entry.name} was not put in place while traced"
        for rel in added_paths(entry):
            path = str(table / rel)
            assert path in order, f"{rel} was never put in place"
            assert order.index(path) < order.index(str(entry)), f"{rel} stored after {entry.name}"
            stored += 1
    assert stored == len(committed_state(settings)[1]) >= 3
    oracle.check(settings, truth).assert_ok()


def added_paths(entry: Path) -> list[str]:
    """The data file paths a Delta log entry adds (relative to the table, percent-decoded)."""
    actions = [json.loads(line) for line in entry.read_text().splitlines() if line.strip()]
    return [unquote(a["add"]["path"]) for a in actions if "add" in a]
