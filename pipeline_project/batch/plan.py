"""Plans offset ranges: from the ledger's committed end to the high watermark, capped in size.

A pure function, so the sensor and the job plan the same way and tests can parametrize it. A range
always starts exactly where the last committed one ended; a committed end below the low watermark is
data loss.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline_project.batch.ranges import Range


@dataclass(frozen=True)
class PartitionState:
    """What the planner needs to know of one partition."""

    partition: int
    committed_end: int | None  # None: the lake has never seen this partition
    low: int
    high: int
    epoch: int = 0  # the lake's epoch of the topic (batch/epochs.py)


@dataclass(frozen=True)
class Plan:
    """Ranges to run, plus partitions whose owed offsets retention already deleted."""

    ranges: list[Range]
    lost: list[Range]

    @property
    def backlog(self) -> int:
        return sum(r.size for r in self.ranges)


def plan_ranges(
    topic: str, states: list[PartitionState], max_events: int, max_ranges_per_partition: int = 1
) -> Plan:
    """Consecutive ranges per partition with a backlog, each at most max_events offsets."""
    ranges: list[Range] = []
    lost: list[Range] = []
    for state in sorted(states, key=lambda s: s.partition):
        start = state.low if state.committed_end is None else state.committed_end
        if start < state.low:
            lost.append(Range(topic, state.partition, start, state.low, state.epoch))
            continue
        for _ in range(max_ranges_per_partition):
            end = min(state.high, start + max_events)
            if end <= start:
                break
            ranges.append(Range(topic, state.partition, start, end, state.epoch))
            start = end
    return Plan(ranges=ranges, lost=lost)
