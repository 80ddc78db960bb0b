"""Kafka: the local broker, topics, the event producer and the exact-range reader."""
