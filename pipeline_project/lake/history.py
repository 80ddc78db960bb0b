"""Committed ranges read back from the Delta log: the ledger is the table's own history.

Every range commit carries its RangeRecord in the commit metadata (see record.py), so the log alone
says which offsets of which partition were committed, by which run, and where each record went.
Reading it is a full history scan: meant for audits (reconcile) and reports, never for a run's
start, which needs only the app transaction versions of the latest snapshot.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from deltalake import DeltaTable

from pipeline_project.lake.files import commit_info, log_entry, storage
from pipeline_project.lake.location import TABLE_EVENTS, Lake
from pipeline_project.lake.record import METADATA_KEY, RETENTION_KEY, RangeRecord
from pipeline_project.lake.table import lake_errors, open_table

log = logging.getLogger(__name__)


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


def read_history(lake: Lake, table: DeltaTable | None = None) -> History:
    """Every range record of the events table up to its snapshot's version, oldest first.

    Read from the log entries themselves: delta-rs's `history()` numbers its entries by counting
    back from the snapshot's version, so commits made after the snapshot was read get the wrong
    version (measured). Entries are fetched in parallel: on S3 each is one GET.
    """
    table = table if table is not None else open_table(lake, TABLE_EVENTS)
    history = History()
    if table is None:
        return history
    upto = table.version()
    where = storage(lake, TABLE_EVENTS)
    with lake_errors(lake, "reading the events table's log"), ThreadPoolExecutor(16) as pool:
        texts = list(pool.map(lambda v: log_entry(where, v), range(upto + 1)))
    for version, text in enumerate(texts):
        info = commit_info(text) if text is not None else {}
        retention = info.get(RETENTION_KEY)
        if isinstance(retention, dict) and isinstance(retention.get("cutoff"), str):
            history.retentions.append((version, retention["cutoff"]))
        meta = info.get(METADATA_KEY)
        if meta is None:
            continue
        try:
            history.records.append(RangeRecord.from_metadata(meta, version))
        except (KeyError, TypeError, ValueError) as exc:
            history.unreadable.append((version, f"{type(exc).__name__}: {exc}"))
    return history
