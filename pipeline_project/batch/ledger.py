"""The ledger: per-range intents (a WAL) and manifests (the commit point): the truth of progress.

Like the HDFS sink's WAL + committed file names and Spark's offsets/commits logs, progress is what
the manifests under `<state>/manifests/<topic>/<partition>/<range_id>.json` say, never the consumer
group. An intent fixes a range's identity (run_id, ingested_at, the validator's `now`) before any
work, so a re-run after a crash writes byte-identical files; "prepared" lists all a roll-forward
needs. Every JSON file is written atomically; a torn one is reported and treated as absent.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final, Literal

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_project.batch import id_index, lake
from pipeline_project.batch.lake import LakeFile, StagedFile
from pipeline_project.batch.ranges import Range, parse_range_id
from pipeline_project.errors import (
    AccountingError,
    AlreadyCommittedError,
    ContiguityError,
    FencingError,
    LedgerError,
    LockBusyError,
)

log = logging.getLogger(__name__)

LEDGER_VERSION = 1
INTENTS_DIR = "intents"
MANIFESTS_DIR = "manifests"
LOCKS_DIR = "locks"
IntentState = Literal["started", "prepared"]
STARTED: Final[IntentState] = "started"
PREPARED: Final[IntentState] = "prepared"
_REASON_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_JSON_OPTIONS = orjson.OPT_SORT_KEYS


# --------------------------------------------------------------------------------------- json files


def atomic_write_json(
    path: Path, data: Mapping[str, Any], *, replace: bool = True, fault: str = ""
) -> None:
    """Atomic, durable JSON write (tmp, fsync, rename/link, dir fsync): lake.atomic_write_bytes."""
    lake.atomic_write_bytes(
        Path(path), orjson.dumps(data, option=_JSON_OPTIONS) + b"\n", replace=replace, fault=fault
    )


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None if absent; ValueError if torn or not an object."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"unparseable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise LedgerError("ledger timestamps must be timezone-aware")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(value: Any) -> datetime:
    moment = datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        raise ValueError(f"naive timestamp {value!r}")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class LedgerProblem:
    """A ledger file that could not be used (torn, unparseable, inconsistent), treated as absent."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


# ---------------------------------------------------------------------------------- entries, digest


@dataclass(frozen=True, order=True)
class DlqEntry:
    """One bad record confirmed in the DLQ: source offset and where its delivery report put it."""

    source_offset: int
    category: str
    dlq_partition: int
    dlq_offset: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_offset": self.source_offset,
            "category": self.category,
            "dlq_partition": self.dlq_partition,
            "dlq_offset": self.dlq_offset,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DlqEntry:
        values = [data["source_offset"], data["dlq_partition"], data["dlq_offset"]]
        if any(type(v) is not int or v < 0 for v in values) or not isinstance(
            data["category"], str
        ):
            raise ValueError(f"bad DLQ entry {dict(data)!r}")
        return cls(values[0], data["category"], values[1], values[2])


def offsets_digest(offsets: Iterable[int]) -> str:
    """Sha256 of the sorted offsets as decimal text joined by ',': a fingerprint of the set.

    Plain ints are sorted and formatted by polars, which writes the same text as str() several
    times faster on 200k offsets; anything else (bools, floats, ints beyond 64 bits) keeps the
    per-value str() so every digest ever written stays reproducible.
    """
    values = list(offsets)
    series = _plain_ints(values)
    if series is not None:
        return _sorted_digest(series.sort())
    return _text_digest(",".join(str(o) for o in sorted(values)))


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _sorted_digest(ordered: pl.Series) -> str:
    """offsets_digest of an already sorted Int64 Series (spares account() a second sort)."""
    return _text_digest(ordered.cast(pl.String).str.join(",").item())


def _plain_ints(values: list[Any]) -> pl.Series | None:
    """`values` as an Int64 Series if every one is exactly an int that fits in 64 bits, else None.

    Exactly int, because a bool is an int whose str() is "True": the digest must keep that text.
    """
    if not set(map(type, values)) <= {int}:
        return None
    return _int64(values)


def _int64(values: Sequence[int] | pl.Series) -> pl.Series | None:
    """`values` as a null-free Int64 Series, or None when that conversion would not be exact.

    None (floats, strings, nulls, values beyond Int64) sends the caller to its per-value path,
    which treats such input exactly as before. Bools become 0/1, which compare equal in Python too.
    """
    try:
        if isinstance(values, pl.Series):
            if not values.dtype.is_integer():
                return None
            series = values.cast(pl.Int64, strict=True)
        else:
            series = pl.Series(values, dtype=pl.Int64, strict=True)
    except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
        return None
    return series if series.null_count() == 0 else None


def _parse_filtered(data: Any) -> dict[str, tuple[int, ...]]:
    if not isinstance(data, dict):
        raise ValueError("filtered must be an object")
    result: dict[str, tuple[int, ...]] = {}
    for reason, offsets in data.items():
        if not _REASON_RE.fullmatch(reason) or not isinstance(offsets, list):
            raise ValueError(f"bad filtered entry {reason!r}")
        if any(type(o) is not int or o < 0 for o in offsets):
            raise ValueError(f"bad filtered offsets for {reason!r}")
        result[reason] = tuple(offsets)
    return result


def _check_version(data: Mapping[str, Any], kind: str) -> None:
    """A newer ledger format stops the run (LedgerError) instead of being treated as torn.

    An older binary must never quarantine what a newer one committed.
    """
    version = data.get("version")
    if data.get("kind") == kind and type(version) is int and version > LEDGER_VERSION:
        raise LedgerError(f"{kind} written by a newer pipeline (format {version}); upgrade first")
    if data.get("kind") != kind or version != LEDGER_VERSION:
        raise ValueError(f"not a version-{LEDGER_VERSION} {kind}")


def _check_file_names(rng: Range, files: Sequence[LakeFile]) -> None:
    """Listed files must be named after the range, and each listed once (no path tricks)."""
    for item in files:
        if item.path != lake.relative_path(rng, item.day, item.table):
            raise ValueError(f"file {item.path!r} is not named after range {rng.range_id}")
    if len({f.path for f in files}) != len(files):
        raise ValueError("a file is listed twice")


# ------------------------------------------------------------------------------------------ paths


def _partition_part(topic: str, partition: int) -> Path:
    lake.validate_topic(topic)
    if type(partition) is not int or partition < 0:
        raise LedgerError(f"invalid partition {partition!r}")
    return Path(topic) / str(partition)


def manifest_dir(state_dir: Path, topic: str, partition: int) -> Path:
    return Path(state_dir) / MANIFESTS_DIR / _partition_part(topic, partition)


def manifest_path(state_dir: Path, rng: Range) -> Path:
    """`<state>/manifests/<topic>/<partition>/<range_id>.json`."""
    return manifest_dir(state_dir, rng.topic, rng.partition) / f"{rng.range_id}.json"


def intent_dir(state_dir: Path, topic: str, partition: int) -> Path:
    return Path(state_dir) / INTENTS_DIR / _partition_part(topic, partition)


def intent_path(state_dir: Path, rng: Range) -> Path:
    """`<state>/intents/<topic>/<partition>/<range_id>.json`."""
    return intent_dir(state_dir, rng.topic, rng.partition) / f"{rng.range_id}.json"


def lock_path(state_dir: Path, topic: str, partition: int) -> Path:
    _partition_part(topic, partition)
    return Path(state_dir) / LOCKS_DIR / f"{topic}-{partition}.lock"


# ----------------------------------------------------------------------------------------- locks

_HELD: dict[tuple[str, str, int], int] = {}  # lock key -> descriptor holding the flock


@dataclass(frozen=True)
class PartitionLock:
    """Proof that this process holds the partition's flock (released when the context exits)."""

    path: Path
    topic: str
    partition: int


def _lock_key(state_dir: Path, topic: str, partition: int) -> tuple[str, str, int]:
    return (os.path.realpath(state_dir), topic, partition)


@contextlib.contextmanager
def partition_lock(state_dir: Path, topic: str, partition: int) -> Iterator[PartitionLock]:
    """Holds `flock(LOCK_EX | LOCK_NB)` on the partition's lock file; busy → LockBusyError (Z1).

    The kernel drops the lock when the process dies, so a crashed run never leaves a stale lock;
    the file itself is never deleted (that races). The holder's pid is written for messages. The
    lock is also a lease: if its file is removed or replaced while held (Z2: an operator "broke"
    it, so another run may own the partition now), `assert_locked` raises FencingError.
    """
    path = lock_path(state_dir, topic, partition)
    key = _lock_key(state_dir, topic, partition)
    if key in _HELD:
        raise LockBusyError(f"{topic}[{partition}] is already locked by this process ({path})")
    lake.ensure_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown holder"
            raise LockBusyError(
                f"another run is processing {topic}[{partition}] ({holder}); lock file {path}"
            ) from None
        if not _same_file(fd, path):
            raise LockBusyError(f"lock file {path} was replaced while it was being acquired")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {_iso(datetime.now(UTC))}\n".encode(), 0)
        _HELD[key] = fd
        try:
            yield PartitionLock(path, topic, partition)
        finally:
            _HELD.pop(key, None)
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def assert_locked(state_dir: Path, topic: str, partition: int) -> None:
    """Guards ledger mutations: only the holder of the partition lock may change its ledger.

    Also a fence (Z2): a run frozen while holding the lock (SIGSTOP, a long GC or VM pause) whose
    lock file was removed meanwhile may have been overtaken by a newer run; it must not touch the
    ledger or the lake again, so this raises FencingError instead of letting it commit.
    """
    fd = _HELD.get(_lock_key(state_dir, topic, partition))
    if fd is None:
        raise LedgerError(f"{topic}[{partition}]: hold partition_lock() before changing its ledger")
    path = lock_path(state_dir, topic, partition)
    if not _same_file(fd, path):
        raise FencingError(
            f"{topic}[{partition}]: lock file {path} was removed or replaced while this run held "
            "it; another run may own the partition now, so this one stops without committing"
        )


def _same_file(fd: int, path: Path) -> bool:
    """True when `path` still names the file open as `fd` (same device and inode)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


# ---------------------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class Manifest:
    """A committed range: what was consumed and where every record went (lake, DLQ or filtered)."""

    range: Range
    run_id: str
    ingested_at: datetime
    reference_time: datetime
    committed_at: datetime
    records: int
    files: tuple[LakeFile, ...]
    dlq: tuple[DlqEntry, ...]
    filtered: Mapping[str, tuple[int, ...]]
    record_offsets_sha256: str
    counts: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)

    @property
    def written(self) -> int:
        return sum(f.rows for f in self.files)

    def computed_counts(self) -> dict[str, Any]:
        """The counts the lists imply (what `counts` must equal)."""
        return {
            "records": self.records,
            "written": self.written,
            "dlq": len(self.dlq),
            "filtered": {reason: len(offsets) for reason, offsets in sorted(self.filtered.items())},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": LEDGER_VERSION,
            "kind": "manifest",
            "range_id": self.range.range_id,
            "range": self.range.to_dict(),
            "run_id": self.run_id,
            "ingested_at": _iso(self.ingested_at),
            "reference_time": _iso(self.reference_time),
            "committed_at": _iso(self.committed_at),
            "counts": self.computed_counts(),
            "files": [f.to_dict() for f in self.files],
            "dlq": [d.to_dict() for d in self.dlq],
            "filtered": {reason: list(offs) for reason, offs in sorted(self.filtered.items())},
            "record_offsets": {"count": self.records, "sha256": self.record_offsets_sha256},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Path | None = None) -> Manifest:
        """Structural validation only (types, paths named after this range).

        Counts are checked by reconcile, so a manifest whose numbers disagree is reported, not
        silently dropped.
        """
        _check_version(data, "manifest")
        rng = Range.from_dict(data["range"])
        if data.get("range_id") != rng.range_id:
            raise ValueError("range_id does not match range")
        files = tuple(LakeFile.from_dict(f) for f in data["files"])
        _check_file_names(rng, files)
        offsets = data["record_offsets"]
        if type(offsets["count"]) is not int or not isinstance(data["counts"], dict):
            raise ValueError("bad record_offsets/counts")
        return cls(
            range=rng,
            run_id=str(data["run_id"]),
            ingested_at=_parse_time(data["ingested_at"]),
            reference_time=_parse_time(data["reference_time"]),
            committed_at=_parse_time(data["committed_at"]),
            records=offsets["count"],
            files=files,
            dlq=tuple(DlqEntry.from_dict(d) for d in data["dlq"]),
            filtered=_parse_filtered(data["filtered"]),
            record_offsets_sha256=lake._sha(offsets["sha256"]),
            counts=data["counts"],
            path=path,
        )


@dataclass
class ManifestScan:
    """Valid manifests, the unusable ones (torn, unparseable, misplaced) and temp leftovers."""

    manifests: list[Manifest] = field(default_factory=list)
    problems: list[LedgerProblem] = field(default_factory=list)
    temp_files: list[Path] = field(default_factory=list)


def _load_manifest_file(path: Path, topic: str, partition: int) -> Manifest:
    data = read_json(path)
    if data is None:
        raise ValueError("vanished while reading")
    try:
        manifest = Manifest.from_dict(data, path)
    except (KeyError, TypeError, ValueError, lake.LakePathError) as exc:
        raise ValueError(f"invalid manifest: {exc}") from None
    rng = manifest.range
    if (rng.topic, rng.partition) != (topic, partition) or path.name != f"{rng.range_id}.json":
        raise ValueError("manifest stored under the wrong topic/partition/name")
    return manifest


def partition_dirs(
    base: Path, topic: str | None = None, partition: int | None = None
) -> Iterator[tuple[str, int, Path]]:
    """(topic, partition, dir) for each `<base>/<topic>/<partition>/` (manifests, intents)."""
    if not base.is_dir():
        return
    for topic_dir in sorted(base.iterdir()):
        if topic is not None and topic_dir.name != topic:
            continue
        if not topic_dir.is_dir():
            continue
        for part_dir in sorted(topic_dir.iterdir()):
            if part_dir.is_dir() and part_dir.name.isdigit():
                if partition is None or int(part_dir.name) == partition:
                    yield topic_dir.name, int(part_dir.name), part_dir


def scan_manifests(
    state_dir: Path, topic: str | None = None, partition: int | None = None
) -> ManifestScan:
    """Reads every manifest (optionally of one topic/partition); never raises on a bad file."""
    scan = ManifestScan()
    for name, part, directory in partition_dirs(Path(state_dir) / MANIFESTS_DIR, topic, partition):
        for path in sorted(directory.iterdir()):
            if _is_temp(path.name):
                scan.temp_files.append(path)
                continue
            try:
                scan.manifests.append(_load_manifest_file(path, name, part))
            except (OSError, ValueError) as exc:
                scan.problems.append(LedgerProblem(path, str(exc)))
    scan.manifests.sort(key=lambda m: m.range)
    return scan


def load_manifests(
    state_dir: Path, topic: str | None = None, partition: int | None = None
) -> list[Manifest]:
    """Valid manifests sorted by (topic, partition, start); unusable ones are logged and skipped."""
    scan = scan_manifests(state_dir, topic, partition)
    _log_unusable(scan.problems)
    return scan.manifests


def _is_temp(name: str) -> bool:
    """A manifest write's temp file (`.<name>.tmp`), left by an interrupted write."""
    return name.startswith(".") and name.endswith(".tmp")


def _log_unusable(problems: list[LedgerProblem]) -> None:
    for problem in problems:
        log.warning("ignoring unusable manifest %s", problem)


# ------------------------------------------------------------------------------- manifest heads
# What runs and sensors need of the committed history is each manifest's range and files, not its
# DLQ and filtered offset lists (most of its bytes). Parsing every manifest on every run made a run
# O(history): measured 0.2 s a run after only 300 small ranges. A head is that small part, cached
# in `<state>/heads/<topic>/<partition>.jsonl` under the manifest's file identity (inode, size,
# mtime): a manifest whose file changed, or that has no head yet, is parsed in full again, so an
# unusable one is still found. Full checks of every manifest are reconcile's job.

HEADS_DIR = "heads"


@dataclass(frozen=True)
class ManifestHead:
    """A committed range and the files its manifest lists: what planning, dedup, recovery need."""

    range: Range
    files: tuple[LakeFile, ...]
    path: str | None = None  # the manifest file (a str: a Path per head per scan cost 8 us)


@dataclass
class HeadScan:
    """Heads of the usable manifests, the unusable ones and temp leftovers (see ManifestScan)."""

    heads: list[ManifestHead] = field(default_factory=list)
    problems: list[LedgerProblem] = field(default_factory=list)
    temp_files: list[Path] = field(default_factory=list)


def heads_path(state_dir: Path, topic: str, partition: int) -> Path:
    return Path(state_dir) / HEADS_DIR / topic / f"{partition}.jsonl"


def scan_heads(state_dir: Path, topic: str | None = None, partition: int | None = None) -> HeadScan:
    """Like scan_manifests, but a manifest with a cached head is not parsed again."""
    scan = HeadScan()
    for name, part, directory in partition_dirs(Path(state_dir) / MANIFESTS_DIR, topic, partition):
        found = _partition_heads(Path(state_dir), name, part, directory)
        scan.heads.extend(found.heads)
        scan.problems.extend(found.problems)
        scan.temp_files.extend(found.temp_files)
    scan.heads.sort(key=lambda h: h.range)
    return scan


def _partition_heads(state_dir: Path, topic: str, partition: int, directory: Path) -> HeadScan:
    """One partition's heads: a stat per manifest, a full parse only where the cache has no head."""
    cache = heads_path(state_dir, topic, partition)
    cached = _read_heads(cache)
    scan = HeadScan()
    new_lines: list[bytes] = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if _is_temp(entry.name):
            scan.temp_files.append(Path(entry.path))
            continue
        identity = _file_identity(entry)
        head = cached.get(entry.name)
        if head is not None and head[0] == identity:
            scan.heads.append(ManifestHead(head[1].range, head[1].files, entry.path))
            continue
        path = Path(entry.path)
        try:
            manifest = _load_manifest_file(path, topic, partition)
        except (OSError, ValueError) as exc:
            scan.problems.append(LedgerProblem(path, str(exc)))
            continue
        scan.heads.append(ManifestHead(manifest.range, manifest.files, entry.path))
        new_lines.append(_head_line(entry.name, identity, manifest.files))
    _append_heads(cache, new_lines)
    return scan


def load_heads(
    state_dir: Path, topic: str | None = None, partition: int | None = None
) -> list[ManifestHead]:
    """Heads of the valid manifests sorted by (topic, partition, start); unusable ones skipped."""
    scan = scan_heads(state_dir, topic, partition)
    _log_unusable(scan.problems)
    return scan.heads


def _file_identity(entry: os.DirEntry[str] | Path) -> list[int]:
    info = entry.stat()
    return [info.st_ino, info.st_size, info.st_mtime_ns]


def _head_line(name: str, identity: list[int], files: Sequence[LakeFile]) -> bytes:
    data = {"name": name, "file": identity, "files": [f.to_dict() for f in files]}
    return orjson.dumps(data, option=_JSON_OPTIONS) + b"\n"


# Per process: each heads file parsed so far (its size then, and the heads): appends are parsed
# from where the last read stopped.
_HEADS: dict[Path, tuple[int, dict[str, tuple[list[int], ManifestHead]]]] = {}


def _read_heads(path: Path) -> dict[str, tuple[list[int], ManifestHead]]:
    """Cached heads by manifest file name; a bad line is skipped (its manifest is parsed again)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return {}
    done, heads = _HEADS.get(path, (0, {}))
    if len(raw) < done:  # rewritten or truncated: start over
        done, heads = 0, {}
    heads = dict(heads)
    tail = raw[done : raw.rfind(b"\n") + 1]
    for line in tail.splitlines():
        parsed = _parse_head_line(line)
        if parsed is not None:
            heads[parsed[0]] = parsed[1]
    _HEADS[path] = (done + len(tail), heads)
    return heads


def _parse_head_line(line: bytes) -> tuple[str, tuple[list[int], ManifestHead]] | None:
    try:
        data = orjson.loads(line)
        name = str(data["name"])
        rng = parse_range_id(name.removesuffix(".json")) if name.endswith(".json") else None
        if rng is None:
            raise ValueError(f"not a manifest name: {name!r}")
        files = tuple(LakeFile.from_dict(f) for f in data["files"])
        _check_file_names(rng, files)
        return name, ([int(v) for v in data["file"]], ManifestHead(rng, files))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, lake.LakePathError):
        return None


def _append_heads(path: Path, lines: list[bytes]) -> None:
    """Best effort: one O_APPEND write per line, so concurrent scans never tear each other's."""
    if not lines:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        log.debug("manifest heads not cached (%s)", exc)
        return
    try:
        for line in lines:
            os.write(fd, line)
    except OSError as exc:
        log.debug("manifest heads not cached (%s)", exc)
    finally:
        os.close(fd)


def read_manifest(state_dir: Path, rng: Range) -> Manifest | None:
    """The manifest of exactly this range, or None (absent or unusable)."""
    path = manifest_path(state_dir, rng)
    try:
        return _load_manifest_file(path, rng.topic, rng.partition)
    except (OSError, ValueError):
        return None


def committed_end(state_dir: Path, topic: str, partition: int) -> int | None:
    """End of the contiguous run of committed ranges from the first one; None if nothing committed.

    A gap stops the walk: work resumes at the gap, and reconcile reports the ranges beyond it.
    """
    return _contiguous_end(load_heads(state_dir, topic, partition))


def _contiguous_end(heads: list[ManifestHead]) -> int | None:
    """committed_end of one partition's heads, in range order."""
    end: int | None = None
    for manifest in heads:
        if end is None or manifest.range.start == end:
            end = manifest.range.end
        elif manifest.range.start > end:
            break
    return end


def check_contiguity(state_dir: Path, rng: Range) -> None:
    """Z3: a new range must start at the committed end and overlap nothing committed."""
    manifests = load_heads(state_dir, rng.topic, rng.partition)
    for manifest in manifests:
        if manifest.range == rng:
            raise AlreadyCommittedError(
                f"range {rng.range_id} is already committed ({manifest.path})"
            )
        other = manifest.range
        if rng.start < other.end and other.start < rng.end:
            raise ContiguityError(f"range {rng.range_id} overlaps committed {other.range_id}")
    end = _contiguous_end(manifests)  # one scan of the ledger, not two
    if end is not None and rng.start != end:
        raise ContiguityError(
            f"range {rng.range_id} does not start at the committed end {end} of "
            f"{rng.topic}[{rng.partition}]"
        )


# ------------------------------------------------------------------------------------------ intents


@dataclass(frozen=True)
class Intent:
    """The WAL record of one range attempt.

    `adopted` is True when write_intent returned an earlier attempt's identity: the caller must
    then use this run_id/ingested_at/now, not its own.
    """

    range: Range
    run_id: str
    ingested_at: datetime
    now: datetime
    state: IntentState = STARTED
    files: tuple[StagedFile, ...] = ()
    dlq: tuple[DlqEntry, ...] = ()
    filtered: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    records: int | None = None
    record_offsets_sha256: str | None = None
    adopted: bool = field(default=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": LEDGER_VERSION,
            "kind": "intent",
            "range_id": self.range.range_id,
            "range": self.range.to_dict(),
            "run_id": self.run_id,
            "ingested_at": _iso(self.ingested_at),
            "now": _iso(self.now),
            "state": self.state,
            "files": [f.to_dict() for f in self.files],
            "dlq": [d.to_dict() for d in self.dlq],
            "filtered": {reason: list(offs) for reason, offs in sorted(self.filtered.items())},
            "records": self.records,
            "record_offsets_sha256": self.record_offsets_sha256,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Intent:
        _check_version(data, "intent")
        if data["state"] not in (STARTED, PREPARED):
            raise ValueError(f"unknown intent state {data['state']!r}")
        rng = Range.from_dict(data["range"])
        files = tuple(StagedFile.from_dict(f) for f in data["files"])
        _check_file_names(rng, files)
        records = data.get("records")
        if data["state"] == PREPARED and type(records) is not int:
            raise ValueError("prepared intent without a record count")
        return cls(
            range=rng,
            run_id=str(data["run_id"]),
            ingested_at=_parse_time(data["ingested_at"]),
            now=_parse_time(data["now"]),
            state=data["state"],
            files=files,
            dlq=tuple(DlqEntry.from_dict(d) for d in data["dlq"]),
            filtered=_parse_filtered(data["filtered"]),
            records=records,
            record_offsets_sha256=data.get("record_offsets_sha256"),
        )


def _load_intent_file(path: Path) -> Intent:
    data = read_json(path)
    if data is None:
        raise ValueError("vanished while reading")
    try:
        intent = Intent.from_dict(data)
    except (KeyError, TypeError, ValueError, lake.LakePathError) as exc:
        raise ValueError(f"invalid intent: {exc}") from None
    if path.name != f"{intent.range.range_id}.json":
        raise ValueError("intent stored under the wrong name")
    return intent


def list_intents(
    state_dir: Path, topic: str, partition: int
) -> tuple[list[Intent], list[LedgerProblem]]:
    """All readable intents of a partition, plus the unreadable ones (torn: treat as absent)."""
    directory = intent_dir(state_dir, topic, partition)
    intents: list[Intent] = []
    problems: list[LedgerProblem] = []
    if not directory.is_dir():
        return intents, problems
    for path in sorted(directory.iterdir()):
        try:
            intent = _load_intent_file(path)
            if (intent.range.topic, intent.range.partition) != (topic, partition):
                raise ValueError("intent stored under the wrong topic/partition")
            intents.append(intent)
        except (OSError, ValueError) as exc:
            problems.append(LedgerProblem(path, str(exc)))
    return intents, problems


def read_intent(state_dir: Path, rng: Range) -> Intent | None:
    """The intent of exactly this range, or None when absent or torn."""
    try:
        return _load_intent_file(intent_path(state_dir, rng))
    except (OSError, ValueError):
        return None


def write_intent(
    state_dir: Path, rng: Range, run_id: str, ingested_at: datetime, now: datetime
) -> Intent:
    """Records "range started" before any drain. Requires the partition lock and contiguity (Z3).

    If an intent for this exact range survives (a rolled-back attempt), it is adopted: the returned
    Intent keeps the first attempt's run_id, ingested_at and now, so the re-run writes
    byte-identical files and re-sends identical DLQ verdicts. A "started" intent of another range
    is stale and replaced; a "prepared" one means recovery did not run, which is an error.
    """
    assert_locked(state_dir, rng.topic, rng.partition)
    check_contiguity(state_dir, rng)
    intents, _ = list_intents(state_dir, rng.topic, rng.partition)
    for other in intents:
        if other.state == PREPARED:
            raise LedgerError(f"prepared intent {other.range.range_id} pending: run recovery first")
        if other.range == rng:
            log.info("adopting the identity of an earlier attempt at %s", rng.range_id)
            return replace(other, adopted=True)
        clear_intent(state_dir, other.range)  # a stale, rolled-back attempt at another range
        lake.remove_staging(state_dir, other.range)
    intent = Intent(rng, run_id, _checked(ingested_at), _checked(now))
    atomic_write_json(intent_path(state_dir, rng), intent.to_dict())
    return intent


def _checked(moment: datetime) -> datetime:
    _iso(moment)
    return moment.astimezone(UTC)


def clear_intent(state_dir: Path, rng: Range) -> bool:
    """Removes a range's intent (after its manifest, or when stale); True if there was one."""
    path = intent_path(state_dir, rng)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    lake.fsync_dir(path.parent)
    return True


def reset_intent(state_dir: Path, intent: Intent) -> Intent:
    """Roll-back: back to "started" with no files, keeping the identity for an identical re-run."""
    started = Intent(intent.range, intent.run_id, intent.ingested_at, intent.now)
    atomic_write_json(intent_path(state_dir, intent.range), started.to_dict())
    return started


# ------------------------------------------------------------------------------------- accounting


def _file_offsets(staged: StagedFile) -> pl.Series:
    """The range offsets of a staged file, read back from disk (what readers will see).

    lake.read_range_offsets without its final to_list(): the column stays in Arrow memory, so the
    fast check creates no Python int per row. `.to_list()` of the result is what that returns.
    One open serves both the schema and the column read.
    """
    with pq.ParquetFile(staged.staging_path) as parquet:
        names = set(parquet.schema_arrow.names)
        wanted = [c for c in (lake.OFFSET_COLUMN, lake.DLQ_OFFSET_COLUMN) if c in names]
        frame = pl.DataFrame(parquet.read(columns=wanted))
    column = lake.range_columns(frame)[0]
    if column not in frame.columns:
        return pl.Series(column, [], dtype=pl.Int64)
    return frame.get_column(column)


def _disjoint_union(groups: Mapping[str, Sequence[int]], rng: Range) -> set[int]:
    """Union of offset groups; refuses duplicates within or across groups, and strays."""
    seen: dict[int, str] = {}
    for where, offsets in groups.items():
        for offset in offsets:
            if not rng.start <= offset < rng.end:
                raise AccountingError(f"{where} offset {offset} outside {rng.range_id}")
            if offset in seen:
                raise AccountingError(f"offset {offset} counted twice ({seen[offset]} and {where})")
            seen[offset] = where
    return set(seen)


OffsetGroup = Sequence[int] | pl.Series


def _offset_groups(
    files: Sequence[StagedFile], dlq: Sequence[DlqEntry], filtered: Mapping[str, Iterable[int]]
) -> dict[str, OffsetGroup]:
    """Where the range's offsets went, by place: DLQ, each file, each filter reason.

    Built in this order on both paths, so a bad file or filter reason fails as it always did.
    """
    groups: dict[str, OffsetGroup] = {"dlq": [d.source_offset for d in dlq]}
    for item in files:
        if item.table == lake.TABLE_EVENTS or item.min_offset is not None:
            groups[f"file {item.path}"] = _file_offsets(item)
    for reason, offsets in filtered.items():
        if not _REASON_RE.fullmatch(reason):
            raise AccountingError(f"bad filter reason {reason!r}")
        groups[f"filtered:{reason}"] = list(offsets)
    return groups


def _distinct_in_range(series: pl.Series | None, rng: Range) -> pl.Series | None:
    """`series` sorted if its offsets are distinct and inside the range, else None."""
    if series is None:
        return None
    ordered = series.sort()
    if ordered.len() and (ordered[0] < rng.start or ordered[-1] >= rng.end):
        return None
    return None if (ordered.diff() <= 0).any() else ordered


def _covers_exactly(expected: pl.Series, groups: Iterable[OffsetGroup]) -> bool:
    """True when the groups together hold every expected offset exactly once, and nothing else.

    `expected` is sorted, distinct and inside the range, so equality with the sorted concatenation
    proves all the per-offset path checks: groups in range, disjoint, and their union = consumed.
    """
    parts: list[pl.Series] = []
    for group in groups:
        part = _int64(group)
        if part is None:
            return False
        parts.append(part)
    if sum(part.len() for part in parts) != expected.len():
        return False
    return pl.concat(parts).sort().equals(expected)


def _account_exact(
    rng: Range, groups: Mapping[str, OffsetGroup], consumed: list[int]
) -> tuple[int, str]:
    """The per-offset proof: slow, but its errors name the first offending offset and its place."""
    consumed_set = _disjoint_union({"consumed": consumed}, rng)
    lists = {where: g.to_list() if isinstance(g, pl.Series) else g for where, g in groups.items()}
    accounted = _disjoint_union(lists, rng)
    if accounted != consumed_set:
        lost = sorted(consumed_set - accounted)[:10]
        extra = sorted(accounted - consumed_set)[:10]
        raise AccountingError(f"{rng.range_id}: unaccounted offsets {lost}, never consumed {extra}")
    return len(consumed), offsets_digest(consumed)


def account(
    rng: Range,
    files: Sequence[StagedFile],
    dlq: Sequence[DlqEntry],
    filtered: Mapping[str, Iterable[int]],
    consumed_offsets: Iterable[int],
) -> tuple[int, str]:
    """Proves consumed = lake rows ⊎ DLQ ⊎ filtered per offset; returns (records, sha256).

    A vectorised check proves the normal case in milliseconds on 200k offsets. Anything it cannot
    prove (a stray, a double, a gap, an odd type) goes through the exact per-offset path, so an
    error names the same offset and place as ever; a bad consumed list fails before files are read.
    """
    consumed = list(consumed_offsets)
    expected = _distinct_in_range(_plain_ints(consumed), rng)
    if expected is None:
        _disjoint_union({"consumed": consumed}, rng)  # fails here, before any file is read
    groups = _offset_groups(files, dlq, filtered)
    if expected is not None and _covers_exactly(expected, groups.values()):
        return len(consumed), _sorted_digest(expected)
    return _account_exact(rng, groups, consumed)


def prepare_intent(
    state_dir: Path,
    intent: Intent,
    files: Sequence[StagedFile],
    dlq: Sequence[DlqEntry],
    filtered: Mapping[str, Iterable[int]],
    consumed_offsets: Iterable[int],
) -> Intent:
    """After staging and confirmed DLQ delivery: check the accounting, mark the intent "prepared".

    The prepared intent holds everything recovery needs to roll forward: files, DLQ entries and
    filtered offsets.
    """
    assert_locked(state_dir, intent.range.topic, intent.range.partition)
    filtered_lists = {reason: sorted(offsets) for reason, offsets in filtered.items()}
    records, digest = account(intent.range, files, dlq, filtered_lists, consumed_offsets)
    prepared = replace(
        intent,
        state=PREPARED,
        files=tuple(sorted(files, key=lambda f: f.path)),
        dlq=tuple(sorted(dlq)),
        filtered={reason: tuple(offs) for reason, offs in filtered_lists.items() if offs},
        records=records,
        record_offsets_sha256=digest,
        adopted=False,
    )
    atomic_write_json(intent_path(state_dir, intent.range), prepared.to_dict())
    return prepared


# ------------------------------------------------------------------------------------------- commit


def manifest_from_intent(intent: Intent, committed_at: datetime) -> Manifest:
    """The manifest a prepared intent commits to."""
    if intent.state != PREPARED or intent.records is None or intent.record_offsets_sha256 is None:
        raise LedgerError(f"intent {intent.range.range_id} is not prepared")
    return Manifest(
        range=intent.range,
        run_id=intent.run_id,
        ingested_at=intent.ingested_at,
        reference_time=intent.now,
        committed_at=_checked(committed_at),
        records=intent.records,
        files=tuple(f.lake_file() for f in intent.files),
        dlq=intent.dlq,
        filtered=intent.filtered,
        record_offsets_sha256=intent.record_offsets_sha256,
    )


def _same_commit(a: Manifest, b: Manifest) -> bool:
    """Two manifests record the same commit if everything but the commit time agrees."""
    return replace(a, committed_at=b.committed_at, counts={}, path=None) == replace(
        b, counts={}, path=None
    )


def commit_manifest(
    state_dir: Path,
    lake_dir: Path,
    intent: Intent,
    committed_at: datetime,
    ids: Mapping[str, pa.Table] | None = None,
) -> Manifest:
    """The commit point: writes the range's manifest atomically and no-clobber.

    `ids` (lake path -> event_date and event_id of the rows written there) saves reading the
    files back for the committed-ids index (id_index.append_files).

    K8 fires between the fsynced temp file and its link. Every listed file must already be in the
    lake. An existing manifest for the same commit is accepted (idempotent); a different one raises
    LedgerError.
    """
    rng = intent.range
    assert_locked(state_dir, rng.topic, rng.partition)
    manifest = manifest_from_intent(intent, committed_at)
    for item in manifest.files:
        target = lake.resolve(lake_dir, item.path)
        if not target.is_file() or target.stat().st_size != item.size:
            raise LedgerError(f"refusing to commit {rng.range_id}: {item.path} is not published")
    path = manifest_path(state_dir, rng)
    try:
        atomic_write_json(path, manifest.to_dict(), replace=False, fault="K8")
        _append_heads(
            heads_path(state_dir, rng.topic, rng.partition),
            [_head_line(path.name, _file_identity(path), manifest.files)],
        )
        id_index.append_files(
            state_dir, lake_dir, rng.topic, rng.partition, manifest.files, known=ids
        )
    except FileExistsError:
        existing = read_manifest(state_dir, rng)
        if existing is None or not _same_commit(existing, manifest):
            raise LedgerError(
                f"a different or unreadable manifest already exists at {path}"
            ) from None
        return existing
    return replace(manifest, counts=manifest.computed_counts(), path=path)


def finish_range(state_dir: Path, rng: Range) -> None:
    """After the manifest: drop the intent, then the staging links (the lake keeps its own)."""
    assert_locked(state_dir, rng.topic, rng.partition)
    clear_intent(state_dir, rng)
    lake.remove_staging(state_dir, rng)


# ---------------------------------------------------------------------------------- committed ids


def committed_ids(
    lake_dir: Path,
    days: Iterable[date],
    *,
    state_dir: Path,
    topic: str | None = None,
    partition: int | None = None,
    table: str = lake.TABLE_EVENTS,
    among: pl.Series | None = None,
) -> pl.DataFrame:
    """Distinct (event_date, event_id) committed on the given days, for cross-range dedup.

    Reads only manifest-listed files, so strays and in-flight files never count: their ids come
    from the committed-ids index when it holds them (id_index.py), else from the file itself.
    With `among` (a batch's ids), only the pairs whose id is among them are kept, file by file:
    a batch's lookup then holds its matches, not the day's millions of ids.
    """
    wanted = {lake.validate_day(d) for d in days}
    by_day: dict[date, dict[str, int]] = {}
    for manifest in load_heads(state_dir, topic, partition):
        for item in manifest.files:
            if item.table == table and item.day in wanted:
                by_day.setdefault(item.day, {})[item.path] = item.rows
    schema = {lake.DATE_COLUMN: pl.Date, "event_id": pl.String}
    tables: list[pa.Table] = []
    for day, files in sorted(by_day.items()):
        indexed, covered = id_index.read_indexed(state_dir, table, day, files, among)
        if indexed is not None:
            tables.append(indexed)
        for f in sorted(files):
            if f not in covered:
                tables.append(id_index.keep_among(_read_ids(lake.resolve(lake_dir, f)), among))
    if not tables:
        return pl.DataFrame(schema=schema)
    frame = pl.concat([pl.DataFrame(t).cast(schema) for t in tables])  # type: ignore[arg-type]
    return frame.unique().sort(list(schema))


def _read_ids(path: Path) -> pa.Table:
    """A committed file's (event_date, event_id); LedgerError when it is gone or unreadable.

    A committed file that recovery quarantined (truncated, replaced) cannot vouch for its ids:
    deduplicating without it could let a duplicate through, so the run stops with the file's
    name instead of a traceback.
    """
    try:
        return lake.read_columns(path, [lake.DATE_COLUMN, "event_id"])
    except (OSError, pa.ArrowException) as exc:
        raise LedgerError(
            f"committed file {path} is missing or unreadable ({type(exc).__name__}), so events "
            "of its day cannot be deduplicated; `pipeline-project reconcile` lists it, see "
            "<state>/quarantine; restore it before ingesting more events of that day"
        ) from None
