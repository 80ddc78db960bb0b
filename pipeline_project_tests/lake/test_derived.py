"""Derived tables under concurrent writers: created once, a replaced day or table is never doubled.

The races a bare `write_deltalake(mode="overwrite")` loses: first writers that all create the
table (each commit would keep its rows), two replaces of one day at once (one fails), and two
replaces of a whole table at once (without a predicate both commit and both copies stay).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import polars as pl

from pipeline_project.lake.derived import ensure_table, replace_whole, retry_on_conflict
from pipeline_project.lake.location import Lake
from pipeline_project.lake.read import replace_day

DAY = date(2026, 3, 10)
SCHEMA = pl.DataFrame(schema={"writer": pl.Int64, "date": pl.Date}).to_arrow().schema


def read(lake: Lake, table: str) -> pl.DataFrame:
    return pl.read_delta(lake.table_uri(table), storage_options=lake.polars_options())


def test_racing_first_writers_leave_one_copy_of_a_day(lake: Lake) -> None:
    start = threading.Barrier(4)

    def write(writer: int) -> int:
        start.wait()
        ensure_table(lake, "derived", SCHEMA, ["date"])
        rows = pl.DataFrame({"writer": [writer] * 3})
        return retry_on_conflict(lambda: replace_day(lake, "derived", DAY, rows), "derived")

    with ThreadPoolExecutor(4) as pool:
        attempts = list(pool.map(write, range(4), timeout=120))
    got = read(lake, "derived")
    assert got.height == 3 and got.get_column("writer").n_unique() == 1
    assert max(attempts) >= 1


def test_racing_whole_table_replaces_leave_one_copy(lake: Lake) -> None:
    start = threading.Barrier(3)

    def write(writer: int) -> None:
        start.wait()
        rows = pl.DataFrame({"writer": [writer] * 2, "key": ["a", "b"]})
        ensure_table(lake, "report", rows.to_arrow().schema)
        retry_on_conflict(lambda: replace_whole(lake, "report", rows), "report")

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(write, range(3), timeout=120))
    got = read(lake, "report")
    assert got.height == 2 and got.get_column("writer").n_unique() == 1
