"""What flows through one micro-batch: columnar input from the drain, rejects and the result.

Every consumed offset ends up in exactly one of `BatchResult.good`, `.rejects` or `.filtered`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from pipeline_project.events.contract import ERROR_STAGE, FILTER_REASONS

MESSAGE_MAX_CHARS = 500


Headers = Any  # a record's headers as confluent-kafka returns them (list of (name, bytes))


@dataclass(frozen=True)
class RawBatch:
    """Records of one topic-partition as drained, one entry per record, in offset order.

    `keys` and `values` are lists of bytes, or the native drain's `Blobs` (the same sequence,
    its bytes kept in contiguous buffers; indexing makes a bytes object). `headers` is filled
    only when asked for (DLQ reads): the raw topic's headers are never data.
    """

    topic: str
    partition: int
    offsets: list[int]
    timestamps_ms: list[int]
    keys: Sequence[bytes | None]
    values: Sequence[bytes | None]
    headers: list[Headers | None] | None = None

    def __post_init__(self) -> None:
        n = len(self.offsets)
        if not len(self.timestamps_ms) == len(self.keys) == len(self.values) == n:
            raise ValueError("RawBatch columns must have the same length")
        if self.headers is not None and len(self.headers) != n:
            raise ValueError("RawBatch headers must have one entry per record")

    def __len__(self) -> int:
        return len(self.offsets)

    def part(self, start: int, stop: int) -> RawBatch:
        """Records [start, stop) by position, as a batch of their own (Blobs share buffers)."""
        return RawBatch(
            self.topic,
            self.partition,
            self.offsets[start:stop],
            self.timestamps_ms[start:stop],
            self.keys[start:stop],
            self.values[start:stop],
            self.headers[start:stop] if self.headers is not None else None,
        )

    def sources(self, offsets: Iterable[int]) -> dict[int, SourceRecord]:
        """The records at `offsets` (all consumed here), for their DLQ copies.

        A gap-free batch (the usual case) finds each by subtraction, any other by bisection
        (the drain keeps offset order): a few thousand rejects cost milliseconds, however big the
        batch.
        """
        first = self.offsets[0] if self.offsets else 0
        gap_free = bool(self.offsets) and self.offsets[-1] - first == len(self.offsets) - 1
        found: dict[int, SourceRecord] = {}
        for offset in offsets:
            i = offset - first if gap_free else bisect_left(self.offsets, offset)
            if not 0 <= i < len(self.offsets) or self.offsets[i] != offset:
                raise KeyError(f"offset {offset} is not in this batch")
            found[offset] = SourceRecord(
                offset, self.timestamps_ms[i], self.keys[i], self.values[i]
            )
        return found


@dataclass(frozen=True)
class SourceRecord:
    """One consumed record as Kafka gave it: what its DLQ copy carries besides the reason."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Reject:
    """Why one record goes to the DLQ; `stage` follows from `category` (contract.ERROR_STAGE)."""

    offset: int
    stage: str
    category: str
    rule: str
    field: str
    message: str

    @classmethod
    def of(cls, offset: int, category: str, rule: str, field: str, message: str) -> Reject:
        """A reject with the stage of its category and a bounded message (DLQ header size)."""
        if category not in ERROR_STAGE:
            raise ValueError(f"unknown error category {category!r}")
        if len(message) > MESSAGE_MAX_CHARS:
            message = message[: MESSAGE_MAX_CHARS - 1] + "…"
        return cls(offset, ERROR_STAGE[category], category, rule, field, message)


def _empty_filtered() -> dict[str, list[int]]:
    return {reason: [] for reason in FILTER_REASONS}


@dataclass
class BatchResult:
    """Lake rows, DLQ rejects and filtered offsets (by reason) of one batch."""

    good: pl.DataFrame
    rejects: list[Reject] = field(default_factory=list)
    filtered: dict[str, list[int]] = field(default_factory=_empty_filtered)

    @property
    def good_count(self) -> int:
        return self.good.height

    @property
    def reject_count(self) -> int:
        return len(self.rejects)

    @property
    def filtered_count(self) -> int:
        return sum(len(offsets) for offsets in self.filtered.values())

    @property
    def total(self) -> int:
        """Records accounted for; equals the number of records in the input batch."""
        return self.good_count + self.reject_count + self.filtered_count

    def reject_counts(self) -> dict[str, int]:
        """Rejects per error category, only categories that occurred, sorted by name."""
        counts: dict[str, int] = {}
        for reject in self.rejects:
            counts[reject.category] = counts.get(reject.category, 0) + 1
        return dict(sorted(counts.items()))

    def filtered_counts(self) -> dict[str, int]:
        """Filtered rows per reason, every reason present (zero when none)."""
        return {reason: len(offsets) for reason, offsets in self.filtered.items()}
