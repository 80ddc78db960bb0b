"""Sessions from hand-made events through the real ingest: exact rows, committed rows only, one
commit per day, and concurrent runs of a day that neither lose nor double rows.

The events arrive out of time order, with a duplicate, a bad record and a session that crosses UTC
midnight; the sessions table must come out row for row as written below, read the way a user reads
it (through the Delta log).
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable
from polars.testing import assert_frame_equal

from pipeline_project.batch import sessions
from pipeline_project.batch.quality import unknown_user_agents
from pipeline_project.batch.run import ingest
from pipeline_project.errors import LakeError
from pipeline_project.lake.location import lake_of
from pipeline_project.settings import Settings
from pipeline_project_tests.sessions.session_support import (
    SAFARI_IPHONE,
    UNKNOWN_CLIENT,
    raw_event,
    send,
)

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DAY = date(2026, 3, 10)
EVE = date(2026, 3, 9)


def at(hh: int, mm: int, ss: int = 0, day: date = DAY) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=UTC)


def crafted() -> list[dict | bytes]:
    """Four sessions on DAY (one began on EVE), a duplicate and a bad record, shuffled."""
    a = [
        raw_event("sess_a", "user_1", "page_view", at(10, 0), "/", country="DE"),
        raw_event("sess_a", "user_1", "page_view", at(10, 0, 20), "/p/sku-1", product_id="sku-1"),
        raw_event(
            "sess_a",
            "user_1",
            "add_to_cart",
            at(10, 1),
            "/p/sku-1",
            product_id="sku-1",
            price=29.95,
            currency="EUR",
            quantity=2,
        ),
        raw_event("sess_a", "user_1", "begin_checkout", at(10, 2), "/checkout", currency="EUR"),
        raw_event(
            "sess_a",
            "user_1",
            "purchase",
            at(10, 3, 30),
            "/checkout/confirmation",
            order_id="ord_1",
            revenue=59.9,
            currency="EUR",
            quantity=2,
        ),
    ]
    b = [
        raw_event(
            "sess_b",
            "user_2",
            "search",
            at(9, 0),
            "/search?q=shoes",
            SAFARI_IPHONE,
            "US",
            query="shoes",
            results_count=12,
        ),
        raw_event(
            "sess_b",
            "user_2",
            "page_view",
            at(9, 0, 45),
            "/p/sku-2",
            SAFARI_IPHONE,
            "US",
            product_id="sku-2",
        ),
    ]
    c = [raw_event("sess_c", "user_3", "click", at(11, 0), "/", UNKNOWN_CLIENT, element_id="x")]
    d = [
        raw_event("sess_d", "user_4", "page_view", at(23, 59, 50, EVE), "/category/shoes"),
        raw_event("sess_d", "user_4", "add_to_cart", at(0, 0, 10), "/p/sku-3", product_id="sku-3"),
        raw_event("sess_d", "user_4", "page_view", at(0, 1), "/cart"),
    ]
    duplicate = dict(a[1])  # same event_id re-sent: filtered, never counted twice
    values: list[dict | bytes] = [*a, *b, *c, *d, duplicate, b'{"truncated": ']
    random.Random(3).shuffle(values)
    return values


def expected_day() -> pl.DataFrame:
    utc = pl.Datetime("us", "UTC")
    rows = {
        "session_id": ["sess_d", "sess_b", "sess_a", "sess_c"],
        "event_date": [DAY] * 4,
        "user_id": ["user_4", "user_2", "user_1", "user_3"],
        "session_start": [at(0, 0, 10), at(9, 0), at(10, 0), at(11, 0)],
        "session_end": [at(0, 1), at(9, 0, 45), at(10, 3, 30), at(11, 0)],
        "duration_s": [50.0, 45.0, 210.0, 0.0],
        "event_count": [2, 2, 5, 1],
        "page_views": [1, 1, 2, 0],
        "distinct_pages": [2, 2, 4, 1],
        "entry_page": ["/p/sku-3", "/search", "/", "/"],
        "exit_page": ["/cart", "/p/sku-2", "/checkout/confirmation", "/"],
        "device_type": ["desktop", "mobile", "desktop", "unknown"],
        "browser": ["Chrome", "Safari", "Chrome", "Other"],
        "os": ["Windows", "iOS", "Windows", "Other"],
        "country": [None, "US", "DE", None],
        "converted": [False, False, True, False],
        "purchases": [0, 0, 1, 0],
        "revenue": [0.0, 0.0, 59.9, 0.0],
        "currency": [None, None, "EUR", None],
        "funnel_step": [2, 1, 4, 0],
        "funnel_stage": ["add_to_cart", "product_view", "purchase", "visit"],
    }
    frame = pl.DataFrame(rows, schema_overrides={"session_start": utc, "session_end": utc})
    return frame.cast(sessions.SESSIONS_SCHEMA)  # type: ignore[arg-type]


@pytest.fixture
def ingested(kafka_settings: Settings) -> Settings:
    send(kafka_settings, crafted())
    result = ingest(kafka_settings, now=lambda: NOW)
    assert result.records == 13 and result.written == 11 and result.dlq_count == 1
    assert result.filtered()["duplicate"] == 1
    return kafka_settings


def read_sessions(settings: Settings, day: date | None = None) -> pl.DataFrame:
    """The sessions table as a user reads it (Delta), one day or all, in the table's row order."""
    lake = lake_of(settings)
    frame = pl.read_delta(lake.table_uri("sessions"), storage_options=lake.polars_options())
    if day is not None:
        frame = frame.filter(pl.col("date") == day).drop("date")
    return frame.sort("date" if day is None else "session_start", "session_start", "session_id")


def sessions_table(settings: Settings) -> DeltaTable:
    return DeltaTable(lake_of(settings).table_uri("sessions"))


def test_a_day_gives_exactly_the_expected_session_rows(ingested: Settings) -> None:
    out = sessions.materialize_day(ingested, DAY)
    assert out.table_uri == str(ingested.lake_dir / "sessions")
    assert (out.rows, out.event_rows, out.source_files, out.converted) == (4, 10, 1, 1)
    assert out.funnel == {
        "visit": 1,
        "product_view": 1,
        "add_to_cart": 1,
        "checkout": 0,
        "purchase": 1,
    }
    assert_frame_equal(read_sessions(ingested, DAY), expected_day())

    eve = sessions.materialize_day(ingested, EVE)
    got = read_sessions(ingested, EVE)
    assert got.select("session_id", "event_count", "entry_page", "funnel_stage").rows() == [
        ("sess_d", 1, "/category/shoes", "visit")
    ]
    assert eve.version == out.version + 1  # one commit per day
    # One Delta table partitioned by `date`, like the events table.
    both = read_sessions(ingested)
    assert both.height == 5 and both.get_column("date").n_unique() == 2
    assert sessions_table(ingested).metadata().partition_columns == ["date"]


def test_only_committed_rows_count_and_a_rewrite_is_one_commit(ingested: Settings) -> None:
    first = sessions.materialize_day(ingested, DAY)
    sessions.materialize_day(ingested, EVE)
    reference = read_sessions(ingested)
    # A crashed writer's file in the day directory (no commit references it) must not be read.
    day_dir = ingested.lake_dir / "events" / "date=2026-03-10"
    committed = next(day_dir.glob("*.parquet"))
    (day_dir / "part-00000-crashed-writer.c000.zstd.parquet").write_bytes(committed.read_bytes())
    version = sessions_table(ingested).version()
    again = sessions.materialize_day(ingested, DAY)
    assert again.event_rows == first.event_rows and again.source_files == 1
    assert_frame_equal(read_sessions(ingested), reference)  # the other day untouched, no doubles
    table = sessions_table(ingested)
    assert table.version() == again.version == version + 1
    last = table.history(limit=1)[0]
    assert last["operationParameters"]["mode"] == "Overwrite"
    assert last["operationParameters"]["predicate"].startswith("date = '2026-03-10'")
    assert not (ingested.state_dir / "sessions-tmp").exists()  # no temp files, no lock files
    assert not (ingested.state_dir / "locks").exists()


def test_a_day_without_events_writes_nothing(kafka_settings: Settings) -> None:
    out = sessions.materialize_day(kafka_settings, DAY)
    assert (out.table_uri, out.rows, out.event_rows) == (None, 0, 0)
    assert not (kafka_settings.lake_dir / "sessions").exists()


def test_concurrent_runs_of_a_day_neither_lose_nor_double_rows(ingested: Settings) -> None:
    start = threading.Barrier(4)

    def run(day: date) -> sessions.SessionsOutput:
        start.wait()
        return sessions.materialize_day(ingested, day)

    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(run, (DAY, DAY, DAY, EVE), timeout=120))
    assert [o.rows for o in outs] == [4, 4, 4, 1]
    assert_frame_equal(read_sessions(ingested, DAY), expected_day())
    assert read_sessions(ingested, EVE).height == 1


def test_a_run_that_read_earlier_does_not_put_back_older_rows(
    ingested: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run A reads the day, then a late event lands and run B writes the day with it; A's commit
    comes last. Delta sees no conflict (the two commits did not overlap), so A must notice B's
    commit and read again: the late session stays."""
    real_read = sessions.read_day_events
    late = raw_event("sess_late", "user_9", "page_view", at(11, 30), "/late")

    def read_then_race(*args, **kwargs):  # type: ignore[no-untyped-def]
        read = real_read(*args, **kwargs)
        if not raced:
            raced.append(True)
            send(ingested, [late])
            ingest(ingested, now=lambda: NOW)
            b = sessions.materialize_day(ingested, DAY)
            assert b.rows == 5
        return read

    raced: list[bool] = []
    monkeypatch.setattr(sessions, "read_day_events", read_then_race)
    a = sessions.materialize_day(ingested, DAY)
    assert raced and a.rows == 5
    assert "sess_late" in read_sessions(ingested, DAY).get_column("session_id").to_list()


def test_a_day_built_in_buckets_gives_the_same_rows_in_one_commit(
    ingested: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every event of a session falls in one bucket, so buckets change nothing but memory."""
    whole = sessions.materialize_day(ingested, DAY)
    monkeypatch.setattr(sessions, "BUCKET_EVENTS", 3)  # the day's 10 events in 4 buckets
    reads: list[int] = []
    real_collect = sessions.DayEvents.collect

    def counted(self, query):  # type: ignore[no-untyped-def]
        reads.append(1)
        return real_collect(self, query)

    monkeypatch.setattr(sessions.DayEvents, "collect", counted)
    out = sessions.materialize_day(ingested, DAY)
    assert len(reads) == 4
    assert (out.rows, out.event_rows, out.converted, out.funnel) == (
        whole.rows,
        whole.event_rows,
        whole.converted,
        whole.funnel,
    )
    assert out.version == whole.version + 1  # the buckets' files in one commit
    assert_frame_equal(read_sessions(ingested, DAY), expected_day())


def test_a_bucket_that_cannot_be_read_commits_nothing(
    ingested: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = sessions.materialize_day(ingested, DAY)
    monkeypatch.setattr(sessions, "BUCKET_EVENTS", 3)
    real_collect = sessions.DayEvents.collect
    reads: list[int] = []

    def third_fails(self, query):  # type: ignore[no-untyped-def]
        reads.append(1)
        if len(reads) == 3:  # mid-write: two buckets' sessions are already handed to delta-rs
            raise LakeError("lake x: reading events failed: injected")
        return real_collect(self, query)

    monkeypatch.setattr(sessions.DayEvents, "collect", third_fails)
    with pytest.raises(LakeError, match="reading events failed: injected"):
        sessions.materialize_day(ingested, DAY)
    assert sessions_table(ingested).version() == first.version
    assert_frame_equal(read_sessions(ingested, DAY), expected_day())


def test_unknown_user_agent_share_reads_the_latest_day(ingested: Settings) -> None:
    counts = unknown_user_agents(ingested)
    assert (counts.day, counts.rows, counts.unknown_device, counts.unknown_browser) == (
        DAY,
        10,
        1,
        1,
    )
    assert counts.share == pytest.approx(1 / 10, abs=1e-6)


def test_a_missing_committed_file_is_an_error_not_a_silent_gap(ingested: Settings) -> None:
    committed = next((ingested.lake_dir / "events" / "date=2026-03-10").glob("*.parquet"))
    committed.rename(Path(str(committed) + ".moved"))
    with pytest.raises(LakeError, match="reading events"):
        sessions.materialize_day(ingested, DAY)
