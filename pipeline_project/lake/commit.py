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
from deltalake import CommitProperties, DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.transaction import AddAction

from pipeline_project.batch.faults import fault_point
from pipeline_project.columns import OFFSET_COLUMN
from pipeline_project.errors import (
    AccountingError,
    ContiguityError,
    FencingError,
    LakeError,
    StorageError,
)
from pipeline_project.lake.derived import ensure_table
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


@dataclass(frozen=True)
class StagedFiles:
    """A range's data files, written and synced but not committed: no reader can see them yet.

    Staged apart from the commit so a run can write them while its DLQ records are still being
    confirmed; the commit then only references them. Their names carry the commit's token.
    """

    token: str
    actions: tuple[AddAction, ...]
    schema: pa.Schema
    rows: int


def stage_files(
    lake: Lake,
    range_id: str,
    token: str,
    rows: pl.DataFrame,
    *,
    table_name: str = TABLE_EVENTS,
) -> StagedFiles:
    """Writes the range's day files under the table (retried on a transient store error).

    A disk-side failure (full, read-only, permissions) stops at once with a StorageError.
    """
    data = delta_frame(rows)  # polars to the writer: no Arrow round trip (~15 ms a range)
    schema = data.head(0).to_arrow(compat_level=pl.CompatLevel.newest()).schema
    where = storage(lake, table_name)
    errors: list[str] = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            actions = write_range_files(where, range_id, token, data)
        except (OSError, pa.ArrowException) as exc:
            raise_storage_error(lake, range_id, exc)
            errors.append(error_line(exc))
            log.warning("%s: writing files failed, retrying: %s", range_id, errors[-1])
            time.sleep(RETRY_PAUSE_SECONDS * attempt)
            continue
        fault_point("K5")  # files written and synced, not committed: invisible to every reader
        return StagedFiles(token, tuple(actions), schema, data.height)
    raise LakeError(
        f"lake {lake.describe()}: {range_id}: its files could not be written after "
        f"{MAX_ATTEMPTS} attempts ({errors[-1]}); nothing of it was committed"
    )


def commit_range(
    lake: Lake,
    record: RangeRecord,
    rows: pl.DataFrame | StagedFiles | None,
    *,
    table: DeltaTable | None = None,
    table_name: str = TABLE_EVENTS,
    clock: type[datetime] = datetime,
    last_error: list[str] | None = None,
    checked_start: bool = False,
) -> CommitResult:
    """Commits the range's rows and `record` exactly once.

    `checked_start`: the caller made sure, before it read the range, that the range was not
    committed. Finding it committed now then means another writer took it meanwhile (a zombie
    woken up late): FencingError, not "already committed".

    `rows`: the range's lake rows (any number of days; written here), or its files already staged
    with `stage_files` under `record.token`, or None to commit the record alone (a migrated range,
    whose files an earlier commit adopted). `table`: the caller's snapshot, if it has just read
    one (a run checked the start with it), used for the first attempt instead of a second load.
    """
    staged = _staged(lake, record, rows, table_name)
    errors = last_error if last_error is not None else []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        table = table if table is not None else open_table(lake, table_name)
        if table is None:
            if staged is None:
                raise LakeError(f"lake {lake.describe()}: no {table_name} table to commit into")
            table = _create(lake, table_name, staged.schema, record)
        done = _committed_end(lake, table, record)
        if done is not None and done >= record.range.end and done > record.range.start:
            if checked_start:
                mine = own_commit(lake, table_name, table, record.token)
                if mine is not None:  # an earlier attempt's commit landed after all
                    return CommitResult("committed", record, mine, attempt)
                check_start(record, done)  # raises: another writer committed the range
            return CommitResult("already_committed", record, _version(table), attempt)
        check_start(record, done)
        fault_point("KC")  # checked, not yet committed: where a zombie freezes in the tests
        try:
            version = _commit(lake, table_name, table, record, staged, clock.now(UTC))
        except (CommitFailedError, DeltaError, OSError) as exc:
            landed = _after_error(lake, table_name, record, done, exc)
            if landed is None:
                raise_storage_error(lake, record.range.range_id, exc)
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


def _create(lake: Lake, table_name: str, schema: pa.Schema, record: RangeRecord) -> DeltaTable:
    """The table, created for the range's first commit; a full or read-only disk: StorageError."""
    try:
        return create_table(lake, table_name, schema)
    except LakeError as exc:
        raise_storage_error(lake, record.range.range_id, exc)
        raise


def _committed_end(lake: Lake, table: DeltaTable, record: RangeRecord) -> int | None:
    """The partition's committed end in `table`; a store that stopped answering ends the run."""
    try:
        return txn_version(table, record.app_id)
    except (DeltaError, OSError) as exc:
        raise LakeError(
            f"lake {lake.describe()}: committing {record.range.range_id} failed: its committed "
            f"end could not be read ({error_line(exc)}); nothing of it was committed, the next "
            "run commits the range at most once"
        ) from None


def _staged(
    lake: Lake, record: RangeRecord, rows: pl.DataFrame | StagedFiles | None, table_name: str
) -> StagedFiles | None:
    """The range's files, staged now if given as rows; refuses rows that break the accounting."""
    if rows is None:
        if not record.balanced():
            raise AccountingError(f"{record.range.range_id}: its record does not add up")
        return None
    height = rows.rows if isinstance(rows, StagedFiles) else rows.height
    check_balanced(record, height)
    if isinstance(rows, StagedFiles):
        if rows.token != record.token:
            raise AccountingError(
                f"{record.range.range_id}: its files were staged for another commit"
            )
        return rows
    return stage_files(lake, record.range.range_id, record.token, rows, table_name=table_name)


# Failures an operator fixes on the machine (free space, remount, quota, permissions), not by
# retrying: the commit stops at once with a StorageError naming the cause.
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)


def raise_storage_error(lake: Lake, range_id: str, exc: BaseException) -> None:
    """Raises StorageError when `exc` is a disk-side failure; returns for anything else."""
    code = errno_of(exc)
    if code not in STORAGE_ERRNOS:
        return
    where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
    raise StorageError(
        code,
        f"{range_id}: {os.strerror(code)}{where} in the lake {lake.describe()}; "
        "nothing of this range was committed: fix the disk (space, mount, permissions) and "
        "run again",
    ) from None


def errno_of(exc: BaseException) -> int | None:
    """The errno of an OSError, or the one Arrow and delta-rs errors carry only in their text."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    found = re.search(r"(?:\[errno (\d+)\]|os error (\d+))", str(exc), re.IGNORECASE)
    return int(found.group(1) or found.group(2)) if found else None


def check_balanced(record: RangeRecord, rows: int) -> None:
    """Refuses a commit whose rows or counts break consumed = written + DLQ + filtered."""
    if rows != record.written or not record.balanced():
        raise AccountingError(
            f"{record.range.range_id}: {record.records} records consumed but {rows} rows "
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


def delta_frame(rows: pl.DataFrame) -> pl.DataFrame:
    """The rows with the partition column `date` (= event_date), offset-sorted."""
    if DATE_COLUMN in rows.columns:
        rows = rows.with_columns(pl.col(DATE_COLUMN).alias(PARTITION_COLUMN))
    if OFFSET_COLUMN in rows.columns and not rows.get_column(OFFSET_COLUMN).is_sorted():
        rows = rows.sort(OFFSET_COLUMN, maintain_order=True)
    return rows


def to_delta_rows(rows: pl.DataFrame) -> pa.Table:
    """`delta_frame(rows)` as Arrow, with the types the table's files have."""
    return delta_frame(rows).to_arrow(compat_level=pl.CompatLevel.newest())


def create_table(lake: Lake, table_name: str, schema: pa.Schema) -> DeltaTable:
    """Creates the empty table (schema, partitioning, settings) if no one has yet; opens it.

    Creation is its own commit, before any range's: two first writers racing to create it would
    otherwise both append as "version 0 did not exist when I looked", unfenced.
    """
    return ensure_table(lake, table_name, schema, [PARTITION_COLUMN], EVENTS_CONFIGURATION)


def _commit(
    lake: Lake,
    table_name: str,
    table: DeltaTable,
    record: RangeRecord,
    staged: StagedFiles | None,
    committed_at: datetime,
) -> int | None:
    """One append commit of the staged files with the app transaction and the record."""
    where = storage(lake, table_name)
    read_version = table.version()
    if staged is not None:
        evolve_schema(lake, table, staged.schema)
    properties = CommitProperties(
        custom_metadata={METADATA_KEY: record.to_metadata(committed_at)},
        app_transactions=record.transactions(),
    )
    table.create_write_transaction(
        list(staged.actions) if staged is not None else [],
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
    incoming = DeltaSchema.from_arrow(schema)
    known = {f.name: f for f in table.schema().fields}
    if any(f.name not in known for f in incoming.fields):
        # The snapshot may predate another writer's schema change (a run's start check, a range
        # read ahead): adding the same columns again would conflict with it.
        table.update_incremental()
        known = {f.name: f for f in table.schema().fields}
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
