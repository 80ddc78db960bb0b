"""Micro-benchmark: process_batch on realistic events vs the same work per event in pure Python.

Run: `python -m benchmarks.process_bench [--events 200000] [--bad-ratio 0.05]`.
Both sides get the same records and must reach the same counts; only in-memory work is timed.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import polars as pl

from pipeline_project.batch.process import process_batch
from pipeline_project.batch.records import RawBatch
from pipeline_project.batch.transform import LAKE_SCHEMA
from pipeline_project.events import contract as c
from pipeline_project.events.contract import IP_PATTERN, TIMESTAMP_PATTERN
from pipeline_project.events.generator import EventGenerator

NOW_EPOCH = 1_740_830_400.0  # 2025-03-01T12:00:00Z
LATENESS_DAYS = 7
SKEW_SECONDS = 300


def make_batch(
    n: int, bad_ratio: float, seed: int = 1, schema_mix: dict[int, float] | None = None
) -> RawBatch:
    """`n` generator records (sessions, bots, test users, duplicates, bad ones), one partition."""
    gen = EventGenerator(
        seed,
        bad_ratio=bad_ratio,
        duplicate_ratio=0.01,
        late_ratio=0.05,
        schema_mix=schema_mix,
    )
    records = gen.batch(n, now=NOW_EPOCH)
    stamp = int(NOW_EPOCH * 1000)
    return RawBatch(
        "raw-events",
        0,
        list(range(n)),
        [stamp] * n,
        [r.key for r in records],
        [r.value for r in records],
    )


def run_vectorised(raw: RawBatch) -> tuple[int, int, int]:
    now = datetime.fromtimestamp(NOW_EPOCH, UTC)
    result = process_batch(
        raw,
        run_id="bench",
        ingested_at=now,
        now=now,
        max_lateness_days=LATENESS_DAYS,
        max_clock_skew_seconds=SKEW_SECONDS,
        committed_ids=None,
    )
    return result.good_count, result.reject_count, result.filtered_count


# --- the per-event pure-Python baseline ----------------------------------------------------------

_UUID = re.compile(c.UUID_PATTERN)
_URL = re.compile(c.URL_PATTERN)
_COUNTRY = re.compile(c.COUNTRY_PATTERN)
_IP = re.compile(IP_PATTERN)
_TS = re.compile(TIMESTAMP_PATTERN)
_UA_RULES = (
    ("Edge", re.compile(r"Edg(e|A|iOS)?/")),
    ("Firefox", re.compile(r"Firefox/|FxiOS/")),
    ("Chrome", re.compile(r"Chrome/|CriOS/")),
    ("Safari", re.compile(r"Safari/")),
)
_OS_RULES = (
    ("iOS", re.compile(r"iPhone|iPad|iPod")),
    ("Android", re.compile(r"Android")),
    ("Windows", re.compile(r"Windows")),
    ("macOS", re.compile(r"Macintosh|Mac OS X")),
    ("Linux", re.compile(r"Linux|X11")),
)
_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
}


class _Bad(Exception):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs) or len(pairs) > c.MAX_KEYS:
        raise _Bad
    return obj


def _const(_: str) -> float:
    raise _Bad


def _event_or_none(value: bytes | None, start: datetime, end: datetime) -> dict[str, Any] | None:
    """json.loads plus dict checks, like a straightforward per-record validator."""
    if value is None or len(value) > c.MAX_MESSAGE_BYTES or value.startswith(b"\xef\xbb\xbf"):
        return None
    try:
        event = json.loads(value.decode(), object_pairs_hook=_pairs, parse_constant=_const)
        json.dumps(event, allow_nan=False, ensure_ascii=False).encode()  # surrogates, inf
    except (ValueError, RecursionError, _Bad, UnicodeError):
        return None
    if not isinstance(event, dict) or _depth(event) > c.MAX_DEPTH:
        return None
    return event if _checks_pass(event, start, end) else None


def _depth(node: Any) -> int:
    if isinstance(node, dict):
        return 1 + max((_depth(v) for v in node.values()), default=0)
    if isinstance(node, list):
        return 1 + max((_depth(v) for v in node), default=0)
    return 0


def _checks_pass(event: dict[str, Any], start: datetime, end: datetime) -> bool:
    for name in c.REQUIRED_FIELDS:
        value = event.get(name)
        if not isinstance(value, str) or not value.strip():
            return False
    props = event.get("properties") or {}
    typed = [(event, name, kind) for name, kind in c.OPTIONAL_FIELDS.items()]
    typed += [(props, name, kind) for name, kind in c.PROPERTY_TYPES.items()]
    for obj, name, kind in typed:
        value = obj.get(name)
        if value is not None and not _JSON_TYPES[kind](value):
            return False
        low_high = c.NUMERIC_BOUNDS.get(name)
        if value is not None and low_high and not low_high[0] <= value <= low_high[1]:
            return False
    if props.get("currency") is not None and props["currency"] not in c.CURRENCIES:
        return False
    if not (
        _UUID.match(event["event_id"])
        and event["event_type"] in c.EVENT_CATEGORIES
        and c.is_valid_id(event["user_id"])
        and c.is_valid_id(event["session_id"])
        and _URL.match(event["page_url"])
        and _TS.match(event["timestamp"])
    ):
        return False
    if event.get("country", "").strip() and not _COUNTRY.match(event["country"]):
        return False
    if event.get("referrer", "").strip() and not _URL.match(event["referrer"]):
        return False
    for name in ("product_id", "order_id"):
        if (props.get(name) or "").strip() and not c.is_valid_id(props[name]):
            return False
    texts = [event.get(k) for k in ("page_url", "user_agent", "referrer")]
    texts += [props.get(k) for k in ("category", "query", "element_id", "method")]
    if any(t is not None and len(t) > c.TEXT_MAX_LENGTH for t in texts):
        return False
    if event.get("ip") and not _IP.match(event["ip"]):
        return False
    try:
        ts = datetime.fromisoformat(event["timestamp"]).astimezone(UTC)
    except ValueError:
        return False
    event["_ts"] = ts
    return start <= ts <= end


def _row(event: dict[str, Any], offset: int) -> dict[str, Any]:
    """Per-event transform: normalise, enrich from the user agent, split the URL, flatten."""
    ua = event["user_agent"]
    parts = urlsplit(event["page_url"])
    path = parts.path or "/"
    props = event.get("properties") or {}
    mobile = "Mobile" in ua or "iPhone" in ua
    return {
        "event_id": event["event_id"].lower(),
        "event_type": event["event_type"],
        "event_category": c.EVENT_CATEGORIES[event["event_type"]],
        "timestamp": event["_ts"],
        "event_date": event["_ts"].date(),
        "user_id": event["user_id"],
        "page_path": path,
        "page_query": parts.query or None,
        "page_section": path.strip("/").split("/")[0].lower() or "home",
        "device_type": "tablet" if "iPad" in ua else "mobile" if mobile else "desktop",
        "browser": next((n for n, rx in _UA_RULES if rx.search(ua)), "Other"),
        "os": next((n for n, rx in _OS_RULES if rx.search(ua)), "Other"),
        "is_bot": bool(c.BOT_UA_RE.search(ua)),
        "country": (event.get("country") or "").upper() or None,
        "price": props.get("price"),
        "currency": props.get("currency"),
        "quantity": props.get("quantity"),
        "kafka_offset": offset,
    }


def run_per_event(raw: RawBatch) -> tuple[int, int, int]:
    now = datetime.fromtimestamp(NOW_EPOCH, UTC)
    start, end = now - timedelta(days=LATENESS_DAYS), now + timedelta(seconds=SKEW_SECONDS)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    bad = filtered = 0
    for offset, value in zip(raw.offsets, raw.values, strict=True):
        event = _event_or_none(value, start, end)
        if event is None:
            bad += 1
            continue
        row = _row(event, offset)
        key = row["event_id"]
        if row["is_bot"] or row["user_id"].startswith(c.TEST_USER_PREFIX) or key in seen:
            filtered += 1
            continue
        seen.add(key)
        rows.append(row)
    frame = pl.from_dicts(rows, infer_schema_length=None)  # the columns a writer needs
    return frame.height, bad, filtered


def _time(
    fn: Callable[[RawBatch], tuple[int, int, int]], raw: RawBatch, repeat: int
) -> list[float]:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn(raw)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--bad-ratio", type=float, default=0.05)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    raw = make_batch(args.events, args.bad_ratio)
    mb = sum(len(v or b"") for v in raw.values) / 1e6
    print(f"{len(raw):,} events, {mb:.1f} MB, bad ratio {args.bad_ratio}")
    print(f"process_batch counts (good, rejected, filtered): {run_vectorised(raw)}")
    print(f"per-event counts     (good, rejected, filtered): {run_per_event(raw)}")
    fast = _time(run_vectorised, raw, args.repeat)
    slow = _time(run_per_event, raw, max(1, args.repeat // 2))
    for label, seconds in (("process_batch", fast), ("per-event Python", slow)):
        best, median = min(seconds), statistics.median(seconds)
        print(
            f"{label:17s} best {len(raw) / best:>10,.0f} ev/s ({best * 1e6 / len(raw):.2f} us/ev)"
            f"  median {len(raw) / median:>10,.0f} ev/s"
        )
    ratio = min(slow) / min(fast)
    print(f"speed-up {ratio:.1f}x (best vs best); lake columns {len(LAKE_SCHEMA)}")
    if not math.isfinite(ratio):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
