"""pipeline_project: Kafka events into a daily Parquet lake, exactly once, under Dagster."""

__version__ = "0.1.0"
