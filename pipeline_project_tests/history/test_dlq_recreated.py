"""Case 1 of issue 21 for the DLQ: the dead-letter topic deleted and recreated.

Reprocessing had committed the old DLQ's offsets; the new topic's records sit below them. Before,
reprocessing and `dlq inspect` skipped them silently. Now both stop with one line naming the
topic; after `topic new-epoch <dlq topic>`, `dlq inspect` and the DLQ report agree on what is
failing, reprocessing recovers it, and reconcile accounts for both epochs of the DLQ.
"""

from __future__ import annotations

import polars as pl

from pipeline_project.batch.run import ingest
from pipeline_project.dlq import report
from pipeline_project.settings import Settings
from pipeline_project_tests.dlq.dlq_support import HOPELESS, REPAIRABLE, encode, event, produce_raw
from pipeline_project_tests.history.history_support import (
    cli,
    problem_codes,
    reconcile,
    recreate_topic,
)

KEY = b"one-dlq-partition"


def test_recreated_dlq_stops_reprocessing_then_a_new_epoch_recovers_its_records(
    kafka_settings: Settings,
) -> None:
    settings = kafka_settings
    produce_raw(settings, [REPAIRABLE["shouting_type"], HOPELESS["unknown_type"]], key=KEY)
    ingest(settings)
    replay = cli(settings, "dlq", "replay")
    assert replay.returncode == 0, replay.stderr

    recreate_topic(settings, settings.dlq_topic)
    produce_raw(settings, [REPAIRABLE["epoch_millis"], encode(event(40))], key=KEY)
    assert ingest(settings).dlq_count == 1  # into the new DLQ, below the committed end

    for args in (("dlq", "inspect"), ("dlq", "replay")):
        stopped = cli(settings, *args)
        assert stopped.returncode == 1, stopped.stdout
        assert settings.dlq_topic in stopped.stderr and "new-epoch" in stopped.stderr
        assert "Traceback" not in stopped.stderr
    code, found = reconcile(settings)
    assert code == 1 and "topic_changed" in problem_codes(found)

    opened = cli(settings, "topic", "new-epoch", settings.dlq_topic, "--reason", "recreated")
    assert opened.returncode == 0, opened.stderr
    inspect = cli(settings, "dlq", "inspect")
    assert inspect.returncode == 0, inspect.stderr
    assert "1 failing" in inspect.stdout
    built = report.build(settings)
    failing = built.records.filter(pl.col("status") == report.FAILING)
    assert failing.height == 1  # the report agrees with `dlq inspect`

    replay = cli(settings, "dlq", "replay")
    assert replay.returncode == 0, replay.stderr
    assert (
        "0 failing" in cli(settings, "dlq", "inspect").stdout
        or "nothing" in cli(settings, "dlq", "inspect").stdout
    )
    code, found = reconcile(settings)
    assert code == 0, found["problems"]
    sources = {p["app_id"] for p in found["partitions"]}
    assert any(s.startswith(f"{settings.dlq_topic}@1-") for s in sources)
