"""Kafka's topic-name rule, defined once: settings check names, range and file names embed it."""

from __future__ import annotations

import re

# A regex fragment for embedding in larger patterns (file names, range ids).
TOPIC_PATTERN = r"[A-Za-z0-9._-]{1,249}"
_TOPIC = re.compile(TOPIC_PATTERN)


def check_topic_name(name: str) -> None:
    """Raises ValueError unless `name` is legal: 1-249 of [a-zA-Z0-9._-], not '.' or '..'."""
    if not _TOPIC.fullmatch(name) or name in (".", ".."):
        raise ValueError("is not a valid Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)")
