"""Upkeep domain: compaction, vacuum + checkpoints and retention of the lake, on schedules.

Assets `upkeep/events_compaction` (hourly), `upkeep/lake_vacuum` (daily), `upkeep/lake_retention`
(daily, a no-op while PIPELINE_LAKE_RETENTION_DAYS is unset), one job and schedule each, and the
`small_files` check on `events` (run by the automation sensor). Upkeep runs carry the job tag
`upkeep`, which dagster.yaml runs one at a time: retention's delete and a compaction of the same
day would fail each other.
"""

from dagster import Definitions

from pipeline_project.defs.upkeep.checks import events_small_files
from pipeline_project.defs.upkeep.jobs import UPKEEP_ASSETS, UPKEEP_JOBS, UPKEEP_SCHEDULES

defs = Definitions(
    assets=list(UPKEEP_ASSETS),
    asset_checks=[events_small_files],
    jobs=list(UPKEEP_JOBS),
    schedules=list(UPKEEP_SCHEDULES),
)
