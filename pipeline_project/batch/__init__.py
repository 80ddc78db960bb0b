"""The micro-batch core: plan, drain, parse, validate, transform, write, commit.

No Dagster imports here.
"""
