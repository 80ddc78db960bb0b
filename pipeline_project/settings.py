"""Settings from PIPELINE_* environment variables, one place for the CLI and the Dagster resources.

The names and defaults of the Kafka and data-dir settings are a contract (DESIGN.md §3); the batch
sizing settings are ours. Secrets from PIPELINE_KAFKA_CONFIG are never logged or printed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline_project.errors import SettingsError


def _env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


def _env_float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


def _env_bool(name: str, default: bool) -> bool:
    raw = (os.environ.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} is not true/false")


def read_kafka_properties(path: Path) -> dict[str, str]:
    """Reads a librdkafka properties file (key=value lines, # comments) for SASL/SSL settings."""
    if not path.is_file():
        raise SettingsError(f"PIPELINE_KAFKA_CONFIG={path} does not exist or is not a file")
    props: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"PIPELINE_KAFKA_CONFIG={path}:{number}: expected key=value")
        props[key.strip()] = value.strip()
    return props


@dataclass(frozen=True)
class Settings:
    """Everything configurable, resolved once from the environment."""

    bootstrap: str = "localhost:9092"
    kafka_config_file: Path | None = None
    raw_topic: str = "raw-events"
    dlq_topic: str = "dead-letter-queue"
    data_dir: Path = Path("data")
    # Where the Delta tables live: a local path or s3://bucket/prefix; "" = <data_dir>/output.
    lake_uri: str = ""
    # Batch sizing and timing (ours, not a contract).
    max_range_events: int = 200_000
    min_backlog_events: int = 5_000
    max_wait_seconds: float = 30.0
    drain_timeout_seconds: float = 120.0
    dlq_timeout_seconds: float = 30.0
    max_lateness_days: int = 7
    max_clock_skew_seconds: int = 300
    consumer_group: str = "pipeline-project-lake"
    # Operator thresholds (`pipeline-project health`, the events checks): past one is "degraded".
    health_max_lag_records: int = 100_000
    health_max_lag_seconds: float = 300.0
    health_max_ingest_age_seconds: float = 600.0
    health_max_dlq_rate: float = 0.10
    health_window_seconds: float = 900.0
    health_min_free_disk_mb: int = 1_024
    max_unknown_ua_share: float = 0.05
    # The native parse decoder, when built: off only to rule it out (the results are the same).
    native_parse: bool = True
    # DLQ reprocessing and its report (dlq/): tries before parking, schedule, repair policy, checks.
    dlq_max_attempts: int = 3
    dlq_reprocess_cron: str = "0 * * * *"
    dlq_naive_as_utc: bool = True
    dlq_max_unresolved_age_hours: float = 24.0
    kafka_extra: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def lake_dir(self) -> Path:
        """Root of the committed lake: only complete, manifest-listed files live here."""
        return self.data_dir / "output"

    @property
    def state_dir(self) -> Path:
        """Manifests, intents, staging, locks: outside the lake root so readers never see them."""
        return self.data_dir / "state"

    @property
    def parked_topic(self) -> str:
        """Where DLQ records go after too many failed repair attempts."""
        return f"{self.dlq_topic}.parked"

    def kafka_common(self) -> dict[str, str]:
        """Librdkafka settings every client shares: bootstrap plus the optional properties file."""
        conf = {"bootstrap.servers": self.bootstrap}
        conf.update(self.kafka_extra)
        return conf

    @classmethod
    def from_env(cls) -> Settings:
        """Reads PIPELINE_* variables; a malformed one raises SettingsError naming it."""
        env = os.environ
        config_file = env.get("PIPELINE_KAFKA_CONFIG") or None
        extra = read_kafka_properties(Path(config_file)) if config_file else {}
        bootstrap = env.get("PIPELINE_KAFKA_BOOTSTRAP") or "localhost:9092"
        for topic_var in ("PIPELINE_RAW_TOPIC", "PIPELINE_DLQ_TOPIC"):
            value = env.get(topic_var)
            if value is not None and not _valid_topic(value):
                raise SettingsError(f"{topic_var}={value!r} is not a valid Kafka topic name")
        return cls(
            bootstrap=bootstrap,
            kafka_config_file=Path(config_file) if config_file else None,
            raw_topic=env.get("PIPELINE_RAW_TOPIC") or "raw-events",
            dlq_topic=env.get("PIPELINE_DLQ_TOPIC") or "dead-letter-queue",
            data_dir=Path(env.get("PIPELINE_DATA_DIR") or "data"),
            lake_uri=(env.get("PIPELINE_LAKE_URI") or "").strip(),
            max_range_events=_env_int("PIPELINE_MAX_RANGE_EVENTS", 200_000, minimum=1),
            min_backlog_events=_env_int("PIPELINE_MIN_BACKLOG_EVENTS", 5_000, minimum=1),
            max_wait_seconds=_env_float("PIPELINE_MAX_WAIT_SECONDS", 30.0),
            drain_timeout_seconds=_env_float("PIPELINE_DRAIN_TIMEOUT_SECONDS", 120.0, minimum=1),
            dlq_timeout_seconds=_env_float("PIPELINE_DLQ_TIMEOUT_SECONDS", 30.0, minimum=1),
            max_lateness_days=_env_int("PIPELINE_MAX_LATENESS_DAYS", 7, minimum=0),
            max_clock_skew_seconds=_env_int("PIPELINE_MAX_CLOCK_SKEW_SECONDS", 300, minimum=0),
            consumer_group=env.get("PIPELINE_CONSUMER_GROUP") or "pipeline-project-lake",
            health_max_lag_records=_env_int("PIPELINE_HEALTH_MAX_LAG_RECORDS", 100_000),
            health_max_lag_seconds=_env_float("PIPELINE_HEALTH_MAX_LAG_SECONDS", 300.0),
            health_max_ingest_age_seconds=_env_float(
                "PIPELINE_HEALTH_MAX_INGEST_AGE_SECONDS", 600.0, minimum=1
            ),
            health_max_dlq_rate=_env_float("PIPELINE_HEALTH_MAX_DLQ_RATE", 0.10),
            health_window_seconds=_env_float("PIPELINE_HEALTH_WINDOW_SECONDS", 900.0, minimum=1),
            health_min_free_disk_mb=_env_int("PIPELINE_HEALTH_MIN_FREE_DISK_MB", 1_024),
            max_unknown_ua_share=_env_float("PIPELINE_MAX_UNKNOWN_UA_SHARE", 0.05),
            native_parse=_env_bool("PIPELINE_NATIVE_PARSE", True),
            dlq_max_attempts=_env_int("PIPELINE_DLQ_MAX_ATTEMPTS", 3, minimum=2),
            dlq_reprocess_cron=env.get("PIPELINE_DLQ_REPROCESS_CRON") or "0 * * * *",
            dlq_naive_as_utc=_env_bool("PIPELINE_DLQ_NAIVE_AS_UTC", True),
            dlq_max_unresolved_age_hours=_env_float(
                "PIPELINE_DLQ_MAX_UNRESOLVED_AGE_HOURS", 24.0, minimum=0.01
            ),
            kafka_extra=extra,
        )


def _valid_topic(name: str) -> bool:
    """Kafka's own rule: 1-249 characters of [a-zA-Z0-9._-], not '.' or '..'."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    return 0 < len(name) <= 249 and name not in (".", "..") and set(name) <= allowed
