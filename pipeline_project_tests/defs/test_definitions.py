"""The code location loads, names match the contract, and `dagster definitions validate` passes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from dagster import AssetKey

from pipeline_project.definitions import defs
from pipeline_project_tests.support import PYTHON, REPO_ROOT


def test_resources_are_declared_and_no_private_dagster_api_is_used() -> None:
    assert set(defs.resources) == {"settings"}
    # The package only: test_compose parses Dagster's CLI and instance config, which have no
    # public API. Nor has a run launcher: its base class, config plumbing and the run execution
    # `dagster api execute_run` performs live in dagster._core (Dagster's own launcher libraries
    # import them the same way); test_launcher.py runs every one of those calls.
    launcher = REPO_ROOT / "pipeline_project" / "defs" / "launcher.py"
    private = [
        str(path.relative_to(REPO_ROOT))
        for path in (REPO_ROOT / "pipeline_project").rglob("*.py")
        if path != launcher
        and re.search(r"^\s*(from|import) dagster\._", path.read_text(), re.MULTILINE)
    ]
    assert private == []


def test_contract_names_resolve() -> None:
    assert defs.resolve_job_def("ingest_events").executor_def.name == "in_process"
    # The automation sensor's asset jobs too: a Celery worker's run may not start step processes.
    assert defs.resolve_implicit_global_asset_job_def().executor_def.name == "in_process"
    assert defs.resolve_sensor_def("kafka_backlog_sensor").job_name == "ingest_events"
    graph = defs.resolve_asset_graph()
    keys = set(graph.get_all_asset_keys())
    assert {
        AssetKey("events"),
        AssetKey(["kafka", "raw_events"]),
        AssetKey(["kafka", "dead_letter_queue"]),
    } <= keys
    assert graph.get(AssetKey("events")).parent_keys == {AssetKey(["kafka", "raw_events"])}
    assert graph.get(AssetKey("events")).partitions_def is not None
    checks = {key.name for key in graph.asset_check_keys}
    assert "accounting_identity" in checks


def test_dagster_definitions_validate(tmp_path: Path) -> None:
    dagster = str(Path(PYTHON).parent / "dagster")
    done = subprocess.run(
        [dagster, "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={
            "PATH": str(Path(PYTHON).parent) + ":/usr/bin:/bin",
            "DAGSTER_HOME": str(tmp_path),
            "PYTHONPATH": str(REPO_ROOT),  # this checkout, not another editable install
        },
    )
    assert done.returncode == 0, done.stdout + done.stderr
