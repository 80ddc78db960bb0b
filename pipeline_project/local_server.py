"""A local server process (the Kafka broker, the S3 gateway): pid file, own session, stop, ports.

Both servers are long-lived children started by the CLI: each runs in its own session, so Ctrl-C
in the terminal that started it does not kill it, and is found again through its pid file, which
counts only while /proc says that pid is still the same server (a reused pid is not ours).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

Cmdline = list[bytes]  # /proc/<pid>/cmdline split at NUL: the program, then its arguments


@dataclass(frozen=True)
class ServerProcess:
    """How one kind of local server is found, started and stopped.

    `name` starts its error messages ("the broker", "versitygw"); `owns` says whether a command
    line is this server's; `error` is the exception type its callers expect.
    """

    name: str
    pid_file: Path
    log_file: Path
    owns: Callable[[Cmdline], bool]
    error: type[Exception]

    def pid(self) -> int | None:
        """The pid if the pid file names a live process that `owns` accepts; a stale file goes."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            cmdline = []
        if not cmdline or not self.owns(cmdline) or is_zombie(pid):
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    def spawn(
        self, cmd: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen:
        """Starts `cmd` in its own session, output appended to the log, and writes the pid file."""
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen(
                list(cmd),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=cwd,
                env=None if env is None else dict(env),
            )
        self.pid_file.write_text(str(proc.pid))
        return proc

    def wait_ready(
        self, proc: subprocess.Popen, ready: Callable[[], bool], timeout: float, every: float
    ) -> None:
        """Polls `ready` until it says yes; an early exit or the timeout raises `error`.

        On timeout the server is stopped first, so a half-started one does not hold the port.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise self.error(
                    f"{self.name} exited with code {proc.returncode} while starting; "
                    f"see {self.log_file}"
                )
            if ready():
                return
            time.sleep(every)
        self.stop()
        raise self.error(f"{self.name} did not answer within {timeout:.0f} s; see {self.log_file}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, up to `timeout` for a clean exit, then SIGKILL; the pid, None if none ran."""
        pid = self.pid()
        if not pid:
            return None
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return pid


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an exited child nobody reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not is_zombie(pid)


def is_zombie(pid: int) -> bool:
    """True for a zombie, or when /proc no longer shows the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when host:port cannot be bound: a listener, or a live connection using it as local port.

    A connect() probe alone misses the second case (ephemeral ports) and a server then dies with
    "Address already in use"; binding with SO_REUSEADDR, as the servers do, does not.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port_pair() -> int:
    """A port p such that p and p+1 are free on localhost (a broker and its controller).

    Chosen below Linux's ephemeral range (32768+), so client connections cannot grab it meanwhile.
    """
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 32_000)
        if not port_in_use(port) and not port_in_use(port + 1):
            return port
    raise OSError("no free pair of TCP ports found on localhost")
