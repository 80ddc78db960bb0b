"""Dagster definitions: a thin layer over the Dagster-free core in batch/, dlq/ and kafka/."""
