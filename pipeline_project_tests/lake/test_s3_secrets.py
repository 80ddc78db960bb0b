"""The lake's S3 credentials never leak: not in CLI output, JSON reports or one-line errors."""

from __future__ import annotations

from pathlib import Path

from pipeline_project.lake.location import AWS_VARIABLES
from pipeline_project.lake.s3server import LocalS3
from pipeline_project_tests.support import pipeline_cli as cli
from pipeline_project_tests.support import unique


def test_lake_commands_and_errors_never_print_the_secret(
    s3_server: LocalS3, tmp_path: Path
) -> None:
    options = s3_server.storage_options()
    secret = options["AWS_SECRET_ACCESS_KEY"]
    env = {name: options[name] for name in AWS_VARIABLES if name in options}
    env |= {
        "PATH": "/usr/bin:/bin",
        "PIPELINE_DATA_DIR": str(tmp_path / "data"),
        "PIPELINE_LAKE_URI": f"s3://{s3_server.bucket}/{unique('secrets')}",
        "PIPELINE_KAFKA_BOOTSTRAP": "127.0.0.1:1",  # health: the broker is down, the lake is read
    }
    outputs = [
        cli(env, "reconcile", "--json"),
        cli(env, "lake", "stats", "--json"),
        cli(env, "health", "--json"),
    ]
    wrong = env | {"AWS_SECRET_ACCESS_KEY": "not-" + secret}
    refused = cli(wrong, "reconcile")
    outputs.append(refused)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert s3_server.endpoint in refused.stderr and "403" in refused.stderr
    for done in outputs:
        assert secret not in done.stdout + done.stderr, done.args
