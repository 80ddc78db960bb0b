"""Derived tables (sessions, the DLQ report): created once, then replaced a day or whole.

Two gaps of a bare `write_deltalake(mode="overwrite")` are closed here:
- Creation: writers that find no table all write "version 0" and all succeed (measured with
  delta-rs 1.6.6: three racing first writers left three copies of the rows). So the empty table
  is created first in its own commit (`mode="ignore"`); a loser of that race opens the winner's.
- Conflicts: two overwrites of the same day that overlap fail one of them with CommitFailedError
  ("concurrent transaction"). `read.replace_day` turns that into a LakeError; `is_conflict` tells
  it apart from a storage failure, so the caller can recompute and try again.
- Whole tables: an overwrite *without* a predicate (`read.replace_table`) never conflicts in
  delta-rs 1.6.6: three racing replaces of an existing table kept two or three copies of the rows
  in 20 trials of 20. With the predicate `true` the same race conflicts like a day does (0 of 20
  doubled), so `replace_whole` replaces a table that way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError

from pipeline_project.errors import LakeError
from pipeline_project.lake.location import Lake
from pipeline_project.lake.table import error_line, lake_errors, open_table

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
RETRY_PAUSE_SECONDS = 0.2


def ensure_table(
    lake: Lake,
    table: str,
    schema: pa.Schema,
    partition_by: Sequence[str] = (),
    configuration: Mapping[str, str | None] | None = None,
) -> DeltaTable:
    """The table, created empty (schema, partitioning, settings) in its own commit if absent."""
    existing = open_table(lake, table)
    if existing is not None:
        return existing
    with lake_errors(lake, f"creating {table}"):
        try:
            DeltaTable.create(
                lake.table_uri(table),
                schema,
                mode="ignore",
                partition_by=list(partition_by) or None,
                configuration=dict(configuration) if configuration else None,
                storage_options=lake.options(),
            )
        except (CommitFailedError, DeltaError) as exc:  # lost the creation race: it exists now
            log.info("creating %s: %s", table, error_line(exc))
    created = open_table(lake, table)
    if created is None:
        raise LakeError(f"lake {lake.describe()}: {table} could not be created")
    return created


def is_conflict(exc: BaseException) -> bool:
    """Whether a LakeError of a replace came from a commit conflict (retry) or storage (raise).

    lake_errors raises LakeError `from None`: the delta-rs error is still its __context__.
    """
    return isinstance(exc, LakeError) and isinstance(exc.__context__, CommitFailedError)


def retry_on_conflict(action: Callable[[], None], what: str) -> int:
    """Runs a replace until it commits, up to MAX_ATTEMPTS on conflicts; returns the attempts.

    For writes whose rows do not depend on what the conflicting commit wrote (the DLQ report's
    tables are recomputed whole from the same log); sessions re-read instead (see batch.sessions).
    """
    attempt = 1
    while True:
        try:
            action()
        except LakeError as exc:
            if not is_conflict(exc) or attempt >= MAX_ATTEMPTS:
                raise
            log.info("%s: commit conflict (attempt %d), writing again", what, attempt)
            time.sleep(RETRY_PAUSE_SECONDS * attempt)
            attempt += 1
            continue
        return attempt


def replace_whole(lake: Lake, table: str, rows: pl.DataFrame) -> None:
    """Replaces every row of an existing table in one commit that conflicts with a concurrent one.

    The predicate `true` makes the overwrite a read of the whole table (module docstring).
    """
    with lake_errors(lake, f"writing {table}"):
        write_deltalake(
            lake.table_uri(table),
            rows.to_arrow(compat_level=pl.CompatLevel.newest()),
            mode="overwrite",
            predicate="true",
            schema_mode="merge",
            storage_options=lake.options(),
        )
