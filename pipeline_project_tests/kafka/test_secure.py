"""The pipeline on a secured broker (SASL_SSL, SCRAM-SHA-512, StandardAuthorizer), real, no mocks.

Every step runs as the least-privilege principals with exactly the ACLs of kafka/acls.py: the
producer CLI as User:producer, the sensor, Dagster jobs and the CLI as User:pipeline. The failure
cases each give one line naming the cause, a non-zero exit, and nothing committed; no password
ever lands in an output, the Dagster home or the data dir.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from dagster import DagsterInstance

from pipeline_project.batch.run import ingest
from pipeline_project.definitions import defs
from pipeline_project.defs.resources import SETTINGS_KEY, PipelineSettings
from pipeline_project.errors import KafkaAuthorizationError, KafkaUnavailableError
from pipeline_project.kafka import secure
from pipeline_project.kafka.acls import PIPELINE, PRODUCER, grants
from pipeline_project.settings import Settings, read_kafka_properties
from pipeline_project_tests.conftest import SecureKafka
from pipeline_project_tests.defs.test_ingest_e2e import tick_until_caught_up
from pipeline_project_tests.support import PYTHON, REPO_ROOT, env_for, plain_properties

EVENTS = 300


class Shell:
    """Runs the project's commands as a user would, keeping every byte they printed."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.outputs: list[str] = []

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            list(args),
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO_ROOT,
        )
        self.outputs += [done.stdout, done.stderr]
        return done

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return self.run(PYTHON, "-m", "pipeline_project.cli", *args, **env)


def as_producer(settings: Settings, secure_kafka: SecureKafka) -> Settings:
    return dataclasses.replace(
        settings,
        kafka_config_file=secure_kafka.producer,
        kafka_extra=read_kafka_properties(secure_kafka.producer),
    )


def produce(shell: Shell, settings: Settings, secure_kafka: SecureKafka, count: int) -> list[dict]:
    """The producer CLI as User:producer; returns the truth file."""
    truth = settings.data_dir.parent / f"truth-{count}.jsonl"
    env = env_for(as_producer(settings, secure_kafka))
    done = shell.cli(
        "produce", "--count", str(count), "--rate", "0", "--seed", "7",
        "--bad-ratio", "0.1", "--truth", str(truth), **env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in truth.read_text().splitlines()]


def topic_size(secure_kafka: SecureKafka, topic: str) -> int:
    """Records in a topic, read with the broker's own login (the principals may not)."""
    consumer = Consumer(
        {
            "bootstrap.servers": secure_kafka.bootstrap,
            **plain_properties(secure_kafka.admin),
            "group.id": "test-size",
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        total = 0
        for partition in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def files_containing(roots: list[Path], secret: str) -> list[Path]:
    """Every file under the roots whose bytes contain the secret."""
    needle = secret.encode()
    return [
        path
        for root in roots
        for path in root.rglob("*")
        if path.is_file() and needle in path.read_bytes()
    ]


def acls_on(secure_kafka: SecureKafka, settings: Settings) -> set[tuple[str, str, str, str]]:
    """(principal, resource type, name, operation) of every ACL on this test's topics and group."""
    admin = AdminClient(
        {"bootstrap.servers": secure_kafka.bootstrap, **plain_properties(secure_kafka.admin)}
    )
    every = AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
        AclOperation.ANY, AclPermissionType.ANY,
    )  # fmt: skip
    ours = {settings.raw_topic, settings.dlq_topic, settings.parked_topic, settings.consumer_group}
    return {
        (b.principal, b.restype.name, b.name, b.operation.name)
        for b in admin.describe_acls(every, request_timeout=15).result(timeout=15)
        if b.name in ours
    }


# -- the flow ------------------------------------------------------------------------------------
def test_least_privilege_flow_end_to_end_leaks_no_secret(
    secure_kafka: SecureKafka,
    secure_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, home = secure_settings, tmp_path / "dagster_home"
    home.mkdir()
    documented = {
        (g.principal, g.resource.name, g.name, g.operation.name) for g in grants(settings)
    }
    assert acls_on(secure_kafka, settings) == documented  # exactly the set, nothing else
    assert all(g.resource.name != "BROKER" for g in grants(settings))  # no cluster ACL at all
    knobs = {
        "PIPELINE_MIN_BACKLOG_EVENTS": "1",
        "PIPELINE_MAX_WAIT_SECONDS": "0",
        "PIPELINE_DLQ_MAX_ATTEMPTS": "2",
        "PIPELINE_HEALTH_MAX_DLQ_RATE": "1",
        "DAGSTER_HOME": str(home),
    }
    shell = Shell(env_for(settings, **knobs))
    truth = produce(shell, settings, secure_kafka, EVENTS)
    bad = sum(1 for t in truth if t["verdict"].startswith("bad:"))
    assert bad > 0

    # The sensor plans, Dagster runs ingest_events, as User:pipeline (env only, as in a deployment:
    # the `settings` resource with no field set reads every PIPELINE_* variable at the tick or run).
    for name, value in env_for(settings, **knobs).items():
        if name.startswith("PIPELINE_"):
            monkeypatch.setenv(name, value)
    with DagsterInstance.local_temp(tempdir=str(home)) as instance:
        assert tick_until_caught_up(instance, {SETTINGS_KEY: PipelineSettings()})
        # Reprocess (a job) once: every record is tried a second time, and parked at the limit.
        assert defs.resolve_job_def("reprocess_dlq").execute_in_process(instance=instance).success
        assert defs.resolve_job_def("dlq_report_job").execute_in_process(instance=instance).success
    assert topic_size(secure_kafka, settings.dlq_topic) >= bad
    assert topic_size(secure_kafka, settings.parked_topic) > 0

    # More events, drained by the Dagster CLI.
    produce(shell, settings, secure_kafka, 50)
    done = shell.run(str(Path(PYTHON).parent / "dagster"), "job", "execute",
                     "-m", "pipeline_project.definitions", "-j", "ingest_events")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    for args in (("dlq", "replay"), ("dlq", "inspect"), ("topics", "ensure"), ("kafka", "status")):
        done = shell.cli(*args)
        assert done.returncode == 0, (args, done.stderr[-2000:])
    health = shell.cli("health", "--json")
    report = json.loads(health.stdout)
    assert health.returncode == 0, health.stdout
    assert {c["name"]: c["status"] for c in report["checks"]}["broker"] == "ok"
    reconcile = shell.cli("reconcile", "--json")
    assert reconcile.returncode == 0, reconcile.stdout[-2000:]
    assert json.loads(reconcile.stdout)["ok"] is True

    outputs = tmp_path / "outputs.txt"
    outputs.write_text("\n".join(shell.outputs))
    for name in ("pipeline", "producer", "admin"):
        leaks = files_containing([home, settings.data_dir, outputs], secure_kafka.password(name))
        assert leaks == [], f"the {name} password leaked into {leaks}"


def test_kafka_start_secure_provisions_and_prints_files_not_passwords(
    secure_kafka: SecureKafka, secure_settings: Settings
) -> None:
    """`kafka start --secure` on the running broker: topics, ACLs and the files to use."""
    local_dir = secure_kafka.broker.home.parent
    env = env_for(secure_settings, PIPELINE_LOCAL_DIR=str(local_dir))
    shell = Shell({k: v for k, v in env.items() if k != "PIPELINE_KAFKA_CONFIG"})
    done = shell.cli("kafka", "start", "--secure")
    assert done.returncode == 0, done.stderr
    assert "already running" in done.stdout
    assert f"PIPELINE_KAFKA_CONFIG={secure_kafka.pipeline}" in done.stdout
    assert f"ACLs: {len(grants(secure_settings))} for {PIPELINE} and {PRODUCER}" in done.stdout
    for name in ("pipeline", "producer", "admin"):
        assert secure_kafka.password(name) not in done.stdout + done.stderr
        assert (getattr(secure_kafka, name).stat().st_mode & 0o777) == 0o600


# -- login and TLS failures ------------------------------------------------------------------------
def bad_config(case: str, secure_kafka: SecureKafka, tmp_path: Path) -> Path:
    """The pipeline's properties file, broken one way."""
    props = plain_properties(secure_kafka.pipeline)
    if case == "wrong_password":
        props["sasl.password"] = "not-the-password"
    elif case == "unknown_ca":
        other = tmp_path / "other-ca.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(tmp_path / "other.key"), "-out", str(other),
             "-days", "1", "-subj", "/CN=someone else"],
            check=True, capture_output=True,
        )  # fmt: skip
        props["ssl.ca.location"] = str(other)
    else:  # plaintext: no security settings at all
        props = {}
    path = tmp_path / f"{case}.properties"
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    return path


CAUSES = {
    "wrong_password": "refused the login of user 'pipeline': wrong username or password",
    "unknown_ca": "TLS certificate not signed by the CA in",
    "plaintext": "closed the connection of a PLAINTEXT client: the port expects TLS/SASL",
}


@pytest.mark.parametrize("case", sorted(CAUSES))
def test_login_and_tls_failures_are_one_named_line_and_commit_nothing(
    case: str, secure_kafka: SecureKafka, secure_settings: Settings, tmp_path: Path
) -> None:
    produce(Shell(env_for(secure_settings)), secure_settings, secure_kafka, 20)
    config = bad_config(case, secure_kafka, tmp_path)
    broken = dataclasses.replace(
        secure_settings, kafka_config_file=config, kafka_extra=read_kafka_properties(config)
    )
    shell = Shell(env_for(broken))
    for args in (("produce", "--count", "5"), ("dlq", "replay"), ("topics", "ensure")):
        done = shell.cli(*args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1 and CAUSES[case] in done.stderr, (args, done.stderr)
    health = shell.cli("health", "--json")
    assert health.returncode == 2
    broker = json.loads(health.stdout)["checks"][0]
    assert broker["name"] == "broker" and CAUSES[case] in broker["detail"]

    with pytest.raises(KafkaUnavailableError, match=CAUSES[case].split(":")[0]):
        ingest(broken)
    assert not list(broken.lake_dir.rglob("*.parquet"))
    assert topic_size(secure_kafka, secure_settings.dlq_topic) == 0
    assert topic_size(secure_kafka, secure_settings.raw_topic) == 20
    for name in ("pipeline", "producer", "admin"):
        assert secure_kafka.password(name) not in "".join(shell.outputs)


# -- missing ACLs ----------------------------------------------------------------------------------
def revoke(secure_kafka: SecureKafka, principal: str, kind: ResourceType, name: str,
           operation: AclOperation) -> None:  # fmt: skip
    """Deletes one ACL of the documented set, with the broker's own login."""
    admin = AdminClient(
        {"bootstrap.servers": secure_kafka.bootstrap, **plain_properties(secure_kafka.admin)}
    )
    target = AclBindingFilter(
        kind, name, ResourcePatternType.LITERAL, principal, "*", operation, AclPermissionType.ALLOW
    )
    for future in admin.delete_acls([target], request_timeout=15).values():
        assert len(future.result(timeout=15)) == 1


@pytest.mark.parametrize(
    ("what", "operation"),
    [
        ("raw", AclOperation.READ),
        ("dlq", AclOperation.WRITE),
        ("group", AclOperation.READ),
    ],
)
def test_missing_pipeline_acl_names_it_and_ingest_commits_nothing(
    what: str, operation: AclOperation, secure_kafka: SecureKafka, secure_settings: Settings
) -> None:
    settings = secure_settings
    produce(Shell(env_for(settings)), settings, secure_kafka, 30)
    names = {"raw": settings.raw_topic, "dlq": settings.dlq_topic, "group": settings.consumer_group}
    kind = ResourceType.GROUP if what == "group" else ResourceType.TOPIC
    revoke(secure_kafka, PIPELINE, kind, names[what], operation)

    with pytest.raises(KafkaAuthorizationError) as caught:
        ingest(settings)
    verb, resource = operation.name.title(), f"{kind.name.title()}:{names[what]}"
    assert f"User:pipeline may not {verb} {resource}" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not list(settings.lake_dir.rglob("*.parquet"))
    assert topic_size(secure_kafka, settings.dlq_topic) == 0


def test_missing_producer_and_parked_acls_fail_the_cli_in_one_line(
    secure_kafka: SecureKafka, secure_settings: Settings
) -> None:
    settings = secure_settings
    revoke(secure_kafka, PRODUCER, ResourceType.TOPIC, settings.raw_topic, AclOperation.WRITE)
    shell = Shell(env_for(as_producer(settings, secure_kafka)))
    done = shell.cli("produce", "--count", "5")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"pipeline-project: error: not authorized: User:producer may not Write "
        f"Topic:{settings.raw_topic} (missing ACL: ALLOW Write on Topic:{settings.raw_topic}); "
        "nothing was sent"
    )
    assert topic_size(secure_kafka, settings.raw_topic) == 0

    revoke(secure_kafka, PIPELINE, ResourceType.TOPIC, settings.parked_topic, AclOperation.WRITE)
    done = Shell(env_for(settings)).cli("dlq", "replay")
    assert done.returncode == 1
    assert f"may not Write Topic:{settings.parked_topic}" in done.stderr
    assert done.stderr.count("\n") == 1


# -- the files the secure mode makes (no broker) --------------------------------------------------
def test_passwords_rotate_for_clients_only_and_stay_owner_only(tmp_path: Path) -> None:
    files = secure.SecureFiles(tmp_path)
    first = secure.passwords(files, rotate=secure.CLIENT_USERS)
    second = secure.passwords(files, rotate=secure.CLIENT_USERS)
    assert second[secure.BROKER_USER] == first[secure.BROKER_USER]  # its SCRAM record is on disk
    assert all(second[u] != first[u] for u in secure.CLIENT_USERS)
    assert len(set(second.values())) == 3 and all(len(p) >= 32 for p in second.values())
    assert files.secrets_file.stat().st_mode & 0o777 == 0o600


def test_tls_material_verifies_and_the_ca_key_is_gone(tmp_path: Path) -> None:
    files = secure.SecureFiles(tmp_path)
    secure.make_tls(files)
    assert sorted(p.name for p in files.tls_dir.iterdir()) == ["broker.pem", "ca.pem"]
    assert files.broker_pem.stat().st_mode & 0o777 == 0o600
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(files.ca_cert), "-verify_hostname", "localhost",
         str(files.broker_pem)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
