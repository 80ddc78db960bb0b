"""Several "hosts" on one machine: separate process trees, working dirs and DAGSTER_HOMEs.

What they share is what separate machines would: Kafka, PostgreSQL (Dagster's storage), Redis
(dagster-celery's broker) and the lake on S3 (versitygw). Every host's instance file is the shipped
deploy/dagster.yaml (only run monitoring's timings can be shortened for a test), every worker's
Celery file deploy/celery-worker.yaml, so the tests run what docs/deploy.md tells a team to run.

- the control host: `dagster-daemon run` (sensors, schedules, the run queue, run monitoring; it
  starts its own code server for the sensors) — the only host that plans work;
- worker hosts: `dagster-celery worker start` — each takes runs off the Celery queue and executes
  them whole (CeleryRunLauncher), concurrency 1 by default.

Each host runs in its own session (process group), so it can be frozen (SIGSTOP), thawed or
stopped as a whole, like a machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from pipeline_project.lake.location import AWS_VARIABLES
from pipeline_project.lake.s3server import LocalS3
from pipeline_project.settings import Settings
from pipeline_project_tests.multihost.services import LocalPostgres, LocalRedis
from pipeline_project_tests.support import REPO_ROOT, env_for

DEPLOY = REPO_ROOT / "deploy"
BIN = Path(sys.executable).parent
CELERY_APP = "dagster_celery.app"
TASK_ID_TAG = "dagster-celery/task_id"
FINISHED = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)


def instance_yaml(monitoring: dict | None = None) -> str:
    """deploy/dagster.yaml, with run monitoring's timings replaced by `monitoring` if given."""
    config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    if monitoring:
        config["run_monitoring"] = {**config["run_monitoring"], **monitoring}
    return yaml.safe_dump(config, sort_keys=False)


def settings_env(settings: Settings) -> dict[str, str]:
    """Batch sizing settings env_for leaves out: the control host's sensor plans with them."""
    return {
        "PIPELINE_MIN_BACKLOG_EVENTS": str(settings.min_backlog_events),
        "PIPELINE_MAX_RANGE_EVENTS": str(settings.max_range_events),
        "PIPELINE_MAX_WAIT_SECONDS": str(settings.max_wait_seconds),
    }


def shared_env(postgres: LocalPostgres, redis: LocalRedis, s3: LocalS3) -> dict[str, str]:
    """What every host is told: a fresh Dagster database, the Celery broker, the S3 lake's AWS_*."""
    env = postgres.env(postgres.create_database())
    env["DAGSTER_CELERY_BROKER_URL"] = f"{redis.url}/0"
    env["DAGSTER_CELERY_BACKEND_URL"] = f"{redis.url}/1"
    env.update({k: v for k, v in s3.storage_options().items() if k in AWS_VARIABLES})
    return env


def session_pids(sid: int) -> list[int]:
    """Every live process of session `sid` (a host's process tree)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            pids.append(int(entry.name))
    return pids


@dataclass
class Host:
    """One host: a process tree in its own session, with its own directory and DAGSTER_HOME."""

    name: str
    root: Path
    env: dict[str, str]
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.root / "host.log"

    def start(self) -> Host:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.args,
                cwd=self.root / "work",
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def pids(self) -> list[int]:
        return session_pids(self.proc.pid) if self.proc else []

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def freeze(self) -> None:
        """SIGSTOP to the whole tree: the machine stops, nothing of it runs or answers."""
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to the tree (a thawed one), then SIGKILL what is left after `timeout`."""
        if self.proc is None:
            return
        self.thaw()
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def task_ids(self) -> set[str]:
        """The Celery tasks (one per Dagster run) this worker received, from its own log."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return set(re.findall(r"Task \S+\[([0-9a-f-]{36})\] received", text))

    def ready(self) -> bool:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return " ready." in text


@dataclass
class Cluster:
    """The shared services' settings and the hosts started on them; stop() ends every host."""

    root: Path
    settings: Settings
    shared_env: dict[str, str]  # PostgreSQL, Redis, S3: what every host is told
    monitoring: dict | None = None
    hosts: list[Host] = field(default_factory=list)

    def _home(self, name: str) -> tuple[Path, dict[str, str]]:
        """A host's own directory: work/ (cwd, data dir), dagster_home/ (deploy/dagster.yaml)."""
        root = self.root / name
        (root / "work").mkdir(parents=True, exist_ok=True)
        home = root / "dagster_home"
        home.mkdir(exist_ok=True)
        (home / "dagster.yaml").write_text(instance_yaml(self.monitoring))
        env = env_for(self.settings, **settings_env(self.settings))
        env.update(self.shared_env)
        env.update(
            {
                "DAGSTER_HOME": str(home),
                "PIPELINE_DATA_DIR": str(root / "work" / "data"),  # host-local, never shared
                "PYTHONPATH": str(REPO_ROOT),  # the code location's package, as in an image
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "PYTHONUNBUFFERED": "1",
            }
        )
        for name_ in ("PIPELINE_FAULT_POINT", "PIPELINE_FAULT_ACTION"):
            env.pop(name_, None)
        return root, env

    def start_control(self, **extra_env: str) -> Host:
        """dagster-daemon with the code location (workspace.yaml in its own directory)."""
        root, env = self._home("control")
        env.update(extra_env)
        workspace = root / "work" / "workspace.yaml"
        workspace.write_text((REPO_ROOT / "workspace.yaml").read_text())
        args = [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)]
        host = Host("control", root, env, args)
        self.hosts.append(host.start())
        return host

    def start_worker(self, name: str, concurrency: int = 1, **extra_env: str) -> Host:
        """A Celery worker host (deploy/celery-worker.yaml), pre-importing the code location."""
        root, env = self._home(name)
        env.update(extra_env)
        args = [str(BIN / "dagster-celery"), "worker", "start", "-A", CELERY_APP]
        args += ["-y", str(DEPLOY / "celery-worker.yaml"), "-n", name, "-q", "dagster"]
        args += ["-i", "pipeline_project.definitions", "--"]
        args += ["--concurrency", str(concurrency), "--without-gossip", "--without-mingle"]
        host = Host(name, root, env, args)
        self.hosts.append(host.start())
        return host

    def wait_ready(self, *workers: Host, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        for worker in workers:
            while not worker.ready():
                if worker.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{worker.name} did not start: {tail(worker.log)}")
                time.sleep(0.2)

    def migrate(self) -> None:
        """`dagster instance migrate` once, before any host starts (docs/deploy.md): hosts that
        start together on an empty database would race to create Dagster's tables."""
        root, env = self._home("admin")
        done = subprocess.run(
            [str(BIN / "dagster"), "instance", "migrate"],
            cwd=root / "work",
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if done.returncode:
            raise AssertionError(f"dagster instance migrate failed: {done.stderr[-3000:]}")

    def stop(self) -> None:
        """Every host at once: SIGTERM, then SIGKILL what is left after a few seconds."""
        for host in self.hosts:
            host.thaw()
            host.signal(signal.SIGTERM)
        for host in reversed(self.hosts):
            host.stop()
        self.hosts.clear()

    @contextlib.contextmanager
    def observer(self) -> Iterator[DagsterInstance]:
        """The instance as any host sees it (deploy/dagster.yaml on the shared PostgreSQL)."""
        home = self.root / "observer"
        home.mkdir(exist_ok=True)
        (home / "dagster.yaml").write_text(instance_yaml(self.monitoring))
        saved = {k: os.environ.get(k) for k in self.shared_env}
        os.environ.update(self.shared_env)
        try:
            with DagsterInstance.from_config(str(home)) as instance:
                yield instance
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def runs_of(instance: DagsterInstance, job: str, statuses=None) -> list:
    """Run records of `job`, oldest first."""
    records = instance.get_run_records(RunsFilter(job_name=job, statuses=statuses))
    return sorted(records, key=lambda r: r.create_timestamp)


def executed_by(run, workers: list[Host]) -> str | None:
    """The worker host whose Celery log received this run's task, or None."""
    task = run.tags.get(TASK_ID_TAG)
    for worker in workers:
        if task and task in worker.task_ids():
            return worker.name
    return None
