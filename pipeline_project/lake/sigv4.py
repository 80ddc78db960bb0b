"""Just enough AWS Signature V4 to talk to a local S3 server without boto3.

The local server only needs a few small calls (list buckets, head and create a bucket, and in
tests a conditional PUT) to prove it is up, that our credentials work and that the lake's bucket
exists; a signer of forty lines is cheaper than a dependency.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Credentials:
    """An access key pair and the region requests are signed for."""

    access_key: str
    secret_key: str
    region: str = "us-east-1"


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign(
    method: str,
    host: str,
    path: str,
    creds: Credentials,
    now: datetime,
    body: bytes = b"",
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The headers of a signed S3 request (path-style, no query string); `extra` is signed too."""
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload = hashlib.sha256(body).hexdigest()
    headers = {k.lower(): v for k, v in (extra or {}).items()}
    headers.update({"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date})
    names = ";".join(sorted(headers))
    canonical = "\n".join(
        [method, path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", names, payload]
    )
    scope = f"{day}/{creds.region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(("AWS4" + creds.secret_key).encode(), day)
    for part in (creds.region, "s3", "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
        f"SignedHeaders={names}, Signature={signature}"
    )
    return headers


def request(
    method: str,
    endpoint: str,
    path: str,
    creds: Credentials,
    timeout: float = 5.0,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """(status, body) of one signed request; OSError when nothing answers."""
    parts = urlsplit(endpoint)
    signed = sign(method, parts.netloc, path, creds, datetime.now(UTC), body, headers)
    conn = http.client.HTTPConnection(parts.netloc, timeout=timeout)
    try:
        conn.request(method, path, body=body or None, headers=signed)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()
