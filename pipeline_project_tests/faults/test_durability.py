"""I7 / F9, durability order, checked by tracing (SIGKILL cannot simulate power loss: the page
cache survives a process death). One run under `strace -f -y` must show, for every lake file:
fsync(staged file) < link(staged → lake) < fsync(lake dir); the prepared intent durable before the
first publish; and the manifest (the commit point) linked only after every lake directory fsync,
with its temp file fsynced before and its directory fsynced after.
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
def test_fsync_link_and_commit_happen_in_durable_order(settings: Settings, tmp_path: Path) -> None:
    truth = produce(settings, generated(1500, seed=61), partition=0)
    rng = Range(settings.raw_topic, 0, 0, 1500)
    trace = tmp_path / "strace.txt"
    trace_run(settings, trace, rng)
    evts = events(trace)
    lake_root = str(settings.lake_dir.resolve())
    manifest = next((settings.state_dir / "manifests").rglob("*.json")).resolve()
    intent = str((settings.state_dir / "intents").resolve())

    links = [(i, p) for i, (n, p) in enumerate(evts) if n == "link" and p[1].startswith(lake_root)]
    assert links, "no lake file was linked"
    dir_syncs = []
    for at, (staged, final) in links:
        assert first(evts, "fsync", lambda p, s=staged: p == [s]) < at, f"{staged} not fsynced"
        parent = str(Path(final).parent)
        synced = [i for i, (n, p) in enumerate(evts) if n == "fsync" and p == [parent] and i > at]
        assert synced, f"{parent} never fsynced after linking {final}"
        dir_syncs.append(synced[0])
    prepared = last(evts, "rename", lambda p: len(p) == 2 and p[1].startswith(intent))
    assert prepared < links[0][0], "files published before the prepared intent was durable"
    intent_dir = [str(Path(intent) / settings.raw_topic / "0")]
    between = [n == "fsync" and p == intent_dir for n, p in evts[prepared : links[0][0]]]
    assert any(between), "the prepared intent's directory was not fsynced before publishing"

    commit = first(evts, "link", lambda p: len(p) == 2 and p[1] == str(manifest))
    temp = evts[commit][1][0]
    assert first(evts, "fsync", lambda p: p == [temp]) < commit, "manifest temp not fsynced"
    assert max(dir_syncs) < commit, "the manifest was committed before the lake was durable"
    assert last(evts, "fsync", lambda p: p == [str(manifest.parent)]) > commit
    oracle.check(settings, truth).assert_ok()
