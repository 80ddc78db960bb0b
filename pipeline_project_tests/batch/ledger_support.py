"""Support for the lake/ledger tests: synthetic lake rows and the durable half of the protocol.

`run_protocol` does what batch/run.py does around Kafka (lock, recover, intent, stage, prepare,
publish, commit, finish) with a deterministic split of a range's offsets into lake rows, DLQ entries
and filtered rows. Run as a module it is the crash harness: `python -m … <data_dir> <start> <end>`
with PIPELINE_FAULT_POINT set dies at that kill point.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

from pipeline_project.batch import lake, ledger
from pipeline_project.batch.faults import FAULT_ENV
from pipeline_project.batch.ranges import Range
from pipeline_project.batch.recover import recover

REPO_ROOT = Path(__file__).resolve().parents[2]
TOPIC = "raw-events"
DAY1 = date(2024, 3, 9)
DAY2 = date(2024, 3, 10)
INGESTED_AT = datetime(2024, 3, 11, 1, 2, 3, 456789, tzinfo=UTC)
NOW = datetime(2024, 3, 11, 1, 0, tzinfo=UTC)
COMMITTED_AT = datetime(2024, 3, 11, 1, 5, tzinfo=UTC)


@dataclass(frozen=True)
class Split:
    """Where each offset of a range goes: lake rows (by day), DLQ, or filtered by reason."""

    good: list[int]
    dlq: list[int]
    filtered: dict[str, list[int]]

    @property
    def consumed(self) -> list[int]:
        return sorted(self.good + self.dlq + [o for offs in self.filtered.values() for o in offs])


def split(rng: Range) -> Split:
    """Offsets ending in 3 go to the DLQ, ending in 7 are filtered duplicates, the rest land."""
    offsets = range(rng.start, rng.end)
    return Split(
        good=[o for o in offsets if o % 10 not in (3, 7)],
        dlq=[o for o in offsets if o % 10 == 3],
        filtered={"duplicate": [o for o in offsets if o % 10 == 7]},
    )


def day_of(offset: int) -> date:
    """Offsets alternate days in blocks of 5, so most ranges span midnight (two files)."""
    return DAY1 if (offset // 5) % 2 == 0 else DAY2


def events_frame(
    rng: Range, offsets: list[int], run_id: str = "run-A", ingested_at: datetime = INGESTED_AT
) -> pl.DataFrame:
    """Lake rows with the lineage columns, deterministic in (range, offsets, identity)."""
    days = [day_of(o) for o in offsets]
    stamps = [
        datetime.combine(d, datetime.min.time(), UTC) + timedelta(minutes=o)
        for d, o in zip(days, offsets, strict=True)
    ]
    return pl.DataFrame(
        {
            "event_id": [str(uuid.UUID(int=o + 1)) for o in offsets],
            "event_type": ["page_view" if o % 2 else "click" for o in offsets],
            "timestamp": stamps,
            "user_id": [f"user_{o % 7}" for o in offsets],
            "event_date": days,
            "kafka_topic": [rng.topic] * len(offsets),
            "kafka_partition": [rng.partition] * len(offsets),
            "kafka_offset": offsets,
            "kafka_timestamp": stamps,
            "ingested_at": [ingested_at] * len(offsets),
            "run_id": [run_id] * len(offsets),
        },
        schema_overrides={
            "kafka_partition": pl.Int32,
            "kafka_offset": pl.Int64,
            "timestamp": pl.Datetime("us", "UTC"),
            "kafka_timestamp": pl.Datetime("ms", "UTC"),
            "ingested_at": pl.Datetime("us", "UTC"),
        },
    )


def dlq_entries(offsets: list[int]) -> list[ledger.DlqEntry]:
    return [ledger.DlqEntry(o, "invalid_json", 0, i) for i, o in enumerate(offsets)]


def stage_and_prepare(
    state: Path, rng: Range, intent: ledger.Intent, row_group_rows: int = lake.ROW_GROUP_ROWS
) -> ledger.Intent:
    """Stage the range's days and mark the intent prepared (the steps before publish)."""
    parts = split(rng)
    frame = events_frame(rng, parts.good, intent.run_id, intent.ingested_at)
    staged = lake.stage_days(
        lake.staging_dir(state, rng), rng, frame, row_group_rows=row_group_rows
    )
    return ledger.prepare_intent(
        state, intent, staged, dlq_entries(parts.dlq), parts.filtered, parts.consumed
    )


def run_protocol(
    data_dir: Path, rng: Range, run_id: str = "run-A", row_group_rows: int = lake.ROW_GROUP_ROWS
) -> ledger.Manifest:
    """The durable half of the run protocol for one range, as batch/run.py calls it."""
    lake_dir, state = data_dir / "output", data_dir / "state"
    with ledger.partition_lock(state, rng.topic, rng.partition):
        recover(lake_dir, state, rng.topic, rng.partition)
        intent = ledger.write_intent(state, rng, run_id, INGESTED_AT, NOW)
        intent = stage_and_prepare(state, rng, intent, row_group_rows)
        lake.publish_all(intent.files, lake_dir)
        manifest = ledger.commit_manifest(state, lake_dir, intent, COMMITTED_AT)
        ledger.finish_range(state, rng)
        return manifest


def run_in_subprocess(
    data_dir: Path, rng: Range, fault: str = ""
) -> subprocess.CompletedProcess[str]:
    """Runs the protocol in a child process (optionally dying at a kill point)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    cmd = [
        sys.executable,
        "-m",
        __name__,
        str(data_dir),
        str(rng.partition),
        str(rng.start),
        str(rng.end),
    ]
    return subprocess.run(
        cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def lake_bytes(lake_dir: Path) -> dict[str, bytes]:
    """Every file under the lake root by relative path: for byte-identity comparisons."""
    return {
        p.relative_to(lake_dir).as_posix(): p.read_bytes()
        for p in sorted(lake_dir.rglob("*"))
        if p.is_file()
    }


def main(argv: list[str]) -> None:
    data_dir, partition, start, end = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3])
    run_protocol(data_dir, Range(TOPIC, partition, start, end), row_group_rows=4)


if __name__ == "__main__":
    main(sys.argv[1:])
