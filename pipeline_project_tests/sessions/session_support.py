"""Hand-made raw events, sent to the real broker, for tests that need exact expected rows."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from confluent_kafka import Producer

from pipeline_project.settings import Settings

CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
)
UNKNOWN_CLIENT = "AcmeKiosk/2.3"


def raw_event(
    session: str,
    user: str,
    kind: str,
    when: datetime,
    path: str,
    ua: str = CHROME_WINDOWS,
    country: str | None = None,
    event_id: str | None = None,
    **props: Any,
) -> dict[str, Any]:
    """One valid raw event (the contract in events/contract.py) with optional properties."""
    event: dict[str, Any] = {
        "event_id": event_id or str(uuid.uuid4()),
        "event_type": kind,
        "timestamp": when.isoformat().replace("+00:00", "Z"),
        "user_id": user,
        "session_id": session,
        "page_url": f"https://shop.example.com{path}",
        "user_agent": ua,
    }
    if country:
        event["country"] = country
    if props:
        event["properties"] = props
    return event


def send(settings: Settings, values: list[dict[str, Any] | bytes], partition: int = 0) -> None:
    """Produces the events (dicts as JSON, bytes as they are) to one partition, in list order."""
    producer = Producer({"bootstrap.servers": settings.bootstrap, "enable.idempotence": True})
    for value in values:
        data = value if isinstance(value, bytes) else json.dumps(value).encode()
        producer.produce(settings.raw_topic, value=data, key=b"k", partition=partition)
    assert producer.flush(30) == 0
