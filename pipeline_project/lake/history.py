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
from pipeline_project.lake.record import METADATA_KEY, RangeRecord
from pipeline_project.lake.table import lake_errors, open_table

log = logging.getLogger(__name__)


@dataclass
class History:
    """The table's range records in commit order, and commits whose record could not be read."""

    records: list[RangeRecord] = field(default_factory=list)
    unreadable: list[tuple[int, str]] = field(default_factory=list)  # (version, why)

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
        meta = commit_info(text).get(METADATA_KEY) if text is not None else None
        if meta is None:
            continue
        try:
            history.records.append(RangeRecord.from_metadata(meta, version))
        except (KeyError, TypeError, ValueError) as exc:
            history.unreadable.append((version, f"{type(exc).__name__}: {exc}"))
    return history
