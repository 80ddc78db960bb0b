"""A successor run: started while the run before it works, it waits for that run's commit.

What a user would notice if it went wrong: a range committed before the one it follows (offsets
skipped), a successor that commits after its predecessor failed, or one that waits for ever.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pipeline_project.batch.ranges import Range
from pipeline_project.batch.run import Predecessor, ingest
from pipeline_project.errors import ContiguityError
from pipeline_project.kafka.drain import make_consumer, watermarks
from pipeline_project.lake.audit import audit
from pipeline_project.lake.history import read_history
from pipeline_project.lake.location import lake_of
from pipeline_project.lake.table import open_table, txn_version
from pipeline_project.settings import Settings
from pipeline_project_tests.ingest_support import produce


def _partition_end(settings: Settings, partition: int) -> int:
    consumer = make_consumer(settings)
    try:
        return watermarks(consumer, settings.raw_topic, partition)[1]
    finally:
        consumer.close()


def test_a_successor_reads_only_after_its_predecessor_committed(
    lake_settings: Settings, tmp_path: Path
) -> None:
    produce(lake_settings, tmp_path / "truth.jsonl", 900, "--bad-ratio", "0.05")
    end = _partition_end(lake_settings, 0)
    middle = end // 2
    topic = lake_settings.raw_topic
    first, second = Range(topic, 0, 0, middle), Range(topic, 0, middle, end)
    done = threading.Event()

    def predecessor() -> None:
        time.sleep(2.0)  # the successor is up and waiting by then
        try:
            ingest(lake_settings, [first], run_id="run-before")
        finally:
            done.set()

    worker = threading.Thread(target=predecessor)
    worker.start()
    started = time.monotonic()
    try:
        after = Predecessor("run-before", lambda: not done.is_set(), wait_seconds=120)
        result = ingest(lake_settings, [second], run_id="run-after", after=after)
    finally:
        worker.join()
    assert time.monotonic() - started >= 2.0
    assert [o.status for o in result.outcomes] == ["committed"]
    lake = lake_of(lake_settings)
    assert txn_version(open_table(lake), first.source) == end
    order = [(r.run_id, r.range.start) for r in read_history(lake).records]
    assert order == [("run-before", 0), ("run-after", middle)]
    assert audit(lake).ok


def test_a_successor_of_a_run_that_ended_without_its_commit_commits_nothing(
    lake_settings: Settings, tmp_path: Path
) -> None:
    produce(lake_settings, tmp_path / "truth.jsonl", 300)
    end = _partition_end(lake_settings, 1)
    topic = lake_settings.raw_topic
    successor = Range(topic, 1, end // 2, end)
    started = time.monotonic()
    with pytest.raises(ContiguityError) as caught:
        ingest(
            lake_settings,
            [successor],
            run_id="run-after",
            after=Predecessor("run-gone", lambda: False, wait_seconds=120),
        )
    assert time.monotonic() - started < 30  # an ended predecessor is not waited for
    message = str(caught.value)
    assert "follows run run-gone" in message and "committed nothing" in message
    assert "(committed: nothing)" in message  # never "no commit yet, so any start will do"
    assert txn_version(open_table(lake_of(lake_settings)), successor.source) is None
