"""A host-local cache of each committed file's event-id hashes: duplicate lookups read new files.

Why: every range asks which of its event ids its days already hold. Reading a day's `event_id`
column costs time in proportion to the day (0.8 s a range on a 12M-row day here), and a live day
grows from midnight to midnight. Delta data files are immutable and the snapshot names them, so a
file's ids never change: this cache keeps, per file, the 64-bit hashes of its ids. A lookup loads
the hashes of its days' files (reading the ids only of files it has not seen yet) and reads ids
back only from the files where one of the batch's hashes turns up, so a hash collision costs one
file read, never an event.

Correctness rests on the snapshot, never on the cache: the files consulted are exactly those the
table lists now (a compaction or an expiry only changes that list), and an entry only ever holds
the hashes of the file at its path. Deleting the directory costs one read of each day's ids on the
next lookup, nothing else. The hash is polars' own, stable within one polars version, so entries
live under that version. Entries of files the table no longer lists are pruned as days are read.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import date
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from deltalake import DeltaTable

from pipeline_project.columns import DATE_COLUMN, EVENT_ID_COLUMN, PARTITION_COLUMN
from pipeline_project.lake.files import Storage

log = logging.getLogger(__name__)

SEED = 0x5EED
CHUNK_HASHES = 4_000_000  # hashes probed at once: ~32 MB, whatever the day's size
ENTRY_SUFFIX = ".arrow"
PRUNE_AGE_SECONDS = 600  # an entry younger than this may be of a commit after our snapshot


class IdCache:
    """Per data file of one table, the hashes of its event ids, under `root` on this host."""

    def __init__(self, root: Path, table_uri: str) -> None:
        digest = hashlib.sha256(table_uri.encode()).hexdigest()[:16]
        self.root = root / f"polars-{pl.__version__}" / digest

    def committed(
        self, table: DeltaTable, where: Storage, days: Sequence[date], among: pl.Series
    ) -> pl.DataFrame:
        """(event_date, event_id) pairs of these days whose id is among `among` (all of them)."""
        ids = among.cast(pl.String).unique()
        wanted = ids.hash(SEED).implode()
        files = day_files(table, days)
        holding: list[tuple[date, str]] = []
        chunk: list[tuple[date, str, pl.Series]] = []
        for day, path in files:
            chunk.append((day, path, self._hashes(where, day, path)))
            if sum(len(h) for *_, h in chunk) >= CHUNK_HASHES:
                holding += _holding(chunk, wanted)
                chunk = []
        holding += _holding(chunk, wanted)
        self._prune(days, {path for _, path in files})
        return _confirm(where, holding, ids)

    def remember(self, files: Iterable[tuple[date, str, pl.Series]]) -> None:
        """Stores the hashes of files just committed, from their ids: the next range reads none.

        `files`: (day, path, the file's event ids) of each file.
        """
        for day, path, ids in files:
            self._store(day, path, ids.cast(pl.String).hash(SEED))

    def _hashes(self, where: Storage, day: date, path: str) -> pl.Series:
        entry = self._entry(day, path)
        try:  # memory-mapped, not copied: a day's entries are tens of MB
            return pl.Series("h", ipc.open_file(pa.memory_map(str(entry))).read_all().column(0))
        except (OSError, ValueError, pa.ArrowException, IndexError) as exc:
            if not isinstance(exc, FileNotFoundError):
                log.warning("id cache entry %s unreadable, rebuilt: %s", entry, exc)
        hashes = read_ids(where, path).hash(SEED)
        self._store(day, path, hashes)
        return hashes

    def _store(self, day: date, path: str, hashes: pl.Series) -> None:
        """Written aside and renamed: a reader sees a whole entry or none."""
        entry = self._entry(day, path)
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            aside = entry.with_name(f".{entry.name}.{uuid.uuid4().hex[:8]}")
            table = pa.table({"h": hashes.to_arrow()})
            with pa.OSFile(str(aside), "wb") as sink, ipc.new_file(sink, table.schema) as out:
                out.write_table(table)
            os.replace(aside, entry)
        except OSError as exc:  # a cache that cannot be written only costs reads
            log.warning("id cache %s not written: %s", entry, exc)

    def _prune(self, days: Sequence[date], listed: set[str]) -> None:
        """Drops entries of files the snapshot no longer lists (compacted, expired, uncommitted).

        Entries younger than PRUNE_AGE_SECONDS stay: another run may have just committed the file
        after this lookup's snapshot was taken.
        """
        keep = {_entry_name(path) for path in listed}
        young = time.time() - PRUNE_AGE_SECONDS
        for day in days:
            folder = self.root / f"{PARTITION_COLUMN}={day.isoformat()}"
            try:
                names = [n for n in os.listdir(folder) if n.endswith(ENTRY_SUFFIX)]
            except FileNotFoundError:
                continue
            for name in names:
                entry = folder / name
                with contextlib.suppress(FileNotFoundError):
                    if name not in keep and entry.stat().st_mtime < young:
                        entry.unlink()

    def _entry(self, day: date, path: str) -> Path:
        return self.root / f"{PARTITION_COLUMN}={day.isoformat()}" / _entry_name(path)


def _entry_name(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()[:32] + ENTRY_SUFFIX


def day_files(table: DeltaTable, days: Sequence[date]) -> list[tuple[date, str]]:
    """The snapshot's data files of these days, as (day, path relative to the table)."""
    adds = pl.DataFrame(table.get_add_actions(flatten=True)).select(
        "path", pl.col(f"partition.{PARTITION_COLUMN}").cast(pl.Date).alias("day")
    )
    chosen = adds.filter(pl.col("day").is_in(list(days)))
    return [(day, path) for path, day in chosen.iter_rows()]


def read_ids(where: Storage, path: str) -> pl.Series:
    """One data file's event ids."""
    with where.fs.open_input_file(f"{where.root}/{path}") as handle:
        column = pq.read_table(handle, columns=[EVENT_ID_COLUMN]).column(EVENT_ID_COLUMN)
    return pl.Series(EVENT_ID_COLUMN, column).cast(pl.String)


def _holding(chunk: list[tuple[date, str, pl.Series]], wanted: pl.Series) -> list[tuple[date, str]]:
    """The files of `chunk` holding one of the wanted hashes (one probe of the whole chunk)."""
    if not chunk:
        return []
    found = pl.concat([h for *_, h in chunk], rechunk=False).is_in(wanted).arg_true()
    if found.is_empty():
        return []
    ends = pl.Series([len(h) for *_, h in chunk]).cum_sum()
    files = ends.search_sorted(found, side="right").unique().sort()
    return [chunk[index][:2] for index in files.to_list()]


def _confirm(where: Storage, holding: list[tuple[date, str]], ids: pl.Series) -> pl.DataFrame:
    """The ids of `ids` really in the files that may hold them, with their day."""
    found = [
        pl.DataFrame({EVENT_ID_COLUMN: read_ids(where, path)})
        .filter(pl.col(EVENT_ID_COLUMN).is_in(ids.implode()))
        .select(pl.lit(day, pl.Date).alias(DATE_COLUMN), EVENT_ID_COLUMN)
        for day, path in holding
    ]
    schema = {DATE_COLUMN: pl.Date, EVENT_ID_COLUMN: pl.String}
    return pl.concat([pl.DataFrame(schema=schema), *found]).unique()
