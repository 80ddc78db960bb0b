"""What a secured local broker needs on disk: a CA, a broker certificate, SCRAM passwords, files.

The local broker's secure mode (`pipeline-project kafka start --secure`) mirrors what a managed
Kafka asks of a client: TLS with a CA the client must trust, SASL/SCRAM-SHA-512 logins, and ACLs.
Nothing is downloaded: the certificates come from the machine's `openssl`, the passwords from
`secrets`. Every file holding a secret is created 0600 before anything is written to it, so there
is no moment where another local user could read it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline_project.errors import BrokerError

MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192
BROKER_USER = "broker"  # the broker's own principal: its only super user, also the admin's login
CLIENT_USERS = ("pipeline", "producer")
CERT_DAYS = 30
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


@dataclass(frozen=True)
class SecureFiles:
    """Where a secure broker's TLS material, passwords and client properties files live."""

    home: Path

    @property
    def tls_dir(self) -> Path:
        return self.home / "tls"

    @property
    def ca_cert(self) -> Path:
        return self.tls_dir / "ca.pem"

    @property
    def broker_pem(self) -> Path:
        """The broker's key and certificate chain in one PEM file (Kafka's PEM key store)."""
        return self.tls_dir / "broker.pem"

    @property
    def secrets_file(self) -> Path:
        return self.home / "secrets.json"

    def properties(self, user: str) -> Path:
        """The client properties file of one principal ("admin" is the broker's own login)."""
        return self.home / "clients" / f"{user}.properties"


def write_private(path: Path, text: str) -> None:
    """Writes a file only its owner can read; it is 0600 before the first byte lands."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def new_password() -> str:
    """32 random URL-safe characters: no quote, space or comma to escape in JAAS or SCRAM args."""
    return secrets.token_urlsafe(24)


def passwords(files: SecureFiles, rotate: Iterable[str]) -> dict[str, str]:
    """The broker's and the clients' passwords; the users in `rotate` get new ones.

    The broker's password lives as long as its formatted storage (its SCRAM credential is written
    at format time and its JAAS line must match on every restart); the clients' change on every
    start, so a leaked properties file stops working at the next restart.
    """
    current = stored_passwords(files)
    wanted = (BROKER_USER, *CLIENT_USERS)
    fresh = {u: current[u] if u in current and u not in rotate else new_password() for u in wanted}
    if fresh != current:
        write_private(files.secrets_file, json.dumps(fresh))
    return fresh


def stored_passwords(files: SecureFiles) -> dict[str, str]:
    """The passwords as last written by a start; {} before the first one (nothing is made here)."""
    try:
        return json.loads(files.secrets_file.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}


# -- TLS ------------------------------------------------------------------------------------------
def make_tls(files: SecureFiles) -> None:
    """A fresh CA and a broker certificate signed by it; the CA's key is deleted once it signed.

    The certificate's subject is CN=broker (mapped to the principal User:broker on the mutual-TLS
    controller listener) and its names are localhost and 127.0.0.1, which clients verify. Nobody
    can mint another certificate from this CA afterwards: its key is gone.
    """
    tls = files.tls_dir
    tls.mkdir(parents=True, exist_ok=True)
    os.chmod(tls, 0o700)
    ca_key, key, csr, ext = (tls / n for n in ("ca.key", "broker.key", "broker.csr", "ext.cnf"))
    ext.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "basicConstraints=critical,CA:FALSE\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    days = ["-days", str(CERT_DAYS)]
    try:
        _openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", files.ca_cert, *days,
                 "-subj", "/CN=pipeline-project local CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
        _openssl("req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={BROKER_USER}")
        signed = tls / "broker.crt"
        _openssl("x509", "-req", "-in", csr, "-CA", files.ca_cert, "-CAkey", ca_key,
                 "-CAcreateserial", "-out", signed, *days, "-extfile", ext)  # fmt: skip
        write_private(
            files.broker_pem, key.read_text() + signed.read_text() + files.ca_cert.read_text()
        )
    finally:
        for leftover in (ca_key, key, csr, ext, tls / "broker.crt", tls / "ca.srl"):
            leftover.unlink(missing_ok=True)


def _openssl(*args: object) -> None:
    cmd = ["openssl", *(str(a) for a in args)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, umask=0o077)
    except FileNotFoundError:
        raise BrokerError("openssl not found: install it (apt-get install openssl)") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BrokerError(f"openssl {args[0]} failed making the local CA: {last}")


# -- broker and client configuration --------------------------------------------------------------
def broker_properties(
    files: SecureFiles, port: int, controller_port: int, password: str
) -> dict[str, str]:
    """The listener, TLS, SASL and authorizer settings of the secure mode.

    Clients and the broker itself talk SASL_SSL with SCRAM; the controller listener is TLS with a
    client certificate (KRaft cannot use SCRAM there: the credentials live in the metadata log the
    controller serves), which only the broker holds. Only User:broker is a super user; everyone
    else gets exactly the ACLs `acls.py` grants, and nothing when no ACL matches.
    """
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{BROKER_USER}" password="{password}";'
    )
    return {
        "listeners": f"SASL_SSL://localhost:{port},CONTROLLER://localhost:{controller_port}",
        "advertised.listeners": f"SASL_SSL://localhost:{port}",
        "listener.security.protocol.map": "CONTROLLER:SSL,SASL_SSL:SASL_SSL",
        "inter.broker.listener.name": "SASL_SSL",
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(files.broker_pem),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(files.ca_cert),
        "listener.name.controller.ssl.client.auth": "required",
        "ssl.principal.mapping.rules": "RULE:^CN=([a-zA-Z0-9._-]+)$/$1/,DEFAULT",
        "authorizer.class.name": AUTHORIZER,
        "super.users": f"User:{BROKER_USER}",
        "allow.everyone.if.no.acl.found": "false",
    }


def client_properties(files: SecureFiles, user: str, password: str) -> dict[str, str]:
    """The librdkafka settings a principal needs: what PIPELINE_KAFKA_CONFIG points at."""
    return {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": MECHANISM,
        "sasl.username": user,
        "sasl.password": password,
        "ssl.ca.location": str(files.ca_cert),
        "ssl.endpoint.identification.algorithm": "https",
    }


def write_client_files(files: SecureFiles, secret: dict[str, str]) -> dict[str, Path]:
    """One 0600 properties file per principal, plus `admin` (the broker's login, for set-up)."""
    logins = {"admin": BROKER_USER, **{u: u for u in CLIENT_USERS}}
    written: dict[str, Path] = {}
    for name, user in logins.items():
        props = client_properties(files, user, secret[user])
        header = (
            f"# PIPELINE_KAFKA_CONFIG for User:{user} (pipeline-project kafka start --secure)\n"
        )
        write_private(
            files.properties(name), header + "".join(f"{k}={v}\n" for k, v in props.items())
        )
        written[name] = files.properties(name)
    return written


def scram_format_args(password: str) -> list[str]:
    """The `kafka-storage format` arguments creating the broker's SCRAM user before first start."""
    return ["--add-scram", f"{MECHANISM}=[name={BROKER_USER},password={password}]"]
