"""Transform stage: normalisation, enrichment, lineage, the fixed lake schema, filtering (P12)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl
import pytest

from pipeline_project.batch.parse import parse_batch
from pipeline_project.batch.transform import (
    LAKE_SCHEMA,
    empty_lake_frame,
    filter_rows,
    to_lake_rows,
    user_agent_table,
)
from pipeline_project.batch.validate import validate_frame
from pipeline_project.events.contract import FILTER_REASONS
from pipeline_project_tests.batch.batch_support import (
    CHROME_WINDOWS,
    FIRST_OFFSET,
    GOOGLEBOT,
    INGESTED_AT,
    LATENESS_DAYS,
    NOW,
    SAFARI_IPAD,
    SAFARI_IPHONE,
    SKEW_SECONDS,
    TOPIC,
    encode,
    event_id,
    good_event,
    raw_batch,
)

ANDROID_PHONE = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36"
)
ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
FIREFOX_LINUX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
EDGE_WINDOWS = CHROME_WINDOWS + " Edg/131.0.2903.86"
SAFARI_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15"
)


def lake_rows(events: list[dict]) -> pl.DataFrame:
    raw = raw_batch([encode(e) for e in events])
    parsed = parse_batch(raw)
    validated = validate_frame(
        parsed.frame,
        now=NOW,
        max_lateness_days=LATENESS_DAYS,
        max_clock_skew_seconds=SKEW_SECONDS,
    )
    assert parsed.rejects == [] and validated.rejects == []
    lake = to_lake_rows(
        validated.frame, topic=TOPIC, partition=3, run_id="run-1", ingested_at=INGESTED_AT
    )
    assert lake.rejects == []
    return lake.rows


@pytest.mark.parametrize(
    ("user_agent", "device", "browser", "os", "is_bot"),
    [
        (CHROME_WINDOWS, "desktop", "Chrome", "Windows", False),
        (SAFARI_IPHONE, "mobile", "Safari", "iOS", False),
        (SAFARI_IPAD, "tablet", "Safari", "iOS", False),
        (GOOGLEBOT, "bot", "Other", "Other", True),
        (ANDROID_PHONE, "mobile", "Chrome", "Android", False),
        (ANDROID_TABLET, "tablet", "Chrome", "Android", False),
        (FIREFOX_LINUX, "desktop", "Firefox", "Linux", False),
        (EDGE_WINDOWS, "desktop", "Edge", "Windows", False),
        (SAFARI_MAC, "desktop", "Safari", "macOS", False),
        ("python-requests/2.32.3", "bot", "Other", "Other", True),
        ("curl/8.5.0", "bot", "Other", "Other", True),
        ("SomethingElse/1.0", "unknown", "Other", "Other", False),
    ],
)
def test_user_agent_enrichment(
    user_agent: str, device: str, browser: str, os: str, is_bot: bool
) -> None:
    table = user_agent_table(pl.Series([user_agent]))
    assert table.row(0, named=True) == {
        "user_agent": user_agent,
        "device_type": device,
        "browser": browser,
        "os": os,
        "is_bot": is_bot,
    }


@pytest.mark.parametrize(
    ("url", "path", "query", "section"),
    [
        ("https://shop.example.com/p/item-1?ref=home#reviews", "/p/item-1", "ref=home", "p"),
        ("https://shop.example.com", "/", None, "home"),
        ("https://shop.example.com?x=1", "/", "x=1", "home"),
        ("http://shop.example.com/Cart#a?b", "/Cart", None, "cart"),
        ("/search?q=red+shoes&page=2", "/search", "q=red+shoes&page=2", "search"),
        ("/", "/", None, "home"),
        ("/account/orders/", "/account/orders/", None, "account"),
    ],
)
def test_url_split(url: str, path: str, query: str | None, section: str) -> None:
    row = lake_rows([good_event(1, page_url=url)]).row(0, named=True)
    assert (row["page_url"], row["page_path"], row["page_query"], row["page_section"]) == (
        url,
        path,
        query,
        section,
    )


def test_normalisation_enrichment_and_lineage() -> None:
    event = good_event(
        1,
        event_id=event_id(1).upper(),
        timestamp="2025-03-01T00:30:00+14:00",
        referrer="  ",
        country="de",
        user_agent=SAFARI_IPHONE,
    )
    row = lake_rows([event]).row(0, named=True)
    assert row["event_id"] == event_id(1)  # canonical lower-case UUID
    assert row["timestamp"] == datetime(2025, 2, 28, 10, 30, tzinfo=UTC)
    assert row["event_date"] == date(2025, 2, 28)  # the UTC date, not the local one
    assert row["event_category"] == "cart"
    assert row["referrer"] is None and row["country"] == "DE"
    assert (row["device_type"], row["browser"], row["os"]) == ("mobile", "Safari", "iOS")
    assert (row["product_id"], row["product_category"], row["price"]) == ("prod_1", "shoes", 19.99)
    assert (row["currency"], row["quantity"], row["query"]) == ("USD", 2, None)
    assert (row["kafka_topic"], row["kafka_partition"], row["kafka_offset"]) == (
        TOPIC,
        3,
        FIRST_OFFSET,
    )
    assert row["kafka_timestamp"] == datetime(2025, 3, 1, 11, 59, tzinfo=UTC)
    assert row["ingested_at"] == INGESTED_AT and row["run_id"] == "run-1"


def test_lake_schema_is_fixed_for_full_partial_and_empty_batches() -> None:
    full = lake_rows([good_event(1)])
    sparse = lake_rows([good_event(2, referrer=None, ip=None, country=None, properties=None)])
    none = lake_rows([])
    for frame in (full, sparse, none, empty_lake_frame()):
        assert frame.schema == pl.Schema(LAKE_SCHEMA)
    assert list(LAKE_SCHEMA)[-6:] == [
        "kafka_topic",
        "kafka_partition",
        "kafka_offset",
        "kafka_timestamp",
        "ingested_at",
        "run_id",
    ]


def test_missing_kafka_timestamp_becomes_null() -> None:
    raw = raw_batch([encode(good_event(1))])
    raw.timestamps_ms[0] = -1
    validated = validate_frame(
        parse_batch(raw).frame, now=NOW, max_lateness_days=7, max_clock_skew_seconds=60
    )
    lake = to_lake_rows(validated.frame, topic=TOPIC, partition=0, run_id="r", ingested_at=NOW)
    assert lake.rows["kafka_timestamp"].to_list() == [None]


def test_naive_ingested_at_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        to_lake_rows(
            parse_batch(raw_batch([])).frame.with_columns(
                pl.lit(None, pl.Datetime("us", "UTC")).alias("_timestamp_utc")
            ),
            topic=TOPIC,
            partition=0,
            run_id="r",
            ingested_at=datetime(2025, 1, 1),  # naive on purpose
        )


def _filter(events: list[dict], committed: pl.DataFrame | None = None):
    rows = lake_rows(events)
    return filter_rows(rows, committed)


def test_filters_bots_test_users_and_duplicates_by_reason() -> None:
    events = [good_event(i) for i in range(10)]
    events[2]["user_agent"] = GOOGLEBOT
    events[3]["user_id"] = "test_qa_1"
    events[5] = good_event(1)  # same event_id as offset 1: the later copy is the duplicate
    events[7] = good_event(1)
    kept = _filter(events)
    assert list(kept.filtered) == list(FILTER_REASONS)
    assert kept.filtered == {
        "duplicate": [FIRST_OFFSET + 5, FIRST_OFFSET + 7],
        "bot": [FIRST_OFFSET + 2],
        "test_user": [FIRST_OFFSET + 3],
    }
    assert kept.good["kafka_offset"].to_list() == [FIRST_OFFSET + i for i in (0, 1, 4, 6, 8, 9)]


def test_a_resent_bot_event_counts_as_bot_not_duplicate() -> None:
    bot = good_event(1, user_agent=GOOGLEBOT)
    kept = _filter([bot, bot, good_event(2, user_id="test_x"), good_event(2, user_id="test_x")])
    assert kept.filtered["bot"] == [FIRST_OFFSET, FIRST_OFFSET + 1]
    assert kept.filtered["test_user"] == [FIRST_OFFSET + 2, FIRST_OFFSET + 3]
    assert kept.filtered["duplicate"] == [] and kept.good.height == 0


def test_committed_ids_are_duplicates_on_the_same_utc_day_only() -> None:
    committed = pl.DataFrame(
        {
            "event_date": [date(2025, 3, 1), date(2025, 2, 27)],
            "event_id": [event_id(1), event_id(2)],
        }
    )
    events = [good_event(0), good_event(1), good_event(2), good_event(1)]
    kept = _filter(events, committed)
    assert kept.filtered["duplicate"] == [FIRST_OFFSET + 1, FIRST_OFFSET + 3]
    assert kept.good["event_id"].to_list() == [event_id(0), event_id(2)]


def test_empty_committed_ids_and_empty_rows() -> None:
    empty = pl.DataFrame(schema={"event_date": pl.Date, "event_id": pl.String})
    kept = _filter([good_event(1)], empty)
    assert kept.good.height == 1 and kept.filtered == {r: [] for r in FILTER_REASONS}
    nothing = filter_rows(empty_lake_frame(), empty)
    assert nothing.good.schema == pl.Schema(LAKE_SCHEMA) and nothing.good.height == 0


def test_uppercase_duplicate_event_id_is_still_a_duplicate() -> None:
    kept = _filter([good_event(1), good_event(1, event_id=event_id(1).upper())])
    assert kept.filtered["duplicate"] == [FIRST_OFFSET + 1]
