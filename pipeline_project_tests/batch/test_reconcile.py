"""reconcile.py: passes on a good lake and fails, naming the problem, on each corruption.

Missing, bit-flipped and truncated files, strays, a gap between ranges, an offset counted twice,
torn or inconsistent manifests and unfinished ranges. Also the table/JSON output and exit code.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipeline_project.batch import ledger
from pipeline_project.batch.ranges import Range
from pipeline_project.batch.reconcile import (
    ReconcileReport,
    main,
    reconcile,
    reconcile_dirs,
    render_table,
    to_json,
)
from pipeline_project.settings import Settings
from pipeline_project_tests.batch.ledger_support import DAY1, INGESTED_AT, NOW, TOPIC, run_protocol

R0 = Range(TOPIC, 0, 0, 40)
R1 = Range(TOPIC, 0, 40, 100)
R2 = Range(TOPIC, 0, 100, 120)
P1 = Range(TOPIC, 1, 0, 30)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A good lake: three contiguous ranges on partition 0, one on partition 1, two days."""
    for rng in (R0, R1, R2, P1):
        run_protocol(tmp_path, rng)
    return tmp_path


def _check(data: Path) -> ReconcileReport:
    return reconcile_dirs(data / "output", data / "state")


def _codes(report: ReconcileReport) -> set[str]:
    return {p.code for p in report.problems}


def _manifest(data: Path, rng: Range) -> ledger.Manifest:
    manifest = ledger.read_manifest(data / "state", rng)
    assert manifest is not None
    return manifest


def _edit_manifest(data: Path, rng: Range, edit) -> None:  # type: ignore[no-untyped-def]
    path = ledger.manifest_path(data / "state", rng)
    body = orjson.loads(path.read_bytes())
    edit(body)
    path.write_bytes(orjson.dumps(body))


def test_good_lake_reconciles(data: Path) -> None:
    report = _check(data)
    assert report.ok, [str(p) for p in report.problems]
    p0, p1 = report.partitions
    assert (p0.ranges, p0.first_offset, p0.end_offset, p0.records) == (3, 0, 120, 120)
    assert p0.records == p0.written + p0.dlq + sum(p0.filtered.values())
    assert (p1.partition, p1.records) == (1, 30)
    assert sum(d.rows for d in report.days) == sum(p.written for p in report.partitions)
    assert all(d.rows == d.rows_in_files for d in report.days)
    text = render_table(report)
    assert "raw-events" in text and text.rstrip().endswith("accounted for exactly once")
    payload = to_json(report)
    assert payload["ok"] is True and payload["problems"] == []
    assert orjson.loads(orjson.dumps(payload)) == payload


def test_empty_lake_reconciles(tmp_path: Path) -> None:
    assert _check(tmp_path).ok


def test_missing_file(data: Path) -> None:
    path = _manifest(data, R1).files[0].path
    (data / "output" / path).unlink()
    report = _check(data)
    assert _codes(report) == {"file_missing"}
    assert path in str(report.problems[0]) and "missing" in str(report.problems[0])


def test_bit_flipped_file(data: Path) -> None:
    path = data / "output" / _manifest(data, R0).files[0].path
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    path.write_bytes(bytes(raw))
    report = _check(data)
    assert "sha256_mismatch" in _codes(report) and not report.ok
    assert any("sha256" in p.message for p in report.problems)


def test_truncated_file(data: Path) -> None:
    path = data / "output" / _manifest(data, R2).files[-1].path
    path.write_bytes(path.read_bytes()[:-100])
    report = _check(data)
    assert {"size_mismatch", "parquet_unreadable"} <= _codes(report)
    assert any("truncated" in p.message for p in report.problems)


def test_stray_files_and_dirs(data: Path) -> None:
    day = data / "output" / "events" / f"date={DAY1.isoformat()}"
    (day / ".tmp-1.parquet").write_bytes(b"x")
    (day / "copy.parquet").write_bytes(
        (day / _manifest(data, R0).files[0].path.split("/")[-1]).read_bytes()
    )
    (data / "output" / "events" / "_staging").mkdir()
    report = _check(data)
    assert _codes(report) == {"stray_file", "stray_dir"}
    messages = " ".join(str(p) for p in report.problems)
    assert ".tmp-1.parquet" in messages and "copy.parquet" in messages and "_staging" in messages


def test_unlisted_file_of_our_naming_is_a_stray(data: Path) -> None:
    day = data / "output" / "events" / f"date={DAY1.isoformat()}"
    (day / "part-raw-events-0-0000000000000000120-0000000000000000129.parquet").write_bytes(b"x")
    report = _check(data)
    assert _codes(report) == {"stray_file"} and "no manifest lists it" in report.problems[0].message
    assert report.problems[0].partition == 0


def test_gap_between_ranges(data: Path) -> None:
    for item in _manifest(data, R1).files:
        (data / "output" / item.path).unlink()
    ledger.manifest_path(data / "state", R1).unlink()
    report = _check(data)
    assert _codes(report) == {"gap"}
    assert "[40, 100)" in report.problems[0].message


def test_overlapping_ranges(data: Path) -> None:
    rng = Range(TOPIC, 0, 110, 130)  # overlaps R2 = [100, 120); all of it filtered, no files
    offsets = list(range(110, 130))
    manifest = ledger.Manifest(
        rng,
        "zombie",
        INGESTED_AT,
        NOW,
        NOW,
        len(offsets),
        (),
        (),
        {"bot": tuple(offsets)},
        ledger.offsets_digest(offsets),
    )
    ledger.atomic_write_json(ledger.manifest_path(data / "state", rng), manifest.to_dict())
    report = _check(data)
    assert _codes(report) == {"overlap"}
    assert R2.range_id in report.problems[0].message and rng.range_id in report.problems[0].message


def test_offset_counted_twice(data: Path) -> None:
    def add_dlq_for_a_lake_row(body: dict) -> None:
        body["dlq"].append(
            {"source_offset": 0, "category": "invalid_json", "dlq_partition": 0, "dlq_offset": 99}
        )
        body["counts"]["dlq"] += 1

    _edit_manifest(data, R0, add_dlq_for_a_lake_row)
    report = _check(data)
    assert _codes(report) == {"offset_double_counted"}
    message = report.problems[0].message
    assert "0 (file events/date=2024-03-09/" in message and "and dlq" in message


def test_lost_offset_and_count_mismatch(data: Path) -> None:
    _edit_manifest(data, R1, lambda b: b["dlq"].pop())
    report = _check(data)
    assert _codes(report) == {"count_mismatch", "record_count_mismatch"}


def test_offset_outside_its_range(data: Path) -> None:
    def move_a_filtered_offset(body: dict) -> None:
        body["filtered"]["duplicate"][0] = 45  # R1 owns 45; R0's offset 7 is now unaccounted

    _edit_manifest(data, R0, move_a_filtered_offset)
    report = _check(data)
    assert _codes(report) == {"offset_out_of_range", "offsets_hash_mismatch"}
    assert "[45]" in str(report.problems[0])


def test_offsets_digest_mismatch(data: Path) -> None:
    _edit_manifest(data, P1, lambda b: b["record_offsets"].update(sha256="0" * 64))
    report = _check(data)
    assert _codes(report) == {"offsets_hash_mismatch"} and report.problems[0].partition == 1


def test_torn_manifest_and_unfinished_range(data: Path) -> None:
    path = ledger.manifest_path(data / "state", R2)
    path.write_bytes(path.read_bytes()[:20])
    report = _check(data)
    assert {"manifest_unusable", "stray_file"} <= _codes(report)
    state = data / "state"
    with ledger.partition_lock(state, TOPIC, 1):
        ledger.write_intent(state, Range(TOPIC, 1, 30, 50), "run-X", INGESTED_AT, NOW)
    assert "unfinished_range" in _codes(_check(data))


def test_main_prints_and_returns_the_exit_code(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(data_dir=data)
    assert settings.lake_dir == data / "output" and reconcile(settings).ok
    assert main(settings, as_json=False) == 0
    assert "OK" in capsys.readouterr().out
    (data / "output" / "events" / "junk.txt").write_text("x")
    assert main(settings, as_json=True) == 1
    payload = orjson.loads(capsys.readouterr().out)
    assert payload["ok"] is False and payload["problems"][0]["code"] == "stray_file"
    assert main(settings, as_json=False) == 1
    assert "FAILED: 1 problems" in capsys.readouterr().out


def test_symlinked_partition_dir_is_reported_not_followed(data: Path) -> None:
    day_dir = data / "output" / "events" / f"date={DAY1.isoformat()}"
    outside = data / "outside"  # beside the lake root, not under it
    day_dir.rename(outside)
    day_dir.symlink_to(outside)
    report = _check(data)
    assert {"path_escapes_root", "stray_file"} <= _codes(report)
    assert "not a date=YYYY-MM-DD partition directory" in " ".join(map(str, report.problems))
