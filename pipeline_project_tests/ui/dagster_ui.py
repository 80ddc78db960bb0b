"""A real Dagster webserver for browser tests: start it on a free port, ask it GraphQL, stop it.

`dagster-webserver -w workspace.yaml` loads the code location as `dagster dev` does, without the
daemon: no sensor or automation run starts behind the test's back, so what the pages show is
exactly what the test prepared. The server runs in its own session (process group), so teardown
reaches the code server it spawns even when a test fails half-way.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pipeline_project_tests.support import PYTHON, REPO_ROOT

DAGSTER = str(Path(PYTHON).parent / "dagster")
WEBSERVER = str(Path(PYTHON).parent / "dagster-webserver")
CHROMIUM = "/usr/bin/chromium"
# The flags that make Debian's Chromium quiet and reliable headless on a machine with no outside
# network (polyglot.md, "Known to work"); a fresh --user-data-dir comes from the profile argument.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

WORKSPACE_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DagsterWebserver:
    """`dagster-webserver -w workspace.yaml` with the given environment and DAGSTER_HOME."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> DagsterWebserver:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [WEBSERVER, "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._wait_loaded(timeout)
        return self

    def _wait_loaded(self, timeout: float) -> None:
        """Until the webserver answers and the code location is loaded (or failed to load)."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"webserver exited ({self.proc.returncode}):\n{self.log()}")
            try:
                data = self.graphql(WORKSPACE_QUERY, timeout=5)
            except (OSError, urllib.error.URLError, ValueError) as exc:
                last = repr(exc)
                time.sleep(0.5)
                continue
            entries = data["workspaceOrError"].get("locationEntries") or []
            statuses = {e["name"]: e for e in entries}
            entry = statuses.get("pipeline_project")
            if entry and entry["loadStatus"] == "LOADED":
                loaded = entry["locationOrLoadError"]
                if loaded["__typename"] != "RepositoryLocation":
                    raise AssertionError(f"code location failed to load: {loaded}")
                return
            last = json.dumps(statuses)
            time.sleep(0.5)
        raise AssertionError(f"webserver not ready after {timeout:.0f} s ({last}):\n{self.log()}")

    def graphql(
        self, query: str, variables: dict[str, Any] | None = None, timeout: float = 30
    ) -> dict:
        """POSTs a GraphQL query to the webserver; returns `data`, failing on GraphQL errors."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(  # noqa: S310 - http on loopback, built here
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            payload = json.loads(response.read())
        if payload.get("errors"):
            raise AssertionError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL whatever is left of the process group."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        try:
            os.killpg(pgid, signal.SIGKILL)  # code servers the webserver spawned
        except (ProcessLookupError, PermissionError):
            pass
