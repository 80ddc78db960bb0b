"""Tests of the batch core (plan, parse, validate, transform, lake, ledger, recover, reconcile)."""
