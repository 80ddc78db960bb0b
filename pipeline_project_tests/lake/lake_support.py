"""Ranges processed in memory and turned into commits, for the lake tests (no broker needed)."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter

import polars as pl
from deltalake import DeltaTable

from pipeline_project.batch.ranges import Range
from pipeline_project.lake.location import Lake
from pipeline_project.lake.record import DlqEntry, RangeRecord, offsets_digest
from pipeline_project_tests.batch.batch_support import (
    INGESTED_AT,
    NOW,
    TOPIC,
    encode,
    good_event,
    raw_batch,
    run,
)


def processed(start: int, count: int, *, bad_every: int = 0, partition: int = 0):
    """A range [start, start+count) of generated events (every `bad_every`-th invalid)."""
    values = []
    for i in range(start, start + count):
        event = good_event(i + partition * 1_000_000)  # ids unique across partitions
        if bad_every and i % bad_every == 0:
            event["event_type"] = "not-a-type"
        values.append(encode(event))
    raw = dataclasses.replace(raw_batch(values, first=start), partition=partition)
    batch = run(raw)
    rng = Range(TOPIC, partition, start, start + count)
    return rng, batch


def record_of(
    rng: Range, batch, run_id: str = "run-test", kind: str = "ingest", days_shift: int = 0
) -> RangeRecord:
    """The RangeRecord a run would commit for this processed batch (DLQ offsets made up)."""
    shifted = batch.good.get_column("event_date").dt.offset_by(f"{days_shift}d")
    days = Counter(d.isoformat() for d in shifted.to_list())
    dlq = tuple(DlqEntry(r.offset, r.category, 0, 10_000 + i) for i, r in enumerate(batch.rejects))
    return RangeRecord(
        range=rng,
        kind=kind,
        run_id=run_id,
        ingested_at=INGESTED_AT,
        reference_time=NOW,
        records=rng.end - rng.start,
        record_offsets_sha256=offsets_digest(range(rng.start, rng.end)),
        days=dict(days),
        dlq=dlq,
        filtered={k: tuple(v) for k, v in batch.filtered.items()},
    )


def read_events(lake: Lake) -> pl.DataFrame:
    """The committed events table as a reader sees it (through the Delta log)."""
    return pl.read_delta(lake.table_uri("events"), storage_options=lake.polars_options())


class LoopingReader:
    """A thread reading the events table in a loop: (rows, distinct offsets) of every snapshot.

    Each read is pinned to the version it first saw, kept in `versions` as (version, rows,
    distinct), so a test can hold every snapshot against what was committed up to it.
    """

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self.seen: list[tuple[int, int]] = []
        self.versions: list[tuple[int, int, int]] = []
        self.errors: list[BaseException] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop)

    def _loop(self) -> None:
        while not self._done.is_set():
            try:
                uri = self.lake.table_uri("events")
                version = DeltaTable(uri, storage_options=self.lake.options()).version()
                frame = pl.read_delta(
                    uri, version=version, storage_options=self.lake.polars_options()
                ).select("kafka_offset")
                distinct = frame.get_column("kafka_offset").n_unique()
                self.seen.append((frame.height, distinct))
                self.versions.append((version, frame.height, distinct))
            except Exception as exc:  # noqa: BLE001 - any failed read is the finding
                self.errors.append(exc)
                return

    def __enter__(self) -> LoopingReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
