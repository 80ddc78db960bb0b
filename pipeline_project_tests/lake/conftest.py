"""Every lake test runs on each backend: a local directory and a real S3 server (versitygw)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline_project.lake.location import Lake, parse_lake_uri

BACKENDS = ["local", "s3"]


@pytest.fixture(params=BACKENDS)
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    """A fresh, empty lake on the parametrised backend."""
    if request.param == "local":
        return parse_lake_uri(str(tmp_path / "lake"), {})
    uri, options = request.getfixturevalue("s3_lake")
    return Lake(uri, options)
