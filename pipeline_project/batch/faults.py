"""Deterministic kill points for crash tests (docs/lake.md, "Kill points"): test-only.

`fault_point("K4")` is a no-op unless the environment variable PIPELINE_FAULT_POINT equals "K4";
then the process SIGKILLs itself at exactly that spot, so a test can prove recovery from a crash
there without timing races. SIGKILL (not an exception) because a real crash runs no `finally`, no
atexit and no pyarrow cleanup. Never set the variable in production.

With PIPELINE_FAULT_ACTION=stop the process SIGSTOPs itself instead (once per point), so a test can
act while the run is frozen at that spot (kill the broker, fill the disk, break the lock: a zombie)
and then SIGCONT it.

Points placed by the lake/ledger: K2 (mid-Parquet write, after the first row group), K4 (between
publishing two files), K8 (manifest temp file written and fsynced, not yet linked into place).
The drain places K1a (after the first fetched batch of a range that is not complete yet), the DLQ
publisher K6a (every record handed to the producer, before the flush that confirms them). The run
orchestration places K1, K3, K5, K6, K7.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "PIPELINE_FAULT_POINT"
ACTION_ENV = "PIPELINE_FAULT_ACTION"
_STOPPED: set[str] = set()


def fault_point(name: str) -> None:
    """SIGKILLs (or SIGSTOPs, once) this process when PIPELINE_FAULT_POINT == name; else no-op."""
    if os.environ.get(FAULT_ENV) != name:
        return
    if os.environ.get(ACTION_ENV) == "stop":
        if name not in _STOPPED:
            _STOPPED.add(name)
            os.kill(os.getpid(), signal.SIGSTOP)
        return
    os.kill(os.getpid(), signal.SIGKILL)
