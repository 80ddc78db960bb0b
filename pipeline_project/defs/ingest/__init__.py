"""Ingest domain: Kafka topics and `events` (daily), job `ingest_events`, `kafka_backlog_sensor`.

Also the checks on `events`: the accounting identity and the periodic freshness and user agents.
"""

from dagster import Definitions

from pipeline_project.defs.ingest.assets import dlq_spec, events_spec, raw_events_spec
from pipeline_project.defs.ingest.checks import accounting_identity
from pipeline_project.defs.ingest.job import ingest_events
from pipeline_project.defs.ingest.quality import events_quality_checks
from pipeline_project.defs.ingest.sensor import kafka_backlog_sensor

defs = Definitions(
    assets=[raw_events_spec, dlq_spec, events_spec],
    asset_checks=[accounting_identity, *events_quality_checks],
    jobs=[ingest_events],
    sensors=[kafka_backlog_sensor],
)
