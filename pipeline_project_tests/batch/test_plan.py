"""The planner: ranges start exactly at the committed end, are capped, and loss is reported."""

from __future__ import annotations

import pytest

from pipeline_project.batch.plan import PartitionState, plan_ranges
from pipeline_project.batch.ranges import Range


@pytest.mark.parametrize(
    ("state", "max_events", "per_partition", "expected"),
    [
        (PartitionState(0, None, 0, 0), 100, 1, []),  # empty partition, never seen
        (
            PartitionState(0, None, 0, 50),
            100,
            1,
            [(0, 50)],
        ),  # first run starts at the low watermark
        (PartitionState(0, None, 20, 50), 100, 1, [(20, 50)]),  # ... which retention may have moved
        (PartitionState(0, 50, 0, 50), 100, 1, []),  # caught up
        (PartitionState(0, 50, 0, 400), 100, 1, [(50, 150)]),  # capped at max_events
        (PartitionState(0, 50, 0, 400), 100, 9, [(50, 150), (150, 250), (250, 350), (350, 400)]),
        (PartitionState(0, 50, 50, 51), 100, 1, [(50, 51)]),
    ],
)
def test_ranges_start_at_committed_end(
    state: PartitionState, max_events: int, per_partition: int, expected: list[tuple[int, int]]
) -> None:
    plan = plan_ranges("raw", [state], max_events, per_partition)
    assert [(r.start, r.end) for r in plan.ranges] == expected
    assert plan.lost == []
    assert plan.backlog == sum(e - s for s, e in expected)


def test_retention_deleted_offsets_are_reported_as_loss_not_skipped() -> None:
    plan = plan_ranges("raw", [PartitionState(1, 30, 45, 90), PartitionState(0, 10, 0, 20)], 100)
    assert plan.lost == [Range("raw", 1, 30, 45)]
    assert [(r.partition, r.start, r.end) for r in plan.ranges] == [(0, 10, 20)]


def test_range_ids_are_zero_padded_and_sortable() -> None:
    rng = Range("raw-events", 3, 5, 1_000)
    assert rng.range_id == "raw-events-3-0000000000000000005-0000000000000001000"
    assert Range.from_dict(rng.to_dict()) == rng
    with pytest.raises(ValueError):
        Range("raw", 0, 10, 5)
