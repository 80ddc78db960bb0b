"""Committed ranges read back from the Delta log: the ledger is the table's own history.

Every range commit carries its RangeRecord in the commit metadata (see record.py), so the log alone
says which offsets of which partition were committed, by which run, and where each record went.
Reading it whole (`read_history`) is a full history scan: meant for audits (reconcile) and reports,
never for a run's start, which needs only the app transaction versions of the latest snapshot.
Readers of recent commits only (health, the freshness check) read the log's tail (`read_tail`).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from deltalake import DeltaTable

from pipeline_project.lake.files import Storage, commit_info, log_entry, storage
from pipeline_project.lake.location import TABLE_EVENTS, Lake
from pipeline_project.lake.record import METADATA_KEY, RETENTION_KEY, RangeRecord
from pipeline_project.lake.table import lake_errors, open_table

log = logging.getLogger(__name__)

TAIL_CHUNK = 32  # log entries read at once (in parallel) by read_tail
CLOCK_SKEW = timedelta(minutes=5)  # how far apart two writers' clocks may be


@dataclass
class History:
    """The table's range records in commit order, and commits whose record could not be read."""

    records: list[RangeRecord] = field(default_factory=list)
    unreadable: list[tuple[int, str]] = field(default_factory=list)  # (version, why)
    # Retention commits (lake/upkeep.expire_days): (version, first day kept), oldest first.
    retentions: list[tuple[int, str]] = field(default_factory=list)

    def expired_days(self, record: RangeRecord) -> set[str]:
        """The days of `record` a later retention commit deleted (their rows are expired)."""
        committed = record.version if record.version is not None else -1
        return {
            day
            for day in record.days
            for version, cutoff in self.retentions
            if version > committed and day < cutoff
        }

    def by_app_id(self) -> dict[str, list[RangeRecord]]:
        """Records grouped by topic-partition (app id), each group in commit order."""
        groups: dict[str, list[RangeRecord]] = defaultdict(list)
        for record in self.records:
            groups[record.app_id].append(record)
        return dict(groups)


def read_history(
    lake: Lake, table: DeltaTable | None = None, kinds: Collection[str] | None = None
) -> History:
    """Every range record of the events table up to its snapshot's version, oldest first.

    Read from the log entries themselves: delta-rs's `history()` numbers its entries by counting
    back from the snapshot's version, so commits made after the snapshot was read get the wrong
    version (measured). Entries are fetched in parallel: on S3 each is one GET.

    With `kinds`, only records of those kinds (and retention commits) are kept, and an entry whose
    text does not name one of them is not parsed at all: the DLQ report wants the few "reprocess"
    records among thousands of ingest ones (0.1 s instead of 1.3 s on 300 soak-like commits).
    """
    table = table if table is not None else open_table(lake, TABLE_EVENTS)
    history = History()
    if table is None:
        return history
    upto = table.version()
    where = storage(lake, TABLE_EVENTS)
    with lake_errors(lake, "reading the events table's log"), ThreadPoolExecutor(16) as pool:
        texts = _fetch(pool, where, range(upto + 1))
    named = None if kinds is None else _kind_pattern(kinds)
    for version, text in enumerate(texts):
        if text is None or (named is not None and not _names(text, named)):
            continue
        _add_entry(history, version, commit_info(text), kinds)
    return history


def _kind_pattern(kinds: Collection[str]) -> re.Pattern[bytes]:
    alternatives = b"|".join(re.escape(kind.encode()) for kind in sorted(kinds))
    return re.compile(rb'"kind"\s*:\s*"(?:' + alternatives + rb')"')


def _names(text: bytes, named: re.Pattern[bytes]) -> bool:
    """Whether a log entry may hold a wanted record or a retention (parsed, then checked)."""
    return named.search(text) is not None or RETENTION_KEY.encode() in text


def read_tail(
    lake: Lake,
    table: DeltaTable,
    since: datetime,
    want: Callable[[RangeRecord], bool] | None = None,
) -> History:
    """The range records committed since `since`, and further back until one `want` accepts.

    For readers that look at recent commits only (health, the freshness check): the log is read
    from the snapshot's version backwards, TAIL_CHUNK entries at a time, and stops at the first
    chunk whose commits are all older than `since` (less CLOCK_SKEW: writers' clocks differ) once
    a wanted record is among those read, or at the log's start. A full read costs one GET and one
    parse per commit of the table's life; this costs the window's. Records come oldest first.
    """
    where = storage(lake, TABLE_EVENTS)
    cutoff_ms = (since - CLOCK_SKEW).timestamp() * 1000
    found = want is None
    chunks: list[History] = []  # newest first
    top = table.version()
    with lake_errors(lake, "reading the events table's log"), ThreadPoolExecutor(16) as pool:
        while top >= 0:
            versions = range(max(top - TAIL_CHUNK + 1, 0), top + 1)
            chunk = History()
            stamps = []
            for version, text in zip(versions, _fetch(pool, where, versions), strict=True):
                info = commit_info(text) if text is not None else {}
                _add_entry(chunk, version, info)
                if isinstance(info.get("timestamp"), int):
                    stamps.append(info["timestamp"])
            chunks.append(chunk)
            if want is not None and not found:
                found = any(want(r) for r in chunk.records)
            if found and stamps and max(stamps) < cutoff_ms:
                break
            top -= TAIL_CHUNK
    history = History()
    for chunk in reversed(chunks):
        history.records += chunk.records
        history.unreadable += chunk.unreadable
        history.retentions += chunk.retentions
    return history


def _fetch(pool: ThreadPoolExecutor, where: Storage, versions: range) -> list[bytes | None]:
    """The raw log entries of these versions, fetched in parallel (on S3 each is one GET)."""
    return list(pool.map(lambda v: log_entry(where, v), versions))


def _add_entry(
    history: History, version: int, info: dict[str, Any], kinds: Collection[str] | None = None
) -> None:
    """Files one log entry's commit info: a retention commit, a range record, or unreadable.

    With `kinds`, a record of another kind is left out.
    """
    retention = info.get(RETENTION_KEY)
    if isinstance(retention, dict) and isinstance(retention.get("cutoff"), str):
        history.retentions.append((version, retention["cutoff"]))
    meta = info.get(METADATA_KEY)
    if meta is None:
        return
    try:
        record = RangeRecord.from_metadata(meta, version)
    except (KeyError, TypeError, ValueError) as exc:
        history.unreadable.append((version, f"{type(exc).__name__}: {exc}"))
        return
    if kinds is None or record.kind in kinds:
        history.records.append(record)
