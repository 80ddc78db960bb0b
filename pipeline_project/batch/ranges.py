"""Offset ranges: the unit of work a run owns, named deterministically (HDFS-sink style)."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

from pipeline_project.kafka.names import TOPIC_PATTERN

OFFSET_WIDTH = 19
_RANGE_ID_RE = re.compile(
    rf"(?P<topic>{TOPIC_PATTERN})(?:@(?P<epoch>\d{{1,9}}))?-(?P<partition>\d{{1,10}})"
    rf"-(?P<start>\d{{{OFFSET_WIDTH}}})-(?P<end>\d{{{OFFSET_WIDTH}}})"
)


@dataclass(frozen=True, order=True)
class Range:
    """Half-open Kafka offset range [start, end) of one topic-partition, fixed when planned.

    `epoch` counts the topic's incarnations the lake has accepted (`topic new-epoch`): a topic
    deleted and recreated starts its offsets again at 0, so (topic, partition, offset) names a
    record only together with the epoch. Epoch 0 keeps the names it always had.
    """

    topic: str
    partition: int
    start: int
    end: int
    epoch: int = 0

    def __post_init__(self) -> None:
        if self.partition < 0 or self.start < 0 or self.end < self.start or self.epoch < 0:
            raise ValueError(
                f"invalid range {self.topic}[{self.partition}] [{self.start}, {self.end})"
            )

    @property
    def size(self) -> int:
        """Offsets spanned; records may be fewer (transaction markers, compaction)."""
        return self.end - self.start

    @property
    def range_id(self) -> str:
        """Stable id used as Dagster run_key and as the ledger's file name."""
        width = OFFSET_WIDTH
        return f"{self.source}-{self.start:0{width}d}-{self.end:0{width}d}"

    @property
    def source(self) -> str:
        """`<topic>-<partition>`, or `<topic>@<epoch>-<partition>` after a new epoch.

        The Delta app id whose txn version is the partition's committed end in that epoch.
        """
        return source_id(self.topic, self.partition, self.epoch)

    def to_dict(self) -> dict[str, int | str]:
        data: dict[str, int | str] = {
            "topic": self.topic,
            "partition": self.partition,
            "start": self.start,
            "end": self.end,
        }
        if self.epoch:
            data["epoch"] = self.epoch
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Range:
        return cls(
            str(data["topic"]),
            int(data["partition"]),
            int(data["start"]),
            int(data["end"]),
            int(data.get("epoch") or 0),
        )


def source_id(topic: str, partition: int, epoch: int = 0) -> str:
    """The name of one partition in one epoch of its topic ('@' is no topic-name character)."""
    return f"{topic}-{partition}" if epoch == 0 else f"{topic}@{epoch}-{partition}"


def parse_range_id(name: str) -> Range | None:
    """The Range a ledger file or staging directory is named after (`Range.range_id`), or None."""
    match = _RANGE_ID_RE.fullmatch(name)
    if not match:
        return None
    with contextlib.suppress(ValueError):
        return Range(
            match["topic"],
            int(match["partition"]),
            int(match["start"]),
            int(match["end"]),
            int(match["epoch"] or 0),
        )
    return None
