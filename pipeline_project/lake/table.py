"""Opening the lake's Delta tables, and turning delta-rs failures into one line a user can act on.

Every deltalake call that touches storage goes through `lake_errors`, so a wrong URI, a missing
bucket, refused credentials or an unreachable endpoint surface as a LakeError naming the lake (never
its secrets) and the cause, not as a Rust error chain.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence

import polars as pl
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError
from deltalake.writer import ColumnProperties, WriterProperties

from pipeline_project.columns import (
    DATE_COLUMN,
    EVENT_ID_COLUMN,
    PARTITION_COLUMN,
    SOURCE_COLUMNS,
)
from pipeline_project.errors import LakeError
from pipeline_project.lake.location import TABLE_EVENTS, Lake

# Columns every events table of ours has; a table without them was written by something else.
EVENTS_REQUIRED = (EVENT_ID_COLUMN, *SOURCE_COLUMNS, DATE_COLUMN)
# Statistics in the log only where they prune files (days, times, offsets, enumerations): ids and
# free text would make every add action large for no skipping.
EVENTS_STATS_COLUMNS = (
    "event_date,timestamp,kafka_topic,kafka_partition,kafka_offset,kafka_timestamp,"
    "event_type,event_category,ingested_at,dlq_partition,dlq_offset"
)
EVENTS_CONFIGURATION = {
    "delta.dataSkippingStatsColumns": EVENTS_STATS_COLUMNS,
    # Each range's accounting lives in its commit's metadata, which reconcile reads back: the log
    # is never cleaned up (docs/lake.md, "Upkeep": a checkpoint keeps txn versions, not records).
    "delta.enableExpiredLogCleanup": "false",
    "delta.checkpointInterval": "100",
}
# Values unique per row never gain from a dictionary; ids, URLs and free text never prune a row
# group, so their Parquet statistics are skipped (measured earlier: 13% of a file's write time).
UNIQUE_COLUMNS = frozenset({"event_id", "kafka_offset", "timestamp", "dlq_offset"})
UNPRUNABLE_COLUMNS = frozenset(
    {"event_id", "user_id", "session_id", "product_id", "order_id", "element_id", "ip"}
    | {"page_url", "page_path", "page_query", "referrer", "user_agent", "query"}
)
ROW_GROUP_ROWS = 131_072
_SECRET_RE = re.compile(r"(?i)(secret|token|password|signature|credential)[^\s,;]*")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
_XML_ERROR_RE = re.compile(r"<\?xml.*?<Code>([^<]*)</Code>.*?</Error>", re.DOTALL)


def writer_properties(columns: Sequence[str]) -> WriterProperties:
    """Zstd at level 1, dictionaries where values repeat, statistics where they can prune."""
    per_column = {
        name: ColumnProperties(
            dictionary_enabled=name not in UNIQUE_COLUMNS,
            statistics_enabled="NONE" if name in UNPRUNABLE_COLUMNS else "PAGE",
        )
        for name in columns
    }
    return WriterProperties(
        compression="ZSTD",
        compression_level=1,
        max_row_group_size=ROW_GROUP_ROWS,
        column_properties=per_column,
    )


def error_line(exc: BaseException) -> str:
    """A delta-rs / object_store error on one line, secret-looking words cut.

    delta-rs prints its cause chain over several lines, each cause after a red "↳" (terminal
    colour codes included): here the causes are joined with ": ", the colours dropped, an S3 error
    body (kilobytes of XML) cut to its code, and a long chain keeps its end, where the root cause
    ("Connection refused", "403 Forbidden: SignatureDoesNotMatch") is.
    """
    text = _ANSI_RE.sub("", str(exc)).replace("↳", ":")
    text = _XML_ERROR_RE.sub(r"\1", text)  # an S3 error body: its code alone
    text = " ".join(text.split()).replace(" :", ":") or type(exc).__name__
    text = _SECRET_RE.sub(r"\1=…", text)
    return text if len(text) <= 300 else f"{text[:150]} … {text[-146:]}"


@contextlib.contextmanager
def lake_errors(lake: Lake, action: str) -> Iterator[None]:
    """Re-raises storage failures of `action` as one LakeError line naming the lake."""
    try:
        yield
    except LakeError:
        raise
    except (DeltaError, OSError, ValueError, pl.exceptions.PolarsError) as exc:
        raise LakeError(f"lake {lake.describe()}: {action} failed: {error_line(exc)}") from None
    except BaseException as exc:  # a Rust panic (pyo3's PanicException) on a damaged file
        if type(exc).__name__ != "PanicException":
            raise
        raise LakeError(f"lake {lake.describe()}: {action} failed: {error_line(exc)}") from None


def open_table(lake: Lake, table: str = TABLE_EVENTS) -> DeltaTable | None:
    """The table at its latest version, or None when nothing was ever committed there."""
    uri = lake.table_uri(table)
    with lake_errors(lake, f"opening {table}"):
        try:
            opened = DeltaTable(uri, storage_options=lake.options())
        except TableNotFoundError:
            return None
    if table == TABLE_EVENTS:
        check_events_schema(lake, opened)
    return opened


def check_events_schema(lake: Lake, table: DeltaTable) -> None:
    """Refuses an events table that is not ours (other partitioning, no lineage columns)."""
    partitions = table.metadata().partition_columns
    names = {field.name for field in table.schema().fields}
    missing = [name for name in EVENTS_REQUIRED if name not in names]
    if partitions != [PARTITION_COLUMN] or missing:
        found = f"partitioned by {partitions}" + (f", without {missing}" if missing else "")
        raise LakeError(
            f"lake {lake.describe()}: {TABLE_EVENTS} is a Delta table this pipeline did not "
            f"write ({found}); point PIPELINE_LAKE_URI at another location"
        )


def txn_version(table: DeltaTable | None, app_id: str) -> int | None:
    """The committed end recorded for `app_id` (a topic-partition), None before its first commit."""
    if table is None:
        return None
    return table.transaction_version(app_id)
