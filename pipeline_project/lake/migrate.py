"""`pipeline-project lake migrate`: a lake of the earlier layout becomes the Delta table, in place.

The earlier layout kept committed Parquet files under `<data>/output/events/date=YYYY-MM-DD/` and
one JSON manifest per committed range under `<data>/state/manifests/<topic>/<partition>/`. Only
manifest-listed files were ever committed; anything else there (a crashed run's leftovers) was not.
So the migration:
1. reads every manifest (a torn one was never committed and is skipped, as recovery did);
2. checks each partition's ranges are contiguous and each listed file is there with its size;
3. creates `<lake>/events` as a Delta table whose first commit adopts exactly the listed files (no
   data file is rewritten or moved: their `date=` directories already are Delta's layout);
4. commits each range's record (kind "migrated", or "reprocess" for DLQ-topic ranges) in order,
   with its app transaction = its end, so ingestion goes on from each partition's committed end.
Re-running it after an interruption continues where it stopped. Derived tables of the old layout
(`sessions/`, `dlq_report/`) are moved aside to `<data>/legacy/`: the assets rebuild them as Delta.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import CommitProperties, Schema
from deltalake.transaction import AddAction, create_table_with_add_actions

from pipeline_project.batch.ranges import Range
from pipeline_project.errors import LakeError
from pipeline_project.lake.commit import commit_range
from pipeline_project.lake.location import TABLE_EVENTS, Lake, lake_of
from pipeline_project.lake.record import DlqEntry, RangeRecord
from pipeline_project.lake.table import (
    EVENTS_CONFIGURATION,
    PARTITION_COLUMN,
    lake_errors,
    open_table,
    txn_version,
)
from pipeline_project.settings import Settings
from pipeline_project.utc import parse_utc

log = logging.getLogger(__name__)

MIGRATION_KEY = "pipeline_migration"
LEGACY_TABLES = ("sessions", "dlq_report")


@dataclass(frozen=True)
class LegacyFile:
    """A committed file as an old manifest lists it."""

    path: str  # lake-relative: events/date=YYYY-MM-DD/part-….parquet
    day: date
    rows: int
    size: int


@dataclass(frozen=True)
class LegacyRange:
    """One old manifest: the range's record and its files."""

    record: RangeRecord
    files: tuple[LegacyFile, ...]


@dataclass
class MigrationResult:
    """What the migration did (printed by the CLI)."""

    ranges: int = 0
    files: int = 0
    rows: int = 0
    skipped_manifests: list[str] = field(default_factory=list)
    ends: dict[str, int] = field(default_factory=dict)
    moved_aside: list[str] = field(default_factory=list)

    def summary(self) -> str:
        ends = ", ".join(f"{k}={v}" for k, v in sorted(self.ends.items())) or "none"
        lines = [
            f"migrated {self.ranges} ranges, {self.files} files, {self.rows} rows into Delta",
            f"committed ends: {ends}",
        ]
        lines += [
            f"skipped unreadable manifest {p} (never committed)" for p in self.skipped_manifests
        ]
        lines += [f"moved aside {p} (rebuilt by its asset)" for p in self.moved_aside]
        return "\n".join(lines)


def migrate(settings: Settings) -> MigrationResult:
    """Migrates the old lake under settings.data_dir into the Delta table at the settings' lake."""
    lake = lake_of(settings)
    if lake.is_s3:
        raise LakeError("lake migrate works on a local lake (the earlier layout was local only)")
    result = MigrationResult()
    ranges = read_manifests(settings.data_dir / "state" / "manifests", settings.dlq_topic, result)
    check_contiguous(ranges)
    lake_root = Path(lake.root)
    table = open_table(lake)
    if table is None:
        adopt_files(lake, lake_root, ranges, result)
    elif MIGRATION_KEY not in _first_commit(table):
        raise LakeError(f"{lake.describe()}/events is already a Delta table: nothing to migrate")
    for item in sorted(ranges, key=lambda r: (r.record.app_id, r.record.range.start)):
        done = txn_version(open_table(lake), item.record.app_id)
        if done is None or done < item.record.range.end:
            commit_range(lake, item.record, None)
        result.ranges += 1
        result.ends[item.record.app_id] = item.record.range.end
    result.moved_aside = _move_aside(lake_root, settings.data_dir / "legacy")
    return result


def read_manifests(root: Path, dlq_topic: str, result: MigrationResult) -> list[LegacyRange]:
    """Every readable manifest under `root`; torn or foreign ones are listed as skipped."""
    ranges = []
    for path in sorted(root.rglob("*.json")) if root.is_dir() else []:
        try:
            ranges.append(parse_manifest(json.loads(path.read_text()), dlq_topic))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping %s: %s", path, exc)
            result.skipped_manifests.append(str(path))
    return ranges


def parse_manifest(data: dict[str, Any], dlq_topic: str) -> LegacyRange:
    """One old manifest (its JSON object) as a record and its files."""
    if data.get("kind") != "manifest":
        raise ValueError("not a manifest")
    rng = Range.from_dict(data["range"])
    files = tuple(
        LegacyFile(f["path"], date.fromisoformat(f["day"]), int(f["rows"]), int(f["bytes"]))
        for f in data["files"]
        if f.get("table", "events") == TABLE_EVENTS
    )
    days: dict[str, int] = defaultdict(int)
    for item in files:
        days[item.day.isoformat()] += item.rows
    record = RangeRecord(
        range=rng,
        kind="reprocess" if rng.topic == dlq_topic else "migrated",
        run_id=str(data["run_id"]),
        ingested_at=parse_utc(data["ingested_at"], naive_as_utc=True),
        reference_time=parse_utc(data["reference_time"], naive_as_utc=True),
        records=int(data["record_offsets"]["count"]),
        record_offsets_sha256=str(data["record_offsets"]["sha256"]),
        days=dict(days),
        dlq=tuple(
            DlqEntry(
                int(d["source_offset"]),
                str(d["category"]),
                int(d["dlq_partition"]),
                int(d["dlq_offset"]),
            )
            for d in data["dlq"]
        ),
        filtered={str(k): tuple(int(o) for o in v) for k, v in data["filtered"].items()},
        extra={"migrated_from": "manifest", "committed_at": data.get("committed_at")},
    )
    return LegacyRange(record, files)


def check_contiguous(ranges: list[LegacyRange]) -> None:
    """Refuses a ledger whose partitions have gaps or overlaps: that lake needs reconcile first."""
    by_app: dict[str, list[Range]] = defaultdict(list)
    for item in ranges:
        by_app[item.record.app_id].append(item.record.range)
    for app, spans in by_app.items():
        spans.sort()
        for before, after in zip(spans, spans[1:], strict=False):
            if after.start != before.end:
                raise LakeError(
                    f"{app}: committed ranges {before.range_id} and {after.range_id} do not "
                    "meet; fix the earlier ledger (its `reconcile` names the gap) and migrate again"
                )


def adopt_files(
    lake: Lake, lake_root: Path, ranges: list[LegacyRange], result: MigrationResult
) -> None:
    """The table's first commit: every listed file as an add action, nothing rewritten."""
    table_root = lake_root / TABLE_EVENTS
    actions, schemas = [], []
    for item in ranges:
        for f in item.files:
            path = lake_root / f.path
            if not path.is_file() or path.stat().st_size != f.size:
                raise LakeError(f"{path}: listed by a manifest but missing or of another size")
            actions.append(_add_action(path, table_root, f))
            schemas.append(pq.read_schema(path))
            result.files += 1
            result.rows += f.rows
    if not schemas:
        raise LakeError(f"no committed events files under {table_root}: nothing to migrate")
    schema = pa.unify_schemas(list({s.to_string(): s for s in schemas}.values()))
    schema = schema.remove_metadata().append(pa.field(PARTITION_COLUMN, pa.date32()))
    with lake_errors(lake, "creating the events table from the earlier layout"):
        create_table_with_add_actions(
            lake.table_uri(TABLE_EVENTS),
            Schema.from_arrow(schema),
            actions,
            mode="error",
            partition_by=[PARTITION_COLUMN],
            configuration=EVENTS_CONFIGURATION,
            commit_properties=CommitProperties(
                custom_metadata={MIGRATION_KEY: {"files": result.files, "rows": result.rows}}
            ),
        )


def _add_action(path: Path, table_root: Path, item: LegacyFile) -> AddAction:
    return AddAction(
        path=str(path.relative_to(table_root)),
        size=item.size,
        partition_values={PARTITION_COLUMN: item.day.isoformat()},
        modification_time=int(path.stat().st_mtime * 1000),
        data_change=True,
        stats=json.dumps({"numRecords": item.rows}),
    )


def _first_commit(table: Any) -> dict[str, Any]:
    entries = [e for e in table.history() if int(e.get("version", -1)) in (0, 1)]
    return next((e for e in entries if MIGRATION_KEY in e), {})


def _move_aside(lake_root: Path, legacy: Path) -> list[str]:
    """Old derived tables (plain Parquet dirs) out of the lake root; their assets rebuild them."""
    moved = []
    for name in LEGACY_TABLES:
        old = lake_root / name
        if old.is_dir() and not (old / "_delta_log").exists():
            legacy.mkdir(parents=True, exist_ok=True)
            target = legacy / f"{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
            shutil.move(str(old), str(target))
            moved.append(os.fspath(target))
    return moved
