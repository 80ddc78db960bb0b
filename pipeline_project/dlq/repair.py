"""Versioned repair rules for DLQ records: fix known, harmless defects, then re-validate as usual.

A rule changes a field only when its result is unambiguous (an epoch number, a spelling of a known
event type, a numeric string), and leaves everything else for the validator to judge, so a repair
can never make a bad event pass that the strict validator would reject for another reason. Each
rule has a version; a repaired row records `name@version` of every rule that changed it, so a
later fix of a rule can find the rows it touched. The original bytes stay in the DLQ untouched.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from pipeline_project.batch.parse import diagnose
from pipeline_project.events.contract import (
    CURRENCIES,
    EVENT_TYPES,
    OPTIONAL_FIELDS,
    PROPERTY_TYPES,
    UUID_PATTERN,
)
from pipeline_project.utc import utc_text

# uuid5 namespace of ids derived from source coordinates: the same record always gets the same id.
EVENT_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://pipeline-project/dlq/event_id")
# Epoch numbers are read as milliseconds from here on (1e11 s is the year 5138), seconds below.
EPOCH_MILLIS_FROM = 100_000_000_000
EPOCH_YEARS = (2000, 2100)  # a repaired timestamp outside these years is not a repair
_EPOCH_SECONDS = (
    datetime(EPOCH_YEARS[0], 1, 1, tzinfo=UTC).timestamp(),
    datetime(EPOCH_YEARS[1] + 1, 1, 1, tzinfo=UTC).timestamp(),
)

_NAIVE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?$")
_EPOCH_TEXT = re.compile(r"^\d{9,13}(\.\d+)?$")
_INT_TEXT = re.compile(r"^[+-]?\d{1,18}$")
_NUMBER_TEXT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?$")
_UUID = re.compile(UUID_PATTERN)
_SEPARATORS = re.compile(r"[\s-]+")
_INT_FIELDS = {name for name, kind in PROPERTY_TYPES.items() if kind == "int"}
_NUMBER_FIELDS = {name for name, kind in PROPERTY_TYPES.items() if kind == "number"}
_TOP_INT_FIELDS = {name for name, kind in OPTIONAL_FIELDS.items() if kind == "int"}


@dataclass(frozen=True)
class RepairContext:
    """What a rule may use besides the event: where it came from and the repair policy."""

    source_topic: str
    source_partition: int
    source_offset: int
    naive_as_utc: bool = True


@dataclass(frozen=True)
class RepairRule:
    """One named, versioned fix; `apply` edits the event in place and says whether it changed."""

    name: str
    version: int
    apply: Callable[[dict[str, Any], RepairContext], bool]

    @property
    def rule_id(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class Repaired:
    """The payload to re-validate (repaired, or as it was) and the ids of the rules that fired."""

    value: bytes | None
    rules: tuple[str, ...]


def _iso(moment: datetime) -> str | None:
    moment = moment.astimezone(UTC)
    if not EPOCH_YEARS[0] <= moment.year <= EPOCH_YEARS[1]:
        return None
    return utc_text(moment, "milliseconds")


def _set(event: dict[str, Any], key: str, value: Any) -> bool:
    """Sets `key` when the repair produced a new value; True when the event changed."""
    if value is None or event.get(key) == value:
        return False
    event[key] = value
    return True


def _props(event: dict[str, Any]) -> dict[str, Any]:
    props = event.get("properties")
    return props if isinstance(props, dict) else {}


# --------------------------------------------------------------------------------------- the rules


def derive_event_id(ctx: RepairContext) -> str:
    """The uuid5 of the source coordinates: deterministic, so a re-run derives the same id."""
    name = f"{ctx.source_topic}/{ctx.source_partition}/{ctx.source_offset}"
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, name))


def _event_id_derived(event: dict[str, Any], ctx: RepairContext) -> bool:
    """A missing, null or blank event_id gets the uuid5 of the record's source coordinates."""
    current = event.get("event_id")
    if current is not None and not (isinstance(current, str) and not current.strip()):
        return False
    return _set(event, "event_id", derive_event_id(ctx))


def _event_id_unbraced(event: dict[str, Any], ctx: RepairContext) -> bool:
    """`{uuid}` or a padded uuid: the braces and blanks go, the id itself is kept."""
    current = event.get("event_id")
    if not isinstance(current, str):
        return False
    inner = current.strip().removeprefix("{").removesuffix("}").strip()
    return bool(_UUID.match(inner)) and _set(event, "event_id", inner)


def _event_type_normalised(event: dict[str, Any], ctx: RepairContext) -> bool:
    """`" PAGE_VIEW "`, `Page-View` → `page_view`, only when that is a known event type."""
    current = event.get("event_type")
    if not isinstance(current, str):
        return False
    candidate = _SEPARATORS.sub("_", current.strip().lower())
    return candidate in EVENT_TYPES and _set(event, "event_type", candidate)


def _timestamp_epoch(event: dict[str, Any], ctx: RepairContext) -> bool:
    """An epoch number (or digit string) in seconds or milliseconds → ISO-8601 UTC."""
    current = event.get("timestamp")
    if isinstance(current, bool) or not isinstance(current, int | float | str):
        return False
    if isinstance(current, str):
        if not _EPOCH_TEXT.match(current.strip()):
            return False
        current = float(current)
    seconds = current / 1000 if current >= EPOCH_MILLIS_FROM else current
    if not _EPOCH_SECONDS[0] <= seconds < _EPOCH_SECONDS[1]:  # micros, nanos, tiny numbers
        return False
    return _set(event, "timestamp", _iso(datetime.fromtimestamp(seconds, tz=UTC)))


def _timestamp_naive_utc(event: dict[str, Any], ctx: RepairContext) -> bool:
    """A naive ISO timestamp read as UTC, when the policy (PIPELINE_DLQ_NAIVE_AS_UTC) allows."""
    current = event.get("timestamp")
    if not ctx.naive_as_utc or not isinstance(current, str) or not _NAIVE.match(current.strip()):
        return False
    return _set(event, "timestamp", current.strip().replace(" ", "T", 1) + "Z")


def _timestamp_rfc2822(event: dict[str, Any], ctx: RepairContext) -> bool:
    """`Mon, 01 Jan 2026 10:00:00 GMT` (an explicit zone) → ISO-8601 UTC."""
    current = event.get("timestamp")
    if not isinstance(current, str) or "," not in current:
        return False
    try:
        moment = parsedate_to_datetime(current)
    except (TypeError, ValueError, IndexError, OverflowError):
        return False
    if moment.tzinfo is None and not ctx.naive_as_utc:
        return False
    return _set(event, "timestamp", _iso(moment.replace(tzinfo=moment.tzinfo or UTC)))


def _number(text: str, integer: bool) -> int | float | None:
    text = text.strip()
    if integer:
        return int(text) if _INT_TEXT.match(text) else None
    if not _NUMBER_TEXT.match(text):
        return None
    value = float(text)
    return value if value not in (float("inf"), float("-inf")) else None


def _numeric_strings(event: dict[str, Any], ctx: RepairContext) -> bool:
    """`"12"` where a number belongs → 12 (quantity, price, …, schema_version); nothing else."""
    changed = False
    targets = [(event, name, True) for name in _TOP_INT_FIELDS]
    props = _props(event)
    targets += [(props, name, True) for name in _INT_FIELDS]
    targets += [(props, name, False) for name in _NUMBER_FIELDS]
    for holder, name, integer in targets:
        value = holder.get(name)
        if isinstance(value, str):
            changed |= _set(holder, name, _number(value, integer))
    return changed


def _currency_upper(event: dict[str, Any], ctx: RepairContext) -> bool:
    """`" usd"` → `USD`, only when that is a known currency."""
    props = _props(event)
    current = props.get("currency")
    if not isinstance(current, str):
        return False
    candidate = current.strip().upper()
    return candidate in CURRENCIES and _set(props, "currency", candidate)


# Applied in this order; bump a rule's version whenever its behaviour changes.
RULES: tuple[RepairRule, ...] = (
    RepairRule("event_id_derived", 1, _event_id_derived),
    RepairRule("event_id_unbraced", 1, _event_id_unbraced),
    RepairRule("event_type_normalised", 1, _event_type_normalised),
    RepairRule("timestamp_epoch", 1, _timestamp_epoch),
    RepairRule("timestamp_naive_utc", 1, _timestamp_naive_utc),
    RepairRule("timestamp_rfc2822", 1, _timestamp_rfc2822),
    RepairRule("numeric_strings", 1, _numeric_strings),
    RepairRule("currency_upper", 1, _currency_upper),
)


def repair(value: bytes | None, ctx: RepairContext) -> Repaired:
    """Applies every rule to a strict JSON object; anything else comes back unchanged.

    A payload the parser rejects (bad UTF-8, invalid JSON, duplicate keys, …) is never "repaired":
    the same parser will reject it again, with the same reason.
    """
    if value is None or diagnose(value) is not None:
        return Repaired(value, ())
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:  # valid JSON orjson cannot hold (an int beyond 64 bits)
        return Repaired(value, ())
    applied = tuple(rule.rule_id for rule in RULES if rule.apply(event, ctx))
    if not applied:
        return Repaired(value, ())
    return Repaired(orjson.dumps(event), applied)
