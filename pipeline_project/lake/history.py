"""Committed ranges read back from the Delta log: the ledger is the table's own history.

Every range commit carries its RangeRecord in the commit metadata (see record.py), so the log alone
says which offsets of which partition were committed, by which run, and where each record went.
Reading it is a full history scan: meant for audits (reconcile) and reports, never for a run's
start, which needs only the app transaction versions of the latest snapshot.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

from deltalake import DeltaTable

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
    """Every range record of the events table, oldest commit first (empty if no table yet)."""
    table = table if table is not None else open_table(lake, TABLE_EVENTS)
    history = History()
    if table is None:
        return history
    with lake_errors(lake, "reading the events table's history"):
        entries = table.history()
    for entry in sorted(entries, key=lambda e: int(e.get("version", -1))):
        meta = entry.get(METADATA_KEY)
        if meta is None:
            continue
        version = int(entry["version"])
        try:
            history.records.append(RangeRecord.from_metadata(meta, version))
        except (KeyError, TypeError, ValueError) as exc:
            history.unreadable.append((version, f"{type(exc).__name__}: {exc}"))
    return history
