"""Benchmarks (`make bench`): figures printed as JSON, never asserted by tests."""
