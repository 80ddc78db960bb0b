"""The dlq_report asset on the real broker: counts equal the producer's truth, checks, metadata.

Also the Dagster wiring of issue 5: the reprocess job, its tag and the schedules (loaded, running).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl
from dagster import (
    AssetCheckSeverity,
    AssetKey,
    DagsterInstance,
    DefaultScheduleStatus,
    materialize,
)

from pipeline_project.batch.reconcile import reconcile
from pipeline_project.batch.run import ingest
from pipeline_project.definitions import defs
from pipeline_project.defs.dlq.report import dlq_report
from pipeline_project.dlq.report import RECORDS_FILE, REPORT_DIR, SUMMARY_FILE
from pipeline_project.dlq.reprocess import reprocess
from pipeline_project.settings import Settings
from pipeline_project_tests.dlq.dlq_support import cli
from pipeline_project_tests.ingest_support import dagster_resources, produce

BREAKDOWNS = ("by_category", "by_rule", "by_field", "by_stage", "by_source_partition", "by_hour")


def test_report_counts_match_the_truth_and_follow_reprocessing(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    settings = kafka_settings
    truth = produce(settings, tmp_path / "truth.jsonl", 3_000, "--bad-ratio", "0.1", seed=11)
    assert ingest(settings).accounting_ok()
    bad = Counter(t["verdict"].removeprefix("bad:") for t in truth if t["verdict"] != "good")
    bad = Counter({k: n for k, n in bad.items() if k not in ("duplicate", "bot", "test_user")})
    resources = dagster_resources(settings, health_max_dlq_rate=0.01)
    with DagsterInstance.ephemeral() as instance:
        first = materialize([dlq_report], instance=instance, resources=resources)
        meta = first.asset_materializations_for_node("dlq_report")[0].metadata
        assert meta["by_category"].data == dict(bad)  # once per failed source record
        assert meta["failed_records"].value == meta["failing"].value == bad.total()
        for name in (*BREAKDOWNS, "top_errors", "samples", "summary", "records_path"):
            assert name in meta
        assert sum(meta["by_source_partition"].data.values()) == bad.total()
        assert meta["new_categories"].data == sorted(bad)  # the first report sees all as new
        assert "| check | result | detail |" in meta["summary"].value
        assert all(len(s["payload"]) <= 120 for s in meta["samples"].data)
        checks = {e.check_name: e for e in first.get_asset_check_evaluations()}
        assert not checks["dlq_rate_below_threshold"].passed  # ~10% > 1%
        assert checks["dlq_rate_below_threshold"].severity == AssetCheckSeverity.WARN
        assert checks["no_unknown_category"].passed
        assert checks["oldest_unresolved_age"].passed

        done = reprocess(settings).counts()
        second = materialize([dlq_report], instance=instance, resources=resources)
        meta = second.asset_materializations_for_node("dlq_report")[0].metadata
        assert meta["by_category"].data == dict(bad)  # re-sent copies are not new failures
        assert meta["new_dlq_records"].value == done["retried"] + done["deferred"]
        assert meta["recovered"].value == done["recovered"] > 0
        assert meta["failing"].value == done["retried"] + done["deferred"]
        assert meta["new_categories"].data == [] and meta["new_rules"].data == []

    records = pl.read_parquet(settings.lake_dir / REPORT_DIR / RECORDS_FILE)
    assert (
        records.height
        == bad.total()
        == records.select("source_offset", "source_partition").n_unique()
    )
    assert (settings.lake_dir / REPORT_DIR / SUMMARY_FILE).is_file()
    rec = reconcile(settings)
    assert rec.ok, [str(p) for p in rec.problems]
    assert rec.unchecked_tables == [REPORT_DIR]

    inspect = cli(settings, "dlq", "inspect", "--category", "invalid_json", "--limit", "3")
    assert inspect.returncode == 0, inspect.stderr
    lines = inspect.stdout.splitlines()
    assert lines[0].split()[:4] == ["source", "category", "rule", "field"]
    assert all(" invalid_json " in line for line in lines[1:4])
    assert lines[-1].startswith(f"{bad['invalid_json']} failing")


def test_reprocess_job_and_schedules_are_loaded() -> None:
    job = defs.resolve_job_def("reprocess_dlq")
    assert job.tags["pipeline/job"] == "reprocess_dlq"
    schedule = defs.resolve_schedule_def("reprocess_dlq_schedule")
    assert schedule.job_name == "reprocess_dlq"
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    report_schedule = defs.resolve_schedule_def("dlq_report_schedule")
    assert report_schedule.default_status == DefaultScheduleStatus.RUNNING
    graph = defs.resolve_asset_graph()
    assert graph.get(AssetKey("dlq_report")).parent_keys == {
        AssetKey(["kafka", "dead_letter_queue"])
    }
    checks = {key.name for key in graph.asset_check_keys if key.asset_key == AssetKey("dlq_report")}
    assert checks == {"dlq_rate_below_threshold", "no_unknown_category", "oldest_unresolved_age"}
