"""Generates records in a child process, ahead of the producer that sends them.

At full speed (`produce --rate 0`) making an event costs about as much as handing it to librdkafka
and counting its delivery report; on one thread the two add up, in two processes they overlap on
two cores. The child is forked before the producer's client exists and runs the very generator
the parent configured, so the records and their order are exactly those it would have made itself.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal

from pipeline_project.errors import PipelineError
from pipeline_project.events.generator import EventGenerator, Record

CHUNK = 5_000  # records per hand-over: big enough that pickling is per chunk, not per record
AHEAD_CHUNKS = 4  # at most this many chunks wait for the producer (~0.2 s of events at 100k/s)
PUT_WAIT_S = 1.0


class RecordsAhead:
    """`batch(n)` like EventGenerator's, served from a child process generating up to `limit`."""

    def __init__(self, gen: EventGenerator, limit: float) -> None:
        context = mp.get_context("fork")
        self._chunks: mp.Queue[list[Record]] = context.Queue(maxsize=AHEAD_CHUNKS)
        self._child = context.Process(
            target=_generate,
            args=(gen, limit, self._chunks, os.getpid()),
            name="generate-events",
            daemon=True,
        )
        self._child.start()
        self._buffer: list[Record] = []
        self._taken = 0

    def batch(self, n: int) -> list[Record]:
        """The next `n` records, in the order the generator made them."""
        out: list[Record] = []
        while len(out) < n:
            if self._taken == len(self._buffer):
                self._buffer, self._taken = self._next_chunk(), 0
            take = self._buffer[self._taken : self._taken + n - len(out)]
            self._taken += len(take)
            out += take
        return out

    def _next_chunk(self) -> list[Record]:
        while True:
            try:
                return self._chunks.get(timeout=PUT_WAIT_S)
            except queue.Empty:
                if not self._child.is_alive():
                    raise PipelineError(
                        f"the event generator process exited ({self._child.exitcode})"
                    ) from None

    def close(self) -> None:
        """Stops the child; records it made and nobody took are dropped (never sent)."""
        self._child.kill()
        self._child.join()
        self._chunks.close()
        self._chunks.cancel_join_thread()  # do not wait to flush chunks nobody will read


def _generate(gen: EventGenerator, limit: float, chunks: mp.Queue, parent: int) -> None:
    """The child: chunks until `limit`; it ends when the parent is gone (even SIGKILLed)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C stops the parent, which stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    made = 0
    while made < limit:
        chunk = gen.batch(int(min(CHUNK, limit - made)))
        while True:
            with contextlib.suppress(queue.Full):
                chunks.put(chunk, timeout=PUT_WAIT_S)
                break
            if os.getppid() != parent:
                return
        made += len(chunk)
