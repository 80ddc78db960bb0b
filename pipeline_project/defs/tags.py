"""Run tags the sensor sets and dagster.yaml's run queue limits by (one run per partition, …)."""

PARTITION_TAG = "pipeline/partition"
RANGE_TAG = "pipeline/range"
JOB_TAG = "pipeline/job"
# Every run that is not ingestion (sessions and checks, DLQ jobs, upkeep) carries this tag, and the
# run queue lets one such run hold a slot at a time: the others stay with the ingest runs.
LANE_TAG = "pipeline/lane"
BACKGROUND = "background"
BACKGROUND_TAGS = {LANE_TAG: BACKGROUND}
# Which process runs an ingest run: "<host>:<pid>:<process start ticks>". A run whose process died
# without a word (SIGKILL, OOM, a killed `dagster job execute`) stays STARTED in Dagster; the
# sensor finds it by this tag and marks it failed instead of treating its partition as busy.
WORKER_TAG = "pipeline/worker"
