"""Repair rules: each fixes one unambiguous defect, leaves everything else to the validator."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline_project.dlq.repair import RULES, RepairContext, derive_event_id, repair
from pipeline_project.events.generator import EventGenerator

CTX = RepairContext("raw-events", 2, 41)


def fixed(body: dict[str, Any], ctx: RepairContext = CTX) -> tuple[dict[str, Any], tuple[str, ...]]:
    result = repair(json.dumps(body).encode(), ctx)
    return json.loads(result.value or b"null"), result.rules


@pytest.mark.parametrize(
    ("timestamp", "expected", "rule"),
    [
        (1767225600123, "2026-01-01T00:00:00.123Z", "timestamp_epoch@1"),  # millis
        (1767225600, "2026-01-01T00:00:00.000Z", "timestamp_epoch@1"),  # seconds
        ("1767225600", "2026-01-01T00:00:00.000Z", "timestamp_epoch@1"),  # seconds as text
        ("2026-01-01T10:00:00.5", "2026-01-01T10:00:00.5Z", "timestamp_naive_utc@1"),
        ("2026-01-01 10:00:00", "2026-01-01T10:00:00Z", "timestamp_naive_utc@1"),
        ("Thu, 01 Jan 2026 10:00:00 GMT", "2026-01-01T10:00:00.000Z", "timestamp_rfc2822@1"),
        ("Thu, 01 Jan 2026 12:00:00 +0200", "2026-01-01T10:00:00.000Z", "timestamp_rfc2822@1"),
    ],
)
def test_timestamps_become_iso_utc(timestamp: Any, expected: str, rule: str) -> None:
    body, rules = fixed({"event_id": "x", "timestamp": timestamp})
    assert body["timestamp"] == expected and rules == (rule,)


@pytest.mark.parametrize(
    "timestamp", ["2026-01-01", "yesterday", 12, -5, True, "2026-13-45T25:61:00Z", 10**15]
)
def test_ambiguous_timestamps_are_left_alone(timestamp: Any) -> None:
    body, rules = fixed({"event_id": "x", "timestamp": timestamp})
    assert body["timestamp"] == timestamp and rules == ()


def test_naive_timestamps_only_when_the_policy_allows() -> None:
    strict = RepairContext("raw-events", 2, 41, naive_as_utc=False)
    body, rules = fixed({"event_id": "x", "timestamp": "2026-01-01T10:00:00"}, strict)
    assert body["timestamp"] == "2026-01-01T10:00:00" and rules == ()


@pytest.mark.parametrize(
    ("event_type", "expected"),
    [(" PAGE_VIEW ", "page_view"), ("Add-To-Cart", "add_to_cart"), ("teleport", "teleport")],
)
def test_event_type_is_normalised_only_to_a_known_type(event_type: str, expected: str) -> None:
    body, _ = fixed({"event_id": "x", "event_type": event_type})
    assert body["event_type"] == expected


def test_numbers_in_text_and_lower_case_currency() -> None:
    props = {"quantity": "12", "price": "9.50", "results_count": "1.5", "currency": " usd"}
    body, rules = fixed({"event_id": "x", "schema_version": "1", "properties": props})
    assert body["schema_version"] == 1
    assert body["properties"] == {
        "quantity": 12,
        "price": 9.5,
        "results_count": "1.5",  # not an integer: the validator decides
        "currency": "USD",
    }
    assert rules == ("numeric_strings@1", "currency_upper@1")


@pytest.mark.parametrize("event_id", [None, "", "   "])
def test_a_missing_event_id_is_derived_from_the_source_coordinates(event_id: str | None) -> None:
    body, rules = fixed({"event_id": event_id} if event_id is not None else {})
    assert body["event_id"] == derive_event_id(CTX) and rules == ("event_id_derived@1",)
    other = RepairContext("raw-events", 2, 42)
    assert derive_event_id(other) != derive_event_id(CTX) == derive_event_id(CTX)


def test_braced_uuid_is_unwrapped_and_other_ids_kept() -> None:
    uid = "0e8a3b5c-1111-2222-3333-444455556666"
    assert fixed({"event_id": "{" + uid + "}"})[0]["event_id"] == uid
    assert fixed({"event_id": "not-a-uuid"}) == ({"event_id": "not-a-uuid"}, ())


@pytest.mark.parametrize(
    "value", [b'{"event_id": "x", "event_id": "y"}', b'{"a": 1', b"\xff\xfe", b"[1, 2]", None]
)
def test_payloads_the_parser_rejects_are_never_touched(value: bytes | None) -> None:
    assert repair(value, CTX).value == value and repair(value, CTX).rules == ()


def test_rules_are_named_and_versioned_once() -> None:
    ids = [rule.rule_id for rule in RULES]
    assert len(set(ids)) == len(ids) and all("@" in i for i in ids)


def test_every_kind_of_bad_record_is_handled_without_an_exception() -> None:
    """One record must never fail a batch: repair takes whatever the generator's defects make."""
    records = EventGenerator(seed=5, bad_ratio=1.0).batch(3_000)
    repaired = [repair(r.value, RepairContext("raw-events", 0, i)) for i, r in enumerate(records)]
    assert sum(1 for r in repaired if r.rules) > 100
