"""Shared machinery of the fault tests: produce with ground truth, drive runs, mounts, snapshots.

Ground truth is what the broker acknowledged: each `Sent` carries the partition and offset from its
delivery report, the verdict a correct pipeline must reach, and the exact bytes sent (for I6).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from confluent_kafka import KafkaError, Message, Producer

from pipeline_project.batch.ranges import Range
from pipeline_project.events.generator import EventGenerator, Record
from pipeline_project.kafka.topics import ensure_topics
from pipeline_project.lake.history import read_history
from pipeline_project.lake.location import lake_of
from pipeline_project.lake.record import RangeRecord
from pipeline_project.lake.table import open_table
from pipeline_project.settings import Settings
from pipeline_project_tests.support import PYTHON, REPO_ROOT, env_for, unique

DRIVER = "pipeline_project_tests.faults.driver"


@dataclass(frozen=True)
class Sent:
    """One record the broker acknowledged: where it is, what it must become, what its bytes were."""

    partition: int
    offset: int
    verdict: str
    key: bytes | None = None
    value: bytes | None = None
    event_id: str | None = None


def fresh_settings(
    bootstrap: str, data_dir: Path, partitions: int = 3, **extra: object
) -> Settings:
    """Settings with new, created topics on `bootstrap` and a fresh data dir."""
    settings = dataclasses.replace(
        Settings(),
        bootstrap=bootstrap,
        raw_topic=unique("raw"),
        dlq_topic=unique("dlq"),
        data_dir=data_dir,
        consumer_group=unique("lake"),
        **extra,  # type: ignore[arg-type]
    )
    ensure_topics(settings, raw_partitions=partitions)
    return settings


def generated(n: int, seed: int = 11, bad_ratio: float = 0.05) -> list[Record]:
    """`n` realistic records stamped now (good, bot, test-user and every bad class).

    Small user and product pools: building Faker's default pools takes most of a second.
    """
    return EventGenerator(seed, bad_ratio=bad_ratio, users=300, products=200).batch(n)


def producer(settings: Settings, **conf: object) -> Producer:
    return Producer(
        {
            "bootstrap.servers": settings.bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.max.bytes": 1_048_576,
            **conf,
        }
    )


def produce(
    settings: Settings, records: Iterable[Record], partition: int | None = None
) -> list[Sent]:
    """Sends records (keyed, or into one partition) and returns the acknowledged ones, in order."""
    sent: list[Sent] = []
    failures: list[str] = []
    prod = producer(settings)

    def report(rec: Record, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failures.append(err.str())
            return
        sent.append(
            Sent(msg.partition(), msg.offset(), rec.verdict, rec.key, rec.value, rec.event_id)
        )

    for rec in records:
        kwargs = {} if partition is None else {"partition": partition}
        prod.produce(
            settings.raw_topic,
            key=rec.key,
            value=rec.value,
            on_delivery=functools.partial(report, rec),
            **kwargs,
        )
        prod.poll(0)
    assert prod.flush(60) == 0 and not failures, failures[:3]
    return sorted(sent, key=lambda s: (s.partition, s.offset))


def read_truth(path: Path) -> list[Sent]:
    """The producer CLI's --truth file (no bytes: the oracle reads them back from the topic)."""
    out = []
    for line in path.read_bytes().splitlines():
        row = orjson.loads(line)
        out.append(Sent(row["partition"], row["offset"], row["verdict"], event_id=row["event_id"]))
    return out


def ends(sent: Sequence[Sent]) -> dict[int, int]:
    """Partition → one past the last acknowledged offset."""
    out: dict[int, int] = {}
    for s in sent:
        out[s.partition] = max(out.get(s.partition, 0), s.offset + 1)
    return out


# ------------------------------------------------------------------------------------ driver runs


@dataclass
class Outcome:
    """What a driver run ended with: exit code, its JSON line, stderr."""

    code: int
    result: dict
    stderr: str

    @property
    def ok(self) -> bool:
        return self.code == 0 and bool(self.result.get("ok"))

    def __str__(self) -> str:
        return f"exit {self.code}: {self.result} {self.stderr[-1500:]}"


class Driver:
    """A driver child process: started, possibly frozen at a fault point, then awaited."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_stopped(self, timeout: float = 60.0) -> None:
        """Waits until the child froze itself (SIGSTOP at its fault point)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"driver exited before its fault point: {self.finish(1)}")
            if process_state(self.pid) == "T":
                return
            time.sleep(0.05)
        self.proc.kill()
        raise AssertionError("driver never reached its fault point")

    def cont(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def finish(self, timeout: float = 120.0) -> Outcome:
        out, err = self.proc.communicate(timeout=timeout)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        return Outcome(self.proc.returncode, json.loads(lines[-1]) if lines else {}, err)


def driver_env(settings: Settings, fault: str | None = None, stop: bool = False, **extra: str):
    env = env_for(settings, PIPELINE_CONSUMER_GROUP=settings.consumer_group, **extra)
    env.pop("PIPELINE_FAULT_POINT", None)
    env.pop("PIPELINE_FAULT_ACTION", None)
    if fault:
        env["PIPELINE_FAULT_POINT"] = fault
        if stop:
            env["PIPELINE_FAULT_ACTION"] = "stop"
    return env


def start_driver(
    settings: Settings,
    ranges: Sequence[Range] = (),
    fault: str | None = None,
    stop: bool = False,
    **extra: str,
) -> Driver:
    """Starts one run (explicit ranges, or planned when empty) in a child process."""
    args = [str(v) for r in ranges for v in (r.partition, r.start, r.end)]
    proc = subprocess.Popen(
        [PYTHON, "-m", DRIVER, *args],
        env=driver_env(settings, fault, stop, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    return Driver(proc)


def run_driver(
    settings: Settings, ranges: Sequence[Range] = (), timeout: float = 120.0, **extra: str
) -> Outcome:
    return start_driver(settings, ranges, **extra).finish(timeout)


def process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat (R, S, T, Z, ...), or "" when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[0]


def wait_dead(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while process_state(pid) not in ("", "Z"):
        assert time.monotonic() < deadline, f"pid {pid} did not exit"
        time.sleep(0.05)


# ------------------------------------------------------------------------------------ snapshots


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under root (empty when root is missing)."""
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


NOTHING_COMMITTED: tuple[int | None, tuple[str, ...]] = (None, ())


def committed_state(settings: Settings) -> tuple[int | None, tuple[str, ...]]:
    """(table version, referenced files): equal snapshots mean nothing was committed between."""
    table = open_table(lake_of(settings))
    if table is None:
        return None, ()
    return table.version(), tuple(sorted(table.file_uris()))


def records(settings: Settings) -> list[RangeRecord]:
    """Every committed range record, oldest first (what the manifests were)."""
    return read_history(lake_of(settings)).records


# --------------------------------------------------------------------------------------- mounts


@functools.cache
def mount_problem() -> str:
    """Why tmpfs and read-only bind mounts cannot be used here ("" when they can)."""
    if os.geteuid() != 0:
        return "not root: mount(2) needs CAP_SYS_ADMIN"
    probe = Path(f"/tmp/pipeline-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            return f"mount -t tmpfs failed: {done.stderr.strip()}"
        subprocess.run(["umount", str(probe)], check=True)
        return ""
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"mount {' '.join(args)}: {done.stderr}"


def _umount(path: Path) -> None:
    for _ in range(50):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)  # a just-killed child may still hold a file open
    subprocess.run(["umount", "-l", str(path)], check=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `path` (created), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        _umount(path)


def resize_tmpfs(path: Path, size: str) -> None:
    _mount("-o", f"remount,size={size}", str(path))


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """`path` bind-mounted onto itself read-only (EROFS for everyone, root included)."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("--bind", str(path), str(path))
    try:
        _mount("-o", "remount,bind,ro", str(path))
        yield path
    finally:
        _umount(path)


def fill(directory: Path) -> list[Path]:
    """Writes ballast files until the filesystem is full (ENOSPC); returns them."""
    paths = [directory / "ballast.bin", directory / "ballast-tail.bin"]
    for path, chunk in zip(paths, (b"\0" * 65536, b"\0" * 512), strict=True):
        with contextlib.suppress(OSError), open(path, "wb") as handle:
            while True:
                handle.write(chunk)
                handle.flush()
    return paths


# ------------------------------------------------------------------------- chaos / soak harness


@contextlib.contextmanager
def some_broker(home: Path) -> Iterator[str]:
    """PIPELINE_KAFKA_BOOTSTRAP when it answers, else a LocalBroker of our own under `home`."""
    from pipeline_project.kafka.broker import LocalBroker, metadata_ok
    from pipeline_project.local_server import free_port_pair

    configured = os.environ.get("PIPELINE_KAFKA_BOOTSTRAP")
    if configured and metadata_ok(configured, timeout=5.0):
        yield configured
        return
    broker = LocalBroker(home=home / "kafka", port=free_port_pair(), heap="512m")
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


def start_producer(
    settings: Settings, truth: Path, rate: float, *args: str, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """The real producer CLI in the background, writing the truth file; stop it with SIGTERM."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        [PYTHON, "-m", "pipeline_project.cli", "produce", "--rate", str(rate)]
        + ["--truth", str(truth), *args],
        env=env_for(settings),
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
    )


def stop_producer(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM (the producer stops generating and flushes), then its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)
