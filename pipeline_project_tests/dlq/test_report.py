"""The dlq_report asset on the real broker: counts equal the producer's truth, checks, metadata,
and its tables are Delta tables beside `events`, read back through the Delta log.

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

from pipeline_project.batch.parse import VERSION_RULE, version_message
from pipeline_project.batch.run import ingest
from pipeline_project.definitions import defs
from pipeline_project.defs.dlq.report import dlq_report
from pipeline_project.dlq import resolution
from pipeline_project.dlq.records import DlqRecord
from pipeline_project.dlq.report import (
    TABLE_LOG,
    TABLE_RECORDS,
    TABLE_SUMMARY,
    Report,
    category_check,
    log_rows,
    markdown,
    per_source,
    render_failing,
    summary_frame,
)
from pipeline_project.dlq.reprocess import DlqMessage, reprocess
from pipeline_project.events.contract import ERROR_STAGE, UNSUPPORTED_VERSION
from pipeline_project.lake.location import lake_of
from pipeline_project.settings import Settings
from pipeline_project_tests.dlq.dlq_support import cli
from pipeline_project_tests.ingest_support import assert_reconciles, dagster_resources, produce
from pipeline_project_tests.support import env_for

BREAKDOWNS = ("by_category", "by_rule", "by_field", "by_stage", "by_source_partition", "by_hour")


def read_table(settings: Settings, table: str) -> pl.DataFrame:
    """A report table as a user reads it: through the Delta log."""
    lake = lake_of(settings)
    return pl.read_delta(lake.table_uri(table), storage_options=lake.polars_options())


def test_report_tables_are_delta_tables_and_the_log_is_the_read_progress(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    settings = kafka_settings
    produce(settings, tmp_path / "truth.jsonl", 1_000, "--bad-ratio", "0.1", seed=5)
    result = ingest(settings)
    assert result.accounting_ok()
    bad = result.dlq_count  # one DLQ record per failed source record, none reprocessed yet
    resources = dagster_resources(settings)
    with DagsterInstance.ephemeral() as instance:
        first = materialize([dlq_report], instance=instance, resources=resources)
        meta = first.asset_materializations_for_node("dlq_report")[0].metadata
        second = materialize([dlq_report], instance=instance, resources=resources)
        again = second.asset_materializations_for_node("dlq_report")[0].metadata
    lake = lake_of(settings)
    assert meta["records_table"].value == lake.table_uri(TABLE_RECORDS)
    assert meta["summary_table"].value == lake.table_uri(TABLE_SUMMARY)
    records = read_table(settings, TABLE_RECORDS)
    assert records.height == meta["failed_records"].value == bad
    summary = read_table(settings, TABLE_SUMMARY)
    by_category = summary.filter(pl.col("dimension") == "category")
    assert dict(by_category.select("key", "records").rows()) == meta["by_category"].data
    # The second report read nothing new (progress is the log table), rewrote the same rows.
    assert again["new_dlq_records"].value == 0
    assert again["dlq_records"].value == meta["dlq_records"].value
    assert again["log_version"].value == meta["log_version"].value  # nothing appended
    assert again["records_version"].value == meta["records_version"].value + 1
    assert read_table(settings, TABLE_LOG).height == meta["dlq_records"].value
    assert read_table(settings, TABLE_RECORDS).height == bad
    assert not (settings.state_dir / "dlq_report").exists()  # nothing under the state dir


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
        for name in (*BREAKDOWNS, "top_errors", "samples", "summary", "records_table"):
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

    records = read_table(settings, TABLE_RECORDS)
    assert (
        records.height
        == bad.total()
        == records.select("source_offset", "source_partition").n_unique()
    )
    assert read_table(settings, TABLE_SUMMARY).height > 0
    assert_reconciles(env_for(settings))

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


def _failed(offset: int, category: str, rule: str, message: str) -> DlqMessage:
    """A DLQ message as the pipeline writes it for a failed raw record."""
    record = DlqRecord(
        "raw-events",
        0,
        offset,
        1_740_830_400_000,
        None,
        b'{"schema_version":9}',
        ERROR_STAGE[category],
        category,
        rule,
        "schema_version",
        message,
        1,
        "run-test",
        "2025-03-01T12:00:00Z",
    )
    return DlqMessage(0, offset, record)


def test_records_of_a_newer_schema_version_are_named_apart() -> None:
    """They wait for a release that knows their version: counted per version, not as breakage."""
    messages = [_failed(i, UNSUPPORTED_VERSION, VERSION_RULE, version_message(9)) for i in range(3)]
    messages.append(_failed(3, UNSUPPORTED_VERSION, VERSION_RULE, version_message(12)))
    messages += [_failed(4 + i, "invalid_json", "json_syntax", "Expecting value") for i in range(2)]
    log = log_rows("dead-letter-queue", messages)
    records = per_source(log, resolution.Book())
    found = Report(
        records=records,
        summary=summary_frame(records),
        dlq_records=log.height,
        new_records=log.height,
        malformed=0,
        new_categories=[],
        new_rules=[],
        checks=[],
        tables={},
        versions={},
        first=False,
    )
    assert found.waiting_versions() == {"9": 3, "12": 1}
    assert found.counts("category") == {UNSUPPORTED_VERSION: 4, "invalid_json": 2}
    assert category_check(found).passed, "a contract category, not an unknown failure mode"
    summary = markdown(found)
    assert "**Waiting for a newer contract** (unsupported_schema_version): 4 records" in summary
    assert "(v9: 3, v12: 1)" in summary
    inspect = render_failing(messages, limit=10)
    assert inspect.splitlines()[-1] == (
        "4 of them come from a newer schema version (unsupported_schema_version): "
        "they wait for a newer contract; reprocessing re-sends them without counting an attempt"
    )
