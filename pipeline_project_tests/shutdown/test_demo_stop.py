"""`make demo` then Ctrl-C: the UI and daemon stop first, then the producer, then the broker.

The real scripts/demo.sh runs on its own broker port, data dir, local dir and DAGSTER_HOME. Ctrl-C
is a SIGINT to the script's process group (what the terminal sends); every process it started must
be gone within STOP_BOUND_S, in that order, and the broker must no longer answer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from pipeline_project.kafka.broker import LocalBroker, metadata_ok
from pipeline_project_tests.support import REPO_ROOT, free_port_pair

UI_BOUND_S = 150.0
STOP_BOUND_S = 60.0


def our_processes(marker: str) -> dict[int, str]:
    """pid -> command line of every process whose environment carries `marker` (ours only)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() not in (entry / "environ").read_bytes():
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found[int(entry.name)] = cmdline
    return found


def role(cmdline: str) -> str | None:
    if "kafka.Kafka" in cmdline:
        return "broker"
    if " produce " in f"{cmdline} ":
        return "producer"
    if "dagster dev" in cmdline or "dagster_webserver" in cmdline or "dagster._daemon" in cmdline:
        return "dagster"
    return None


def _default_sigint() -> None:
    """A terminal's default: a shell started with SIGINT ignored (under a CI job started in the
    background, say) could never trap it, and the test would measure that instead of the demo."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ui_answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def seed_classpath(local: Path, broker: LocalBroker | None) -> None:
    """Reuses the cached broker classpath, so the demo's broker starts without asking Maven."""
    sources = [broker.home] if broker else []
    sources.append(REPO_ROOT / ".local" / "kafka")
    for home in sources:
        for cached in sorted(home.glob("classpath-*.txt")):
            (local / "kafka").mkdir(parents=True, exist_ok=True)
            shutil.copy(cached, local / "kafka" / cached.name)
            return


def test_ctrl_c_stops_ui_daemon_producer_then_broker(
    tmp_path: Path, local_broker: LocalBroker | None
) -> None:
    local, home = tmp_path / "local", tmp_path / "dagster_home"
    seed_classpath(local, local_broker)
    broker_port, ui_port = free_port_pair(), free_port_pair()
    bootstrap = f"localhost:{broker_port}"
    env = {
        **os.environ,
        "PIPELINE_KAFKA_BOOTSTRAP": bootstrap,
        "PIPELINE_LOCAL_DIR": str(local),
        "PIPELINE_DATA_DIR": str(tmp_path / "data"),
        "DAGSTER_HOME": str(home),
        "DAGSTER_PORT": str(ui_port),
        "DEMO_RATE": "50",
    }
    for name in ("PIPELINE_RAW_TOPIC", "PIPELINE_DLQ_TOPIC", "PIPELINE_KAFKA_CONFIG"):
        env.pop(name, None)
    log = (tmp_path / "demo.log").open("w")
    demo = subprocess.Popen(
        ["bash", "scripts/demo.sh"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_default_sigint,
    )
    marker = f"DAGSTER_HOME={home}"
    try:
        deadline = time.monotonic() + UI_BOUND_S
        while not ui_answers(ui_port):
            assert demo.poll() is None, (tmp_path / "demo.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the UI never answered"
            time.sleep(0.5)
        running = {role(c) for c in our_processes(marker).values()}
        assert {"broker", "producer", "dagster"} <= running

        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the foreground group
        gone: dict[str, float] = {}
        started = time.monotonic()
        while time.monotonic() - started < STOP_BOUND_S:
            alive = {role(c) for c in our_processes(marker).values()}
            for name in ("dagster", "producer", "broker"):
                if name not in alive and name not in gone:
                    gone[name] = time.monotonic() - started
            if demo.poll() is not None and not our_processes(marker):
                break
            time.sleep(0.1)
        left = our_processes(marker)
        assert not left, f"still running after {STOP_BOUND_S:.0f} s: {left}"
        assert demo.wait(timeout=5) is not None
        assert gone["dagster"] <= gone["producer"] <= gone["broker"], gone
        assert not metadata_ok(bootstrap, timeout=2.0)
        out = (tmp_path / "demo.log").read_text()
        assert "stopping:" in out and "broker stopped" in out, out[-3000:]
        summary = json.loads((local / "producer.log").read_text().splitlines()[-1])
        assert summary["stopped_by"] == "SIGTERM"  # stopped by the script, flushed, summarised
        assert summary["sent"] == summary["delivered"] > 0 and summary["in_flight"] == 0
    finally:
        for pid in our_processes(marker):
            os.kill(pid, signal.SIGKILL)
        log.close()
