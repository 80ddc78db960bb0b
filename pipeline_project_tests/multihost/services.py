"""The shared services of a multi-host deployment, started for real on this machine's loopback.

PostgreSQL (Dagster's run, event-log and schedule storage) from Debian's `postgresql` package:
`initdb` into a fresh directory, `pg_ctl start` on a free loopback port, password login. Redis
(Debian's `redis-server`), the Celery broker and result backend of dagster-celery. Like the Kafka
broker and versitygw fixtures: real servers, no Docker, stopped and deleted afterwards.

initdb and postgres refuse to run as root; as root they run as the `postgres` user (created by
the Debian package) via runuser, in a directory that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

from pipeline_project.kafka.broker import port_in_use
from pipeline_project_tests.support import free_port_pair, unique

PG_USER = "dagster"
PG_PASSWORD = "dagster-test-secret"  # noqa: S105 - a throwaway loopback server's login
PG_OS_USER = "postgres"


def postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<major>/bin holding initdb and pg_ctl, or None."""
    found = []
    for candidate in glob.glob("/usr/lib/postgresql/*/bin"):
        path = Path(candidate)
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            major = path.parent.name
            found.append((int(major) if major.isdigit() else 0, path))
    return max(found)[1] if found else None


def postgres_problem() -> str:
    """Why a PostgreSQL server cannot be started here ("" when it can)."""
    if postgres_bin() is None:
        return "no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql; .ci/run does)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_OS_USER)
        except KeyError:
            return "running as root and no `postgres` user to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root and no runuser to drop to the postgres user"
    return ""


@dataclass
class LocalPostgres:
    """One PostgreSQL server on 127.0.0.1:<port>, its cluster in a temporary directory."""

    port: int = field(default_factory=free_port_pair)
    home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pipeline-pg-")))
    proc_user: str | None = None

    @property
    def data(self) -> Path:
        return self.home / "data"

    def _as_owner(self, args: Sequence[str]) -> list[str]:
        return ["runuser", "-u", self.proc_user, "--", *args] if self.proc_user else list(args)

    def _run(self, args: Sequence[str]) -> None:
        done = subprocess.run(self._as_owner(args), capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stderr or done.stdout}")

    def start(self) -> None:
        """initdb (password auth, no fsync: a test cluster) and pg_ctl start -w."""
        binaries = postgres_bin()
        if binaries is None:
            raise RuntimeError(postgres_problem())
        if os.geteuid() == 0:
            self.proc_user = PG_OS_USER
            owner = pwd.getpwnam(PG_OS_USER)
            os.chown(self.home, owner.pw_uid, owner.pw_gid)
        pwfile = self.home / "pwfile"
        pwfile.write_text(PG_PASSWORD + "\n")
        if self.proc_user:
            os.chown(pwfile, pwd.getpwnam(PG_OS_USER).pw_uid, -1)
        self._run(
            [str(binaries / "initdb"), "-D", str(self.data), "-U", PG_USER, f"--pwfile={pwfile}"]
            + ["--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"]
        )
        options = (
            f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._run(
            [str(binaries / "pg_ctl"), "-D", str(self.data), "-l", str(self.home / "server.log")]
            + ["-o", options, "-w", "-t", "60", "start"]
        )

    def stop(self) -> None:
        binaries = postgres_bin()
        if binaries is not None and (self.data / "postmaster.pid").exists():
            subprocess.run(
                self._as_owner([str(binaries / "pg_ctl"), "-D", str(self.data), "-m", "fast"])
                + ["-w", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(self.home, ignore_errors=True)

    def connect(self, db: str = "postgres") -> psycopg2.extensions.connection:
        return psycopg2.connect(
            host="127.0.0.1", port=self.port, user=PG_USER, password=PG_PASSWORD, dbname=db
        )

    def create_database(self, prefix: str = "dagster") -> str:
        """A new, empty database (one Dagster instance's storage); its name."""
        name = unique(prefix).replace("-", "_")
        conn = self.connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
        conn.close()
        return name

    def env(self, db: str) -> dict[str, str]:
        """The DAGSTER_POSTGRES_* variables deploy/dagster.yaml reads."""
        return {
            "DAGSTER_POSTGRES_HOST": "127.0.0.1",
            "DAGSTER_POSTGRES_PORT": str(self.port),
            "DAGSTER_POSTGRES_USER": PG_USER,
            "DAGSTER_POSTGRES_PASSWORD": PG_PASSWORD,
            "DAGSTER_POSTGRES_DB": db,
        }


def redis_problem() -> str:
    return "" if shutil.which("redis-server") else "no redis-server (apt-get install redis-server)"


@dataclass
class LocalRedis:
    """A redis-server on 127.0.0.1:<port>, in memory only: the Celery broker and result backend."""

    port: int = field(default_factory=free_port_pair)
    home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pipeline-redis-")))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(redis_problem())
        log = open(self.home / "redis.log", "wb")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no", "--dir", str(self.home), "--protected-mode", "no"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not port_in_use(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {(self.home / 'redis.log')}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.home, ignore_errors=True)
