"""The automation path: real ingest_events runs (an op job) → `events` days → `sessions` requests.

Evaluated with Dagster's own evaluator on a test instance, the way the automation sensor does it:
a late event for an older day re-requests exactly that day, and an update that lands after a
day was requested is not lost when that day's run materializes afterwards.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl
from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetSelection,
    DagsterInstance,
    Definitions,
    FloatMetadataValue,
    IntMetadataValue,
    evaluate_automation_conditions,
    materialize,
)

from pipeline_project.batch.sessions import day_commits_since
from pipeline_project.definitions import defs
from pipeline_project.defs.ingest.job import ingest_events
from pipeline_project.defs.sessions import ROWS_CHECK, SESSIONS_KEY, sessions, sessions_asset
from pipeline_project.events.contract import FILTER_REASONS
from pipeline_project.lake.location import lake_of
from pipeline_project.settings import Settings
from pipeline_project_tests.ingest_support import defs_for
from pipeline_project_tests.sessions.session_support import raw_event, send

SELECTION = AssetSelection.assets(SESSIONS_KEY)
PLOTTED = {
    "rows",
    "commits",
    "run_records",
    "run_written",
    "run_dlq",
    "run_filtered",
    "run_seconds",
    "events_per_s",
    "latency_p50_ms",
    "latency_p99_ms",
}


class Ticks:
    """Successive automation evaluations on one instance, carrying the cursor like the daemon."""

    def __init__(self, located: Definitions, instance: DagsterInstance) -> None:
        self.located, self.instance, self.cursor = located, instance, None

    def requested(self, at: datetime | None = None) -> set[str]:
        result = evaluate_automation_conditions(
            self.located,
            self.instance,
            asset_selection=SELECTION,
            cursor=self.cursor,
            evaluation_time=at,
        )
        self.cursor = result.cursor
        return {p for p in result.get_requested_partitions(SESSIONS_KEY) if p}


def with_sessions_cron(base: Definitions, cron: str) -> Definitions:
    """The location with `sessions` redone once a `cron` tick ("": after every change).

    What PIPELINE_SESSIONS_CRON gives a location that loads with it (the setting is read then).
    """
    return Definitions(
        assets=[sessions_asset(cron) if a is sessions else a for a in base.assets or []],
        asset_checks=base.asset_checks,
        jobs=base.jobs,
        resources=base.resources,
        executor=base.executor,
    )


def ingest(located: Definitions, instance: DagsterInstance) -> set[str]:
    """One ingest_events run; returns the `events` days it materialized."""
    run = located.resolve_job_def(ingest_events.name).execute_in_process(instance=instance)
    assert run.success
    events = [
        e for e in run.get_asset_materialization_events() if e.asset_key == AssetKey("events")
    ]
    for event in events:
        assert_plottable(event.materialization.metadata)
    return {e.partition for e in events}


def assert_plottable(metadata: dict) -> None:
    """Run figures are numeric under the same names in every run, so the UI can plot them."""
    figures = {f"run_filtered_{reason}" for reason in FILTER_REASONS} | PLOTTED
    assert figures <= set(metadata), figures - set(metadata)
    for name in figures:
        assert isinstance(metadata[name], IntMetadataValue | FloatMetadataValue), name


def materialize_days(located: Definitions, instance: DagsterInstance, days: set[str]) -> None:
    for day in sorted(days):
        run = materialize(
            [sessions], partition_key=day, instance=instance, resources=located.resources
        )
        assert run.success
        (check,) = run.get_asset_check_evaluations()
        assert check.check_name == ROWS_CHECK and check.passed


def session_ids(settings: Settings, day: str) -> set[str]:
    """The day's sessions as a user reads them: through the Delta log."""
    lake = lake_of(settings)
    frame = pl.read_delta(lake.table_uri("sessions"), storage_options=lake.polars_options())
    return set(frame.filter(pl.col("date") == date.fromisoformat(day))["session_id"].to_list())


def day_commits(settings: Settings, day: str) -> list[int]:
    """The sessions table's commits that replaced this day."""
    return day_commits_since(lake_of(settings), date.fromisoformat(day), -1)


def test_late_event_rematerializes_its_old_day(
    kafka_settings: Settings,
) -> None:
    now = datetime.now(UTC)
    old = now - timedelta(days=3)
    old_day, new_day = old.date().isoformat(), now.date().isoformat()
    located = with_sessions_cron(defs_for(kafka_settings), "")  # after every change
    with DagsterInstance.ephemeral() as instance:
        ticks = Ticks(located, instance)
        assert ticks.requested() == set()  # first evaluation: nothing materialized yet

        send(
            kafka_settings,
            [
                raw_event("s_old", "u1", "page_view", old, "/"),
                raw_event("s_new", "u2", "page_view", now - timedelta(seconds=5), "/"),
            ],
        )
        assert ingest(located, instance) == {old_day, new_day}
        assert ticks.requested() == {old_day, new_day}
        materialize_days(located, instance, {old_day, new_day})
        assert ticks.requested() == set()
        untouched = day_commits(kafka_settings, new_day)
        assert len(untouched) == 1

        # A late event for the old day: only that day is requested again, and picks it up.
        send(kafka_settings, [raw_event("s_late", "u3", "click", old + timedelta(minutes=1), "/")])
        assert ingest(located, instance) == {old_day}
        assert ticks.requested() == {old_day}
        materialize_days(located, instance, {old_day})
        assert session_ids(kafka_settings, old_day) == {"s_old", "s_late"}
        assert ticks.requested() == set()
        assert day_commits(kafka_settings, new_day) == untouched

        # Requested, then another update lands before the run materializes: one more request
        # follows (eager() would drop it, its run's materialization resetting the trigger).
        send(kafka_settings, [raw_event("s_later", "u4", "click", old + timedelta(minutes=2), "/")])
        ingest(located, instance)
        assert ticks.requested() == {old_day}
        send(kafka_settings, [raw_event("s_last", "u5", "click", old + timedelta(minutes=3), "/")])
        ingest(located, instance)
        materialize_days(located, instance, {old_day})
        assert ticks.requested() == {old_day}
        assert ticks.requested() == set()


def test_with_a_sessions_cron_a_busy_day_is_redone_once_a_tick(
    kafka_settings: Settings,
) -> None:
    """PIPELINE_SESSIONS_CRON: a day updated between ticks is requested at the next tick, once;
    an update after that request waits for the following tick and is never lost.

    Evaluated at chosen times a few minutes back (every minute is a tick), so the real updates
    fall where the test needs them: after the request they follow.
    """
    located = with_sessions_cron(defs_for(kafka_settings), "* * * * *")
    now = datetime.now(UTC)
    start = now.replace(second=10, microsecond=0) - timedelta(minutes=4)
    at = start - timedelta(seconds=5)  # the events' time: their day exists at every evaluation
    day = at.date().isoformat()
    with DagsterInstance.ephemeral() as instance:
        ticks = Ticks(located, instance)
        assert ticks.requested(start) == set()
        send(kafka_settings, [raw_event("s1", "u1", "page_view", at, "/")])
        assert ingest(located, instance) == {day}
        assert ticks.requested(start + timedelta(seconds=20)) == set()  # updated, no tick since
        assert ticks.requested(start + timedelta(seconds=70)) == {day}  # a minute's tick passed
        materialize_days(located, instance, {day})
        send(kafka_settings, [raw_event("s2", "u2", "click", at + timedelta(seconds=1), "/")])
        ingest(located, instance)
        assert ticks.requested(start + timedelta(seconds=80)) == set()  # no tick since the request
        assert ticks.requested(start + timedelta(seconds=100)) == set()
        assert ticks.requested(start + timedelta(seconds=130)) == {day}  # the next tick


def test_first_evaluation_catches_up_days_that_have_events(
    kafka_settings: Settings,
) -> None:
    """Deployed onto an instance that already has `events` days: those days are requested once."""
    day = datetime.now(UTC) - timedelta(days=1)
    located = defs_for(kafka_settings)
    with DagsterInstance.ephemeral() as instance:
        send(kafka_settings, [raw_event("s1", "u1", "page_view", day, "/")])
        assert ingest(located, instance) == {day.date().isoformat()}
        ticks = Ticks(located, instance)
        assert ticks.requested() == {day.date().isoformat()}
        assert ticks.requested() == set()


def test_events_checks_are_requested_on_their_cron_and_pass(
    kafka_settings: Settings,
) -> None:
    """Freshness on every 5-minute tick, the user-agent share only after `events` changed."""
    keys = {AssetCheckKey(AssetKey("events"), n) for n in ("freshness", "unknown_user_agents")}
    selection = AssetSelection.checks(*keys)
    boundary = datetime.now(UTC).replace(second=0, microsecond=0)
    boundary -= timedelta(minutes=boundary.minute % 5)
    located = defs_for(kafka_settings)
    with DagsterInstance.ephemeral() as instance:

        def requested(at: datetime, cursor: object) -> tuple[set[str], object]:
            result = evaluate_automation_conditions(
                located, instance, asset_selection=selection, evaluation_time=at, cursor=cursor
            )
            names = {r.key.name for r in result.results if r.true_subset.size}  # type: ignore[union-attr]
            return names, result.cursor

        names, cursor = requested(boundary + timedelta(minutes=1), None)
        assert names == set()
        send(kafka_settings, [raw_event("s1", "u1", "page_view", datetime.now(UTC), "/")])
        ingest(located, instance)
        names, cursor = requested(boundary + timedelta(minutes=2), cursor)
        assert names == set()  # between cron ticks
        names, cursor = requested(boundary + timedelta(minutes=5, seconds=10), cursor)
        assert names == {"freshness", "unknown_user_agents"}
        names, cursor = requested(boundary + timedelta(minutes=10, seconds=10), cursor)
        assert names == {"freshness"}  # events unchanged since the last check

        job = located.resolve_implicit_global_asset_job_def().get_subset(
            asset_selection=set(), asset_check_selection=keys
        )
        run = job.execute_in_process(instance=instance)
        results = {e.check_name: e for e in run.get_asset_check_evaluations()}
        assert results["freshness"].passed
        assert results["unknown_user_agents"].passed
        assert results["unknown_user_agents"].metadata["rows"].value == 1
        assert date.fromisoformat(results["unknown_user_agents"].metadata["day"].value)


def test_definitions_wire_sessions_checks_and_the_running_sensor() -> None:
    graph = defs.resolve_asset_graph()
    node = graph.get(SESSIONS_KEY)
    assert node.parent_keys == {AssetKey("events")}
    assert node.partitions_def is not None and node.automation_condition is not None
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert {
        ("sessions", ROWS_CHECK),
        ("events", "freshness"),
        ("events", "unknown_user_agents"),
    } <= checks
    sensor = defs.resolve_sensor_def("pipeline_automation_sensor")
    assert sensor.default_status.value == "RUNNING"
    assert sensor.run_tags == {"pipeline/job": "automation", "pipeline/lane": "background"}
