"""The shipped deployment files agree with each other and with the docs (no servers needed).

The run queue's per-partition limit is the first line of one-writer-per-partition: it must be the
same in `make demo`'s dagster.yaml, deploy/dagster.yaml and the Helm values. Every variable the
instance file reads must be documented in docs/deploy.md.
"""

from __future__ import annotations

import re

import yaml

from pipeline_project.defs.tags import PARTITION_TAG
from pipeline_project_tests.support import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"


def load(path: str) -> dict:
    return yaml.safe_load((REPO_ROOT / path).read_text())


def test_the_tag_limits_are_the_same_everywhere() -> None:
    demo = load("dagster.yaml")["run_queue"]["tag_concurrency_limits"]
    instance = load("deploy/dagster.yaml")["run_queue"]["tag_concurrency_limits"]
    helm = load("deploy/helm/values.yaml")["dagsterDaemon"]["runCoordinator"]
    assert helm["type"] == "QueuedRunCoordinator" and helm["enabled"]
    assert instance == demo == helm["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    per_partition = [limit for limit in instance if limit["key"] == PARTITION_TAG]
    assert per_partition == [
        {"key": PARTITION_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 2}
    ]


def test_the_instance_is_postgres_and_celery_from_the_environment() -> None:
    instance = load("deploy/dagster.yaml")
    db = instance["storage"]["postgres"]["postgres_db"]
    assert all(set(db[key]) == {"env"} for key in ("hostname", "port", "username", "password"))
    assert instance["run_launcher"]["class"] == "CeleryRunLauncher"
    assert instance["run_monitoring"]["enabled"] is True
    worker = load("deploy/celery-worker.yaml")["execution"]["config"]
    launcher = instance["run_launcher"]["config"]
    assert worker["broker"] == launcher["broker"] and worker["backend"] == launcher["backend"]
    docs = (REPO_ROOT / "docs" / "deploy.md").read_text()
    names = re.findall(r"env: (\w+)", (DEPLOY / "dagster.yaml").read_text())
    assert names and all(name in docs for name in names), names


def test_the_helm_values_give_runs_the_lake_and_its_secret() -> None:
    values = load("deploy/helm/values.yaml")
    assert values["postgresql"]["enabled"] is False
    (code,) = values["dagster-user-deployments"]["deployments"]
    assert "pipeline_project.definitions" in code["dagsterApiGrpcArgs"]
    env = {item["name"]: item["value"] for item in code["env"]}
    assert env["PIPELINE_LAKE_URI"].startswith("s3://")
    assert "PIPELINE_KAFKA_BOOTSTRAP" in env
    assert not any(name.startswith("AWS_SECRET") or name == "AWS_ACCESS_KEY_ID" for name in env)
    secret = {"name": "pipeline-lake-s3"}
    assert secret in code["envSecrets"]
    assert code["includeConfigInLaunchedRuns"]["enabled"] is True
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    assert secret in launcher["config"]["k8sRunLauncher"]["envSecrets"]
    assert values["dagsterDaemon"]["runMonitoring"]["enabled"] is True
