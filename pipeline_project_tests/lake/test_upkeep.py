"""Compaction while ingestion commits to the same day, and vacuum: readers never see a row twice."""

from __future__ import annotations

import threading
from datetime import date

from pipeline_project.lake.audit import audit
from pipeline_project.lake.commit import commit_range
from pipeline_project.lake.location import Lake
from pipeline_project.lake.stats import table_stats
from pipeline_project.lake.upkeep import compact, vacuum
from pipeline_project_tests.lake.lake_support import LoopingReader, processed, record_of

DAY = date(2025, 3, 1)


def test_compaction_during_ingestion_keeps_every_row_once(lake: Lake) -> None:
    batches = [processed(start, 200, bad_every=31) for start in range(0, 6_000, 200)]
    for rng, batch in batches[:10]:
        commit_range(lake, record_of(rng, batch), batch.good)

    def ingest_rest() -> None:
        for rng, batch in batches[10:]:
            commit_range(lake, record_of(rng, batch), batch.good)

    with LoopingReader(lake) as reader:
        writer = threading.Thread(target=ingest_rest)
        writer.start()
        result = compact(lake, day=DAY)
        writer.join()
        compact(lake, day=DAY)  # what ingestion added during the first pass
    assert not reader.errors, reader.errors
    seen = reader.seen
    assert all(rows == distinct for rows, distinct in seen), "a reader saw a row twice"
    (day,) = result.days
    assert day["files_before"] >= 10 and day["files_after"] < day["files_before"]
    stats = table_stats(lake)
    assert stats.files == 1, stats.days
    assert stats.rows == sum(b.good.height for _r, b in batches)
    report = audit(lake)
    assert report.ok, [str(p) for p in report.problems]
    assert report.unreferenced_files >= 30  # the compacted-away files, until vacuum
    assert vacuum(lake, retention_hours=1) == []  # younger than the retention: kept
