"""Dagster definitions by domain: ingest, dlq, sessions, and the resources they take.

A thin layer over the Dagster-free core in batch/, dlq/ and kafka/.
"""
