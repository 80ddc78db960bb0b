"""UTC times as text, one format for every header, range record, report and generated event.

ISO-8601 in UTC with a `Z` (not `+00:00`): `2026-12-03T10:00:00.123456Z`. Python 3.11's
`datetime.fromisoformat` reads it back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

# strftime of a UTC time to the second (time.gmtime), for hot loops that append the fraction and
# `Z` themselves (the event generator); and of a time truncated to its hour.
UTC_SECONDS_FORMAT: Final = "%Y-%m-%dT%H:%M:%S"
UTC_HOUR_FORMAT: Final = "%Y-%m-%dT%H:00Z"


def utc_text(moment: datetime, timespec: str = "auto") -> str:
    """`moment` in UTC as ISO-8601 with a `Z`; `timespec` as datetime.isoformat's."""
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def parse_utc(value: Any, naive_as_utc: bool = False) -> datetime:
    """An ISO-8601 time (`Z` or an offset); ValueError for a naive one unless `naive_as_utc`."""
    moment = datetime.fromisoformat(str(value))
    if moment.tzinfo is not None:
        return moment
    if not naive_as_utc:
        raise ValueError(f"naive time {value!r}")
    return moment.replace(tzinfo=UTC)
