"""Hand-built raw events and batches for the batch-stage tests (independent of the generator)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline_project.batch.process import CommittedIds, process_batch
from pipeline_project.batch.records import BatchResult, RawBatch

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
INGESTED_AT = datetime(2025, 3, 1, 12, 0, 5, tzinfo=UTC)
LATENESS_DAYS = 7
SKEW_SECONDS = 300
TOPIC = "raw-events"
FIRST_OFFSET = 1_000

CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
SAFARI_IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def event_id(i: int) -> str:
    """A stable UUID per index, so tests can predict ids."""
    return str(uuid.UUID(int=i + 1, version=4))


def good_event(i: int = 0, **overrides: Any) -> dict[str, Any]:
    """A valid event with every optional field; `overrides` replace fields (None keeps a null)."""
    event: dict[str, Any] = {
        "event_id": event_id(i),
        "event_type": "add_to_cart",
        "timestamp": "2025-03-01T11:00:00.123Z",
        "user_id": f"user_{i % 97}",
        "session_id": f"sess_{i % 13}",
        "page_url": f"https://shop.example.com/p/item-{i}?ref=home#reviews",
        "referrer": "https://www.google.com/",
        "user_agent": CHROME_WINDOWS,
        "ip": "203.0.113.7",
        "country": "us",
        "schema_version": 1,
        "properties": {
            "product_id": f"prod_{i}",
            "category": "shoes",
            "price": 19.99,
            "currency": "USD",
            "quantity": 2,
        },
    }
    event.update(overrides)
    return event


def encode(event: Any) -> bytes:
    return orjson.dumps(event)


def raw_batch(values: list[bytes | None], *, first: int = FIRST_OFFSET) -> RawBatch:
    """A batch as the drain hands it over: consecutive offsets, Kafka timestamps 1 s apart."""
    offsets = list(range(first, first + len(values)))
    stamps = [int(NOW.timestamp() * 1000) - 60_000 + i * 1000 for i in range(len(values))]
    keys: list[bytes | None] = [f"user_{i}".encode() for i in range(len(values))]
    return RawBatch(TOPIC, 0, offsets, stamps, keys, list(values))


def good_values(n: int, start: int = 0) -> list[bytes | None]:
    return [encode(good_event(i)) for i in range(start, start + n)]


def embedded(bad: bytes | None, n_good: int = 100, at: int = 50) -> tuple[RawBatch, int]:
    """`bad` placed among `n_good` good events; returns the batch and the bad record's offset."""
    values = good_values(n_good)
    values.insert(at, bad)
    return raw_batch(values), FIRST_OFFSET + at


def run(raw: RawBatch, committed_ids: CommittedIds | None = None) -> BatchResult:
    """process_batch with the tests' fixed clock and window."""
    return process_batch(
        raw,
        run_id="run-test",
        ingested_at=INGESTED_AT,
        now=NOW,
        max_lateness_days=LATENESS_DAYS,
        max_clock_skew_seconds=SKEW_SECONDS,
        committed_ids=committed_ids,
    )
