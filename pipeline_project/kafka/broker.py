"""The local Kafka broker (KRaft, one combined broker+controller node) from Maven Central jars.

No Docker: Maven resolves `kafka_2.13` and a logging backend into ~/.m2 once, the storage is
formatted once under `.local/kafka/`, and the JVM runs in its own session so Ctrl-C in a terminal
does not kill it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pipeline_project.errors import BrokerError
from pipeline_project.kafka import secure as tls
from pipeline_project.local_server import ServerProcess, port_in_use
from pipeline_project.settings import Settings

log = logging.getLogger(__name__)

MIN_JAVA = 17
POM_NAME = "broker-pom.xml"
LOG4J_NAME = "broker-log4j2.properties"
LOCAL_HOSTS = ("localhost", "127.0.0.1")


def _package_file(name: str) -> Path:
    return Path(str(resources.files("pipeline_project.kafka").joinpath(name)))


def kafka_version() -> str:
    """The pinned broker version, read from the one place it is written: the pom's kafka.version."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.parse(_package_file(POM_NAME)).getroot()  # noqa: S314 - our own packaged pom
    node = root.find("m:properties/m:kafka.version", ns)
    if node is None or not node.text:
        raise BrokerError(f"{POM_NAME} has no kafka.version property")
    return node.text.strip()


def java_binary() -> str:
    """JAVA_HOME's java if set, else the one on PATH; BrokerError if there is none."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise BrokerError(
            "java not found: install Java 17 or newer (apt-get install openjdk-17-jre)"
        )
    return found


def java_major(java: str) -> int:
    """Major version of a java binary, from `java -version` (printed on stderr)."""
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        raise BrokerError(f"could not read the Java version from `{java} -version`")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def parse_local_bootstrap(bootstrap: str) -> int:
    """The port of a localhost bootstrap; BrokerError when it names another host."""
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if host not in LOCAL_HOSTS or not port.isdigit():
        raise BrokerError(
            f"the local broker listens on localhost only; PIPELINE_KAFKA_BOOTSTRAP={bootstrap!r} "
            "points elsewhere (unset it to use localhost:9092)"
        )
    return int(port)


@dataclass
class LocalBroker:
    """One local KRaft node: its files under `home`, its listener on localhost:`port`.

    `secure` gives it a SASL_SSL listener instead of PLAINTEXT (see `secure.py`): TLS with a CA
    made at start-up, SCRAM-SHA-512 logins, the StandardAuthorizer and no ACL for anyone yet.
    """

    home: Path
    port: int = 9092
    heap: str = "768m"
    start_timeout: float = 60.0
    secure: bool = False

    @classmethod
    def from_settings(cls, settings: Settings, secure: bool = False) -> LocalBroker:
        """The project's broker; the secure one keeps its own storage (its users live there)."""
        local_dir = Path(os.environ.get("PIPELINE_LOCAL_DIR") or ".local")
        name = "kafka-secure" if secure else "kafka"
        return cls(
            home=(local_dir / name).absolute(),
            port=parse_local_bootstrap(settings.bootstrap),
            secure=secure,
        )

    @property
    def files(self) -> tls.SecureFiles:
        return tls.SecureFiles(self.home)

    def admin_properties(self) -> dict[str, str]:
        """Client settings of the broker's own principal (super user); {} for a plaintext broker."""
        if not self.secure:
            return {}
        password = tls.stored_passwords(self.files).get(tls.BROKER_USER)
        if password is None:
            raise BrokerError(
                f"no secure broker was started under {self.home}: run `pipeline-project kafka "
                "start --secure` first"
            )
        return tls.client_properties(self.files, tls.BROKER_USER, password)

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def bootstrap(self) -> str:
        return f"localhost:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.home / "broker.log"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    # -- jars ------------------------------------------------------------------------------------
    def classpath(self) -> str:
        """The broker classpath; resolved with Maven on first use, then read from the cache file."""
        cp_file = self.home / f"classpath-{kafka_version()}.txt"
        if cp_file.exists():
            cached = cp_file.read_text().strip()
            if cached and all(Path(jar).exists() for jar in cached.split(os.pathsep)):
                return cached
        return self._resolve(cp_file)

    def _resolve(self, cp_file: Path) -> str:
        mvn = shutil.which("mvn")
        if not mvn:
            raise BrokerError(
                "mvn not found: install Maven (apt-get install maven) to fetch the broker jars"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        log.info("resolving Kafka %s jars with Maven (first run only)", kafka_version())
        cmd = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(_package_file(POM_NAME)),
            "dependency:build-classpath",
            f"-Dmdep.outputFile={cp_file}",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if done.returncode != 0 or not cp_file.exists():
            mvn_log = self.home / "maven.log"
            mvn_log.write_text(done.stdout + done.stderr)
            raise BrokerError(
                f"Maven could not resolve the Kafka jars (exit {done.returncode}); see {mvn_log}"
            )
        return cp_file.read_text().strip()

    # -- storage ---------------------------------------------------------------------------------
    def write_config(self, secure_props: dict[str, str] | None = None) -> Path:
        """server.properties for one combined node; written on every start so port changes apply.

        `secure_props` (listeners, TLS, SASL, authorizer) override the plaintext ones; the file is
        then 0600, as it holds the broker's own password.
        """
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / "server.properties"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"localhost:{self.controller_port}",
            "listeners": f"PLAINTEXT://localhost:{self.port},CONTROLLER://localhost:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://localhost:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "3",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.check.interval.ms": "10000",
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        props.update(secure_props or {})
        tls.write_private(config, "".join(f"{k}={v}\n" for k, v in props.items()))
        return config

    @property
    def formatted(self) -> bool:
        return (self.data_dir / "meta.properties").exists()

    def ensure_formatted(
        self, java: str, classpath: str, config: Path, extra_args: list[str] | None = None
    ) -> None:
        """Formats KRaft storage once; a formatted data dir is left as it is.

        The arguments go through a 0600 java @argfile, deleted afterwards: `extra_args` may carry
        the broker's SCRAM password, which must not show in the process list.
        """
        if self.formatted:
            return
        args = [
            "kafka.tools.StorageTool",
            "format",
            "-t",
            _kraft_cluster_id(),
            "-c",
            str(config),
            "--standalone",
            "--ignore-formatted",
            *(extra_args or []),
        ]
        argfile = self.home / "format.args"
        tls.write_private(argfile, "\n".join(args) + "\n")
        try:
            cmd = [java, "-cp", classpath, f"@{argfile}"]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        finally:
            argfile.unlink(missing_ok=True)
        if done.returncode != 0:
            self.log_file.write_text(done.stdout + done.stderr)
            raise BrokerError(f"formatting KRaft storage failed; see {self.log_file}")

    # -- process ---------------------------------------------------------------------------------
    @property
    def process(self) -> ServerProcess:
        """Its pid file, log and command line: what finds, starts and stops the JVM."""
        return ServerProcess(
            "the broker",
            self.pid_file,
            self.log_file,
            owns=lambda cmdline: b"kafka.Kafka" in cmdline,
            error=BrokerError,
        )

    def pid(self) -> int | None:
        """The pid if our pid file names a live Kafka JVM, else None (a stale file is removed)."""
        return self.process.pid()

    def start(self) -> str:
        """Starts the broker unless ours already runs; returns what happened, in words."""
        running = self.pid()
        if running:
            return f"broker already running (pid {running}) on {self.bootstrap}"
        for port in (self.port, self.controller_port):
            if port_in_use(port):
                raise BrokerError(
                    f"port {port} is already in use by another process; stop it or set "
                    f"PIPELINE_KAFKA_BOOTSTRAP=localhost:<free port> (log: {self.log_file})"
                )
        java = java_binary()
        major = java_major(java)
        if major < MIN_JAVA:
            raise BrokerError(
                f"Java {major} is too old: Kafka {kafka_version()} needs Java {MIN_JAVA}+ ({java})"
            )
        classpath = self.classpath()
        if self.secure:
            return self._start_secure(java, classpath)
        config = self.write_config()
        self.ensure_formatted(java, classpath, config)
        proc = self._spawn(java, classpath, config)
        self._wait_ready(proc)
        return f"broker started (pid {proc.pid}) on {self.bootstrap}, Kafka {kafka_version()}"

    def _start_secure(self, java: str, classpath: str) -> str:
        """A new CA and certificate, new client passwords, then start, then (re)key the users.

        The broker's own password is kept as long as its storage: it was written into the
        metadata log at format time. A formatted storage without it cannot be logged into.
        """
        files = self.files
        if self.formatted and not files.secrets_file.exists():
            raise BrokerError(
                f"{files.secrets_file} is missing, so nobody can log into the formatted storage "
                f"under {self.data_dir}; remove {self.home} to start afresh"
            )
        secret = tls.passwords(files, rotate=tls.CLIENT_USERS)
        tls.make_tls(files)
        props = tls.broker_properties(
            files, self.port, self.controller_port, secret[tls.BROKER_USER]
        )
        config = self.write_config(props)
        self.ensure_formatted(
            java, classpath, config, tls.scram_format_args(secret[tls.BROKER_USER])
        )
        proc = self._spawn(java, classpath, config)
        self._wait_ready(proc)
        from pipeline_project.kafka.acls import upsert_users
        from pipeline_project.kafka.topics import admin_client_for

        admin = admin_client_for(self.bootstrap, self.admin_properties())
        upsert_users(admin, {u: secret[u] for u in tls.CLIENT_USERS})
        tls.write_client_files(files, secret)
        return (
            f"secure broker started (pid {proc.pid}) on {self.bootstrap} (SASL_SSL, "
            f"{tls.MECHANISM}), Kafka {kafka_version()}"
        )

    def _spawn(self, java: str, classpath: str, config: Path) -> subprocess.Popen:
        cmd = [
            java,
            "-Xms256m",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={_package_file(LOG4J_NAME)}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(config),
        ]
        return self.process.spawn(cmd, cwd=self.home)

    def _wait_ready(self, proc: subprocess.Popen) -> None:
        """Waits until the broker answers a metadata request, within start_timeout."""

        def answers() -> bool:
            extra = self.admin_properties()
            return port_in_use(self.port) and metadata_ok(self.bootstrap, timeout=2.0, extra=extra)

        self.process.wait_ready(proc, answers, self.start_timeout, every=0.3)

    def stop(self, timeout: float = 30.0) -> str:
        """SIGTERM, wait for a clean shutdown, then SIGKILL; says so when nothing was running."""
        pid = self.process.stop(timeout)
        return f"broker stopped (pid {pid})" if pid else f"broker not running ({self.home})"


def metadata_ok(bootstrap: str, timeout: float = 2.0, extra: dict[str, str] | None = None) -> bool:
    """True when a cluster at `bootstrap` answers a metadata request within timeout.

    `extra` is the client's security settings (PIPELINE_KAFKA_CONFIG): a secured cluster does
    not answer without them.
    """
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            **(extra or {}),
            "socket.timeout.ms": int(timeout * 1000),
            "log_level": 0,
            "logger": _SILENT,
        }
    )
    try:
        admin.list_topics(timeout=timeout)
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False
    return True


class _Silent(logging.Logger):
    """A logger that drops librdkafka's connection-refused chatter while we poll for readiness."""

    def __init__(self) -> None:
        super().__init__("pipeline_project.kafka.silent", level=logging.CRITICAL + 1)


_SILENT = _Silent()


def _kraft_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, base64url, unpadded (what `random-uuid` prints).

    Never with a leading '-' (1 in 64 draws): `kafka-storage format -t -x…` reads it as an option
    and fails; Kafka's own Uuid.randomUuid() redraws those too.
    """
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
