"""RawBatch.sources: the exact consumed record behind each reject, with or without offset gaps."""

from __future__ import annotations

import pytest

from pipeline_project.batch.records import RawBatch, SourceRecord


def _batch(offsets: list[int]) -> RawBatch:
    return RawBatch(
        "raw-events",
        0,
        offsets,
        [1000 + o for o in offsets],
        [f"k{o}".encode() for o in offsets],
        [f"v{o}".encode() for o in offsets],
    )


@pytest.mark.parametrize(
    "offsets",
    [
        list(range(100, 110)),  # gap-free: found by subtraction
        [100, 101, 103, 104, 107, 108, 109, 112, 113, 115],  # gaps (transaction markers)
    ],
)
def test_sources_are_the_records_at_those_offsets(offsets: list[int]) -> None:
    batch = _batch(offsets)
    wanted = [offsets[0], offsets[4], offsets[-1]]
    found = batch.sources(wanted)
    assert list(found) == wanted
    for offset in wanted:
        assert found[offset] == SourceRecord(
            offset, 1000 + offset, f"k{offset}".encode(), b"v%d" % offset
        )


@pytest.mark.parametrize("missing", [99, 102, 110, 116, -1])
def test_an_offset_not_consumed_here_is_an_error(missing: int) -> None:
    for offsets in (list(range(100, 110)), [100, 101, 103, 104, 107, 108, 109, 112, 113, 115]):
        if missing in offsets:
            continue
        with pytest.raises(KeyError, match=f"offset {missing} is not in this batch"):
            _batch(offsets).sources([offsets[0], missing])


def test_an_empty_batch_has_no_sources() -> None:
    assert _batch([]).sources([]) == {}
    with pytest.raises(KeyError):
        _batch([]).sources([5])
