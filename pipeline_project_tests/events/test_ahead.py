"""Full-speed production makes its events in a child process: the same records, in order."""

from __future__ import annotations

from pipeline_project.events.ahead import CHUNK, RecordsAhead
from pipeline_project.events.generator import EventGenerator


def generator() -> EventGenerator:
    return EventGenerator(5, bad_ratio=0.1, duplicate_ratio=0.02, clock=lambda: 1_760_000_000.0)


def test_the_child_makes_exactly_the_records_the_generator_would() -> None:
    limit = 2 * CHUNK + 123
    ahead = RecordsAhead(generator(), limit)
    try:
        taken = []
        for size in (1, 999, CHUNK, 3 * CHUNK):  # across chunk boundaries, up to the limit
            taken += ahead.batch(min(size, limit - len(taken)))
    finally:
        ahead.close()
    assert len(taken) == limit
    assert taken == generator().batch(limit)


def test_closing_stops_the_child_even_when_it_is_ahead() -> None:
    ahead = RecordsAhead(generator(), float("inf"))
    first = ahead.batch(10)
    child = ahead._child
    ahead.close()
    assert len(first) == 10
    assert not child.is_alive()
