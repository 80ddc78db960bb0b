"""The local S3 server (versitygw) and delta-rs on it: lifecycle, round trip, commit race, faults.

Reads go through deltalake's QueryBuilder (DataFusion, in Rust), not `to_pyarrow_table()`: the
pyarrow-dataset read path sometimes aborts the interpreter at exit ("terminate called without an
active exception"), which would turn a green pytest run into exit code 134.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, QueryBuilder, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError

from pipeline_project.errors import S3ServerError
from pipeline_project.lake import sigv4
from pipeline_project.lake.s3server import (
    LocalS3,
    build_versitygw,
    find_versitygw,
    lake_storage_options,
)
from pipeline_project_tests.support import PYTHON, REPO_ROOT, S3Lake, free_port_pair, unique

APP_ID = "raw-0"


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "pipeline_project.cli", "s3", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )


def rows(uri: str, options: dict[str, str]) -> list[str]:
    table = DeltaTable(uri, storage_options=options)
    result = QueryBuilder().register("t", table).execute("select writer from t order by writer")
    return pa.table(result).column("writer").to_pylist()


def append(target: str | DeltaTable, writer: str, end: int, options: dict[str, str] | None) -> None:
    """Appends three rows of `writer` and records `end` as raw-0's transaction version."""
    write_deltalake(
        target,
        pa.table({"writer": [writer] * 3}),
        mode="append",
        storage_options=options,
        commit_properties=CommitProperties(
            app_transactions=[Transaction(app_id=APP_ID, version=end)],
            custom_metadata={"writer": writer},
        ),
    )


def test_cli_start_status_stop_round_trip(s3_server: LocalS3, tmp_path: Path) -> None:
    port = free_port_pair()
    env = {**os.environ, "PIPELINE_LOCAL_DIR": str(tmp_path), "PIPELINE_S3_PORT": str(port)}
    try:
        started = cli("start", env=env)
        assert started.returncode == 0, started.stderr
        first, *exports = started.stdout.splitlines()
        assert first.startswith("# s3 server started (pid ") and "bucket lake" in first
        assert exports == [
            f"export AWS_ENDPOINT_URL=http://127.0.0.1:{port}",
            "export AWS_ACCESS_KEY_ID=pipeline",
            "export AWS_SECRET_ACCESS_KEY=pipeline-secret",
            "export AWS_REGION=us-east-1",
            "export AWS_ALLOW_HTTP=true",
            "export PIPELINE_LAKE_URI=s3://lake/pipeline",
        ]
        server = LocalS3(home=tmp_path / "s3", port=port)
        pid = server.pid()
        assert pid and os.getsid(pid) == pid  # its own session: Ctrl-C in a terminal spares it
        assert (server.data_dir / "lake").is_dir()

        again = cli("start", env=env)
        assert again.stdout.startswith(f"# s3 server already running (pid {pid})")
        status = cli("status", env=env)
        assert status.returncode == 0
        assert f"running (local, pid {pid})" in status.stdout
        assert "bucket:   lake (exists)" in status.stdout
    finally:
        stopped = cli("stop", env=env)
    assert stopped.stdout.startswith("s3 server stopped (pid ")
    assert cli("status", env=env).returncode == 1
    assert cli("stop", env=env).stdout.startswith("s3 server not running")


def test_start_on_a_busy_port_is_one_line(s3_server: LocalS3, tmp_path: Path) -> None:
    with pytest.raises(S3ServerError, match=f"port {s3_server.port} is already in use"):
        LocalS3(home=tmp_path, port=s3_server.port).start()


def test_binary_from_the_environment_or_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, s3_server: LocalS3, tmp_path: Path
) -> None:
    binary = find_versitygw()
    assert binary
    monkeypatch.setenv("PIPELINE_VERSITYGW", binary)
    assert find_versitygw() == binary
    monkeypatch.setenv("PIPELINE_VERSITYGW", str(tmp_path / "missing"))
    with pytest.raises(S3ServerError, match="is not an executable file"):
        find_versitygw()
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(S3ServerError, match="^go not found, so versitygw cannot be built: "):
        build_versitygw()


def test_put_if_absent_is_enforced_by_the_server(s3_server: LocalS3) -> None:
    """What delta-rs relies on: a second `If-None-Match: *` PUT of one key gets 412."""
    path = f"/{s3_server.bucket}/{unique('inm')}/00000000000000000000.json"
    put = [
        sigv4.request(
            "PUT",
            s3_server.endpoint,
            path,
            s3_server.credentials,
            body=f"writer {n}".encode(),
            headers={"If-None-Match": "*"},
        )[0]
        for n in range(2)
    ]
    assert put == [200, 412]
    assert sigv4.request("GET", s3_server.endpoint, path, s3_server.credentials) == (
        200,
        b"writer 0",
    )


def test_append_and_read_back(s3_lake: S3Lake, s3_server: LocalS3) -> None:
    append(s3_lake.uri, "a", 1, s3_lake.storage_options)
    append(s3_lake.uri, "b", 2, s3_lake.storage_options)

    table = DeltaTable(s3_lake.uri, storage_options=s3_lake.storage_options)
    assert table.version() == 1
    assert table.transaction_version(APP_ID) == 2
    assert rows(s3_lake.uri, s3_lake.storage_options) == ["a"] * 3 + ["b"] * 3
    prefix = s3_lake.uri.removeprefix(f"s3://{s3_server.bucket}/")
    log_dir = s3_server.data_dir / s3_server.bucket / prefix / "_delta_log"
    assert sorted(p.name for p in log_dir.glob("*.json")) == [
        "00000000000000000000.json",
        "00000000000000000001.json",
    ]


def race_once(uri: str, options: dict[str, str], start: int, end: int) -> dict[str, str]:
    """Two writers load the table at one version, see raw-0 at `start`, and commit `end` at once."""
    barrier = threading.Barrier(2)
    outcome: dict[str, str] = {}

    def writer(name: str) -> None:
        table = DeltaTable(uri, storage_options=options)
        assert table.transaction_version(APP_ID) == start
        barrier.wait()
        try:
            append(table, name, end, None)
            outcome[name] = "committed"
        except CommitFailedError as exc:
            outcome[name] = f"CommitFailedError: {exc}"

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("w1", "w2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcome


def test_racing_writers_exactly_one_commits(s3_server: LocalS3) -> None:
    options = s3_server.storage_options()
    for trial in range(20):
        uri = f"s3://{s3_server.bucket}/{unique(f'race{trial}')}"
        append(uri, "seed", 5, options)
        before = DeltaTable(uri, storage_options=options).version()

        outcome = race_once(uri, options, start=5, end=9)

        winners = [name for name, result in outcome.items() if result == "committed"]
        assert len(winners) == 1, outcome
        (loser,) = set(outcome) - set(winners)
        assert outcome[loser] == (
            "CommitFailedError: Failed to commit transaction: Concurrent transaction failed."
        )
        table = DeltaTable(uri, storage_options=options)
        assert table.version() == before + 1
        assert table.transaction_version(APP_ID) == 9
        assert table.history(1)[0]["writer"] == winners[0]
        assert rows(uri, options) == ["seed"] * 3 + [winners[0]] * 3


# -- faults: what delta-rs says, and how fast, when the store is not right ------------------------
def timed_load(uri: str, options: dict[str, str]) -> tuple[OSError, float]:
    started = time.monotonic()
    with pytest.raises(OSError) as caught:
        DeltaTable(uri, storage_options=options)
    return caught.value, time.monotonic() - started


def test_missing_bucket(s3_server: LocalS3) -> None:
    error, took = timed_load(f"s3://no-such-bucket/{unique('t')}", s3_server.storage_options())
    assert "NoSuchBucket" in str(error) and took < 5


def test_wrong_secret(s3_server: LocalS3) -> None:
    options = {**s3_server.storage_options(), "AWS_SECRET_ACCESS_KEY": "wrong"}
    error, took = timed_load(f"s3://{s3_server.bucket}/{unique('t')}", options)
    assert "403 Forbidden" in str(error) and "SignatureDoesNotMatch" in str(error) and took < 5


def test_unknown_access_key(s3_server: LocalS3) -> None:
    options = {**s3_server.storage_options(), "AWS_ACCESS_KEY_ID": "nobody"}
    error, took = timed_load(f"s3://{s3_server.bucket}/{unique('t')}", options)
    assert "XAdminUserNotFound" in str(error) and took < 5


def test_refused_endpoint_is_bounded() -> None:
    """Connection refused is retried max_retries (2) times with backoff: well under a second."""
    port = free_port_pair()
    options = lake_storage_options(f"http://127.0.0.1:{port}", "pipeline", "pipeline-secret")
    error, took = timed_load(f"s3://lake/{unique('t')}", options)
    assert "Connection refused (os error 111)" in str(error) and "after 2 retries" in str(error)
    assert took < 5


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port that accepts TCP connections and never answers: a hung server."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


def test_hung_endpoint_is_bounded_by_timeout(silent_listener: int) -> None:
    endpoint = f"http://127.0.0.1:{silent_listener}"
    options = {**lake_storage_options(endpoint, "pipeline", "x"), "timeout": "1s"}
    error, took = timed_load(f"s3://lake/{unique('t')}", options)
    assert "operation timed out" in str(error)
    assert took < 10  # one 1 s attempt, retried while under retry_timeout (5 s)


COMMIT_PUT = re.compile(rb"PUT \S*/_delta_log/0*[1-9][0-9]*\.json ")


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass


class LossyProxy:
    """TCP to the S3 server, except that the answer to the first commit PUT never comes back.

    versitygw closes every connection after one response (no keep-alive), so each accepted
    connection carries one request and its first bytes hold the request line.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.swallowed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        head = client.recv(65536)
        upstream.sendall(head)
        threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
        if COMMIT_PUT.match(head) and not self.swallowed.is_set():
            upstream.recv(65536)  # the server's 200, never passed on: the client times out
            self.swallowed.set()
            return
        _pump(upstream, client)
        client.close()


def test_lost_commit_response_is_an_error_yet_committed(s3_server: LocalS3) -> None:
    """A commit whose 200 is lost raises OSError (no retry: a conditional PUT is not idempotent),
    yet the commit is in the log: after any commit error, the txn version says what happened."""
    direct = s3_server.storage_options()
    uri = f"s3://{s3_server.bucket}/{unique('lost')}"
    append(uri, "seed", 5, direct)
    proxy = LossyProxy(s3_server.port)
    try:
        proxied = {**direct, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}", "timeout": "2s"}
        table = DeltaTable(uri, storage_options=proxied)
        with pytest.raises(OSError, match=r"(?s)Error performing PUT .*00001\.json.*timed out"):
            append(table, "mine", 9, None)
    finally:
        proxy.listener.close()
    assert proxy.swallowed.is_set()
    after = DeltaTable(uri, storage_options=direct)
    assert (after.version(), after.transaction_version(APP_ID)) == (1, 9)
    assert rows(uri, direct) == ["mine"] * 3 + ["seed"] * 3
