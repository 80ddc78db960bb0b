"""Acknowledged data loss: the operator's decision to move a partition past deleted offsets.

When retention deletes offsets before they reach the lake, every run of that partition stops with
DataLossError and the sensor says DATA LOSS: nothing skips offsets silently. Once someone has looked
(could the data be recovered from elsewhere?), `pipeline-project loss acknowledge` lets the
partition go on. The acknowledgment is an ordinary committed range with no records, written through
the run protocol (lock, recovery, intent, prepare, manifest), so contiguity, recovery and reconcile
keep holding; its run id says what it is, and a note under `<state>/losses/` keeps when and why.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline_project.batch import ledger
from pipeline_project.batch.ranges import Range
from pipeline_project.batch.recover import recover
from pipeline_project.kafka.drain import make_consumer, watermarks
from pipeline_project.settings import Settings

RUN_ID_PREFIX = "acknowledged-loss"
LOSSES_DIR = "losses"


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

    Takes the partition lock, so it waits for no run: LockBusyError if one is ingesting.
    """
    topic = settings.raw_topic
    consumer = make_consumer(settings)
    try:
        low, _high = watermarks(consumer, topic, partition)
    finally:
        consumer.close()
    state, lake_dir = settings.state_dir, settings.lake_dir
    with ledger.partition_lock(state, topic, partition):
        recover(lake_dir, state, topic, partition)
        end = ledger.committed_end(state, topic, partition)
        if end is None or low <= end:
            return Acknowledged(topic, partition, None, end, low)
        gap = Range(topic, partition, end, low)
        moment = datetime.now(UTC)
        run_id = f"{RUN_ID_PREFIX}-{uuid.uuid4().hex[:12]}"
        intent = ledger.write_intent(state, gap, run_id, ingested_at=moment, now=moment)
        intent = ledger.prepare_intent(state, intent, [], [], {}, [])
        ledger.commit_manifest(state, lake_dir, intent, committed_at=moment)
        ledger.finish_range(state, gap)
        note = {"range_id": gap.range_id, "run_id": run_id, "reason": reason, "at": str(moment)}
        ledger.atomic_write_json(Path(state) / LOSSES_DIR / f"{gap.range_id}.json", note)
        return Acknowledged(topic, partition, gap, end, low)


def acknowledged(state_dir: Path) -> list[dict[str, str]]:
    """Every acknowledgment note, oldest range first (what `loss list` prints)."""
    notes = [ledger.read_json(p) for p in sorted((Path(state_dir) / LOSSES_DIR).glob("*.json"))]
    return [n for n in notes if n]
