"""Run tags the sensor sets and dagster.yaml's run queue limits by (one run per partition, …)."""

PARTITION_TAG = "pipeline/partition"
RANGE_TAG = "pipeline/range"
JOB_TAG = "pipeline/job"
