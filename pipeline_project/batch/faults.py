"""Deterministic kill points for crash tests (RELIABILITY.md §8.1): test-only by intent.

`fault_point("K4")` is a no-op unless the environment variable PIPELINE_FAULT_POINT equals "K4";
then the process SIGKILLs itself at exactly that spot, so a test can prove recovery from a crash
there without timing races. SIGKILL (not an exception) because a real crash runs no `finally`, no
atexit and no pyarrow cleanup. Never set the variable in production.

Points placed by the lake/ledger: K2 (mid-Parquet write, after the first row group), K4 (between
publishing two files), K8 (manifest temp file written and fsynced, not yet linked into place).
The run orchestration places K1, K3, K5, K6, K7.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "PIPELINE_FAULT_POINT"


def fault_point(name: str) -> None:
    """SIGKILLs this process when PIPELINE_FAULT_POINT == name; otherwise returns at once."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
