"""KF1/KF2 of the fault matrix (docs/ARCHITECTURE.md): the broker dies mid-drain or mid-DLQ-produce.

SIGTERM or SIGKILL, on a broker of this module's own (the session's broker is never touched); the
lake on local disk, and on versitygw for a run that must fail mid-DLQ-produce.

The run is frozen at the exact spot (K1a: half the range read; K6a: DLQ records handed to the
producer, none confirmed), the broker is signalled, then the run continues. It either completes (the
broker came back in time) or fails cleanly without committing anything; a re-run succeeds and the
oracle holds.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import pytest

from pipeline_project.batch.ranges import Range
from pipeline_project.kafka.broker import LocalBroker
from pipeline_project.settings import Settings
from pipeline_project_tests.faults import oracle
from pipeline_project_tests.faults.fault_support import (
    committed_state,
    generated,
    produce,
    run_driver,
    start_driver,
    wait_dead,
)

RECORDS = {"K1a": 30_000, "K6a": 3_000}  # K1a needs a range longer than one fetch


def signal_broker(broker: LocalBroker, sig: signal.Signals) -> None:
    """SIGTERM: a clean shutdown, awaited; SIGKILL: the JVM is gone at once."""
    if sig == signal.SIGTERM:
        broker.stop()
        return
    pid = broker.pid()
    assert pid is not None
    os.kill(pid, sig)
    wait_dead(pid)
    broker.pid_file.unlink(missing_ok=True)


def case(point: str, sig: signal.Signals, backend: str) -> object:
    return pytest.param(point, sig, backend, id=f"{point}-{sig.name.lower()}-{backend}")


# Every case on local disk; on S3 the run that must fail after its rejects were handed to the
# DLQ producer: "nothing committed" is asserted on the store, and the re-run's commit must name the
# new DLQ copies. The broker side of the fault is the same on both backends, and a run killed
# mid-drain (K1a, 30 000 records, a minute) touches the lake no more than this one does.
CASES = [
    *(case(p, s, "local") for p in RECORDS for s in (signal.SIGTERM, signal.SIGKILL)),
    case("K6a", signal.SIGKILL, "s3"),
]


@pytest.mark.parametrize(("point", "sig", "backend"), CASES, indirect=["backend"])
def test_broker_dies_mid_run(
    own_broker: LocalBroker, own_settings: Settings, backend: str, point: str, sig: signal.Signals
) -> None:
    settings = dataclasses.replace(own_settings, lake_uri=backend)
    truth = produce(settings, generated(RECORDS[point], seed=5, bad_ratio=0.05), partition=0)
    empty = committed_state(settings)
    # SIGTERM: the broker comes back while the run still waits, so the run may complete.
    # SIGKILL: the broker stays down until the run gave up, so the run must fail.
    comes_back = sig == signal.SIGTERM
    bound = "60" if comes_back else "5"
    run = start_driver(
        settings,
        [Range(settings.raw_topic, 0, 0, len(truth))],
        fault=point,
        stop=True,
        PIPELINE_DRAIN_TIMEOUT_SECONDS=bound,
        PIPELINE_DLQ_TIMEOUT_SECONDS=bound,
    )
    run.wait_stopped()
    signal_broker(own_broker, sig)
    run.cont()
    if comes_back:
        time.sleep(1.0)
        own_broker.start()
    started = time.monotonic()
    outcome = run.finish(timeout=120)
    if not comes_back:
        assert time.monotonic() - started < 40, "the failing run was not bounded in time"
        assert outcome.code == 1, str(outcome)
        own_broker.start()
    if not outcome.ok:
        assert outcome.code == 1, f"not a clean failure: {outcome}"
        assert outcome.result["error"] in ("DrainError", "DlqDeliveryError"), str(outcome)
        assert committed_state(settings) == empty, "a failed run committed something"
        rerun = run_driver(settings)
        assert rerun.ok, str(rerun)
    oracle.check(settings, truth).assert_ok()
    oracle.assert_rerun_is_noop(settings)
