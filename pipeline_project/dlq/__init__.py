"""The dead-letter queue: record format, confirmed publishing, the report and reprocessing."""
