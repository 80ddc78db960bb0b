"""The bench's per-event baseline judges every record as the real path does.

It applies the contract's rules (events/contract.py) and the parse stage's per-record check record
by record; this keeps the figures it is compared against honest: same rejects, same rule names.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from benchmarks.bench import _Bad, _baseline_event
from pipeline_project.batch.records import Reject
from pipeline_project_tests.batch.batch_support import (
    LATENESS_DAYS,
    NOW,
    SKEW_SECONDS,
    raw_batch,
    run,
)
from pipeline_project_tests.batch.test_process import CASES, GOOD


def baseline_verdict(value: bytes | None) -> tuple[str, str, str] | None:
    """(category, rule, field) of the baseline's reject, or None when it keeps the record."""
    low, high = NOW - timedelta(days=LATENESS_DAYS), NOW + timedelta(seconds=SKEW_SECONDS)
    try:
        _baseline_event(value, low, high)
    except _Bad as bad:
        return bad.category, bad.rule, bad.field
    return None


def real_verdict(value: bytes | None) -> tuple[str, str, str] | None:
    rejects: list[Reject] = run(raw_batch([value])).rejects
    return (rejects[0].category, rejects[0].rule, rejects[0].field) if rejects else None


@pytest.mark.parametrize(("name", "value"), [(c[0], c[1]) for c in CASES] + [("good", GOOD)])
def test_the_baseline_rejects_as_the_real_path_does(name: str, value: bytes | None) -> None:
    assert baseline_verdict(value) == real_verdict(value)
