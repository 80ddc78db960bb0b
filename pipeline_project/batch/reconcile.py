"""`pipeline-project reconcile`: proves the lake against the ledger (invariants I1-I4).

Read-only. Per partition: committed ranges contiguous (I4); every listed file present with the
manifest's size, sha256, Parquet row count and offset bounds, page CRCs verified on read (I3);
nothing under the lake root that no manifest lists (I2); and every consumed offset in exactly one
of lake rows, DLQ entries or filtered offsets, within its range, matching the count and offsets
digest recorded when it was drained (I1). Duplicates are caught here; readers never notice them.

Reprocessing commits ranges of the DLQ topic the same way; rows it recovered carry their source
coordinates, which the source range already counts as DLQ. So a source offset may be in the DLQ
*and* in the lake, exactly when the resolution ledger says it was recovered, and then exactly once.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pyarrow.parquet as pq

from pipeline_project.batch import lake, ledger
from pipeline_project.batch.lake import LakeFile
from pipeline_project.batch.ledger import Manifest
from pipeline_project.dlq import resolution
from pipeline_project.errors import LedgerError
from pipeline_project.settings import Settings

_SAMPLE = 5
_LINEAGE = (lake.TOPIC_COLUMN, lake.PARTITION_COLUMN, lake.DATE_COLUMN)
_RECOVERY = (lake.DLQ_PARTITION_COLUMN, lake.DLQ_OFFSET_COLUMN)
Coords = tuple[str, int, int]


@dataclass(frozen=True)
class Problem:
    """One violated invariant, with a machine code and a sentence that names the problem."""

    code: str
    message: str
    topic: str | None = None
    partition: int | None = None
    path: str | None = None

    def __str__(self) -> str:
        where = f"{self.topic}[{self.partition}] " if self.topic is not None else ""
        return f"[{self.code}] {where}{self.message}"


@dataclass
class PartitionSummary:
    """Totals of one topic-partition's committed ranges."""

    topic: str
    partition: int
    ranges: int = 0
    first_offset: int | None = None
    end_offset: int | None = None
    records: int = 0
    written: int = 0
    dlq: int = 0
    filtered: dict[str, int] = field(default_factory=dict)
    files: int = 0
    problems: int = 0

    @property
    def ok(self) -> bool:
        return self.problems == 0


@dataclass
class DaySummary:
    """Totals of one table-day: what the manifests list and what the Parquet footers say."""

    table: str
    day: date
    files: int = 0
    rows: int = 0
    rows_in_files: int = 0
    partitions: set[tuple[str, int]] = field(default_factory=set)


@dataclass
class ReconcileReport:
    """Everything reconcile checked; `ok` only when no invariant is violated."""

    lake_dir: Path
    state_dir: Path
    partitions: list[PartitionSummary] = field(default_factory=list)
    days: list[DaySummary] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    unchecked_tables: list[str] = field(default_factory=list)
    dlq: dict[str, int] = field(default_factory=dict)  # failed source records by resolution

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _FileFacts:
    """What one file really holds (offsets None when it could not be read)."""

    offsets: list[int] | None = None
    rows: int | None = None
    lineage: dict[str, set[Any]] = field(default_factory=dict)
    recovered: list[tuple[Coords, tuple[int, int]]] = field(default_factory=list)


class _Checker:
    """Collects problems while walking the ledger and the lake."""

    def __init__(self, lake_dir: Path, state_dir: Path) -> None:
        self.report = ReconcileReport(Path(lake_dir), Path(state_dir))
        self.summaries: dict[tuple[str, int], PartitionSummary] = {}
        self.days: dict[tuple[str, date], DaySummary] = {}
        self.recovered: dict[Coords, list[tuple[tuple[int, int], str]]] = defaultdict(list)

    def problem(
        self,
        code: str,
        message: str,
        topic: str | None = None,
        partition: int | None = None,
        path: str | None = None,
    ) -> None:
        self.report.problems.append(Problem(code, message, topic, partition, path))
        if topic is not None and partition is not None:
            self.summary(topic, partition).problems += 1

    def summary(self, topic: str, partition: int) -> PartitionSummary:
        return self.summaries.setdefault((topic, partition), PartitionSummary(topic, partition))


def reconcile(settings: Settings) -> ReconcileReport:
    """Checks the lake under `settings.lake_dir` against the ledger in `settings.state_dir`."""
    return reconcile_dirs(settings.lake_dir, settings.state_dir)


def reconcile_dirs(lake_dir: Path, state_dir: Path) -> ReconcileReport:
    """`reconcile` on explicit directories (tests, tools)."""
    checker = _Checker(lake_dir, state_dir)
    scan = ledger.scan_manifests(state_dir)
    _check_ledger_files(checker, scan, state_dir)
    by_partition: dict[tuple[str, int], list[Manifest]] = defaultdict(list)
    for manifest in scan.manifests:
        by_partition[(manifest.range.topic, manifest.range.partition)].append(manifest)
    for (topic, partition), manifests in sorted(by_partition.items()):
        _check_contiguity(checker, topic, partition, manifests)
        for manifest in manifests:
            _check_manifest(checker, Path(lake_dir), manifest)
    listed = {f.path for m in scan.manifests for f in m.files}
    scope = {lake.TABLE_EVENTS} | {f.table for m in scan.manifests for f in m.files}
    _check_lake_tree(checker, Path(lake_dir), listed, scope)
    _check_dlq_resolutions(checker, scan.manifests, Path(state_dir))
    checker.report.partitions = [checker.summaries[k] for k in sorted(checker.summaries)]
    checker.report.days = [checker.days[k] for k in sorted(checker.days)]
    return checker.report


# ------------------------------------------------------------------------------------------ ledger


def _check_ledger_files(checker: _Checker, scan: ledger.ManifestScan, state_dir: Path) -> None:
    """Unusable manifests, interrupted manifest writes and unfinished intents all need recovery."""
    for bad in scan.problems:
        checker.problem(
            "manifest_unusable",
            f"manifest {bad.path} is unusable: {bad.reason}",
            path=str(bad.path),
        )
    for tmp in scan.temp_files:
        checker.problem(
            "manifest_uncommitted", f"interrupted manifest write left {tmp}", path=str(tmp)
        )
    for topic, partition, _ in ledger.partition_dirs(Path(state_dir) / ledger.INTENTS_DIR):
        intents, problems = ledger.list_intents(state_dir, topic, partition)
        for intent in intents:
            checker.problem(
                "unfinished_range",
                f"range {intent.range.range_id} has a {intent.state} "
                "intent: a run is in flight or crashed (its next run recovers it)",
                topic,
                partition,
            )
        for bad in problems:
            checker.problem("intent_unusable", str(bad), topic, partition, str(bad.path))


def _check_contiguity(
    checker: _Checker, topic: str, partition: int, manifests: Sequence[Manifest]
) -> None:
    """I4: sorted committed ranges must touch end to start, with no gap and no overlap."""
    ordered = sorted(manifests, key=lambda m: m.range)
    summary = checker.summary(topic, partition)
    summary.ranges = len(ordered)
    summary.first_offset = ordered[0].range.start
    summary.end_offset = max(m.range.end for m in ordered)
    for before, after in zip(ordered, ordered[1:], strict=False):
        if after.range.start > before.range.end:
            checker.problem(
                "gap",
                f"offsets [{before.range.end}, {after.range.start}) are in no committed "
                f"range (between {before.range.range_id} and {after.range.range_id})",
                topic,
                partition,
            )
        elif after.range.start < before.range.end:
            checker.problem(
                "overlap",
                f"ranges {before.range.range_id} and {after.range.range_id} overlap",
                topic,
                partition,
            )


# ------------------------------------------------------------------------------------------- files


def _check_manifest(checker: _Checker, lake_dir: Path, manifest: Manifest) -> None:
    rng = manifest.range
    summary = checker.summary(rng.topic, rng.partition)
    summary.records += manifest.records
    summary.written += manifest.written
    summary.dlq += len(manifest.dlq)
    summary.files += len(manifest.files)
    for reason, offsets in manifest.filtered.items():
        summary.filtered[reason] = summary.filtered.get(reason, 0) + len(offsets)
    if dict(manifest.counts) != manifest.computed_counts():
        checker.problem(
            "count_mismatch",
            f"{rng.range_id}: counts {dict(manifest.counts)} disagree with "
            f"its lists {manifest.computed_counts()}",
            rng.topic,
            rng.partition,
        )
    facts = {f.path: _check_file(checker, lake_dir, manifest, f) for f in manifest.files}
    if all(fact.offsets is not None for fact in facts.values()):
        _check_accounting(checker, manifest, {p: fact.offsets or [] for p, fact in facts.items()})


def _check_file(
    checker: _Checker, lake_dir: Path, manifest: Manifest, item: LakeFile
) -> _FileFacts:
    """I3 for one file: present, same size and sha256, readable Parquet with the listed rows."""
    rng = manifest.range
    day = checker.days.setdefault((item.table, item.day), DaySummary(item.table, item.day))
    day.files += 1
    day.rows += item.rows
    day.partitions.add((rng.topic, rng.partition))

    def fail(code: str, message: str) -> _FileFacts:
        checker.problem(
            code,
            f"{item.path}: {message} (range {rng.range_id})",
            rng.topic,
            rng.partition,
            item.path,
        )
        return _FileFacts()

    try:
        path = lake.resolve(lake_dir, item.path)
    except lake.LakePathError as exc:
        return fail("path_escapes_root", str(exc))
    if not path.is_file() or path.is_symlink():
        return fail("file_missing", "committed file is missing")
    size = path.stat().st_size
    if size != item.size:
        fail("size_mismatch", f"{size} bytes, manifest says {item.size} (truncated or replaced)")
    elif lake.sha256_file(path) != item.sha256:
        fail(
            "sha256_mismatch", "content differs from the manifest's sha256 (corrupted or replaced)"
        )
    try:
        facts = _read_facts(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the finding itself
        return fail(
            "parquet_unreadable", f"not a readable Parquet file: {type(exc).__name__}: {exc}"
        )
    day.rows_in_files += facts.rows or 0
    if facts.rows != item.rows:
        fail("row_count_mismatch", f"{facts.rows} rows, manifest says {item.rows}")
    _check_offset_bounds(checker, manifest, item, facts.offsets or [])
    for source, dlq in facts.recovered:
        checker.recovered[source].append((dlq, item.path))
    _check_lineage(checker, manifest, item, facts)
    return facts


def _read_facts(path: Path) -> _FileFacts:
    """Footer row count, offsets and lineage values, with page CRCs verified (catches bit flips).

    For rows recovered from the DLQ the range offsets are their DLQ offsets, and their source
    coordinates are collected for the resolution check.
    """
    parquet = pq.ParquetFile(path, page_checksum_verification=True)
    names = set(parquet.schema_arrow.names)
    wanted = [c for c in (lake.OFFSET_COLUMN, *_LINEAGE, *_RECOVERY) if c in names]
    frame = pl.DataFrame(parquet.read(columns=wanted))
    offset_column, partition_column = lake.range_columns(frame)
    offsets = frame.get_column(offset_column).to_list() if offset_column in names else []
    facts = _FileFacts(offsets=offsets, rows=parquet.metadata.num_rows)
    checked = [partition_column, lake.DATE_COLUMN]
    if offset_column == lake.OFFSET_COLUMN:
        checked.append(lake.TOPIC_COLUMN)
    else:
        source = frame.select(lake.TOPIC_COLUMN, lake.PARTITION_COLUMN, lake.OFFSET_COLUMN).rows()
        dlq = frame.select(*_RECOVERY).rows()
        facts.recovered = list(zip(source, dlq, strict=True))
    facts.lineage = {c: set(frame.get_column(c).to_list()) for c in checked if c in names}
    return facts


def _check_lineage(
    checker: _Checker, manifest: Manifest, item: LakeFile, facts: _FileFacts
) -> None:
    """Rows must carry the topic, partition and day of the file they are in."""
    rng = manifest.range
    expected: dict[str, set[Any]] = {
        lake.TOPIC_COLUMN: {rng.topic},
        lake.PARTITION_COLUMN: {rng.partition},
        lake.DATE_COLUMN: {item.day},
        lake.DLQ_PARTITION_COLUMN: {rng.partition},
    }
    for column, values in facts.lineage.items():
        if values and values != expected[column]:
            checker.problem(
                "lineage_mismatch",
                f"{item.path}: {column} values {sorted(str(v) for v in values)[:3]}"
                f", expected {sorted(str(v) for v in expected[column])}",
                rng.topic,
                rng.partition,
                item.path,
            )


def _check_offset_bounds(
    checker: _Checker, manifest: Manifest, item: LakeFile, offsets: list[int]
) -> None:
    """Secor-style per-file check: offsets inside the range and equal to the manifest's min/max."""
    if not offsets:
        return
    rng = manifest.range
    low, high = min(offsets), max(offsets)
    if (low, high) != (item.min_offset, item.max_offset):
        checker.problem(
            "offset_bounds_mismatch",
            f"{item.path}: offsets {low}..{high}, manifest says "
            f"{item.min_offset}..{item.max_offset}",
            rng.topic,
            rng.partition,
            item.path,
        )


def _check_accounting(
    checker: _Checker, manifest: Manifest, file_offsets: dict[str, list[int]]
) -> None:
    """I1: lake rows ⊎ DLQ ⊎ filtered, inside [start, end), count = records, same digest."""
    rng = manifest.range
    groups: dict[str, Iterable[int]] = {f"file {p}": offs for p, offs in file_offsets.items()}
    groups["dlq"] = [d.source_offset for d in manifest.dlq]
    groups.update({f"filtered:{r}": offs for r, offs in manifest.filtered.items()})
    seen: dict[int, str] = {}
    doubles: list[str] = []
    outside: list[int] = []
    for where, offsets in groups.items():
        for offset in offsets:
            if not rng.start <= offset < rng.end:
                outside.append(offset)
            if offset in seen:
                doubles.append(f"{offset} ({seen[offset]} and {where})")
            seen.setdefault(offset, where)
    topic, partition = rng.topic, rng.partition
    if outside:
        checker.problem(
            "offset_out_of_range",
            f"{rng.range_id}: offsets outside [{rng.start}, {rng.end}): "
            f"{sorted(outside)[:_SAMPLE]}",
            topic,
            partition,
        )
    if doubles:
        checker.problem(
            "offset_double_counted",
            f"{rng.range_id}: {len(doubles)} offsets counted more than "
            f"once: {'; '.join(doubles[:_SAMPLE])}",
            topic,
            partition,
        )
    if len(seen) != manifest.records:
        checker.problem(
            "record_count_mismatch",
            f"{rng.range_id}: {len(seen)} offsets accounted for, "
            f"{manifest.records} records consumed",
            topic,
            partition,
        )
    elif ledger.offsets_digest(seen) != manifest.record_offsets_sha256:
        checker.problem(
            "offsets_hash_mismatch",
            f"{rng.range_id}: accounted offsets are not the set that was consumed",
            topic,
            partition,
        )


# --------------------------------------------------------------------------------------------- dlq


def _check_dlq_resolutions(checker: _Checker, manifests: Sequence[Manifest], state: Path) -> None:
    """I1 across reprocessing: a source offset counted as DLQ may also be in the lake, exactly once.

    Every recovered row must name a source offset its committed range sent to the DLQ, no source
    offset may be recovered twice, and each must match the resolution ledger's `recovered` entry
    (and each such entry a row). Parked and filtered records are accounted for by the ledger.
    """
    try:
        book = resolution.load_book(state)
    except LedgerError as exc:
        checker.problem("dlq_ledger_unusable", str(exc))
        return
    sent = {
        (m.range.topic, m.range.partition, d.source_offset)
        for m in manifests
        if m.range.topic not in book.dlq_topics
        for d in m.dlq
    }
    for source, rows in sorted(checker.recovered.items()):
        _check_recovered(checker, book, sent, source, rows)
    for entry in book.latest.values():
        topic, partition, offset = entry.source
        if entry.source not in sent:
            checker.problem(
                "dlq_resolution_unknown",
                f"the resolution ledger has {entry.outcome} offset {offset}, which no committed "
                "range sent to the DLQ",
                topic,
                partition,
            )
        elif entry.outcome == resolution.RECOVERED and entry.source not in checker.recovered:
            checker.problem(
                "dlq_row_missing",
                f"offset {offset} is recovered per the resolution ledger, but no lake row has it",
                topic,
                partition,
            )
    outcomes = Counter(book.latest[s].outcome for s in sent if s in book.latest)
    terminal = sum(outcomes[o] for o in resolution.TERMINAL)
    checker.report.dlq = {
        "failed": len(sent),
        **{o: outcomes[o] for o in sorted(resolution.TERMINAL)},
        "failing": len(sent) - terminal,
    }


def _check_recovered(
    checker: _Checker,
    book: resolution.Book,
    sent: set[Coords],
    source: Coords,
    rows: list[tuple[tuple[int, int], str]],
) -> None:
    topic, partition, offset = source
    where = ", ".join(f"{path} (DLQ {p}@{o})" for (p, o), path in rows)
    if len(rows) > 1:
        checker.problem(
            "dlq_recovered_twice",
            f"offset {offset} is in the lake {len(rows)} times: {where}",
            topic,
            partition,
        )
    if source not in sent:
        checker.problem(
            "dlq_recovered_not_owed",
            f"offset {offset} was recovered from the DLQ ({where}) but its range did not send it "
            "there: it may be in the lake twice",
            topic,
            partition,
        )
    entry = book.get(source)
    handled = {dlq for dlq, _ in rows}
    if entry is None or entry.outcome != resolution.RECOVERED or entry.dlq not in handled:
        checker.problem(
            "dlq_resolution_missing",
            f"offset {offset} was recovered ({where}) but the resolution ledger says "
            f"{entry.outcome if entry else 'nothing'}",
            topic,
            partition,
        )


# -------------------------------------------------------------------------------------------- tree


def _check_lake_tree(checker: _Checker, root: Path, listed: set[str], scope: set[str]) -> None:
    """I2: under the root only `<table>/date=YYYY-MM-DD/<listed file>`; nothing else."""
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        valid_table = entry.is_dir() and not entry.is_symlink() and _is_table(entry.name)
        if not valid_table:
            _stray(checker, entry, root, "not a lake table directory")
        elif entry.name not in scope:
            checker.report.unchecked_tables.append(entry.name)
        else:
            _check_table_dir(checker, root, entry, listed)


def _is_table(name: str) -> bool:
    try:
        lake.validate_table(name)
    except lake.LakePathError:
        return False
    return True


def _check_table_dir(checker: _Checker, root: Path, table_dir: Path, listed: set[str]) -> None:
    for day_dir in sorted(table_dir.iterdir()):
        if not day_dir.is_dir() or day_dir.is_symlink() or lake.parse_day_dir(day_dir.name) is None:
            _stray(checker, day_dir, root, "not a date=YYYY-MM-DD partition directory")
            continue
        for item in sorted(day_dir.iterdir()):
            rel = item.relative_to(root).as_posix()
            if not item.is_file() or item.is_symlink():
                _stray(checker, item, root, "not a regular file")
            elif rel not in listed:
                name = lake.parse_relative_path(rel)
                why = "no manifest lists it" if name else "temp, hidden or foreign file"
                _stray(
                    checker,
                    item,
                    root,
                    why,
                    name.topic if name else None,
                    name.partition if name else None,
                )


def _stray(
    checker: _Checker,
    path: Path,
    root: Path,
    why: str,
    topic: str | None = None,
    partition: int | None = None,
) -> None:
    rel = path.relative_to(root).as_posix()
    kind = "stray_dir" if path.is_dir() and not path.is_symlink() else "stray_file"
    checker.problem(kind, f"{rel} under the lake root: {why}", topic, partition, rel)


# ------------------------------------------------------------------------------------------ output


def to_json(report: ReconcileReport) -> dict[str, Any]:
    """A JSON-ready dict (`reconcile --json`)."""
    partitions = [{**asdict(p), "ok": p.ok} for p in report.partitions]
    days = [
        {
            "table": d.table,
            "day": d.day.isoformat(),
            "files": d.files,
            "rows": d.rows,
            "rows_in_files": d.rows_in_files,
            "partitions": len(d.partitions),
        }
        for d in report.days
    ]
    return {
        "ok": report.ok,
        "lake_dir": str(report.lake_dir),
        "state_dir": str(report.state_dir),
        "partitions": partitions,
        "days": days,
        "problems": [asdict(p) for p in report.problems],
        "unchecked_tables": report.unchecked_tables,
        "dlq": report.dlq,
    }


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]


def render_table(report: ReconcileReport) -> str:
    """Human-readable report: partitions, days, problems, and a last line with the verdict."""
    lines = [f"lake {report.lake_dir}  ledger {report.state_dir}", "", "Partitions"]
    lines += _table(
        (
            "topic",
            "partition",
            "ranges",
            "offsets",
            "records",
            "written",
            "dlq",
            "filtered",
            "files",
            "status",
        ),
        [
            (
                p.topic,
                p.partition,
                p.ranges,
                f"[{p.first_offset}, {p.end_offset})",
                p.records,
                p.written,
                p.dlq,
                sum(p.filtered.values()),
                p.files,
                "ok" if p.ok else f"{p.problems} problems",
            )
            for p in report.partitions
        ],
    )
    lines += ["", "Days"]
    lines += _table(
        ("table", "day", "files", "rows", "partitions"),
        [(d.table, d.day.isoformat(), d.files, d.rows, len(d.partitions)) for d in report.days],
    )
    if report.unchecked_tables:
        lines += ["", f"Not checked (no ledger): {', '.join(report.unchecked_tables)}"]
    if report.dlq.get("failed"):
        counts = ", ".join(f"{n} {name}" for name, n in report.dlq.items() if name != "failed")
        lines += ["", f"DLQ: {report.dlq['failed']} failed source records: {counts}"]
    if report.problems:
        lines += ["", f"Problems ({len(report.problems)})"] + [f"  {p}" for p in report.problems]
    verdict = (
        "OK: every consumed offset is accounted for exactly once"
        if report.ok
        else (f"FAILED: {len(report.problems)} problems")
    )
    return "\n".join([*lines, "", verdict])


def main(settings: Settings, as_json: bool) -> int:
    """The CLI body: prints the report (table or JSON) and returns 0 only if the lake reconciles."""
    report = reconcile(settings)
    if as_json:
        sys.stdout.write(orjson.dumps(to_json(report), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render_table(report) + "\n")
    return 0 if report.ok else 1
