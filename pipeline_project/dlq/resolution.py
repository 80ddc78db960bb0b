"""The resolution ledger: what reprocessing did to each failed source record, keyed by its source.

Reprocessing commits ranges of the DLQ topic through the lake protocol (their manifests are the
commit point); this ledger adds, per range, one *segment*: for every DLQ record handled live in the
range, what became of its source record (recovered into the lake, filtered, parked, or re-sent as
a new head copy). A segment is written to `<state>/dlq/pending/` before the range's manifest and
counts exactly when that manifest exists, so the two commit together: a crash between the manifest
and moving the segment to `<state>/dlq/resolutions/` (kill point R1) loses nothing, and a segment
of a range that never committed is ignored and removed. Readers fold segments in `seq` order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pipeline_project.batch import lake, ledger
from pipeline_project.batch.ledger import DlqEntry, atomic_write_json, read_json
from pipeline_project.batch.ranges import Range, parse_range_id
from pipeline_project.errors import LedgerError

log = logging.getLogger(__name__)

SEGMENT_VERSION = 1
DLQ_STATE_DIR = "dlq"
PENDING_DIR = "pending"
SEGMENTS_DIR = "resolutions"
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
    """The resolutions of one DLQ range, tied to its manifest by the range and its DLQ entries."""

    range: Range
    seq: int
    run_id: str
    deliveries: tuple[DlqEntry, ...]
    entries: tuple[Resolution, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SEGMENT_VERSION,
            "kind": "dlq_resolutions",
            "range": self.range.to_dict(),
            "seq": self.seq,
            "run_id": self.run_id,
            "deliveries": [d.to_dict() for d in self.deliveries],
            "entries": [e.to_dict() for e in self.entries],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Segment:
        if data.get("kind") != "dlq_resolutions" or data.get("version") != SEGMENT_VERSION:
            raise ValueError(f"not a version-{SEGMENT_VERSION} resolution segment")
        return cls(
            range=Range.from_dict(data["range"]),
            seq=int(data["seq"]),
            run_id=str(data["run_id"]),
            deliveries=tuple(DlqEntry.from_dict(d) for d in data["deliveries"]),
            entries=tuple(Resolution.from_dict(e) for e in data["entries"]),
        )

    def matches(self, manifest: ledger.Manifest) -> bool:
        """Written by the attempt that committed `manifest` (same range, same DLQ deliveries)."""
        return manifest.range == self.range and tuple(manifest.dlq) == self.deliveries


# ------------------------------------------------------------------------------------------ paths


def dlq_state_dir(state_dir: Path) -> Path:
    return Path(state_dir) / DLQ_STATE_DIR


def pending_path(state_dir: Path, rng: Range) -> Path:
    """`<state>/dlq/pending/<range_id>.json`: written before the range's manifest."""
    return dlq_state_dir(state_dir) / PENDING_DIR / f"{rng.range_id}.json"


def segment_path(state_dir: Path, segment: Segment) -> Path:
    """`<state>/dlq/resolutions/<seq>-<range_id>.json`: the applied, immutable segment."""
    name = f"{segment.seq:012d}-{segment.range.range_id}.json"
    return dlq_state_dir(state_dir) / SEGMENTS_DIR / name


# ---------------------------------------------------------------------------------------- writing


def write_pending(state_dir: Path, segment: Segment) -> None:
    """Before the manifest: the range's resolutions, under its partition lock."""
    rng = segment.range
    ledger.assert_locked(state_dir, rng.topic, rng.partition)
    atomic_write_json(pending_path(state_dir, rng), segment.to_dict())


def apply_pending(state_dir: Path, rng: Range) -> bool:
    """After the manifest: moves the range's pending segment into the ledger (idempotent).

    The move is housekeeping: readers already count a pending segment whose manifest exists.
    """
    ledger.assert_locked(state_dir, rng.topic, rng.partition)
    path = pending_path(state_dir, rng)
    segment = _read_segment(path)
    if segment is None:
        return False
    target = segment_path(state_dir, segment)
    lake.ensure_dir(target.parent)
    path.replace(target)
    lake.fsync_dir(target.parent)
    lake.fsync_dir(path.parent)
    return True


def recover_pending(state_dir: Path, topic: str, partition: int) -> list[str]:
    """At start, under the partition lock: apply pending segments of committed ranges, drop others.

    Returns what it did, one line each, for logs.
    """
    ledger.assert_locked(state_dir, topic, partition)
    done: list[str] = []
    for path, rng in _pending_files(state_dir, topic, partition):
        manifest = ledger.read_manifest(state_dir, rng)
        segment = _read_segment(path, missing_ok=manifest is None)
        if manifest is not None and segment is not None and segment.matches(manifest):
            apply_pending(state_dir, rng)
            done.append(f"applied resolutions of committed {rng.range_id}")
        else:
            path.unlink(missing_ok=True)
            lake.fsync_dir(path.parent)
            done.append(f"dropped resolutions of uncommitted {rng.range_id}")
    return done


def _pending_files(
    state_dir: Path, topic: str | None = None, partition: int | None = None
) -> Iterator[tuple[Path, Range]]:
    directory = dlq_state_dir(state_dir) / PENDING_DIR
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.json")):
        rng = parse_range_id(path.stem)
        if rng is None:
            continue
        if topic not in (None, rng.topic) or partition not in (None, rng.partition):
            continue
        yield path, rng


def _read_segment(path: Path, missing_ok: bool = True) -> Segment | None:
    """A segment file, or None when absent; an unusable one is a LedgerError unless `missing_ok`.

    Losing a committed segment could let a record be recovered twice, so it stops the run.
    """
    try:
        data = read_json(path)
        return None if data is None else Segment.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        if missing_ok:
            log.warning("ignoring unusable pending resolutions %s: %s", path, exc)
            return None
        raise LedgerError(f"resolution segment {path} is unusable ({exc}); restore it") from None


# ---------------------------------------------------------------------------------------- reading


def load_segments(state_dir: Path) -> list[Segment]:
    """Committed segments in `seq` order: applied ones, and pending ones of committed ranges."""
    segments: list[Segment] = []
    directory = dlq_state_dir(state_dir) / SEGMENTS_DIR
    if directory.is_dir():
        for path in sorted(directory.glob("*.json")):
            segment = _read_segment(path, missing_ok=False)
            if segment is not None:
                segments.append(segment)
    for path, rng in _pending_files(state_dir):
        manifest = ledger.read_manifest(state_dir, rng)
        if manifest is None:
            continue
        segment = _read_segment(path, missing_ok=False)
        if segment is not None and segment.matches(manifest):
            segments.append(segment)
    segments.sort(key=lambda s: s.seq)
    return segments


@dataclass
class Book:
    """The ledger folded: the latest resolution of every source record ever handled."""

    latest: dict[Coords, Resolution] = field(default_factory=dict)
    next_seq: int = 1
    dlq_topics: set[str] = field(default_factory=set)

    def get(self, source: Coords) -> Resolution | None:
        return self.latest.get(source)

    def add(self, segment: Segment) -> None:
        """Folds one committed segment in (a terminal resolution is never overridden)."""
        self.dlq_topics.add(segment.range.topic)
        self.next_seq = max(self.next_seq, segment.seq + 1)
        for entry in segment.entries:
            known = self.latest.get(entry.source)
            if known is None or not known.terminal:
                self.latest[entry.source] = entry

    def with_outcome(self, *outcomes: str) -> list[Resolution]:
        return [r for r in self.latest.values() if r.outcome in outcomes]


def load_book(state_dir: Path, segments: Iterable[Segment] | None = None) -> Book:
    """The folded ledger of `state_dir` (or of the given segments)."""
    book = Book()
    for segment in load_segments(state_dir) if segments is None else segments:
        book.add(segment)
    return book
