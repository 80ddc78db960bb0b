"""`produce --processes N`: N producer processes run as one, with one summary and one exit code.

One process's Python makes and sends ~75-90k events a second (the generator and one delivery report
per record each take about half), so a faster load needs more processes. The parent checks the
cluster once (one clear error line), builds the seed's pools of users and products once, and forks
the children before any Kafka client runs in it. Child `i` produces stream `i` of the seed
(`EventGenerator(stream=i)`: its own event ids, the same users and products) and its share of
`--count` and `--rate`; all of them append to one `--truth` file in whole chunks (O_APPEND).

Every STATUS_INTERVAL_S a child sends its counts up a pipe, so the parent keeps the live status line
and the `--metrics-port` counters for the whole run. At the end each child sends its tally; the
parent prints the summed summary. SIGINT and SIGTERM reach the children through the parent (they
ignore SIGINT, which a terminal sends the whole process group), so a first signal stops generation
everywhere and a second cuts every flush short, as in one process. A child whose parent is gone
(its next report finds the pipe closed) stops the same way, flushes, and logs what it delivered.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from types import FrameType
from typing import Any

from pipeline_project.errors import PipelineError
from pipeline_project.events.generator import Pools, build_pools
from pipeline_project.kafka.produce import (
    STATUS_INTERVAL_S,
    Metrics,
    Outcome,
    Status,
    Tally,
    connect,
    metrics_port_error,
    produce_stream,
    report,
)
from pipeline_project.perf import frozen_heap
from pipeline_project.settings import Settings

log = logging.getLogger(__name__)

COUNTS = ("sent", "delivered", "failed", "errors")


def run(
    args: argparse.Namespace,
    settings: Settings,
    clock: Callable[[], float],
    topic: str,
    seed: int,
) -> int:
    """Runs `args.processes` producers of the seed's streams; prints one summary."""
    # One clear line if the cluster or topic is amiss; closed (its threads gone) before any fork.
    connect(settings, topic, args.compression).close()
    pools = build_pools(seed)  # once, shared by every child through fork
    shares = [share for share in _shares(args) if share.count != 0]
    if args.metrics_port is not None:
        _check_port(args.metrics_port)
    parent = _Parent()
    job = _Job(settings, clock, topic, seed, pools)
    metrics = None
    began = time.monotonic()
    try:
        with frozen_heap():  # the children inherit it frozen; the parent gets its heap back
            for stream, share in enumerate(shares):
                parent.start(job, share, stream)
        # Served only now: no child inherits the server's thread or its listening socket.
        if args.metrics_port is not None:
            metrics = Metrics(args.metrics_port)
            parent.status.on_tick = metrics.update
        parent.serve()
    finally:
        parent.close()
        if metrics is not None:
            metrics.close()
    outcome = parent.outcome(time.monotonic() - began)
    return report(outcome, args, topic, seed)


def _check_port(port: int) -> None:
    """The --metrics-port error before any child starts (the server itself starts after them)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as exc:
            raise metrics_port_error(port, exc) from None


def _shares(args: argparse.Namespace) -> list[argparse.Namespace]:
    """Each child's flags: an equal share of --count and --rate, the rest unchanged."""
    n = args.processes
    out = []
    for i in range(n):
        share = argparse.Namespace(**vars(args))
        share.processes = 1
        if args.count is not None:
            share.count = args.count // n + (1 if i < args.count % n else 0)
        share.rate = args.rate / n
        out.append(share)
    return out


@dataclass(frozen=True)
class _Job:
    """What every child shares: where to produce, the seed and its pools, the clock."""

    settings: Settings
    clock: Callable[[], float]
    topic: str
    seed: int
    pools: Pools


class _Child:
    """One forked producer process and the latest counts it reported."""

    def __init__(self, stream: int, process: multiprocessing.process.BaseProcess, conn: Connection):
        self.stream, self.process, self.conn = stream, process, conn
        self.counts: dict[str, Counter[str]] = {name: Counter() for name in COUNTS}
        self.in_flight = 0
        self.done: dict[str, Any] | None = None


class _Parent:
    """Starts the children, gathers what they report, and forwards stop signals to them."""

    def __init__(self) -> None:
        self.children: list[_Child] = []
        self.tally = Tally()
        self.status = Status(self.tally, self._in_flight, None)
        self.reason = ""
        self._previous: dict[int, Any] = {}
        self._context = multiprocessing.get_context("fork")

    def start(self, job: _Job, share: argparse.Namespace, stream: int) -> None:
        """Forks the child for `stream`; the first start also installs the signal forwarding."""
        if not self._previous:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._forward)
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_child,
            # Read ends it would otherwise keep open: its own and those of the children before it.
            args=(job, share, stream, send, [receive, *(child.conn for child in self.children)]),
            name=f"produce-{stream}",
        )
        process.start()
        send.close()
        self.children.append(_Child(stream, process, receive))

    def serve(self) -> None:
        """Reads the children's reports until every pipe closes; keeps the status line going."""
        open_pipes = {child.conn: child for child in self.children}
        while open_pipes:
            for conn in wait(list(open_pipes), timeout=STATUS_INTERVAL_S):
                child = open_pipes[conn]  # type: ignore[index]
                try:
                    kind, payload = conn.recv()  # type: ignore[union-attr]
                except EOFError:
                    del open_pipes[conn]  # type: ignore[arg-type]
                    continue
                child.counts = {n: Counter(payload[n]) for n in COUNTS}
                child.in_flight = payload["in_flight"]
                if kind == "done":
                    child.done = payload
            self._sum()
            self.status.maybe_update()
        for child in self.children:
            child.process.join()

    def outcome(self, seconds: float) -> Outcome:
        """The run as one producer: summed counts, the longest child's produce time."""
        self._sum()
        fatal = False
        reasons = []
        produce_seconds = 0.0
        for child in self.children:
            if child.done is None:
                log.error(
                    "producer process %d ended (exit code %s) before its summary: its last "
                    "report is counted, records it sent after that are not",
                    child.stream,
                    child.process.exitcode,
                )
                self.tally.errors["process_lost"] += 1
                fatal = True
                continue
            fatal = fatal or child.done["fatal"]
            reasons.append(child.done["reason"])
            produce_seconds = max(produce_seconds, child.done["produce_seconds"])
        reason = self.reason or ("fatal" if "fatal" in reasons else reasons[0] if reasons else "")
        return Outcome(self.tally, self._in_flight(), seconds, produce_seconds, reason, fatal)

    def close(self) -> None:
        """Stops any child still running (an error in the parent) and restores the handlers."""
        self._terminate(child for child in self.children if child.done is None)
        for child in self.children:
            child.process.join()
            child.conn.close()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self.status.close()

    def _sum(self) -> None:
        for name in COUNTS:
            total: Counter[str] = Counter()
            for child in self.children:
                total.update(child.counts[name])
            setattr(self.tally, name, total)

    def _in_flight(self) -> int:
        return sum(child.in_flight for child in self.children)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        """First signal: children stop generating; second: they cut the flush short too."""
        if not self.reason:
            self.reason = signal.Signals(signum).name
        self._terminate(self.children)

    @staticmethod
    def _terminate(children: Iterable[_Child]) -> None:
        for child in children:
            if child.process.is_alive() and child.process.pid is not None:
                os.kill(child.process.pid, signal.SIGTERM)


def _child(
    job: _Job, share: argparse.Namespace, stream: int, conn: Connection, others: list[Connection]
) -> None:
    """A forked producer: stream `stream` of the seed, its counts sent up `conn`.

    `others`: its copies of the read ends (its own pipe's and those of the children forked before
    it), closed at once, so each pipe's only reader is the parent and a child notices when the
    parent is gone.
    """
    for other in others:
        other.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards it as SIGTERM

    orphaned = False

    def tick(tally: Tally, in_flight: int) -> None:
        nonlocal orphaned
        if orphaned:
            return
        try:
            conn.send(("tick", _counts(tally, in_flight)))
        except OSError:  # the parent is gone: stop as on its SIGTERM, flushing what was sent
            orphaned = True
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        outcome = produce_stream(
            share, job.settings, job.clock, job.topic, job.seed, stream=stream, pools=job.pools,
            on_tick=tick, tty=False, signals=(signal.SIGTERM,),
        )  # fmt: skip
    except PipelineError as exc:
        sys.stderr.write(f"produce: error (process {stream}): {exc}\n")
        sys.stderr.flush()
        sys.exit(1)
    done = _counts(outcome.tally, outcome.in_flight)
    done.update(reason=outcome.reason, fatal=outcome.fatal, produce_seconds=outcome.produce_seconds)
    if orphaned:  # what it sent is flushed; nobody is left to count it
        log.error(
            "producer process %d: its parent is gone; stopped with %d of %d records delivered",
            stream,
            outcome.tally.delivered.total(),
            outcome.tally.sent.total(),
        )
        sys.exit(1)
    conn.send(("done", done))
    conn.close()


def _counts(tally: Tally, in_flight: int) -> dict[str, Any]:
    out: dict[str, Any] = {name: dict(getattr(tally, name)) for name in COUNTS}
    out["in_flight"] = in_flight
    return out
