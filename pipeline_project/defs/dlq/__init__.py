"""DLQ domain: the `dlq_report` asset and its checks, job `reprocess_dlq`, their schedules."""

from dagster import Definitions

from pipeline_project.defs.dlq.report import dlq_report, dlq_report_job, dlq_report_schedule
from pipeline_project.defs.dlq.reprocess import reprocess_dlq, reprocess_dlq_schedule

defs = Definitions(
    assets=[dlq_report],
    jobs=[reprocess_dlq, dlq_report_job],
    schedules=[reprocess_dlq_schedule, dlq_report_schedule],
)
