"""Benchmarks (`make bench`): figures printed as JSON, never asserted by tests.

Run from the repository root; not shipped in the wheel.
"""
