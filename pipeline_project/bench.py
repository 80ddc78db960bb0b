"""`make bench`: throughput and memory of the ingest path on one pre-loaded 200k-event range.

Figures, all on the same topic: raw consume (read and discard: the ceiling), the drain→commit path
(the real protocol, in a child process so its peak RSS is its own), and a straightforward per-event
pure-Python version of the same work (json.loads, dict checks, per-event transforms, then write) as
the baseline.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_project.batch.ranges import Range
from pipeline_project.events.contract import BOT_UA_RE, EVENT_CATEGORIES, REQUIRED_FIELDS
from pipeline_project.kafka.broker import LocalBroker, free_port_pair, metadata_ok
from pipeline_project.kafka.drain import drain_range, make_consumer
from pipeline_project.kafka.topics import ensure_topics
from pipeline_project.settings import Settings

EVENTS = 200_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--skip-producer", action="store_true", help="skip the producer figures")
    parser.add_argument("--child-ingest", nargs=2, metavar=("TOPIC", "END"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_ingest:
        return _child_ingest(args.child_ingest[0], int(args.child_ingest[1]))
    base = Settings.from_env()
    broker = None
    if not metadata_ok(base.bootstrap, timeout=3.0):
        broker = LocalBroker(home=Path(".local/bench-kafka").absolute(), port=free_port_pair())
        shutil.rmtree(broker.home / "data", ignore_errors=True)
        broker.start()
        base = dataclasses.replace(base, bootstrap=broker.bootstrap)
    try:
        figures = run_bench(base, args.events)
        if not args.skip_producer:
            figures["producer_bench"] = _producer_bench(base)
        print(json.dumps(figures, indent=2))
    finally:
        if broker:
            broker.stop()
    return 0


def run_bench(base: Settings, n: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    settings = dataclasses.replace(
        base,
        raw_topic=f"bench-raw-{uuid.uuid4().hex[:8]}",
        dlq_topic=f"bench-dlq-{uuid.uuid4().hex[:8]}",
        data_dir=work / "data",
        max_range_events=n,
    )
    ensure_topics(settings, raw_partitions=1)
    try:
        figures = {"events": n, "producer": _load(settings, n)}
        end = _high_watermark(settings)
        figures["raw_consume"] = _raw_consume(settings, end)
        figures["drain_to_commit"] = _ingest_child(settings, end)
        figures["per_event_baseline"] = _baseline(settings, end, work / "baseline")
        path = figures["drain_to_commit"]["events_per_s"]
        figures["ratios"] = {
            "drain_to_commit_vs_baseline": round(
                path / figures["per_event_baseline"]["events_per_s"], 2
            ),
            "drain_to_commit_vs_raw_consume": round(
                path / figures["raw_consume"]["events_per_s"], 3
            ),
        }
        return figures
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _producer_bench(settings: Settings) -> dict:
    """The producer's own figures (1M events at full speed, rate accuracy at 1k and 20k eps)."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline_project.kafka.produce_bench"],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=1200,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "PIPELINE_KAFKA_BOOTSTRAP": settings.bootstrap,
        "PIPELINE_RAW_TOPIC": settings.raw_topic,
        "PIPELINE_DLQ_TOPIC": settings.dlq_topic,
        "PIPELINE_DATA_DIR": str(settings.data_dir),
        "PIPELINE_MAX_RANGE_EVENTS": str(settings.max_range_events),
    }


def _load(settings: Settings, n: int) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline_project.cli",
            "produce",
            "--count",
            str(n),
            "--rate",
            "0",
            "--bad-ratio",
            "0.05",
            "--duplicate-ratio",
            "0.01",
            "--seed",
            "42",
        ],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {"delivered": summary.get("delivered"), "events_per_s": summary.get("events_per_s")}


def _high_watermark(settings: Settings) -> int:
    consumer = make_consumer(settings)
    try:
        from pipeline_project.kafka.drain import watermarks

        return watermarks(consumer, settings.raw_topic, 0)[1]
    finally:
        consumer.close()


def _raw_consume(settings: Settings, end: int) -> dict:
    consumer = make_consumer(settings)
    try:
        started = time.perf_counter()
        batch = drain_range(consumer, Range(settings.raw_topic, 0, 0, end), timeout_s=300)
        seconds = time.perf_counter() - started
    finally:
        consumer.close()
    return {
        "records": len(batch),
        "seconds": round(seconds, 3),
        "events_per_s": round(len(batch) / seconds),
    }


def _ingest_child(settings: Settings, end: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline_project.bench",
            "--child-ingest",
            settings.raw_topic,
            str(end),
        ],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ingest child failed: {done.stderr[-2000:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["peak_rss_mib"] = round(max(peak_kb, before) / 1024, 1)
    return figures


def _child_ingest(topic: str, end: int) -> int:
    from pipeline_project.batch.run import ingest

    settings = Settings.from_env()
    started = time.perf_counter()
    result = ingest(settings, [Range(topic, 0, 0, end)], run_id="bench")
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "records": result.records,
                "written": result.written,
                "dlq": result.dlq_count,
                "filtered": result.filtered(),
                "seconds": round(seconds, 3),
                "events_per_s": round(result.records / seconds),
            }
        )
    )
    return 0


# ------------------------------------------------------------------------- the per-event baseline

_BROWSER = [
    ("Edge", re.compile(r"Edg/")),
    ("Opera", re.compile(r"OPR/")),
    ("Firefox", re.compile(r"Firefox/")),
    ("Chrome", re.compile(r"Chrome/")),
    ("Safari", re.compile(r"Safari/")),
]
_OS = [
    ("iOS", re.compile(r"iPhone|iPad")),
    ("Android", re.compile(r"Android")),
    ("Windows", re.compile(r"Windows")),
    ("macOS", re.compile(r"Mac OS X")),
    ("Linux", re.compile(r"Linux")),
]


def _baseline(settings: Settings, end: int, out: Path) -> dict:
    """Per-event Python: what a first version would do, record by record."""
    consumer = make_consumer(settings)
    started = time.perf_counter()
    try:
        batch = drain_range(consumer, Range(settings.raw_topic, 0, 0, end), timeout_s=300)
    finally:
        consumer.close()
    now = datetime.now(UTC)
    low, high = now - timedelta(days=7), now + timedelta(minutes=5)
    rows, bad, seen = [], 0, set()
    for offset, stamp, value in zip(batch.offsets, batch.timestamps_ms, batch.values, strict=True):
        row = _baseline_event(value, low, high)
        if row is None:
            bad += 1
            continue
        if row["event_id"] in seen or row["is_bot"] or row["user_id"].startswith("test_"):
            continue
        seen.add(row["event_id"])
        row.update(
            kafka_topic=batch.topic,
            kafka_partition=batch.partition,
            kafka_offset=offset,
            kafka_timestamp=datetime.fromtimestamp(stamp / 1000, UTC),
            ingested_at=now,
            run_id="baseline",
        )
        rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "baseline.parquet", compression="zstd")
    seconds = time.perf_counter() - started
    return {
        "records": len(batch),
        "written": len(rows),
        "bad": bad,
        "seconds": round(seconds, 3),
        "events_per_s": round(len(batch) / seconds),
    }


def _baseline_event(value: bytes | None, low: datetime, high: datetime) -> dict | None:
    if value is None:
        return None
    try:
        event = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(event, dict) or any(
        not isinstance(event.get(f), str) or not event.get(f) for f in REQUIRED_FIELDS
    ):
        return None
    if event["event_type"] not in EVENT_CATEGORIES:
        return None
    try:
        ts = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    except ValueError:
        return None
    if ts.tzinfo is None or not low <= ts <= high:
        return None
    ua = event["user_agent"]
    url = urllib.parse.urlsplit(event["page_url"])
    props = event.get("properties") if isinstance(event.get("properties"), dict) else {}
    row = {
        "event_id": event["event_id"],
        "event_type": event["event_type"].strip().lower(),
        "timestamp": ts.astimezone(UTC),
        "event_date": ts.astimezone(UTC).date(),
        "user_id": event["user_id"],
        "session_id": event["session_id"],
        "page_path": url.path,
        "page_query": url.query,
        "user_agent": ua,
        "event_category": EVENT_CATEGORIES[event["event_type"]],
        "browser": next((name for name, rx in _BROWSER if rx.search(ua)), "other"),
        "os": next((name for name, rx in _OS if rx.search(ua)), "other"),
        "device_type": "mobile" if "Mobile" in ua else "desktop",
        "is_bot": bool(BOT_UA_RE.search(ua)),
        "country": (event.get("country") or "").upper() or None,
        "product_id": props.get("product_id"),
        "price": props.get("price"),
        "currency": props.get("currency"),
        "quantity": props.get("quantity"),
    }
    numeric = ("price", "quantity", "timestamp", "event_date", "is_bot")
    try:  # a type clash or a lone surrogate would fail the whole Arrow table (RELIABILITY.md §0.7)
        for name, value in row.items():
            if value is not None and name not in numeric:
                value.encode("utf-8")
    except (UnicodeEncodeError, AttributeError):
        return None
    if not all(
        isinstance(row[k], (int, float, type(None))) and not isinstance(row[k], bool)
        for k in ("price", "quantity")
    ):
        return None
    return row


if __name__ == "__main__":
    sys.exit(main())
