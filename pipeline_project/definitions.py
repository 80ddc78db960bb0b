"""The Dagster code location (`-w workspace.yaml` or `-m pipeline_project.definitions`)."""

from __future__ import annotations

from dagster import Definitions

from pipeline_project.defs.assets import dlq_spec, events_spec, raw_events_spec
from pipeline_project.defs.checks import accounting_identity
from pipeline_project.defs.jobs import ingest_events
from pipeline_project.defs.sensors import kafka_backlog_sensor

defs = Definitions(
    assets=[raw_events_spec, dlq_spec, events_spec],
    asset_checks=[accounting_identity],
    jobs=[ingest_events],
    sensors=[kafka_backlog_sensor],
)
