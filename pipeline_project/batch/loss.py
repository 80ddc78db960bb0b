"""Acknowledged data loss: the operator's decision to move a partition past deleted offsets.

When retention deletes offsets before they reach the lake, every run of that partition stops with
DataLossError and the sensor says DATA LOSS: nothing skips offsets silently. Once someone has looked
(could the data be recovered from elsewhere?), `pipeline-project loss acknowledge` lets the
partition go on. The acknowledgment is an ordinary range commit with no records (kind "loss"),
through the same commit protocol as ingestion, so contiguity and reconcile keep holding; the reason
is part of the commit, and `loss list` reads every such decision back from the table's log.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from pipeline_project.batch.epochs import lake_epoch
from pipeline_project.batch.ranges import Range
from pipeline_project.batch.transform import empty_lake_frame
from pipeline_project.kafka.drain import make_consumer, watermarks
from pipeline_project.lake.commit import commit_range
from pipeline_project.lake.history import read_history
from pipeline_project.lake.location import lake_of
from pipeline_project.lake.record import RangeRecord, app_id, offsets_digest
from pipeline_project.lake.table import open_table, txn_version
from pipeline_project.settings import Settings

RUN_ID_PREFIX = "acknowledged-loss"
LOSS_KIND = "loss"


@dataclass(frozen=True)
class Acknowledged:
    """Offsets of one partition given up for lost, or `range` None when nothing was lost."""

    topic: str
    partition: int
    range: Range | None
    committed_end: int | None
    low_watermark: int

    def summary(self) -> str:
        where = f"{self.topic}[{self.partition}]"
        if self.range is None:
            return (
                f"{where}: nothing lost (committed end {self.committed_end}, "
                f"low watermark {self.low_watermark})"
            )
        return (
            f"{where}: offsets [{self.range.start}, {self.range.end}) acknowledged as lost; "
            f"ingestion resumes at {self.range.end}"
        )


def acknowledge(settings: Settings, partition: int, reason: str) -> Acknowledged:
    """Commits the deleted gap [committed end, low watermark) of a partition as a recordless range.

    The commit is fenced like any range: if a run commits the partition meanwhile, this one fails.
    """
    topic = settings.raw_topic
    consumer = make_consumer(settings)
    try:
        low, _high = watermarks(consumer, topic, partition)
    finally:
        consumer.close()
    lake = lake_of(settings)
    table = open_table(lake)
    epoch = lake_epoch(table, topic)
    end = txn_version(table, app_id(topic, partition, epoch))
    if end is None or low <= end:
        return Acknowledged(topic, partition, None, end, low)
    gap = Range(topic, partition, end, low, epoch)
    moment = datetime.now(UTC)
    record = RangeRecord(
        range=gap,
        kind=LOSS_KIND,
        run_id=f"{RUN_ID_PREFIX}-{uuid.uuid4().hex[:12]}",
        ingested_at=moment,
        reference_time=moment,
        records=0,
        record_offsets_sha256=offsets_digest([]),
        extra={"reason": reason},
    )
    commit_range(lake, record, empty_lake_frame())
    return Acknowledged(topic, partition, gap, end, low)


def acknowledged(settings: Settings) -> list[dict[str, str]]:
    """Every acknowledgment, oldest first (what `loss list` prints)."""
    history = read_history(lake_of(settings))
    return [
        {
            "range_id": r.range.range_id,
            "run_id": r.run_id,
            "reason": str(r.extra.get("reason", "")),
            "at": str(r.committed_at),
        }
        for r in history.records
        if r.kind == LOSS_KIND
    ]
