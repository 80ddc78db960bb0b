"""The Dagster code location (`-w workspace.yaml` or `-m pipeline_project.definitions`)."""

from __future__ import annotations

from dagster import Definitions

from pipeline_project.defs.assets import dlq_spec, events_spec, raw_events_spec
from pipeline_project.defs.checks import accounting_identity
from pipeline_project.defs.dlq import (
    dlq_report,
    dlq_report_job,
    dlq_report_schedule,
    reprocess_dlq,
    reprocess_dlq_schedule,
)
from pipeline_project.defs.jobs import ingest_events
from pipeline_project.defs.quality import events_quality_checks
from pipeline_project.defs.sensors import kafka_backlog_sensor
from pipeline_project.defs.sessions import pipeline_automation_sensor, sessions

defs = Definitions(
    assets=[raw_events_spec, dlq_spec, events_spec, sessions, dlq_report],
    asset_checks=[accounting_identity, *events_quality_checks],
    jobs=[ingest_events, reprocess_dlq, dlq_report_job],
    schedules=[reprocess_dlq_schedule, dlq_report_schedule],
    sensors=[kafka_backlog_sensor, pipeline_automation_sensor],
)
