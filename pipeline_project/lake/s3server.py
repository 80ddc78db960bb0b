"""The local S3 server for the lake: versitygw (an S3 gateway over a directory, Apache-2.0).

No Docker and no mock: a real S3 endpoint on 127.0.0.1, its objects plain files under
`.local/s3/data/<bucket>/`, fixed development credentials. The Go binary is built once into
`.local/bin` (by `make install`, or on first start when `go` is found) and runs in its own session
so Ctrl-C in a terminal does not kill it. versitygw honours `If-None-Match: *` on PUT, which is what
delta-rs needs to commit `_delta_log/N.json` safely with concurrent writers.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline_project.errors import S3ServerError
from pipeline_project.lake import sigv4
from pipeline_project.lake.location import S3_CLIENT_DEFAULTS
from pipeline_project.local_server import ServerProcess, port_in_use

log = logging.getLogger(__name__)

VERSITYGW_MODULE = "github.com/versity/versitygw/cmd/versitygw"
VERSITYGW_VERSION = "v1.8.0"
DEV_ACCESS_KEY = "pipeline"
DEV_SECRET_KEY = "pipeline-secret"  # noqa: S105 - the local development server's fixed secret
DEFAULT_PORT = 9000
DEFAULT_BUCKET = "lake"
LAKE_PREFIX = "pipeline"


def repo_root() -> Path:
    """The source checkout this package runs from (an editable install), else the working dir."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else Path.cwd()


def local_bin() -> Path:
    return repo_root() / ".local" / "bin"


def find_versitygw() -> str | None:
    """$PIPELINE_VERSITYGW, else `.local/bin/versitygw` under the repo, else the one on PATH."""
    configured = os.environ.get("PIPELINE_VERSITYGW")
    if configured:
        if not os.access(configured, os.X_OK):
            raise S3ServerError(f"PIPELINE_VERSITYGW={configured} is not an executable file")
        return configured
    built = local_bin() / "versitygw"
    if os.access(built, os.X_OK):
        return str(built)
    return shutil.which("versitygw")


def build_versitygw() -> str:
    """`go install`s the pinned versitygw into `.local/bin`; fast when Go's caches are warm."""
    go = shutil.which("go")
    if not go:
        raise S3ServerError(
            "go not found, so versitygw cannot be built: install Go 1.25+ and run `make install`, "
            "or set PIPELINE_VERSITYGW to a versitygw binary"
        )
    target = local_bin()
    target.mkdir(parents=True, exist_ok=True)
    sys.stderr.write(f"building versitygw {VERSITYGW_VERSION} into {target} with {go}\n")
    done = subprocess.run(
        [go, "install", f"{VERSITYGW_MODULE}@{VERSITYGW_VERSION}"],
        env={**os.environ, "GOBIN": str(target)},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        build_log = target / "versitygw-build.log"
        build_log.write_text(done.stdout + done.stderr)
        raise S3ServerError(
            f"go install of versitygw failed (exit {done.returncode}); see {build_log}"
        )
    return str(target / "versitygw")


def versitygw_binary() -> str:
    """The binary to run: an existing one, else one built now (first run only)."""
    return find_versitygw() or build_versitygw()


@dataclass
class LocalS3:
    """One versitygw gateway: its files under `home`, S3 on 127.0.0.1:`port`, one bucket."""

    home: Path
    port: int = DEFAULT_PORT
    bucket: str = DEFAULT_BUCKET
    region: str = "us-east-1"
    start_timeout: float = 30.0

    @classmethod
    def from_env(cls) -> LocalS3:
        """Under $PIPELINE_LOCAL_DIR (default .local) like the broker; port $PIPELINE_S3_PORT."""
        local_dir = Path(os.environ.get("PIPELINE_LOCAL_DIR") or ".local")
        raw_port = os.environ.get("PIPELINE_S3_PORT") or str(DEFAULT_PORT)
        if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
            raise S3ServerError(f"PIPELINE_S3_PORT={raw_port!r} is not a TCP port")
        return cls(home=(local_dir / "s3").absolute(), port=int(raw_port))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "versitygw.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "versitygw.pid"

    @property
    def credentials(self) -> sigv4.Credentials:
        return sigv4.Credentials(DEV_ACCESS_KEY, DEV_SECRET_KEY, self.region)

    def storage_options(self) -> dict[str, str]:
        """delta-rs `storage_options` for this server: see lake_storage_options()."""
        return lake_storage_options(self.endpoint, DEV_ACCESS_KEY, DEV_SECRET_KEY, self.region)

    def exports(self) -> list[str]:
        """Shell lines that point the pipeline (and any AWS client) at this server's bucket."""
        env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": DEV_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": DEV_SECRET_KEY,
            "AWS_REGION": self.region,
            "AWS_ALLOW_HTTP": "true",
            "PIPELINE_LAKE_URI": f"s3://{self.bucket}/{LAKE_PREFIX}",
        }
        return [f"export {name}={value}" for name, value in env.items()]

    # -- process ---------------------------------------------------------------------------------
    @property
    def process(self) -> ServerProcess:
        """Its pid file, log and command line: what finds, starts and stops the gateway."""
        data_dir = str(self.data_dir).encode()
        return ServerProcess(
            "versitygw",
            self.pid_file,
            self.log_file,
            owns=lambda cmdline: b"versitygw" in cmdline[0] and data_dir in cmdline,
            error=S3ServerError,
        )

    def pid(self) -> int | None:
        """The pid if our pid file names a live versitygw serving our data dir, else None."""
        return self.process.pid()

    def start(self) -> str:
        """Starts the gateway unless ours already runs, creates the bucket; says what happened."""
        running = self.pid()
        if running:
            self.ensure_bucket()
            return f"s3 server already running (pid {running}) on {self.endpoint}"
        if port_in_use(self.port):
            raise S3ServerError(
                f"port {self.port} is already in use by another process; stop it or set "
                "PIPELINE_S3_PORT=<free port>"
            )
        binary = versitygw_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        proc = self._spawn(binary)
        self._wait_ready(proc)
        self.ensure_bucket()
        return (
            f"s3 server started (pid {proc.pid}) on {self.endpoint}, versitygw "
            f"{VERSITYGW_VERSION}, bucket {self.bucket}, data in {self.data_dir}"
        )

    def _spawn(self, binary: str) -> subprocess.Popen:
        """The gateway in its own session; credentials by environment, not on the command line.

        The caller's VGW_* variables are dropped: each is a versitygw option (read-only mode,
        another region...) that would silently change the server the tests and exports describe.
        """
        cmd = [binary, "--port", f"127.0.0.1:{self.port}", "--quiet", "posix", str(self.data_dir)]
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("VGW_")},
            "ROOT_ACCESS_KEY_ID": DEV_ACCESS_KEY,
            "ROOT_SECRET_ACCESS_KEY": DEV_SECRET_KEY,
            "VGW_REGION": self.region,
        }
        return self.process.spawn(cmd, cwd=self.home, env=env)

    def _wait_ready(self, proc: subprocess.Popen) -> None:
        """Waits until a signed ListBuckets succeeds: the gateway is up and knows our keys."""
        self.process.wait_ready(proc, self.answers, self.start_timeout, every=0.1)

    def answers(self, timeout: float = 2.0) -> bool:
        """True when a signed ListBuckets with the dev credentials returns 200."""
        try:
            status, _ = sigv4.request("GET", self.endpoint, "/", self.credentials, timeout)
        except OSError:
            return False
        return status == 200

    def bucket_exists(self, timeout: float = 2.0) -> bool:
        try:
            status, _ = sigv4.request(
                "HEAD", self.endpoint, f"/{self.bucket}", self.credentials, timeout
            )
        except OSError:
            return False
        return status == 200

    def ensure_bucket(self) -> None:
        """Creates the bucket over the S3 API (so versitygw records its owner); idempotent."""
        status, body = sigv4.request("PUT", self.endpoint, f"/{self.bucket}", self.credentials)
        if status == 200 or b"BucketAlreadyOwnedByYou" in body:
            return
        raise S3ServerError(
            f"creating bucket {self.bucket!r} on {self.endpoint} failed with HTTP {status}: "
            f"{body[:200].decode(errors='replace')}"
        )

    def stop(self, timeout: float = 15.0) -> str:
        """SIGTERM, wait for a clean shutdown, then SIGKILL; says so when nothing was running."""
        pid = self.process.stop(timeout)
        return f"s3 server stopped (pid {pid})" if pid else f"s3 server not running ({self.home})"


def lake_storage_options(
    endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1"
) -> dict[str, str]:
    """delta-rs (deltalake 1.6) storage options for an S3-compatible endpoint such as versitygw.

    Commit safety needs no extra key: delta-rs writes `_delta_log/N.json` with `PutMode::Create`,
    which object_store sends as `If-None-Match: *`, and a 412 makes the loser's commit fail with
    CommitFailedError. The client bounds are the lake's own (location.S3_CLIENT_DEFAULTS).
    """
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_REGION": region,
        "AWS_ALLOW_HTTP": "true" if endpoint.startswith("http://") else "false",
        **S3_CLIENT_DEFAULTS,
    }
