"""Data-quality figures of the committed lake, for the `events` asset checks.

The share of events whose user agent enriched to nothing useful (device `unknown`, browser
`Other`): a jump means a new client or a broken UA rule, and every per-device report drifts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import polars as pl

from pipeline_project.batch import lake, ledger
from pipeline_project.batch.sessions import committed_event_files, read_events
from pipeline_project.settings import Settings

UNKNOWN_DEVICE = "unknown"
UNKNOWN_BROWSER = "Other"


@dataclass(frozen=True)
class UnknownUserAgents:
    """Counts of one day's committed events whose device or browser was not recognised."""

    day: date | None
    rows: int
    unknown_device: int
    unknown_browser: int
    unknown_either: int

    @property
    def share(self) -> float:
        return round(self.unknown_either / self.rows, 6) if self.rows else 0.0


def latest_event_day(settings: Settings) -> date | None:
    """The newest UTC day with committed events files, or None for an empty lake."""
    days = [
        item.day
        for manifest in ledger.load_manifests(settings.state_dir)
        for item in manifest.files
        if item.table == lake.TABLE_EVENTS
    ]
    return max(days, default=None)


def unknown_user_agents(settings: Settings, day: date | None = None) -> UnknownUserAgents:
    """Unknown device/browser counts of `day` (default: the latest committed day)."""
    day = day or latest_event_day(settings)
    if day is None:
        return UnknownUserAgents(None, 0, 0, 0, 0)
    paths = committed_event_files(settings.lake_dir, settings.state_dir, day)
    frame = read_events(paths, ("device_type", "browser"))
    device = pl.col("device_type") == UNKNOWN_DEVICE
    browser = pl.col("browser") == UNKNOWN_BROWSER
    counts = frame.select(
        device.sum().alias("device"),
        browser.sum().alias("browser"),
        (device | browser).sum().alias("either"),
    ).row(0)
    return UnknownUserAgents(day, frame.height, *(int(c or 0) for c in counts))
