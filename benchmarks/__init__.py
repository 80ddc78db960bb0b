"""Benchmarks (`make bench`): run from the repository root, not shipped in the wheel."""
