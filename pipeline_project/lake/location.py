"""Where the lake lives: a local directory or an S3-compatible bucket, named by one URI.

`PIPELINE_LAKE_URI` is a local path (default `<PIPELINE_DATA_DIR>/output`) or `s3://bucket/prefix`.
For S3 the connection comes from the standard AWS variables (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`), read once into the
storage options handed to delta-rs. Commits on S3 are put-if-absent (`If-None-Match: *`), delta-rs's
default since object_store 0.13, so no lock service is needed. Secrets stay in `storage_options`,
which is never printed: `describe()` is what messages show.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from pipeline_project.errors import SettingsError
from pipeline_project.settings import Settings

TABLE_EVENTS = "events"
TABLE_SESSIONS = "sessions"
AWS_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ALLOW_HTTP",
)
# Put-if-absent commits (`If-None-Match: *`, object_store's default, pinned so a stray
# AWS_CONDITIONAL_PUT=disabled cannot turn it off) and bounded waits: an unreachable endpoint is
# one clear error in seconds, not minutes of object_store's defaults (10 retries, 3 min). Measured
# on versitygw: refused in < 1 s, no TCP answer in ~3 x connect_timeout, a silent server in one
# `timeout`, which must still cover the largest single PUT of a range's file.
S3_CLIENT_DEFAULTS = {
    "conditional_put": "etag",
    "connect_timeout": "2s",
    "timeout": "30s",
    "max_retries": "2",
    "retry_timeout": "5s",
}
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
TABLE_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class Lake:
    """The lake's root URI and the options delta-rs needs to reach it (secrets included)."""

    root: str
    storage_options: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_s3(self) -> bool:
        return self.root.startswith("s3://")

    def table_uri(self, table: str) -> str:
        """`<root>/<table>`; table names are lowercase identifiers, never a path."""
        if not TABLE_NAME_RE.fullmatch(table):
            raise SettingsError(f"invalid lake table name {table!r}")
        return f"{self.root}/{table}"

    def options(self) -> dict[str, str] | None:
        """Storage options for deltalake calls (None for a local lake)."""
        return dict(self.storage_options) if self.storage_options else None

    def polars_options(self) -> dict[str, str] | None:
        """The options polars' readers take: the AWS connection only.

        polars validates object_store's client keys as numbers and rejects delta-rs's strings.
        """
        options = {k: v for k, v in self.storage_options.items() if k in AWS_VARIABLES}
        return options or None

    def describe(self) -> str:
        """The root as messages show it: no credentials, the endpoint for S3."""
        endpoint = self.storage_options.get("AWS_ENDPOINT_URL")
        return f"{self.root} (endpoint {endpoint})" if endpoint else self.root


def lake_of(settings: Settings, env: Mapping[str, str] | None = None) -> Lake:
    """The lake of these settings; SettingsError (one line) for a URI that cannot work."""
    uri = settings.lake_uri or str(settings.data_dir / "output")
    return parse_lake_uri(uri, os.environ if env is None else env)


def parse_lake_uri(uri: str, env: Mapping[str, str]) -> Lake:
    """A local path (absolute after this) or `s3://bucket[/prefix]`; anything else is refused."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else uri
        if not path:
            raise SettingsError("PIPELINE_LAKE_URI is empty")
        return Lake(str(Path(path).expanduser().absolute()).rstrip("/") or "/")
    if parsed.scheme in ("s3", "s3a"):
        return _s3_lake(uri, parsed.netloc, parsed.path, env)
    raise SettingsError(
        f"PIPELINE_LAKE_URI={uri!r}: scheme {parsed.scheme!r} is not supported "
        "(use a local path or s3://bucket/prefix)"
    )


def _s3_lake(uri: str, bucket: str, path: str, env: Mapping[str, str]) -> Lake:
    if not _BUCKET_RE.fullmatch(bucket):
        raise SettingsError(f"PIPELINE_LAKE_URI={uri!r}: {bucket!r} is not a valid bucket name")
    prefix = path.strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise SettingsError(f"PIPELINE_LAKE_URI={uri!r}: the prefix has empty or dot parts")
    options = {name: env[name] for name in AWS_VARIABLES if env.get(name)}
    options.setdefault("AWS_REGION", "us-east-1")
    for key, value in S3_CLIENT_DEFAULTS.items():
        options.setdefault(key, value)
    root = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    return Lake(root, options)
