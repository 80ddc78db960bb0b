"""pandera judges a range's suspects while its files are staged; a suspect it passes still lands.

The screen doubts only rows failing a rule, so pandera passing a suspect means the two disagree
(none do today). The run must then still land the row exactly once, filter it with the rest
(a duplicate keeps its lowest offset) and commit files staged with it, as a user would see:
rows, DLQ counts, filtered counts, reconcile.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from pipeline_project.batch import process, run
from pipeline_project.batch.ranges import Range
from pipeline_project.batch.validate import ScreenedBatch
from pipeline_project.columns import OFFSET_COLUMN
from pipeline_project.kafka.drain import make_consumer, watermarks
from pipeline_project.lake.history import read_history
from pipeline_project.lake.location import lake_of
from pipeline_project.settings import Settings
from pipeline_project_tests.ingest_support import assert_reconciles, lake_frame, produce
from pipeline_project_tests.support import env_for


def doubting_every_fifth_clean_row(real):
    """A screen that also doubts clean rows (offset divisible by 5): pandera will pass them."""

    def screen(frame: pl.DataFrame, *window) -> ScreenedBatch:
        screened = real(frame, *window)
        doubted = pl.col(OFFSET_COLUMN) % 5 == 0
        clean = screened.clean.filter(~doubted)
        suspects = pl.concat([screened.suspects, screened.clean.filter(doubted)])
        return ScreenedBatch(clean, suspects.sort(OFFSET_COLUMN))

    return screen


def test_suspects_pandera_passes_land_once_and_are_filtered_with_the_rest(
    lake_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    truth = produce(
        lake_settings,
        tmp_path / "truth.jsonl",
        1500,
        "--bad-ratio",
        "0.05",
        "--duplicate-ratio",
        "0.05",
    )
    staged = Counter()
    stage_files = run.stage_files

    def counting_stage_files(lake, range_id, *args):
        staged[range_id] += 1
        return stage_files(lake, range_id, *args)

    monkeypatch.setattr(process, "screen", doubting_every_fifth_clean_row(process.screen))
    monkeypatch.setattr(run, "stage_files", counting_stage_files)
    consumer = make_consumer(lake_settings)
    try:
        ends = [watermarks(consumer, lake_settings.raw_topic, p)[1] for p in range(3)]
    finally:
        consumer.close()
    ranges = [Range(lake_settings.raw_topic, p, 0, end) for p, end in enumerate(ends)]

    result = run.ingest(lake_settings, ranges)

    assert len(result.committed) == 3 and result.accounting_ok()
    # Each range staged twice: once without the rows pandera passed, once with them.
    assert sorted(staged.values()) == [2, 2, 2]
    verdicts = Counter(t["verdict"] for t in truth)
    lake = lake_frame(lake_settings)
    good = sorted((t["partition"], t["offset"]) for t in truth if t["verdict"] == "good")
    assert sorted(lake.select("kafka_partition", "kafka_offset").iter_rows()) == good
    assert any(offset % 5 == 0 for _partition, offset in good)
    assert result.dlq_count == sum(n for v, n in verdicts.items() if v.startswith("bad:"))
    filtered: Counter[str] = Counter()
    for record in read_history(lake_of(lake_settings)).records:
        for reason, offsets in record.filtered.items():
            filtered[reason] += len(offsets)
    assert filtered["duplicate"] == verdicts["duplicate"] > 0
    assert filtered["bot"] == verdicts["bot"]
    assert filtered["test_user"] == verdicts["test_user"]
    assert_reconciles(env_for(lake_settings))
