"""The resolution ledger: what reprocessing did to each failed source record, keyed by its source.

Reprocessing commits each range of the DLQ topic as one Delta commit (lake/commit.py). The range's
*segment* (for every DLQ record handled live in the range, what became of its source record:
recovered into the lake, filtered, parked, or re-sent as a new head copy) rides in that commit's
range record under `extra["resolutions"]`. So a segment exists exactly when its range committed:
there is no pending state to recover and nothing under the state directory to lose. Readers fold
the segments in commit (Delta version) order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pipeline_project.batch.ranges import Range
from pipeline_project.lake.history import History, read_history
from pipeline_project.lake.location import Lake
from pipeline_project.lake.record import RangeRecord

KIND: Final = "reprocess"  # the RangeRecord kind of a DLQ range
EXTRA_KEY: Final = "resolutions"
RECOVERED: Final = "recovered"  # a lake row now carries the event (exactly one)
FILTERED: Final = "filtered"  # recovered but dropped on purpose (duplicate, bot, test user)
PARKED: Final = "parked"  # moved to <dlq>.parked after too many attempts: a human decides
RETRIED: Final = "retried"  # failed again: re-sent to the DLQ with attempt + 1 (the new head)
DEFERRED: Final = "deferred"  # not tried now: re-sent unchanged (the new head)
TERMINAL: Final = frozenset({RECOVERED, FILTERED, PARKED})
OUTCOMES: Final = TERMINAL | {RETRIED, DEFERRED}

Coords = tuple[str, int, int]  # source topic, partition, offset


@dataclass(frozen=True)
class Resolution:
    """What one reprocess range did with one failed source record.

    `dlq` is the DLQ copy that was handled (partition, offset); `to` the copy it produced: the new
    head in the DLQ for retried/deferred, the parked copy for parked. `detail` is the error
    category (retried, parked), the filter reason (filtered), or why it was deferred.
    """

    source: Coords
    outcome: str
    dlq: tuple[int, int]
    attempt: int
    to: tuple[int, int] | None = None
    detail: str = ""
    rules: tuple[str, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.outcome in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": list(self.source),
            "outcome": self.outcome,
            "dlq": list(self.dlq),
            "attempt": self.attempt,
            "to": None if self.to is None else list(self.to),
            "detail": self.detail,
            "rules": list(self.rules),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Resolution:
        topic, partition, offset = data["source"]
        if data["outcome"] not in OUTCOMES:
            raise ValueError(f"unknown outcome {data['outcome']!r}")
        to = data.get("to")
        return cls(
            source=(str(topic), int(partition), int(offset)),
            outcome=str(data["outcome"]),
            dlq=(int(data["dlq"][0]), int(data["dlq"][1])),
            attempt=int(data["attempt"]),
            to=None if to is None else (int(to[0]), int(to[1])),
            detail=str(data.get("detail", "")),
            rules=tuple(str(r) for r in data.get("rules", ())),
        )


@dataclass(frozen=True)
class Segment:
    """The resolutions of one DLQ range; `version` is its commit's, once read back from the log."""

    range: Range
    run_id: str
    entries: tuple[Resolution, ...]
    version: int | None = None

    def to_extra(self) -> dict[str, Any]:
        """What the range's record carries in `extra` (see lake/record.py)."""
        return {EXTRA_KEY: [e.to_dict() for e in self.entries]}

    @classmethod
    def from_record(cls, record: RangeRecord) -> Segment:
        """The segment a committed "reprocess" range record carries (ValueError when malformed)."""
        if record.kind != KIND:
            raise ValueError(f"{record.range.range_id} is a {record.kind!r} range, not {KIND!r}")
        try:
            entries = tuple(Resolution.from_dict(e) for e in record.extra.get(EXTRA_KEY, ()))
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"{record.range.range_id}: unusable resolutions ({exc})") from None
        return cls(record.range, record.run_id, entries, record.version)


def load_segments(lake: Lake, history: History | None = None) -> list[Segment]:
    """Every committed segment, oldest commit first (of `history` when the caller read it)."""
    found = history if history is not None else read_history(lake, kinds=(KIND,))
    return [Segment.from_record(r) for r in found.records if r.kind == KIND]


@dataclass
class Book:
    """The ledger folded: the latest resolution of every source record ever handled."""

    latest: dict[Coords, Resolution] = field(default_factory=dict)

    def get(self, source: Coords) -> Resolution | None:
        return self.latest.get(source)

    def add(self, segment: Segment) -> None:
        """Folds one committed segment in (a terminal resolution is never overridden)."""
        for entry in segment.entries:
            known = self.latest.get(entry.source)
            if known is None or not known.terminal:
                self.latest[entry.source] = entry

    def with_outcome(self, *outcomes: str) -> list[Resolution]:
        return [r for r in self.latest.values() if r.outcome in outcomes]


def load_book(lake: Lake, segments: Iterable[Segment] | None = None) -> Book:
    """The folded ledger of the lake's events table (or of the given segments)."""
    book = Book()
    for segment in load_segments(lake) if segments is None else segments:
        book.add(segment)
    return book
