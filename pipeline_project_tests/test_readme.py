"""The docs tell the truth: commands first, every setting listed, links resolve, queries run.

The query one-liners are taken from the README as written and run against a lake that the real
pipeline prepared (producer CLI → ingest); only this test's paths, topics and bootstrap are put in.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from pathlib import Path

import polars as pl
import pytest

from pipeline_project.batch import run as protocol
from pipeline_project.lake.location import lake_of
from pipeline_project.settings import EnvSettings, Settings, env_name
from pipeline_project_tests.ingest_support import produce
from pipeline_project_tests.support import PYTHON, REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
DOCS = {p.relative_to(REPO_ROOT): p.read_text() for p in (REPO_ROOT / "docs").glob("*.md")}
SETTING = re.compile(r"PIPELINE_[A-Z0-9_]*[A-Z0-9]")


def fenced_blocks(markdown: str) -> list[str]:
    return re.findall(r"^ *```[a-z]*\n(.*?)^ *```", markdown, flags=re.M | re.S)


def python_one_liner(markdown: str, marker: str) -> str:
    """The single `.venv/bin/python -c …` line of a code block that mentions `marker`."""
    lines = [
        line.strip()
        for block in fenced_blocks(markdown)
        for line in block.splitlines()
        if line.strip().startswith(".venv/bin/python -c ") and marker in line
    ]
    assert len(lines) == 1, f"expected one one-liner with {marker!r}, found {lines}"
    return lines[0]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.+)$", markdown, flags=re.M)}


# ------------------------------------------------------------------------------ structure


def test_the_two_commands_come_first() -> None:
    before_first_section = README.split("\n## ", 1)[0]
    first_block = fenced_blocks(before_first_section)[0]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


def test_every_setting_in_the_source_is_in_the_configuration_table() -> None:
    source = "\n".join(p.read_text() for p in (REPO_ROOT / "pipeline_project").rglob("*.py"))
    declared = {env_name(name) for name in EnvSettings.model_fields}  # named by pydantic-settings
    used = set(SETTING.findall(source)) | declared
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    table = {
        name
        for line in section.splitlines()
        if line.startswith("| `PIPELINE_")
        for name in SETTING.findall(line.split("|")[1])
    }
    assert used, "no PIPELINE_ settings found in the package"
    assert sorted(used - table) == [], "settings missing from the README's Configuration table"


@pytest.mark.parametrize("page", ["README.md", *sorted(str(p) for p in DOCS)])
def test_links_and_pictures_resolve(page: str) -> None:
    path = REPO_ROOT / page
    text = path.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        assert linked.exists(), f"{page}: link to missing {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked.read_text()), f"{page}: no heading for {target}"


def test_readme_pictures_are_the_ui_test_screenshots() -> None:
    pictures = set(re.findall(r"!\[[^\]]*\]\((docs/images/[^)]+)\)", README))
    assert pictures == {
        "docs/images/asset-graph.png",
        "docs/images/events-partitions.png",
        "docs/images/ingest-run.png",
        "docs/images/dlq-report.png",
    }
    ui_test = (REPO_ROOT / "pipeline_project_tests" / "ui" / "test_ui.py").read_text()
    for picture in pictures:
        assert Path(picture).name in ui_test


# ------------------------------------------------------------------------------ the commands work


@pytest.fixture
def prepared_lake(kafka_settings: Settings, tmp_path: Path) -> Settings:
    """A lake written by the real producer and ingest protocol, in `<tmp>/data` like the default."""
    assert kafka_settings.data_dir == tmp_path / "data"
    produce(kafka_settings, tmp_path / "truth.jsonl", 2000, "--bad-ratio", "0.05", "--seed", "11")
    result = protocol.ingest(kafka_settings)
    assert result.accounting_ok() and result.written > 0 and result.dlq_count > 0
    return kafka_settings


def run_doc_command(command: str, cwd: Path, settings: Settings) -> str:
    """Runs a documented command in `cwd` with this test's Kafka and topics; returns its stdout."""
    command = command.replace(".venv/bin/python", PYTHON)
    command = command.replace("localhost:9092", settings.bootstrap)
    command = command.replace("'dead-letter-queue'", repr(settings.dlq_topic))
    command = command.replace("'raw-events'", repr(settings.raw_topic))
    done = subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def events_table(settings: Settings) -> pl.DataFrame:
    """The events table as its log says it is (the truth the documented queries must show)."""
    lake = lake_of(settings)
    return pl.read_delta(lake.table_uri("events"), storage_options=lake.polars_options())


def test_duckdb_query_of_a_day(prepared_lake: Settings, tmp_path: Path) -> None:
    command = python_one_liner(README, "duckdb")
    today = dt.datetime.now(dt.UTC).date()
    events = events_table(prepared_lake).filter(pl.col("date") == today)
    assert events.height, "the producer stamps events around now: today must have rows"
    # A crashed writer's file in today's directory: not in the table, so not in the answer
    # (a `*.parquet` glob would count its rows twice).
    day_dir = prepared_lake.lake_dir / "events" / f"date={today.isoformat()}"
    committed = next(day_dir.glob("*.parquet"))
    (day_dir / "part-00000-crashed-writer.c000.zstd.parquet").write_bytes(committed.read_bytes())
    out = run_doc_command(command, tmp_path, prepared_lake)

    expected = events.group_by("event_type").agg(
        pl.len().alias("events"), pl.col("user_id").n_unique().alias("users")
    )
    shown = {
        cells[0]: (int(cells[1]), int(cells[2]))
        for line in out.splitlines()
        if (cells := [c.strip() for c in line.strip("│ ").split("│")])
        and len(cells) == 3
        and cells[1].isdigit()
    }
    assert shown == {r["event_type"]: (r["events"], r["users"]) for r in expected.to_dicts()}


def test_polars_query_of_every_day(prepared_lake: Settings, tmp_path: Path) -> None:
    out = run_doc_command(python_one_liner(README, "polars"), tmp_path, prepared_lake)
    days = events_table(prepared_lake).get_column("date").unique().sort()
    assert "device_type" in out
    for day in days:
        assert day.isoformat() in out


def test_no_documented_query_globs_parquet_files() -> None:
    section = README.split("## Where the data lands", 1)[1].split("\n## ", 1)[0]
    for block in fenced_blocks(section):
        assert "read_parquet" not in block and "scan_parquet" not in block


def test_dlq_peek_shows_records_with_their_reasons(prepared_lake: Settings, tmp_path: Path) -> None:
    out = run_doc_command(python_one_liner(README, "dlq-peek"), tmp_path, prepared_lake)
    lines = [line for line in out.splitlines() if "dlq.error.category" in line]
    assert len(lines) == 5, out
    assert all(f"'dlq.source.topic': '{prepared_lake.raw_topic}'" in line for line in lines)


def test_adding_partitions_as_documented(kafka_settings: Settings, tmp_path: Path) -> None:
    from pipeline_project.kafka.topics import list_topics

    operations = DOCS[Path("docs/operations.md")]
    run_doc_command(python_one_liner(operations, "NewPartitions"), tmp_path, kafka_settings)
    assert list_topics(kafka_settings)[kafka_settings.raw_topic] == 12
