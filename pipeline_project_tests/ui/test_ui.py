"""The user's view: the real Dagster UI over a real lake, checked in headless Debian Chromium.

One module-scoped setup: produce a few thousand events with the producer CLI, ingest them with
`dagster job execute`, start `dagster-webserver -w workspace.yaml` on that DAGSTER_HOME (what
`dagster dev` runs, minus the daemon, so nothing runs behind the test's back), then assert data
through GraphQL and what a person sees through the browser. Assets that later issues add
(`sessions`, `dlq_report`) are checked only when the definitions contain them.

Screenshots go to the test's tmp dir, or to $UI_SCREENSHOTS_DIR (`make screenshots` sets
docs/images) to refresh the README's pictures.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from pipeline_project.kafka.topics import ensure_topics
from pipeline_project.lake.location import lake_of
from pipeline_project.settings import Settings
from pipeline_project_tests.ingest_support import produce
from pipeline_project_tests.support import REPO_ROOT, env_for, unique
from pipeline_project_tests.ui.dagster_ui import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    DAGSTER,
    DagsterWebserver,
)

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
)
pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"{CHROMIUM} is missing: `make test` installs Debian's chromium package as root; "
    "it could not here (not root, or apt-get failed)",
)

EVENTS = 3000
RAW, DLQ = ("kafka", "raw_events"), ("kafka", "dead_letter_queue")
UI_TIMEOUT_MS = 30_000


def asset_keys() -> set[tuple[str, ...]]:
    from pipeline_project.definitions import defs

    return {tuple(key.path) for key in defs.resolve_asset_graph().get_all_asset_keys()}


def partitions_of(name: str) -> object | None:
    from dagster import AssetKey

    from pipeline_project.definitions import defs

    return defs.resolve_asset_graph().get(AssetKey(name)).partitions_def


def dagster_cli(env: dict[str, str], *args: str) -> None:
    done = subprocess.run(
        [DAGSTER, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


@dataclasses.dataclass
class Lake:
    """What the browser must show: the days in the lake and their row counts."""

    settings: Settings
    rows_by_day: dict[str, int]
    records: int


@pytest.fixture(scope="module")
def lake_and_ui(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Lake, DagsterWebserver]]:
    root = tmp_path_factory.mktemp("ui")
    settings = dataclasses.replace(
        Settings(),
        bootstrap=kafka_bootstrap,
        raw_topic=unique("raw"),
        dlq_topic=unique("dlq"),
        data_dir=root / "data",
    )
    ensure_topics(settings, raw_partitions=3)
    produce(
        settings,
        root / "truth.jsonl",
        EVENTS,
        "--bad-ratio",
        "0.05",
        "--late-ratio",
        "0.05",
        "--duplicate-ratio",
        "0.02",
    )
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = env_for(settings, DAGSTER_HOME=str(home))
    dagster_cli(env, "job", "execute", "-m", "pipeline_project.definitions", "-j", "ingest_events")
    if ("dlq_report",) in asset_keys():
        extra = []
        if partitions_of("dlq_report") is not None:
            days = events_table(settings).get_column("date").unique().sort()
            extra = ["--partition", days[-1].isoformat()]
        dagster_cli(
            env, "asset", "materialize", "-m", "pipeline_project.definitions",
            "--select", "dlq_report", *extra,
        )  # fmt: skip

    frame = events_table(settings)
    rows_by_day = {str(day): n for day, n in frame.group_by("date").len().sort("date").iter_rows()}
    server = DagsterWebserver(env, root / "dagster-webserver.log")
    try:
        server.start()
        # The "join the community" dialog shows once per instance on localhost: mark it seen.
        server.graphql("mutation { setNuxSeen }")
        yield Lake(settings, rows_by_day, EVENTS), server
    finally:
        server.stop()


def events_table(settings: Settings) -> pl.DataFrame:
    """The events table read through its Delta log, as a user reads it."""
    lake = lake_of(settings)
    return pl.read_delta(lake.table_uri("events"), storage_options=lake.polars_options())


@pytest.fixture(scope="module")
def browser_page(
    lake_and_ui: tuple[Lake, DagsterWebserver], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    with playwright_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1600, "height": 1000},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.js_errors = errors  # type: ignore[attr-defined]
            yield page
        finally:
            context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("UI_SCREENSHOTS_DIR")
    if target:
        path = Path(target)
        if not path.is_absolute():
            path = REPO_ROOT / path
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("screenshots")


def materialized_days(ranges: list[dict]) -> set[str]:
    days: set[str] = set()
    for r in ranges:
        if r["status"] != "MATERIALIZED":
            continue
        day, last = dt.date.fromisoformat(r["startKey"]), dt.date.fromisoformat(r["endKey"])
        while day <= last:
            days.add(day.isoformat())
            day += dt.timedelta(days=1)
    return days


def wait_until_loaded(page) -> None:
    """The UI renders shells first and fills them in: wait until no 'Loading…' is left."""
    page.wait_for_load_state("networkidle")
    page.get_by_text(re.compile(r"^Loading")).first.wait_for(state="hidden")


# ------------------------------------------------------------------------------ asset graph


def test_asset_graph_shows_the_lineage(lake_and_ui, browser_page, shots: Path) -> None:
    _, server = lake_and_ui
    nodes = server.graphql("{ assetNodes { assetKey { path } dependencyKeys { path } } }")
    deps = {
        tuple(n["assetKey"]["path"]): {tuple(d["path"]) for d in n["dependencyKeys"]}
        for n in nodes["assetNodes"]
    }
    expected = {("events",): RAW, DLQ: RAW}
    present = asset_keys()
    if ("sessions",) in present:
        expected[("sessions",)] = ("events",)
    if ("dlq_report",) in present:
        expected[("dlq_report",)] = DLQ
    for asset, parent in expected.items():
        assert parent in deps.get(asset, set()), f"{asset} should depend on {parent}: {deps}"

    page = browser_page
    page.goto(f"{server.url}/asset-groups")
    names = [key[-1] for key in expected] + [RAW[-1]]
    first = page.get_by_text(names[0], exact=True).first
    try:
        first.wait_for(timeout=5000)
    except playwright_api.TimeoutError:
        page.keyboard.press("Alt+KeyE")  # groups start collapsed: "Expand all groups"
    for name in names:
        page.get_by_text(name, exact=True).first.wait_for()
    wait_until_loaded(page)
    page.screenshot(path=str(shots / "asset-graph.png"))
    assert not page.js_errors, page.js_errors


# ------------------------------------------------------------------------------ partitions

PARTITIONS_QUERY = """
{ assetNodeOrError(assetKey: {path: ["events"]}) { ... on AssetNode {
    partitionStats { numMaterialized numFailed }
    assetPartitionStatuses { __typename ... on TimePartitionStatuses {
        ranges { status startKey endKey } } } } } }
"""


def test_events_partitions_show_the_filled_days(lake_and_ui, browser_page, shots: Path) -> None:
    lake, server = lake_and_ui
    node = server.graphql(PARTITIONS_QUERY)["assetNodeOrError"]
    days = set(lake.rows_by_day)
    assert node["partitionStats"]["numMaterialized"] == len(days) >= 1
    assert node["partitionStats"]["numFailed"] == 0
    assert materialized_days(node["assetPartitionStatuses"]["ranges"]) == days

    page = browser_page
    latest = max(days)
    page.goto(f"{server.url}/assets/events?view=partitions&partition={latest}")
    page.get_by_text(f"Materialized ({len(days)})").wait_for()
    for day in days:
        page.get_by_text(day, exact=True).first.wait_for()
    # The selected day's latest materialization: its row count is the lake's.
    page.get_by_text("Materialized", exact=True).first.wait_for()
    rows_cell = page.locator("tr", has=page.get_by_text("rows", exact=True)).first
    assert re.sub(r"[,\s]", "", rows_cell.inner_text()).endswith(str(lake.rows_by_day[latest]))
    wait_until_loaded(page)
    page.screenshot(path=str(shots / "events-partitions.png"))
    assert not page.js_errors, page.js_errors


# ------------------------------------------------------------------------------ the run

RUNS_QUERY = """
{ runsOrError(filter: {pipelineName: "ingest_events"}) {
    ... on Runs { results { runId status } } } }
"""
LOGS_QUERY = """
query Logs($runId: ID!) { logsForRun(runId: $runId) { ... on EventConnection { events {
    __typename ... on MaterializationEvent { assetKey { path } partition
        metadataEntries { label ... on IntMetadataEntry { intValue }
                                ... on FloatMetadataEntry { floatValue } } } } } } }
"""


def test_ingest_run_shows_its_metadata(lake_and_ui, browser_page, shots: Path) -> None:
    lake, server = lake_and_ui
    runs = server.graphql(RUNS_QUERY)["runsOrError"]["results"]
    assert [r["status"] for r in runs] == ["SUCCESS"], runs
    run_id = runs[0]["runId"]
    events = server.graphql(LOGS_QUERY, {"runId": run_id})["logsForRun"]["events"]
    by_day = {}
    for event in events:
        if event["__typename"] == "MaterializationEvent" and event["assetKey"]["path"] == [
            "events"
        ]:
            meta = {
                m["label"]: m.get("intValue", m.get("floatValue")) for m in event["metadataEntries"]
            }
            by_day[event["partition"]] = meta
    assert {day: m["rows"] for day, m in by_day.items()} == lake.rows_by_day
    some = next(iter(by_day.values()))
    assert some["run_records"] == lake.records
    assert some["events_per_s"] > 0 and some["run_seconds"] > 0

    page = browser_page
    page.goto(f"{server.url}/runs/{run_id}?logs=type%3AASSET_MATERIALIZATION")
    page.get_by_text("Success", exact=True).first.wait_for()
    page.get_by_text("ingest_events").first.wait_for()
    page.get_by_text("Materialized value events.").first.wait_for()
    wait_until_loaded(page)
    page.screenshot(path=str(shots / "ingest-run.png"))
    # The whole metadata of one materialization, as a user opens it.
    page.get_by_text("View full message").first.click()
    dialog = page.get_by_role("dialog")
    for label in ("rows", "run_records", "events_per_s", "latency_p99_ms"):
        dialog.get_by_text(label, exact=True).first.wait_for()
    page.keyboard.press("Escape")
    assert not page.js_errors, page.js_errors


# ------------------------------------------------------------------------------ DLQ report

REPORT_QUERY = """
{ assetNodeOrError(assetKey: {path: ["dlq_report"]}) { ... on AssetNode {
    assetMaterializations(limit: 1) { runId partition
        metadataEntries { label __typename ... on MarkdownMetadataEntry { mdStr } } } } } }
"""


def first_markdown_text(md: str) -> tuple[str, bool]:
    """The first heading of a Markdown text (True), or else its first plain line (False)."""
    for line in md.splitlines():
        heading = re.match(r"^#{1,6}\s+(.+?)\s*#*$", line)
        if heading:
            return re.sub(r"[*_`]", "", heading.group(1)), True
    for line in md.splitlines():
        plain = re.sub(r"[*_`#>|]", "", line).strip()
        if plain and not set(plain) <= set("-: "):
            return plain, False
    raise AssertionError("empty Markdown")


def test_dlq_report_markdown_renders(lake_and_ui, browser_page, shots: Path) -> None:
    if ("dlq_report",) not in asset_keys():
        pytest.skip("no dlq_report asset in the definitions yet (issue 5)")
    _, server = lake_and_ui
    node = server.graphql(REPORT_QUERY)["assetNodeOrError"]
    assert node["assetMaterializations"], "dlq_report was materialized but has no event"
    entries = node["assetMaterializations"][0]["metadataEntries"]
    markdown = [e for e in entries if e["__typename"] == "MarkdownMetadataEntry"]
    assert markdown, f"the DLQ report carries no Markdown metadata: {entries}"
    md = markdown[0]["mdStr"]
    text, is_heading = first_markdown_text(md)

    page = browser_page
    page.goto(f"{server.url}/assets/dlq_report?view=events")
    label = page.get_by_text(markdown[0]["label"], exact=True).first
    label.wait_for()
    wait_until_loaded(page)
    # Short Markdown renders in the metadata table; long tables sit behind "[Show Markdown]".
    row = page.locator("tr", has=label).first
    scope = row
    if row.get_by_text("Show Markdown").count():
        row.get_by_text("Show Markdown").first.click()
        scope = page.get_by_role("dialog")
    if is_heading:
        scope.get_by_role("heading", name=text).first.wait_for()
    else:
        scope.get_by_text(text).first.wait_for()
    if re.search(r"^\|.*\|\s*$", md, flags=re.M):
        scope.locator("table").first.wait_for()
    shown = scope.first.inner_text()
    assert "**" not in shown and "|---" not in shown, "Markdown shown as source, not rendered"
    page.screenshot(path=str(shots / "dlq-report.png"))
    page.keyboard.press("Escape")
    assert not page.js_errors, page.js_errors
