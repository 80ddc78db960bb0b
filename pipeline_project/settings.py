"""Settings from PIPELINE_* environment variables, one place for the CLI and the Dagster resources.

Parsing and validation are pydantic-settings' (`EnvSettings`: env prefix PIPELINE_, types, bounds);
a bad value becomes one SettingsError line naming the variable. `Settings` stays a frozen dataclass
holding every default once, so callers derive variants with `dataclasses.replace` (the tests do,
per topic and data dir). The names and defaults are documented in the README's settings table.
Secrets from the PIPELINE_KAFKA_CONFIG properties file are held as SecretStr: no repr, log line or
error message shows them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from croniter import croniter
from pydantic import AfterValidator, Field, SecretStr, TypeAdapter, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline_project.errors import SettingsError
from pipeline_project.kafka.names import check_topic_name

ENV_PREFIX = "PIPELINE_"
# Vacuum never deletes files younger than this: a reader's longest query must finish within it
# (a snapshot's files must outlive every query that started on it).
MIN_VACUUM_RETENTION_HOURS = 1


def read_kafka_properties(path: Path) -> dict[str, SecretStr]:
    """Reads a librdkafka properties file (key=value lines, # comments) for SASL/SSL settings.

    Every value is a SecretStr: passwords and keys must not reach a repr or a log line.
    """
    if not path.is_file():
        raise SettingsError(f"PIPELINE_KAFKA_CONFIG={path} does not exist or is not a file")
    props: dict[str, SecretStr] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"PIPELINE_KAFKA_CONFIG={path}:{number}: expected key=value")
        props[key.strip()] = SecretStr(value.strip())
    return props


@dataclass(frozen=True)
class Settings:
    """Everything configurable: `Settings()` the defaults, `Settings.from_env()` the environment."""

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
    # Ranges of up to this many partitions go in one sensor run (1: a run per partition).
    partitions_per_run: int = 1
    drain_timeout_seconds: float = 120.0
    dlq_timeout_seconds: float = 30.0
    max_lateness_days: int = 7
    max_clock_skew_seconds: int = 300
    # Days before today that Dagster shows as daily partitions (today is one more); read when the
    # code location loads, as partitions are fixed then (`setting_at_load`).
    partition_days: int = 7
    # How often a day's sessions may be redone while its events keep changing: each redo reads the
    # whole day. Read when the code location loads, as automation conditions are fixed then.
    sessions_cron: str = "*/5 * * * *"
    # Niceness of the runs that are not ingestion (sessions, DLQ reprocessing and report, upkeep,
    # checks) in a process of their own: on a busy host they take the CPU the ingest runs leave.
    background_nice: int = 10
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
    # Table upkeep (lake/upkeep.py, defs/upkeep/): compaction target, how long unreferenced files
    # stay for readers of older snapshots, and the lake's retention in days (None = keep for ever).
    compact_target_mb: int = 128
    vacuum_retention_hours: int = 168
    lake_retention_days: int | None = None
    # From the PIPELINE_KAFKA_CONFIG file: SASL/SSL settings, secrets among them (SecretStr; plain
    # str where the code builds them itself, e.g. the local broker's admin login).
    kafka_extra: dict[str, SecretStr | str] = field(default_factory=dict, repr=False, compare=False)

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

    def kafka_properties(self) -> dict[str, str]:
        """The properties file's settings revealed, for a librdkafka client config only."""
        return reveal_properties(self.kafka_extra)

    def kafka_property(self, key: str, default: str | None = None) -> str | None:
        """One property revealed (security.protocol, sasl.username, ...), or `default`."""
        value = self.kafka_extra.get(key)
        return default if value is None else _reveal(value)

    def kafka_common(self) -> dict[str, str]:
        """Librdkafka settings every client shares: bootstrap plus the optional properties file."""
        return {"bootstrap.servers": self.bootstrap, **self.kafka_properties()}

    def check(self) -> Settings:
        """Refuses combinations that can never work, before anything is read (one line each).

        A DLQ topic equal to the raw topic makes ingestion read its own rejects back for ever;
        the parked topic (`<dlq topic>.parked`) equal to the raw topic parks records where they
        are ingested again.
        """
        if self.dlq_topic == self.raw_topic:
            raise SettingsError(
                f"PIPELINE_DLQ_TOPIC={self.dlq_topic!r} is also PIPELINE_RAW_TOPIC: ingestion "
                "would read its own rejects back for ever; give the dead-letter queue its own topic"
            )
        if self.parked_topic == self.raw_topic:
            raise SettingsError(
                f"PIPELINE_RAW_TOPIC={self.raw_topic!r} is the parked topic of "
                f"PIPELINE_DLQ_TOPIC={self.dlq_topic!r} (<dlq topic>.parked): parked records would "
                "be ingested again; rename one of them"
            )
        return self

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Reads PIPELINE_* variables; `overrides` (field names) win over them.

        A malformed value raises one SettingsError line naming the variable, so the CLI, a run
        and a sensor tick can all show it as it is.
        """
        try:
            found = EnvSettings(**overrides)
        except ValidationError as exc:
            raise SettingsError(_one_line(exc)) from None
        values = found.model_dump(exclude_none=True)
        config_file = values.get("kafka_config_file")
        if config_file is not None:
            values["kafka_extra"] = read_kafka_properties(config_file)
        return cls(**values).check()


def _reveal(value: SecretStr | str) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def reveal_properties(props: Mapping[str, SecretStr | str]) -> dict[str, str]:
    """Kafka properties with their values revealed: for a librdkafka config, never for a log."""
    return {key: _reveal(value) for key, value in props.items()}


def _cron(value: str | None) -> str | None:
    if value is not None and not croniter.is_valid(value):
        raise ValueError("is not a cron expression (minute hour day month weekday)")
    return value


def _topic(value: str | None) -> str | None:
    if value is not None:
        check_topic_name(value)
    return value


Topic = Annotated[str, AfterValidator(_topic)]
Cron = Annotated[str, AfterValidator(_cron)]


class EnvSettings(BaseSettings):
    """The environment's view of `Settings`: every field optional, None = not set = the default.

    The field names are `Settings`' (so `Settings(**dump)` works); the variable is PIPELINE_ plus
    the upper-cased name, except where an alias says otherwise.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        str_strip_whitespace=True,
        validate_by_name=True,
    )

    bootstrap: str | None = Field(None, validation_alias="PIPELINE_KAFKA_BOOTSTRAP")
    kafka_config_file: Path | None = Field(None, validation_alias="PIPELINE_KAFKA_CONFIG")
    raw_topic: Topic | None = None
    dlq_topic: Topic | None = None
    data_dir: Path | None = None
    lake_uri: str | None = None
    max_range_events: int | None = Field(None, ge=1)
    min_backlog_events: int | None = Field(None, ge=1)
    max_wait_seconds: float | None = Field(None, ge=0)
    partitions_per_run: int | None = Field(None, ge=1, le=1000)
    drain_timeout_seconds: float | None = Field(None, ge=1)
    dlq_timeout_seconds: float | None = Field(None, ge=1)
    max_lateness_days: int | None = Field(None, ge=0)
    max_clock_skew_seconds: int | None = Field(None, ge=0)
    partition_days: int | None = Field(None, ge=1, le=3660)
    sessions_cron: Cron | None = None
    background_nice: int | None = Field(None, ge=0, le=19)
    consumer_group: str | None = None
    health_max_lag_records: int | None = Field(None, ge=0)
    health_max_lag_seconds: float | None = Field(None, ge=0)
    health_max_ingest_age_seconds: float | None = Field(None, ge=1)
    health_max_dlq_rate: float | None = Field(None, ge=0)
    health_window_seconds: float | None = Field(None, ge=1)
    health_min_free_disk_mb: int | None = Field(None, ge=0)
    max_unknown_ua_share: float | None = Field(None, ge=0)
    native_parse: bool | None = None
    dlq_max_attempts: int | None = Field(None, ge=2)
    dlq_reprocess_cron: Cron | None = None
    dlq_naive_as_utc: bool | None = None
    dlq_max_unresolved_age_hours: float | None = Field(None, ge=0.01)
    compact_target_mb: int | None = Field(None, ge=1, le=4096)
    vacuum_retention_hours: int | None = Field(None, ge=MIN_VACUUM_RETENTION_HOURS)
    lake_retention_days: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _retention_outlives_lateness(self) -> EnvSettings:
        """Retention must keep the lateness window: late events still land in those days."""
        lateness = self.max_lateness_days
        lateness = Settings.max_lateness_days if lateness is None else lateness
        if self.lake_retention_days is not None and self.lake_retention_days <= lateness:
            raise ValueError(
                f"PIPELINE_LAKE_RETENTION_DAYS={self.lake_retention_days} must exceed "
                f"PIPELINE_MAX_LATENESS_DAYS={lateness} (late events still land in those days)"
            )
        return self


def env_name(field_name: str) -> str:
    """The PIPELINE_* variable that sets `field_name`."""
    alias = EnvSettings.model_fields[field_name].validation_alias
    return alias if isinstance(alias, str) else ENV_PREFIX + field_name.upper()


def setting_at_load(field_name: str) -> Any:
    """One setting read alone (its default when unset), for what is fixed when code loads.

    Only that variable is read, so another malformed one cannot get in the way; a malformed value
    raises the same one SettingsError line as `Settings.from_env`.
    """
    variable = env_name(field_name)
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return getattr(Settings(), field_name)
    info = EnvSettings.model_fields[field_name]
    try:
        kind = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        return TypeAdapter(kind).validate_python(raw)
    except ValidationError as exc:
        message = str(exc.errors(include_url=False)[0]["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"{variable}={raw!r}: {message}") from None


def _one_line(exc: ValidationError) -> str:
    """`<variable>='<value>': <what is wrong>` for each bad value, on one line."""
    problems = []
    for error in exc.errors(include_url=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"]:  # a rule across settings: its message names them
            problems.append(message)
            continue
        name = str(error["loc"][0])
        if name in EnvSettings.model_fields:
            name = env_name(name)
        problems.append(f"{name}={error.get('input')!r}: {message}")
    return "; ".join(problems)
