"""The code location's resource `settings`: every PIPELINE_* setting, resolved per run and tick.

Ops, assets, checks, sensors and schedules take `settings: PipelineSettings` as a parameter; nothing
reads the environment at import, so a malformed variable cannot stop the code location from
loading. It surfaces where it is used, as one line: a failed run (`for_run`) or a skipped sensor or
schedule tick (`resolve` raises SettingsError, the tick reports it).

Each field overrides its PIPELINE_* variable (the launchpad can set them per run; tests pass them
instead of patching the environment); a field left None is read from the environment by
pydantic-settings when the run or tick starts (`Settings.from_env`). Not Dagster's `EnvVar`: an
`EnvVar` whose variable is unset fails the run, and every one of these settings has a default.
Kafka and the lake are not separate resources: the core takes one `Settings` for both, and a
second resource would only split that object for Dagster's sake.
"""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource, DagsterLogManager, Failure

from pipeline_project.errors import SettingsError
from pipeline_project.perf import lower_priority
from pipeline_project.settings import Settings

SETTINGS_KEY = "settings"


class PipelineSettings(ConfigurableResource):
    """Overrides of the PIPELINE_* settings; None = the environment's value or the default."""

    bootstrap: str | None = None
    kafka_config_file: str | None = None
    raw_topic: str | None = None
    dlq_topic: str | None = None
    data_dir: str | None = None
    lake_uri: str | None = None
    max_range_events: int | None = None
    min_backlog_events: int | None = None
    max_wait_seconds: float | None = None
    partitions_per_run: int | None = None
    drain_timeout_seconds: float | None = None
    dlq_timeout_seconds: float | None = None
    max_lateness_days: int | None = None
    max_clock_skew_seconds: int | None = None
    consumer_group: str | None = None
    health_max_lag_records: int | None = None
    health_max_lag_seconds: float | None = None
    health_max_ingest_age_seconds: float | None = None
    health_max_dlq_rate: float | None = None
    health_window_seconds: float | None = None
    health_min_free_disk_mb: int | None = None
    max_unknown_ua_share: float | None = None
    native_parse: bool | None = None
    dlq_max_attempts: int | None = None
    dlq_reprocess_cron: str | None = None
    dlq_naive_as_utc: bool | None = None
    dlq_max_unresolved_age_hours: float | None = None
    compact_target_mb: int | None = None
    vacuum_retention_hours: int | None = None
    lake_retention_days: int | None = None
    background_nice: int | None = None

    @classmethod
    def of(cls, settings: Settings, **overrides: Any) -> PipelineSettings:
        """The resource that resolves to `settings` (plus `overrides`), whatever the environment.

        For tests and embedding: the Kafka properties file is named, not copied.
        """
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            value = getattr(settings, name)
            values[name] = str(value) if isinstance(value, Path) else value
        values.update(overrides)
        return cls(**values)

    def resolve(self) -> Settings:
        """The settings for this run or tick; a malformed one raises a one-line SettingsError."""
        overrides = {
            name: getattr(self, name)
            for name in type(self).model_fields
            if getattr(self, name) is not None
        }
        return Settings.from_env(**overrides)

    def for_run(self) -> Settings:
        """`resolve()` for an op or asset: a bad setting fails the step with just its line."""
        try:
            return self.resolve()
        except SettingsError as exc:
            raise Failure(description=f"bad setting: {exc}", allow_retries=False) from None

    def for_background_run(self, log: DagsterLogManager | None = None) -> Settings:
        """`for_run()` for work that is not ingestion: it also leaves the CPU to the ingest runs.

        Sessions, the DLQ reprocessing and report, upkeep and checks can wait a little; on a busy
        host the ingest runs' freshness cannot. In a process Dagster started for this run alone,
        every thread's niceness is raised to PIPELINE_BACKGROUND_NICE (0: unchanged). A run
        executed inside another process (`execute_in_process`, a notebook) leaves it alone.
        """
        settings = self.for_run()
        if settings.background_nice and run_owns_process():
            nice = lower_priority(settings.background_nice)
            if log is not None:
                log.info(f"background work: CPU niceness {nice} (PIPELINE_BACKGROUND_NICE)")
        return settings


# How Dagster starts a process for one run from a shell or a step: `dagster api execute_run` (a run
# worker of the container launchers), `dagster api execute_step` (a multiprocess executor's step),
# `dagster job execute`.
RUN_PROCESS_COMMANDS = (["api", "execute_run"], ["api", "execute_step"], ["job", "execute"])


def run_owns_process() -> bool:
    """True in a process started to execute this one run (so its priority is the run's own).

    A code server (`dagster api grpc`, what the webserver and the daemon launch runs through)
    starts each run in a multiprocessing child of its own, which inherits the server's argv; the
    repo's PrewarmedRunLauncher forks it as a child of its fork server, a multiprocessing child too.
    """
    return sys.argv[1:3] in RUN_PROCESS_COMMANDS or multiprocessing.parent_process() is not None
