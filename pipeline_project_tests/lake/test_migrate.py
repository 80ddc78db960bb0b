"""`lake migrate`: a lake of the earlier file-and-manifest layout becomes a Delta table in place."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from pipeline_project.batch.ranges import Range
from pipeline_project.lake.audit import audit
from pipeline_project.lake.commit import commit_range
from pipeline_project.lake.location import lake_of
from pipeline_project.lake.migrate import migrate
from pipeline_project.lake.table import open_table
from pipeline_project.settings import Settings
from pipeline_project_tests.lake.lake_support import processed, read_events, record_of
from pipeline_project_tests.support import PYTHON, REPO_ROOT


def write_legacy_range(data_dir: Path, rng: Range, batch) -> None:
    """What the earlier version committed for a range: day files and one JSON manifest."""
    record = record_of(rng, batch)
    files = []
    for (day,), part in batch.good.partition_by("event_date", as_dict=True).items():
        rel = (
            f"events/date={day.isoformat()}/part-{rng.topic}-{rng.partition}-"
            f"{rng.start:019d}-{rng.end - 1:019d}.parquet"
        )
        path = data_dir / "output" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(part.to_arrow(), path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        files.append(
            {
                "path": rel,
                "table": "events",
                "day": day.isoformat(),
                "rows": part.height,
                "sha256": digest,
                "bytes": path.stat().st_size,
                "min_offset": 0,
                "max_offset": 0,
            }
        )
    manifest = {
        "version": 1,
        "kind": "manifest",
        "range_id": rng.range_id,
        "range": rng.to_dict(),
        "run_id": record.run_id,
        "ingested_at": "2025-03-01T12:00:05Z",
        "reference_time": "2025-03-01T12:00:00Z",
        "committed_at": "2025-03-01T12:00:06Z",
        "counts": {},
        "files": files,
        "dlq": [d._asdict() for d in record.dlq],
        "filtered": {k: list(v) for k, v in record.filtered.items()},
        "record_offsets": {"count": record.records, "sha256": record.record_offsets_sha256},
    }
    where = data_dir / "state" / "manifests" / rng.topic / str(rng.partition)
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{rng.range_id}.json").write_text(json.dumps(manifest))


def legacy_lake(data_dir: Path) -> int:
    rows = 0
    for partition in (0, 1):
        for start in (0, 200):
            rng, batch = processed(start, 200, bad_every=29, partition=partition)
            rng = dataclasses.replace(rng, partition=partition)
            write_legacy_range(data_dir, rng, batch)
            rows += batch.good.height
    # A crashed run's leftover under the lake root: never committed, must stay invisible.
    stray = data_dir / "output" / "events" / "date=2025-03-01" / "part-stray.parquet"
    pq.write_table(pl.DataFrame({"event_id": ["x"]}).to_arrow(), stray)
    (data_dir / "output" / "sessions" / "date=2025-03-01").mkdir(parents=True)
    return rows


def test_an_old_lake_becomes_a_delta_table_and_ingestion_goes_on(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    rows = legacy_lake(settings.data_dir)
    before = sorted(p.name for p in (settings.data_dir / "output" / "events").rglob("*.parquet"))
    result = migrate(settings)
    lake = lake_of(settings)
    assert result.ranges == 4 and result.rows == rows
    assert result.ends == {"raw-events-0": 400, "raw-events-1": 400}
    after = sorted(p.name for p in (settings.data_dir / "output" / "events").rglob("*.parquet"))
    assert after == before  # nothing rewritten, nothing moved
    assert read_events(lake).height == rows
    report = audit(lake)
    assert report.ok, [str(p) for p in report.problems]
    assert not (settings.data_dir / "output" / "sessions").exists()

    rng, batch = processed(400, 100, partition=0)
    commit_range(lake, record_of(rng, batch), batch.good)
    assert open_table(lake).transaction_version("raw-events-0") == 500
    assert audit(lake).ok
    again = migrate(settings)  # a second run changes nothing
    assert open_table(lake).transaction_version("raw-events-0") == 500
    assert again.ranges == 4


def test_the_cli_migrates_and_reconcile_passes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    legacy_lake(data_dir)
    # No broker: reconcile would compare the lake's topic with a same-named topic on one (a
    # developer's `make demo` broker on the default port is another topic).
    env = {
        "PATH": "/usr/bin:/bin",
        "PIPELINE_DATA_DIR": str(data_dir),
        "PIPELINE_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    }
    done = subprocess.run(
        [PYTHON, "-m", "pipeline_project.cli", "lake", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "migrated 4 ranges" in done.stdout
    # Several times: a delta-rs reader that aborts the interpreter at exit ("terminate called
    # without an active exception", exit 134) now and then would show as a wrong exit status.
    for _ in range(5):
        check = subprocess.run(
            [PYTHON, "-m", "pipeline_project.cli", "reconcile"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO_ROOT,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert "OK: every consumed offset" in check.stdout


def test_lake_stats_counts_files_rows_and_bytes_per_day(tmp_path: Path) -> None:
    from pipeline_project.lake.stats import table_stats

    settings = Settings(data_dir=tmp_path / "data")
    rows = legacy_lake(settings.data_dir)
    migrate(settings)
    stats = table_stats(lake_of(settings))
    assert (stats.files, stats.rows) == (4, rows)
    assert [d["day"] for d in stats.days] == ["2025-03-01"]
    assert stats.days[0]["rows"] == rows and stats.bytes > 0
