"""The one commit protocol: a range's rows, its offsets and its accounting in one Delta commit.

The fence is the commit itself, not a lock on some host's disk:
1. Read the partition's app transaction version (`<topic>-<partition>` = its committed end). It must
   equal the range's start; at or past the range's end the range is already committed and nothing
   happens. delta-rs would accept a lower version silently, so this check is ours.
2. Write the range's files and commit them with `Transaction(app_id, version=end)` and the
   RangeRecord in the commit metadata. If another writer committed the same app id in between, the
   commit's conflict check fails it ("concurrent transaction"): a zombie or a second host commits
   nothing. A concurrent compaction or another partition's commit does not conflict: delta-rs
   rebases the append and retries by itself.
3. After any commit error, read the version again before deciding: our own commit may have landed
   (a lost response), another writer may have won (FencingError), or nothing changed (retry).

A crash before the commit leaves only data files no commit references: readers never see them and
vacuum removes them. There is nothing to roll forward or back.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import polars as pl
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, DeltaError

from pipeline_project.batch.faults import fault_point
from pipeline_project.errors import (
    AccountingError,
    ContiguityError,
    FencingError,
    LakeError,
    StorageError,
)
from pipeline_project.lake.files import (
    find_commit,
    log_entry,
    storage,
    sync_log,
    write_range_files,
)
from pipeline_project.lake.location import TABLE_EVENTS, Lake
from pipeline_project.lake.record import METADATA_KEY, RangeRecord
from pipeline_project.lake.table import (
    DATE_COLUMN,
    EVENTS_CONFIGURATION,
    PARTITION_COLUMN,
    error_line,
    lake_errors,
    open_table,
    txn_version,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 4
RETRY_PAUSE_SECONDS = 0.2
# How far back a writer looks for its own commit after an error: commits land in order, and a
# writer retries at once, so its commit is among the last few whatever the traffic.
OWN_COMMIT_LOOKBACK = 50


@dataclass(frozen=True)
class CommitResult:
    """What `commit_range` did: committed now (at `version`), or found the range already done."""

    status: Literal["committed", "already_committed"]
    record: RangeRecord
    version: int | None
    attempts: int = 1


def commit_range(
    lake: Lake,
    record: RangeRecord,
    rows: pl.DataFrame | None,
    *,
    table: DeltaTable | None = None,
    table_name: str = TABLE_EVENTS,
    clock: type[datetime] = datetime,
    last_error: list[str] | None = None,
) -> CommitResult:
    """Commits `rows` (the range's lake rows, any number of days) and `record` exactly once.

    `rows` None commits the record alone: its rows are already in the table (a migrated range,
    whose files an earlier commit adopted). `table`: the caller's snapshot, if it has just read
    one (a run checked the start with it), used for the first attempt instead of a second load.
    """
    if rows is not None:
        check_balanced(record, rows)
    elif not record.balanced():
        raise AccountingError(f"{record.range.range_id}: its record does not add up")
    data = to_delta_rows(rows) if rows is not None else None
    errors = last_error if last_error is not None else []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        table = table if table is not None else open_table(lake, table_name)
        if table is None:
            if data is None:
                raise LakeError(f"lake {lake.describe()}: no {table_name} table to commit into")
            table = create_table(lake, table_name, data.schema)
        done = txn_version(table, record.app_id)
        if done is not None and done >= record.range.end and done > record.range.start:
            return CommitResult("already_committed", record, _version(table), attempt)
        check_start(record, done)
        fault_point("KC")  # checked, not yet written: where a zombie freezes in the tests
        try:
            version = _write(lake, table_name, table, record, data, clock.now(UTC))
        except (CommitFailedError, DeltaError, OSError) as exc:
            landed = _after_error(lake, table_name, record, done, exc)
            if landed is None:
                raise_storage_error(lake, record, exc)
            if landed is not None:
                return CommitResult("committed", record, landed, attempt)
            errors.append(error_line(exc))
            table = None  # the next attempt reads the table afresh
            time.sleep(RETRY_PAUSE_SECONDS * attempt)
            continue
        return CommitResult("committed", record, version, attempt)
    raise LakeError(
        f"lake {lake.describe()}: {record.range.range_id} could not be committed after "
        f"{MAX_ATTEMPTS} attempts ({errors[-1] if errors else 'no error text'}); nothing of it "
        "was committed, the next run tries again"
    )


# Failures an operator fixes on the machine (free space, remount, quota, permissions), not by
# retrying: the commit stops at once with a StorageError naming the cause.
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)


def raise_storage_error(lake: Lake, record: RangeRecord, exc: BaseException) -> None:
    """Raises StorageError when `exc` is a disk-side failure; returns for anything else."""
    code = errno_of(exc)
    if code not in STORAGE_ERRNOS:
        return
    where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
    raise StorageError(
        code,
        f"{record.range.range_id}: {os.strerror(code)}{where} in the lake {lake.describe()}; "
        "nothing of this range was committed: fix the disk (space, mount, permissions) and "
        "run again",
    ) from None


def errno_of(exc: BaseException) -> int | None:
    """The errno of an OSError, or the one Arrow and delta-rs errors carry only in their text."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    found = re.search(r"(?:\[errno (\d+)\]|os error (\d+))", str(exc), re.IGNORECASE)
    return int(found.group(1) or found.group(2)) if found else None


def check_balanced(record: RangeRecord, rows: pl.DataFrame) -> None:
    """Refuses a commit whose rows or counts break consumed = written + DLQ + filtered."""
    if rows.height != record.written or not record.balanced():
        raise AccountingError(
            f"{record.range.range_id}: {record.records} records consumed but {rows.height} rows "
            f"({record.written} by day) + {len(record.dlq)} DLQ + {record.filtered_count()} "
            "filtered: refusing to commit"
        )


def check_start(record: RangeRecord, done: int | None) -> None:
    """The range must start at the partition's committed end (any start before the first commit)."""
    if done is None or done == record.range.start:
        return
    rng = record.range
    if done > rng.start:
        raise FencingError(
            f"{rng.range_id}: {record.app_id} is committed up to offset {done}, inside this range "
            "(another writer committed an overlapping range); this run committed nothing"
        )
    raise ContiguityError(
        f"{rng.range_id}: {record.app_id} is committed up to offset {done}, but this range "
        f"starts at {rng.start}: offsets [{done}, {rng.start}) would be skipped"
    )


def to_delta_rows(rows: pl.DataFrame) -> pa.Table:
    """The rows with the partition column `date` (= event_date), offset-sorted, as Arrow."""
    if DATE_COLUMN in rows.columns:
        rows = rows.with_columns(pl.col(DATE_COLUMN).alias(PARTITION_COLUMN))
    if "kafka_offset" in rows.columns and not rows.get_column("kafka_offset").is_sorted():
        rows = rows.sort("kafka_offset", maintain_order=True)
    return rows.to_arrow(compat_level=pl.CompatLevel.newest())


def create_table(lake: Lake, table_name: str, schema: pa.Schema) -> DeltaTable:
    """Creates the empty table (schema, partitioning, settings) if no one has yet; opens it.

    Creation is its own commit, before any range's: two first writers racing to create it would
    otherwise both append as "version 0 did not exist when I looked", unfenced.
    """
    with lake_errors(lake, f"creating {table_name}"):
        try:
            DeltaTable.create(
                lake.table_uri(table_name),
                schema,
                mode="ignore",
                partition_by=[PARTITION_COLUMN],
                configuration=EVENTS_CONFIGURATION,
                storage_options=lake.options(),
            )
        except (CommitFailedError, DeltaError) as exc:  # lost a creation race: the table exists
            log.info("creating %s: %s", table_name, error_line(exc))
    table = open_table(lake, table_name)
    if table is None:
        raise LakeError(f"lake {lake.describe()}: {table_name} could not be created")
    return table


def _write(
    lake: Lake,
    table_name: str,
    table: DeltaTable,
    record: RangeRecord,
    data: pa.Table | None,
    committed_at: datetime,
) -> int | None:
    """Our files, durable, then one append commit with the app transaction and the record."""
    where = storage(lake, table_name)
    read_version = table.version()
    actions = []
    if data is not None:
        evolve_schema(lake, table, data.schema)
        actions = write_range_files(where, record, data)
    fault_point("K5")  # files written and synced, not committed: invisible to every reader
    properties = CommitProperties(
        custom_metadata={METADATA_KEY: record.to_metadata(committed_at)},
        app_transactions=[Transaction(app_id=record.app_id, version=record.range.end)],
    )
    table.create_write_transaction(
        actions,
        mode="append",
        schema=table.schema(),
        partition_by=[PARTITION_COLUMN],
        commit_properties=properties,
    )
    version = find_commit(where, read_version, record.token)
    if version is not None:
        sync_log(where, version)
    return version


def evolve_schema(lake: Lake, table: DeltaTable, schema: pa.Schema) -> None:
    """Adds the columns `schema` has and the table lacks (a schema-merge commit of its own).

    Rows of earlier commits read as null there; no file is rewritten. A column whose type differs
    from the table's is refused: readers could not combine the two.
    """
    known = {f.name: f for f in table.schema().fields}
    incoming = DeltaSchema.from_arrow(schema)
    new = [f for f in incoming.fields if f.name not in known]
    clash = [
        f"{f.name} ({known[f.name].type} in the table, {f.type} now)"
        for f in incoming.fields
        if f.name in known and str(known[f.name].type) != str(f.type)
    ]
    if clash:
        raise LakeError(f"lake {lake.describe()}: column types changed: {', '.join(clash)}")
    if not new:
        return
    with lake_errors(lake, "adding columns " + ", ".join(f.name for f in new)):
        table.alter.add_columns(new)
    table.update_incremental()


def _after_error(
    lake: Lake, table_name: str, record: RangeRecord, done: int | None, exc: BaseException
) -> int | None:
    """Decides after a failed commit call: our version if it landed, None to retry; else raises.

    A lake that cannot be read back (the store went away) ends the run: whether the commit landed
    is known only once it answers again, and the next run's start check finds out.
    """
    try:
        table = open_table(lake, table_name)
    except LakeError as unreadable:
        cause = str(unreadable).partition(" failed: ")[2]  # lake_errors' line: the root cause
        raise LakeError(
            f"lake {lake.describe()}: committing {record.range.range_id} failed and {table_name} "
            f"could not be read back to see whether the commit landed ({cause}); the next run "
            "finds out and commits the range at most once"
        ) from None
    now = txn_version(table, record.app_id)
    if now == done:
        log.warning("%s: commit failed, retrying: %s", record.range.range_id, error_line(exc))
        return None
    version = own_commit(lake, table_name, table, record.token) if table is not None else None
    if version is not None:
        log.warning("%s: commit call failed but the commit landed", record.range.range_id)
        return version
    raise FencingError(
        f"{record.range.range_id}: another writer committed {record.app_id} up to offset {now} "
        f"while this run was committing ({error_line(exc)}); this run committed nothing"
    )


def own_commit(lake: Lake, table_name: str, table: DeltaTable, token: str) -> int | None:
    """The version of the commit carrying `token` among the latest ones, or None."""
    where = storage(lake, table_name)
    latest = table.version()
    for version in range(latest, max(latest - OWN_COMMIT_LOOKBACK, -1), -1):
        text = log_entry(where, version)
        if text is not None and token.encode() in text:
            return version
    return None


def _version(table: DeltaTable | None) -> int | None:
    return None if table is None else table.version()
