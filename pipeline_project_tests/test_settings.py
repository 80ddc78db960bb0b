"""Settings: the defaults without variables, one line per bad value, secrets never shown."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline_project.errors import SettingsError
from pipeline_project.settings import EnvSettings, Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("PIPELINE_"):
            monkeypatch.delenv(name)


def test_without_variables_the_environment_gives_the_defaults() -> None:
    assert Settings.from_env() == Settings()
    assert set(EnvSettings.model_fields) == {
        f.name for f in dataclasses.fields(Settings) if f.name != "kafka_extra"
    }


def test_variables_are_read_and_empty_ones_mean_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PIPELINE_KAFKA_BOOTSTRAP", "broker:9093")
    monkeypatch.setenv("PIPELINE_MAX_RANGE_EVENTS", " 1000 ")
    monkeypatch.setenv("PIPELINE_NATIVE_PARSE", "off")
    monkeypatch.setenv("PIPELINE_DATA_DIR", "")
    got = Settings.from_env()
    assert (got.bootstrap, got.max_range_events, got.native_parse) == ("broker:9093", 1000, False)
    assert got.data_dir == Path("data") and got.lake_dir == Path("data/output")
    assert dataclasses.replace(got, data_dir=Path("/x")).state_dir == Path("/x/state")


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("PIPELINE_MAX_RANGE_EVENTS", "lots", "valid integer"),
        ("PIPELINE_DLQ_MAX_ATTEMPTS", "1", "greater than or equal to 2"),
        ("PIPELINE_PARTITION_DAYS", "0", "greater than or equal to 1"),
        ("PIPELINE_RAW_TOPIC", "raw events", "not a valid Kafka topic name"),
        ("PIPELINE_DLQ_REPROCESS_CRON", "hourly", "not a cron expression"),
        ("PIPELINE_SESSIONS_CRON", "often", "not a cron expression"),
        ("PIPELINE_BACKGROUND_NICE", "20", "less than or equal to 19"),
        ("PIPELINE_NATIVE_PARSE", "sometimes", "valid boolean"),
        ("PIPELINE_COMPACT_TARGET_MB", "0", "greater than or equal to 1"),
        ("PIPELINE_VACUUM_RETENTION_HOURS", "0", "greater than or equal to 1"),
        ("PIPELINE_LAKE_RETENTION_DAYS", "a week", "valid integer"),
        ("PIPELINE_KAFKA_BOOTSTRAP", "", None),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str | None
) -> None:
    monkeypatch.setenv(name, value)
    if says is None:
        assert Settings.from_env() == Settings()
        return
    with pytest.raises(SettingsError) as raised:
        Settings.from_env()
    message = str(raised.value)
    assert message.startswith(f"{name}={value!r}: ") and says in message and "\n" not in message


def test_lake_retention_must_outlive_the_lateness_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention inside the lateness window would delete days that ingestion still writes to."""
    monkeypatch.setenv("PIPELINE_LAKE_RETENTION_DAYS", "7")
    with pytest.raises(SettingsError) as raised:
        Settings.from_env()
    assert str(raised.value) == (
        "PIPELINE_LAKE_RETENTION_DAYS=7 must exceed PIPELINE_MAX_LATENESS_DAYS=7 "
        "(late events still land in those days)"
    )
    monkeypatch.setenv("PIPELINE_MAX_LATENESS_DAYS", "3")
    got = Settings.from_env()
    assert (got.lake_retention_days, got.vacuum_retention_hours, got.compact_target_mb) == (
        7,
        168,
        128,
    )


def test_kafka_properties_secrets_reach_librdkafka_but_no_repr(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    props = tmp_path / "client.properties"
    props.write_text("# SASL\nsecurity.protocol=SASL_SSL\nsasl.password=hunter2\n")
    monkeypatch.setenv("PIPELINE_KAFKA_CONFIG", str(props))
    settings = Settings.from_env()
    assert settings.kafka_common()["sasl.password"] == "hunter2"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.kafka_extra)
    props.write_text("no equals sign\n")
    with pytest.raises(SettingsError, match=r"client.properties:1: expected key=value"):
        Settings.from_env()
