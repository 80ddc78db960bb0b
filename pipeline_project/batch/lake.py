"""The lake: deterministic, range-named Parquet files that appear under the root only when complete.

Layout (a contract, docs/ARCHITECTURE.md):
`<lake>/<table>/date=YYYY-MM-DD/part-<topic>-<partition>-<first>-<last>.parquet`, first/last = the
range's `start` and `end - 1` zero-padded to 19 digits, one file per range per day. Files are
written and fsynced in `<state>/staging/<range_id>/` (same filesystem, outside the root: polars and
duckdb read dot/underscore files too) and hard-linked into place, which never clobbers; the staged
link stays until the manifest is committed so a crashed publish can be rolled forward.

Column decision: files keep `event_date` (a file describes itself, even outside its directory) and
never contain a column named `date`, the hive key; hive readers add `date` from the path. The two
agree by construction: `stage_day` refuses a row whose `event_date` is not the file's day.

Rows recovered from the DLQ keep their source coordinates in `kafka_*` (where the event came from);
the range that wrote them is a range of the DLQ topic, so their file is tied to it by `dlq_offset`
and `dlq_partition` instead (`range_columns`). A file holds one kind of row only.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_project.batch.faults import fault_point
from pipeline_project.batch.ranges import OFFSET_WIDTH, Range
from pipeline_project.errors import FencingError, LakePathError, LedgerError

log = logging.getLogger(__name__)

TABLE_EVENTS = "events"
HIVE_KEY = "date"
DATE_COLUMN = "event_date"
OFFSET_COLUMN = "kafka_offset"
TOPIC_COLUMN = "kafka_topic"
PARTITION_COLUMN = "kafka_partition"
# Lineage of rows recovered from the DLQ (null on ingested rows): the DLQ record they came from.
DLQ_PARTITION_COLUMN = "dlq_partition"
DLQ_OFFSET_COLUMN = "dlq_offset"
REPAIR_RULES_COLUMN = "repair_rules"
STAGING_DIR_NAME = "staging"
QUARANTINE_DIR_NAME = "quarantine"
ROW_GROUP_ROWS = 131_072
MIN_YEAR, MAX_YEAR = 1970, 2999
# Fixed writer options: equal input gives byte-identical files (no timestamps in Parquet metadata).
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    # Level 1, not 3: measured on a 177k-row day file, 25 ms faster to write and 2% smaller (the
    # dictionary pages already did most of the work).
    "compression_level": 1,
    "write_page_checksum": True,
    # Parquet's own types only (UTF-8, TIMESTAMP(us, UTC), DATE, ...): no ARROW:schema, which
    # would pin Arrow reader types (string views) that older readers cannot take.
    "store_schema": False,
    "write_statistics": True,
    "use_dictionary": True,
}
# Unique per row: a dictionary never pays off, and building one until it spills costs time
# (measured: 6% smaller and 5% faster events files without them).
UNIQUE_COLUMNS = frozenset({"event_id", "kafka_offset", "timestamp", "dlq_offset"})
# Ids, URLs and free text: their min/max span every row group, so they never prune one (Iceberg
# and Delta truncate or skip them too). Measured: 13% of an events file's write time.
UNPRUNABLE_COLUMNS = frozenset(
    {"event_id", "user_id", "session_id", "product_id", "order_id", "element_id", "ip"}
    | {"page_url", "page_path", "page_query", "referrer", "user_agent", "query"}
)


def parquet_options(columns: list[str]) -> dict[str, Any]:
    """PARQUET_OPTIONS for a table of these columns.

    Dictionaries only where values repeat, min/max statistics only where they can prune.
    """
    return PARQUET_OPTIONS | {
        "use_dictionary": [c for c in columns if c not in UNIQUE_COLUMNS],
        "write_statistics": [c for c in columns if c not in UNPRUNABLE_COLUMNS],
    }


_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")
_TABLE_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
_DAY_DIR_RE = re.compile(r"date=(\d{4}-\d{2}-\d{2})")
_FILE_RE = re.compile(
    rf"part-(?P<topic>[A-Za-z0-9._-]{{1,249}})-(?P<partition>\d{{1,10}})"
    rf"-(?P<first>\d{{{OFFSET_WIDTH}}})-(?P<last>\d{{{OFFSET_WIDTH}}})\.parquet"
)


# ------------------------------------------------------------------------------------------- names


def validate_topic(topic: str) -> str:
    """Kafka's charset and length; '.'/'..' rejected, so a topic can never steer a path."""
    if not isinstance(topic, str) or not _TOPIC_RE.fullmatch(topic) or topic in (".", ".."):
        raise LakePathError(f"invalid Kafka topic name {topic!r}")
    return topic


def validate_table(table: str) -> str:
    """Lake table names are lowercase identifiers: never a dot/underscore prefix or a separator."""
    if not isinstance(table, str) or not _TABLE_RE.fullmatch(table):
        raise LakePathError(f"invalid lake table name {table!r}")
    return table


def validate_day(day: date) -> date:
    """A real `date` (not a datetime or string) in a sane year range: no `date=55970-…` dirs."""
    if type(day) is not date:
        raise LakePathError(f"partition day must be a datetime.date, got {type(day).__name__}")
    if not MIN_YEAR <= day.year <= MAX_YEAR:
        raise LakePathError(f"partition day {day.isoformat()} outside {MIN_YEAR}..{MAX_YEAR}")
    return day


def day_dir_name(day: date) -> str:
    """`date=YYYY-MM-DD`, built only from a validated date and checked against the pattern."""
    name = f"{HIVE_KEY}={validate_day(day).isoformat()}"
    if not _DAY_DIR_RE.fullmatch(name):
        raise LakePathError(f"bad partition directory name {name!r}")
    return name


def file_name(rng: Range) -> str:
    """`part-<topic>-<partition>-<start>-<end-1>.parquet`: a range always gets the same name."""
    validate_topic(rng.topic)
    if rng.end <= rng.start:
        raise LakePathError(f"empty range {rng.range_id} has no file name")
    first, last = f"{rng.start:0{OFFSET_WIDTH}d}", f"{rng.end - 1:0{OFFSET_WIDTH}d}"
    return f"part-{rng.topic}-{rng.partition}-{first}-{last}.parquet"


def relative_path(rng: Range, day: date, table: str = TABLE_EVENTS) -> str:
    """The lake-relative POSIX path of the range's file for `day` (the manifest's `path`)."""
    return f"{validate_table(table)}/{day_dir_name(day)}/{file_name(rng)}"


@dataclass(frozen=True)
class LakeName:
    """What a lake-relative path says about itself: table, day and the range that wrote it."""

    table: str
    day: date
    topic: str
    partition: int
    first: int
    last: int


def parse_file_name(name: str) -> tuple[str, int, int, int] | None:
    """(topic, partition, first, last) of one of our file names, or None for anything else."""
    match = _FILE_RE.fullmatch(name)
    if not match or match["topic"] in (".", ".."):
        return None
    return match["topic"], int(match["partition"]), int(match["first"]), int(match["last"])


def parse_day_dir(name: str) -> date | None:
    """The day of a `date=YYYY-MM-DD` directory name, or None (bad pattern, date or year)."""
    match = _DAY_DIR_RE.fullmatch(name)
    if not match:
        return None
    try:
        return validate_day(date.fromisoformat(match[1]))
    except (ValueError, LakePathError):
        return None


def parse_relative_path(rel: str) -> LakeName | None:
    """Parses `<table>/date=YYYY-MM-DD/part-….parquet`; None when any component is not ours."""
    parts = rel.split("/")
    if len(parts) != 3 or not _TABLE_RE.fullmatch(parts[0]):
        return None
    day = parse_day_dir(parts[1])
    parsed = parse_file_name(parts[2])
    if day is None or parsed is None or parsed[3] < parsed[2]:
        return None
    return LakeName(parts[0], day, *parsed)


def resolve(lake_dir: Path, rel: str) -> Path:
    """Absolute path of a lake-relative path; refuses a realpath outside the root (P11)."""
    if parse_relative_path(rel) is None:
        raise LakePathError(f"not a lake file path: {rel!r}")
    root = os.path.realpath(lake_dir)
    target = os.path.realpath(os.path.join(root, rel))
    if not target.startswith(root + os.sep):
        raise LakePathError(f"{rel!r} resolves outside the lake root {root}")
    return Path(root) / rel


def staging_dir(state_dir: Path, rng: Range) -> Path:
    """`<state>/staging/<range_id>/`: outside the lake root, same filesystem for `os.link`."""
    validate_topic(rng.topic)
    return Path(state_dir) / STAGING_DIR_NAME / rng.range_id


# ------------------------------------------------------------------------------------ fs primitives


def fsync_dir(path: Path) -> None:
    """Makes the directory's entries (a link, a rename, a new child) durable; errors propagate."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Fsyncs a written file by path (Linux flushes the inode's pages via any descriptor)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> list[Path]:
    """Like `mkdir -p`, fsyncing the parent of every directory it creates; returns those."""
    path = Path(path)
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    created: list[Path] = []
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue
        created.append(directory)
        fsync_dir(directory.parent)
    if not path.is_dir():
        raise NotADirectoryError(str(path))
    return created


def atomic_write_bytes(path: Path, data: bytes, *, replace: bool = True, fault: str = "") -> None:
    """Temp file in the same dir, fsync, rename (or no-clobber link), fsync dir: old or new.

    `replace=False` publishes with `os.link`, so an existing file raises FileExistsError instead of
    being replaced. On any error the temp file is removed and the error propagates (F5).
    """
    path = Path(path)
    ensure_dir(path.parent)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if fault:
            fault_point(fault)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            tmp.unlink()
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def sha256_file(path: Path) -> str:
    """Streaming sha256 of a file (the manifest's content checksum)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


# ------------------------------------------------------------------------------------------ staging


@dataclass(frozen=True)
class LakeFile:
    """A file as the manifest lists it: where it lives, what it holds, and its checksum."""

    table: str
    day: date
    path: str
    rows: int
    sha256: str
    size: int
    min_offset: int | None
    max_offset: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "table": self.table,
            "day": self.day.isoformat(),
            "rows": self.rows,
            "sha256": self.sha256,
            "bytes": self.size,
            "min_offset": self.min_offset,
            "max_offset": self.max_offset,
        }

    @classmethod
    def fields_from_dict(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Parses and type-checks the shared fields (ValueError/KeyError/TypeError if bad)."""
        rel = str(data["path"])
        name = parse_relative_path(rel)
        if name is None:
            raise ValueError(f"bad lake path {rel!r}")
        day = date.fromisoformat(str(data["day"]))
        if name.day != day or name.table != data.get("table", name.table):
            raise ValueError(f"path {rel!r} does not match day/table")
        return {
            "table": name.table,
            "day": day,
            "path": rel,
            "rows": _int(data["rows"]),
            "sha256": _sha(data["sha256"]),
            "size": _int(data["bytes"]),
            "min_offset": _opt_int(data.get("min_offset")),
            "max_offset": _opt_int(data.get("max_offset")),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LakeFile:
        return cls(**cls.fields_from_dict(data))


@dataclass(frozen=True)
class StagedFile(LakeFile):
    """A complete, fsynced file in staging, ready to be linked into the lake."""

    staging_path: Path = field(default=Path())

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "staging_path": str(self.staging_path)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StagedFile:
        return cls(**cls.fields_from_dict(data), staging_path=Path(str(data["staging_path"])))

    def lake_file(self) -> LakeFile:
        """The manifest's view of this file (without the staging location)."""
        return LakeFile(**{k: v for k, v in self.__dict__.items() if k != "staging_path"})


def _int(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


def _opt_int(value: Any) -> int | None:
    return None if value is None else _int(value)


def _sha(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"bad sha256 {value!r}")
    return value


def range_columns(df: pl.DataFrame) -> tuple[str, str]:
    """The (offset, partition) columns that tie a file's rows to the range that wrote them.

    `kafka_offset`/`kafka_partition` for ingested rows; `dlq_offset`/`dlq_partition` for rows
    recovered from the DLQ, whose kafka_* columns keep the source coordinates. LakePathError when a
    frame mixes the two kinds.
    """
    if DLQ_OFFSET_COLUMN not in df.columns:
        return OFFSET_COLUMN, PARTITION_COLUMN
    nulls = df.get_column(DLQ_OFFSET_COLUMN).null_count()
    if nulls == df.height:
        return OFFSET_COLUMN, PARTITION_COLUMN
    if nulls:
        raise LakePathError("rows recovered from the DLQ mixed with ingested rows in one file")
    return DLQ_OFFSET_COLUMN, DLQ_PARTITION_COLUMN


def _check_frame(df: pl.DataFrame, rng: Range, day: date, date_column: str | None) -> None:
    """Refuses rows that would make a file lie about its day or range (an upstream bug)."""
    if HIVE_KEY in df.columns:
        raise LakePathError(f"column {HIVE_KEY!r} would clash with the hive partition key")
    if date_column is not None:
        if date_column not in df.columns:
            raise LakePathError(f"missing date column {date_column!r}")
        days = df.get_column(date_column)
        if days.null_count() or (days != day).any():
            raise LakePathError(f"rows whose {date_column} is not {day.isoformat()}")
    offset_column, partition_column = range_columns(df)
    if offset_column in df.columns:
        offsets = df.get_column(offset_column)
        low, high = _int_bounds(offsets)
        if offsets.null_count() or low < rng.start or high >= rng.end:
            raise LakePathError(
                f"{offset_column} outside [{rng.start}, {rng.end}) of {rng.range_id}"
            )
        if offsets.n_unique() != df.height:
            raise LakePathError(f"duplicate {offset_column} values in {rng.range_id}")
    expected_values: list[tuple[str, object]] = [(partition_column, rng.partition)]
    if offset_column == OFFSET_COLUMN:  # recovered rows name their source topic, not the range's
        expected_values.append((TOPIC_COLUMN, rng.topic))
    for column, expected in expected_values:
        if column in df.columns and (df.get_column(column) != expected).any():
            raise LakePathError(f"rows whose {column} is not {expected!r}")


def _int_bounds(values: pl.Series) -> tuple[int, int]:
    """(min, max) of a non-empty integer column, as Python ints."""
    low, high = values.min(), values.max()
    if not isinstance(low, int) or not isinstance(high, int):
        raise LakePathError(f"{values.name} must be a non-null integer column")
    return low, high


def _to_arrow(df: pl.DataFrame) -> pa.Table:
    """Offset-sorted, single-chunk, metadata-free Arrow table: the same rows give the same bytes.

    Strings stay polars' string views, no copy (measured: 20-35 ms and ~80 MB of a 177k-row
    file's staging with large_string). Parquet stores them as plain UTF-8 byte arrays either
    way, and the files carry no Arrow schema (PARQUET_OPTIONS), so readers see `string`.
    """
    offset_column = range_columns(df)[0]
    if offset_column in df.columns and not df.get_column(offset_column).is_sorted():
        df = df.sort(offset_column, maintain_order=True)
    table = df.to_arrow(compat_level=pl.CompatLevel.newest()).combine_chunks()
    return table.replace_schema_metadata(None)


def _write_parquet(target: Path, table: pa.Table, row_group_rows: int) -> None:
    """Writes row group by row group (K2 fires after the first), then fsyncs.

    No partial file survives an exception; a SIGKILL leaves one in staging, which recovery deletes.
    """
    try:
        options = parquet_options(table.column_names)
        writer = pq.ParquetWriter(str(target), table.schema, **options)
        try:
            for index, offset in enumerate(range(0, table.num_rows, row_group_rows)):
                writer.write_table(
                    table.slice(offset, row_group_rows), row_group_size=row_group_rows
                )
                if index == 0:
                    fault_point("K2")
        finally:
            writer.close()
        fsync_file(target)
        fsync_dir(target.parent)  # the staged entry must survive too: "prepared" points at it
    except BaseException:
        _unlink_quietly(target)
        raise


def stage_day(
    staging: Path,
    rng: Range,
    day: date,
    df: pl.DataFrame,
    *,
    table: str = TABLE_EVENTS,
    date_column: str | None = DATE_COLUMN,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> StagedFile | None:
    """Writes one day's rows of a range to `<staging>/<relative path>`, fsynced; None for 0 rows."""
    rel = relative_path(rng, day, table)
    if df.height == 0:
        return None
    if row_group_rows < 1:
        raise ValueError("row_group_rows must be at least 1")
    _check_frame(df, rng, day, date_column)
    target = Path(os.path.abspath(staging)) / rel  # absolute: the intent outlives the cwd
    ensure_dir(target.parent)
    _unlink_quietly(target)  # a leftover of an earlier attempt in the same staging dir
    _write_parquet(target, _to_arrow(df), row_group_rows)
    offset_column = range_columns(df)[0]
    bounds = _int_bounds(df.get_column(offset_column)) if offset_column in df.columns else None
    return StagedFile(
        table=table,
        day=day,
        path=rel,
        rows=df.height,
        sha256=sha256_file(target),
        size=target.stat().st_size,
        min_offset=None if bounds is None else bounds[0],
        max_offset=None if bounds is None else bounds[1],
        staging_path=target,
    )


def stage_days(
    staging: Path,
    rng: Range,
    df: pl.DataFrame,
    *,
    table: str = TABLE_EVENTS,
    date_column: str = DATE_COLUMN,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> list[StagedFile]:
    """Splits a range's rows by `date_column` and stages one file per day, in day order."""
    if df.height == 0:
        return []
    if df.get_column(date_column).null_count():
        raise LakePathError(f"rows without {date_column}")
    staged: list[StagedFile] = []
    for day in sorted(df.get_column(date_column).unique().to_list()):
        part = df.filter(pl.col(date_column) == day)
        result = stage_day(
            staging,
            rng,
            day,
            part,
            table=table,
            date_column=date_column,
            row_group_rows=row_group_rows,
        )
        if result is not None:
            staged.append(result)
    return staged


def read_columns(path: Path, columns: list[str]) -> pa.Table:
    """Some columns of one Parquet file.

    ParquetFile, not pq.read_table: that imports pyarrow.dataset, 50 ms of a run's start-up.
    """
    with pq.ParquetFile(path) as parquet:
        return parquet.read(columns=columns)


def read_range_offsets(path: Path) -> list[int]:
    """The offsets that tie a written file's rows to its range (see `range_columns`)."""
    names = set(pq.read_schema(path).names)
    wanted = [c for c in (OFFSET_COLUMN, DLQ_OFFSET_COLUMN) if c in names]
    frame = pl.DataFrame(read_columns(path, wanted))
    column = range_columns(frame)[0]
    return frame.get_column(column).to_list() if column in frame.columns else []


def remove_staging(state_dir: Path, rng: Range) -> bool:
    """Deletes a range's staging dir (after its manifest, or on roll-back); True if it existed."""
    path = staging_dir(state_dir, rng)
    if not path.exists():
        return False
    shutil.rmtree(path)
    fsync_dir(path.parent)
    return True


# ----------------------------------------------------------------------------------------- publish


def publish(staged: StagedFile, lake_dir: Path) -> Literal["published", "identical"]:
    """Hard-links a staged file into the lake, never clobbering (the protocol's publish step).

    An existing target with the same sha256 is an idempotent re-run ("identical"); a different one
    is a fencing violation (a zombie or a non-deterministic writer) and raises FencingError. If the
    directory fsync fails, the new link is removed again: nothing stays visible that is not durable.
    """
    target = resolve(lake_dir, staged.path)
    if sha256_file(staged.staging_path) != staged.sha256:
        raise LedgerError(f"staged file {staged.staging_path} changed since it was staged")
    ensure_dir(target.parent)
    try:
        os.link(staged.staging_path, target)
    except FileExistsError:
        return _existing_target(target, staged)
    try:
        fsync_dir(target.parent)
    except BaseException:
        _unlink_quietly(target)
        raise
    return "published"


def _existing_target(target: Path, staged: StagedFile) -> Literal["identical"]:
    if not target.is_file() or target.is_symlink() or sha256_file(target) != staged.sha256:
        raise FencingError(
            f"{target} already exists with different content: another writer published this range; "
            "refusing to overwrite (stop all runs of this partition and reconcile)"
        )
    fsync_dir(target.parent)  # an earlier publish may have died between link and directory fsync
    return "identical"


def publish_all(staged: Sequence[StagedFile], lake_dir: Path) -> list[str]:
    """Publishes files in order; K4 fires between two publishes (a crash with half the days out)."""
    results: list[str] = []
    for index, item in enumerate(staged):
        if index:
            fault_point("K4")
        results.append(publish(item, lake_dir))
    return results


# -------------------------------------------------------------------------------------- quarantine


def quarantine(
    path: Path,
    lake_dir: Path,
    state_dir: Path,
    reason: str,
    *,
    area: str = "lake",
    now: datetime | None = None,
) -> Path:
    """Moves a bad or stray file/dir out of `lake_dir` into `<state>/quarantine/<batch>/<area>/…`.

    A JSON note beside it says where it came from and why. Readers stop seeing it at once (rename),
    and nothing is deleted, so an operator can inspect or restore it. `lake_dir` may be any root
    under the state filesystem (recovery also quarantines torn manifests, with area="manifests").
    """
    root = os.path.realpath(lake_dir)
    source = Path(os.path.abspath(path))
    rel = os.path.relpath(source, root)
    if rel == "." or rel.startswith(".." + os.sep) or rel == ".." or os.path.isabs(rel):
        raise LakePathError(f"{path} is not inside {root}")
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    batch = f"{moment.strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(4)}"
    dest = Path(state_dir) / QUARANTINE_DIR_NAME / batch / area / rel
    note = _quarantine_note(source, rel, reason, moment)
    ensure_dir(dest.parent)
    os.rename(source, dest)
    fsync_dir(source.parent)
    fsync_dir(dest.parent)
    note_path = dest.parent / f"{dest.name}.quarantine.json"
    atomic_write_bytes(note_path, orjson.dumps(note, option=orjson.OPT_SORT_KEYS) + b"\n")
    log.warning("quarantined %s (%s) to %s", source, reason, dest)
    return dest


def _quarantine_note(source: Path, rel: str, reason: str, moment: datetime) -> dict[str, Any]:
    note: dict[str, Any] = {
        "original": str(source),
        "relative": rel,
        "reason": reason,
        "quarantined_at": moment.isoformat().replace("+00:00", "Z"),
    }
    if source.is_file() and not source.is_symlink():
        note["bytes"] = source.stat().st_size
        note["sha256"] = sha256_file(source)
    return note
