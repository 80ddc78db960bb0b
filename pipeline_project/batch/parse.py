"""Parse stage: raw Kafka values to typed columns with one strict JSON decode per record.

Native path (when native/ is built): a Rust decoder (serde_json, strict RFC 8259) turns every
plain event object straight into Arrow columns and defers all other records to the Python path.
Python path: msgspec decodes each value into a typed Struct (strict UTF-8, no NaN/Infinity or lone
surrogates, JSON types checked in C). A record that fails it, or whose key count could hide a
duplicate key, goes to an exact classifier, so its category never depends on the path taken.
Both paths give the same frame and rejects for any input (test_native_parse).

The decoder reads the union of every contract version's keys (contract.VERSIONS): which of them
count for an event is its version's business, settled in the validate stage. A required field
another key may carry (v2's `url` for `page_url`) is optional to the decoder; a record with none
of its keys is named `missing_field` by the exact classifier.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from itertools import accumulate
from typing import Annotated, Any

import msgspec
import polars as pl
import pyarrow as pa

from pipeline_project.batch.records import RawBatch, Reject
from pipeline_project.columns import OFFSET_COLUMN
from pipeline_project.events.contract import (
    ALIASES,
    CONTRACT,
    MAX_DEPTH,
    MAX_KEYS,
    MAX_MESSAGE_BYTES,
    NESTED_OBJECTS,
    OPTIONAL_FIELDS,
    PROPERTY_TYPES,
    REQUIRED_FIELDS,
    SCHEMA_VERSION,
    UNSUPPORTED_VERSION,
    VERSION_RULE,
    VERSIONED_FIELDS,
    object_column,
)
from pipeline_project.perf import paused_gc

log = logging.getLogger(__name__)

try:  # the optional native decoder (native/); without it every record takes the Python path
    import pipeline_project_native as _native
except ImportError:  # pragma: no cover - depends on the install
    _native = None

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UTF8_BOM = b"\xef\xbb\xbf"

# Frame column of each property; `category` is renamed so it is not confused with event_category.
PROPERTY_COLUMNS: dict[str, str] = {
    name: object_column("properties", name) for name in PROPERTY_TYPES
}
# Frame column of each entry of each nested object: {object: {entry: column}}.
OBJECT_COLUMNS: dict[str, dict[str, str]] = {
    obj: {entry: object_column(obj, entry) for entry in entries}
    for obj, entries in NESTED_OBJECTS.items()
}
# Top-level scalar keys in column order: required fields, then v1's optional ones, then those
# of later versions and the aliases (a key that may carry a required field instead of its own).
TOP_SCALARS: dict[str, str] = (
    {name: "str" for name in REQUIRED_FIELDS}
    | {name: kind for name, kind in OPTIONAL_FIELDS.items() if kind != "object"}
    | VERSIONED_FIELDS
    | {alias: "str" for alias in ALIASES}
)
# Required fields the decoder itself insists on; one an alias may carry is checked by the
# exact classifier instead (`_contract_defect`).
DECODE_REQUIRED: tuple[str, ...] = tuple(n for n in REQUIRED_FIELDS if n not in ALIASES.values())
# Raw-event path of every parsed column, used as Reject.field.
FIELD_PATHS: dict[str, str] = {name: name for name in TOP_SCALARS} | {
    column: f"{obj}.{entry}"
    for obj, columns in OBJECT_COLUMNS.items()
    for entry, column in columns.items()
}
KAFKA_TS_MS_COLUMN = "kafka_timestamp_ms"
# Records decoded per chunk: small enough for one chunk's Python objects to stay in cache.
CHUNK_RECORDS = 4096

_Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
_PY_TYPES: dict[str, Any] = {"str": str, "int": _Int64, "number": float, "bool": bool}
_PL_TYPES: dict[str, pl.DataType] = {
    "str": pl.String(),
    "int": pl.Int64(),
    "number": pl.Float64(),
    "bool": pl.Boolean(),
}

# gc=False: the Structs hold only scalars, so the cyclic GC never needs to track (and rescan) them.
_OBJECT_STRUCTS: dict[str, Any] = {
    obj: msgspec.defstruct(
        f"_{obj.title()}",
        [(name, _PY_TYPES[kind] | None, None) for name, kind in entries.items()],
        gc=False,
    )
    for obj, entries in NESTED_OBJECTS.items()
}
_Event = msgspec.defstruct(
    "_Event",
    [(name, str | None) for name in DECODE_REQUIRED]
    + [
        (name, _PY_TYPES[kind] | None, None)
        for name, kind in TOP_SCALARS.items()
        if name not in DECODE_REQUIRED
    ]
    + [(obj, struct | None, None) for obj, struct in _OBJECT_STRUCTS.items()],
    gc=False,
)
_DECODER = msgspec.json.Decoder(_Event)
_EVENT_FIELDS: tuple[str, ...] = _Event.__struct_fields__
_OBJECT_INDEX: dict[str, int] = {obj: _EVENT_FIELDS.index(obj) for obj in NESTED_OBJECTS}
_DECODE_ERRORS = (msgspec.MsgspecError, ValueError, RecursionError)

# Typed columns of a parsed frame, in order (lineage first, then top-level fields, then the
# flattened entries of each nested object).
PARSED_SCHEMA: dict[str, pl.DataType] = (
    {OFFSET_COLUMN: pl.Int64(), KAFKA_TS_MS_COLUMN: pl.Int64()}
    | {name: _PL_TYPES[kind] for name, kind in TOP_SCALARS.items()}
    | {
        OBJECT_COLUMNS[obj][entry]: _PL_TYPES[kind]
        for obj, entries in NESTED_OBJECTS.items()
        for entry, kind in entries.items()
    }
)
# Optional columns: a non-null value means its key was in the raw JSON (required keys always are).
_COUNTED_COLUMNS: list[str] = [
    c for c in PARSED_SCHEMA if c not in {OFFSET_COLUMN, KAFKA_TS_MS_COLUMN, *DECODE_REQUIRED}
]
# Duplicate-key proof without a second parse: each key is a closing quote then a colon, unless
# whitespace sits between them (then the record takes the exact path). In-string look-alikes only
# add to the count, so `count('":') == keys the Struct kept` proves no duplicate or unknown key.
_KEY_LITERAL = '":'
_SPACED_COLON = r"[ \t\n\r]:"
_HAS_OBJECTS = "_has_objects"  # per row: how many nested objects it had (each is one key)
_EMPTY_FRAME = pl.DataFrame(schema=PARSED_SCHEMA | {_HAS_OBJECTS: pl.Int32()})
# The native decoder's schema: (key, kind, required) at the top, (entry, kind) per nested object.
# Its columns come back in PARSED_SCHEMA's order: top-level scalars, then each object's entries.
# A build with `decode_objects` reads every nested object (v2's `consent` has booleans); an older
# build (`decode_columns` only, until `make install` rebuilds it) reads `properties` alone and is
# not told about the others, so a record carrying one is deferred to the Python path and their
# columns are null in the native frame. Either way the results are the same.
_ALL_OBJECTS_NATIVE = _native is not None and hasattr(_native, "decode_objects")
_NATIVE_OBJECTS: dict[str, list[tuple[str, str]]] = {
    obj: list(entries.items())
    for obj, entries in NESTED_OBJECTS.items()
    if _ALL_OBJECTS_NATIVE or obj == "properties"
}
_NATIVE_TOP: list[tuple[str, str, bool]] = [
    (name, kind, name in DECODE_REQUIRED) for name, kind in TOP_SCALARS.items()
] + [(obj, "object", False) for obj in _NATIVE_OBJECTS]
_NATIVE_PROPS: list[tuple[str, str]] = _NATIVE_OBJECTS["properties"]
_ARROW_TYPES = {
    "str": pa.string_view(),
    "int": pa.int64(),
    "number": pa.float64(),
    "bool": pa.bool_(),
}
_NATIVE_ARROW_TYPES: list[pa.DataType] = [
    _ARROW_TYPES[kind] for _, kind, _ in _NATIVE_TOP if kind != "object"
] + [_ARROW_TYPES[kind] for entries in _NATIVE_OBJECTS.values() for _, kind in entries]
_NATIVE_COLUMNS = list(PARSED_SCHEMA)[2 : 2 + len(_NATIVE_ARROW_TYPES)]
_NATIVE_SCHEMA = pa.schema(list(zip(_NATIVE_COLUMNS, _NATIVE_ARROW_TYPES, strict=True)))
# Columns the native decoder never fills (objects it defers), added to its frame as nulls.
_NOT_NATIVE: dict[str, pl.DataType] = dict(list(PARSED_SCHEMA.items())[2 + len(_NATIVE_COLUMNS) :])
_POSITION = "_position"


@dataclass(frozen=True)
class ParsedBatch:
    """Typed rows of the records that parsed (PARSED_SCHEMA), and rejects of those that did not."""

    frame: pl.DataFrame
    rejects: list[Reject]


@dataclass(frozen=True)
class Defect:
    """What is wrong with one record, before it is tied to an offset."""

    category: str
    rule: str
    field: str
    message: str

    def reject(self, offset: int) -> Reject:
        return Reject.of(offset, self.category, self.rule, self.field, self.message)


class _DefectFound(Exception):
    """Raised from json hooks to stop the exact parse at the first defect."""

    def __init__(self, defect: Defect) -> None:
        super().__init__(defect.message)
        self.defect = defect


def parse_path(native: bool = True) -> str:
    """Which parse path runs here, for `health` and `make bench`."""
    if not native:
        return "python (the native decoder is switched off: PIPELINE_NATIVE_PARSE=false)"
    if _native is None:
        return "python (native decoder not built: `make install` builds it where cargo is found)"
    return f"native (pipeline-project-native {metadata.version('pipeline-project-native')})"


def parse_batch(raw: RawBatch, *, native: bool = True) -> ParsedBatch:
    """Decodes every value of the batch; never raises for a bad record.

    With the native decoder (see `native_split`) the Python path only sees the records it
    deferred; without it (not built, or `native=False`) it sees them all.
    """
    split = native_split(raw) if native else None
    if split is None:
        return parse_records(raw.offsets, raw.timestamps_ms, raw.values)
    slow = parse_records(*split.deferred)
    return ParsedBatch(_merged(split.frame, slow.frame), slow.rejects)


def _merged(native: pl.DataFrame, slow: pl.DataFrame) -> pl.DataFrame:
    """The native rows and the Python path's, in offset order.

    The Python path keeps a handful of rows a part (most deferred records are rejects): one
    concatenation sorted by offset costs 4 ms a 50k part, polars' `merge_sorted` 14 ms.
    """
    if slow.height == 0:
        return native
    return pl.concat([native, slow], rechunk=True).sort(OFFSET_COLUMN)


def parse_records(
    offsets: list[int], timestamps_ms: list[int], values: Sequence[bytes | None]
) -> ParsedBatch:
    """The Python parse path: msgspec fast path, exact classifier for the rest.

    Decodes in chunks of CHUNK_RECORDS so the Python objects of one chunk are freed (and their
    memory reused, still in cache) before the next is decoded: measured 2x faster than one 200k
    pass. The duplicate-key proof then runs once over the whole batch, in polars.
    """
    frames: list[pl.DataFrame] = []
    rejects: list[Reject] = []
    decoded: list[bytes] = []
    if not isinstance(values, list):  # the native drain's Blobs: plain bytes objects here
        values = values.to_list()
    with paused_gc():
        for start in range(0, len(values), CHUNK_RECORDS):
            stop = min(start + CHUNK_RECORDS, len(values))
            chunk = _Chunk(offsets[start:stop], timestamps_ms[start:stop], values[start:stop])
            frame, chunk_rejects, chunk_decoded = _parse_chunk(chunk)
            frames.append(frame)
            rejects.extend(chunk_rejects)
            decoded.extend(chunk_decoded)
        frame = pl.concat(frames, rechunk=True) if frames else _EMPTY_FRAME
        frame, late_rejects = _check_key_counts(frame, decoded)
    rejects.extend(late_rejects)
    rejects.sort(key=lambda r: r.offset)
    return ParsedBatch(frame, rejects)


@dataclass(frozen=True)
class NativeSplit:
    """The native decoder's rows (PARSED_SCHEMA, offset order) and the records it deferred.

    `deferred` is (offsets, timestamps_ms, values), as `parse_records` takes them.
    """

    frame: pl.DataFrame
    deferred: tuple[list[int], list[int], list[bytes | None]]


def native_split(raw: RawBatch) -> NativeSplit | None:
    """Native decode of the plain event objects; None without the decoder or for no records.

    The native decoder (native/, Rust: serde_json into Arrow buffers, on two threads) accepts a
    record only when it is an object of known keys, none repeated, all required ones present,
    each value of its declared type or null; it defers everything else to the Python path, so
    every reject is still named by the exact classifier. Measured on 200k events (5% bad): the
    parse stage takes 0.23 s instead of 0.58 s, 0.12 s of it the native decode.
    """
    decoded = _decode_native(raw.values) if _native is not None and len(raw) else None
    if decoded is None:
        return None
    deferred, parts = decoded
    lineage = pl.DataFrame(
        [
            pl.Series(OFFSET_COLUMN, raw.offsets, dtype=pl.Int64),
            pl.Series(KAFKA_TS_MS_COLUMN, raw.timestamps_ms, dtype=pl.Int64),
            pl.int_range(len(raw), dtype=pl.Int64, eager=True).alias(_POSITION),
        ]
    )
    if deferred:
        lineage = lineage.filter(pl.int_range(pl.len()).is_in(deferred).not_())
    frame = pl.concat([lineage, _frame_of_parts(parts)], how="horizontal")
    frame = frame.with_columns(pl.lit(None, dtype).alias(c) for c, dtype in _NOT_NATIVE.items())
    frame, deferred = _defer_unnamed(frame, deferred)
    return NativeSplit(
        frame,
        (
            [raw.offsets[p] for p in deferred],
            [raw.timestamps_ms[p] for p in deferred],
            [raw.values[p] for p in deferred],
        ),
    )


def _without_any_key(frame: pl.DataFrame) -> pl.Expr:
    """Rows where an aliased required field is null and no alias its version allows carries it.

    Exactly the rows whose missing-or-null question only the raw record can answer; a v2 event
    with `url` alone is not one of them, so it stays on the native path.
    """
    if not ALIASES:
        return pl.repeat(False, frame.height)
    version = pl.col("schema_version").fill_null(SCHEMA_VERSION)
    lacking = []
    for target in sorted(set(ALIASES.values())):
        carried = [
            pl.col(alias).is_not_null() & version.is_in(CONTRACT.versions_with(alias))
            for alias, to in ALIASES.items()
            if to == target
        ]
        lacking.append(pl.col(target).is_null() & ~pl.any_horizontal(carried))
    return pl.any_horizontal(lacking)


def _defer_unnamed(frame: pl.DataFrame, deferred: list[int]) -> tuple[pl.DataFrame, list[int]]:
    """Moves the native rows lacking an aliased required field to the Python path.

    The native decoder treats such a field as optional (any one of its keys will do); whether it
    is missing or null decides the category, which only the exact classifier can tell.
    """
    lacking = frame.select(_without_any_key(frame)).to_series()
    if lacking.any():
        moved = frame.filter(lacking).get_column(_POSITION).to_list()
        frame = frame.filter(~lacking)
        deferred = sorted([*deferred, *moved])
    return frame.drop(_POSITION), deferred


def native_decode(values: Sequence[bytes | None], parts: int = 2) -> tuple[list[int], list[Any]]:
    """The native decoder's (deferred positions, parts) for `values`, in `parts` threads.

    `values` is a list of bytes or the native drain's Blobs, which it reads in place.
    """
    if _ALL_OBJECTS_NATIVE:
        objects = list(_NATIVE_OBJECTS.values())
        return _native.decode_objects(values, _NATIVE_TOP, objects, MAX_MESSAGE_BYTES, parts)
    return _native.decode_columns(values, _NATIVE_TOP, _NATIVE_PROPS, MAX_MESSAGE_BYTES, parts)


def _decode_native(values: Sequence[bytes | None]) -> tuple[list[int], list[Any]] | None:
    """The decoder's (deferred positions, parts); None if it failed, so the batch takes Python."""
    try:
        return native_decode(values)
    except BaseException as exc:  # a Rust panic arrives as pyo3's PanicException (BaseException)
        if type(exc).__name__ != "PanicException" and not isinstance(exc, Exception):
            raise
        log.warning("native decoder failed (%s); this batch takes the Python parse path", exc)
        return None


def _frame_of_parts(parts: list[tuple[int, list[tuple[Any, Any, Any]]]]) -> pl.DataFrame:
    """The native decoder's Arrow buffers as a frame of the parsed field columns, no copy.

    One record batch per part; strings are string views (polars' own layout) into their
    column's text buffer.
    """
    batches = []
    for rows, columns in parts:
        arrays = []
        for dtype, (bitmap, values, text) in zip(_NATIVE_ARROW_TYPES, columns, strict=True):
            data = [None if bitmap is None else pa.py_buffer(bitmap), pa.py_buffer(values)]
            if dtype == pa.string_view():
                data.append(pa.py_buffer(text))
            arrays.append(pa.Array.from_buffers(dtype, rows, data))
        batches.append(pa.RecordBatch.from_arrays(arrays, schema=_NATIVE_SCHEMA))
    table = pa.Table.from_batches(batches, schema=_NATIVE_SCHEMA)
    return pl.from_arrow(table)  # type: ignore[return-value]


@dataclass(frozen=True)
class _Chunk:
    """Records of one chunk, as parallel lists."""

    offsets: list[int]
    timestamps_ms: list[int]
    values: list[bytes | None]


def _parse_chunk(chunk: _Chunk) -> tuple[pl.DataFrame, list[Reject], list[bytes]]:
    """Typed rows of the chunk's decoded records, rejects of the others, and the decoded values."""
    events, positions, failures = _decode_all(chunk.values)
    frame = _to_frame(events, positions, chunk)
    del events  # free the Structs before the slow paths allocate
    rejects = [_diagnose_failure(chunk, pos, error) for pos, error in failures]
    values = chunk.values
    decoded = values if len(positions) == len(values) else [values[p] for p in positions]
    return frame, rejects, decoded  # type: ignore[return-value]


def _decode_all(
    values: Sequence[bytes | None],
) -> tuple[list[Any], list[int], list[tuple[int, str]]]:
    """The hot loop: one C decode per record; failures are only remembered here.

    `list.extend(map(decode, ...))` runs the loop in C; when a record fails, the records before it
    are already in the list, so the failure's position is known and the same iterator resumes
    after it. A tombstone fails with TypeError, and so does a value over MAX_MESSAGE_BYTES, which
    is handed over as None: decoding one cost ~100 us of a 64 KiB+ record for nothing. Neither
    keeps a decoder message, as the exact classifier names them without one.
    """
    decode = _DECODER.decode
    events: list[Any] = []
    failures: list[tuple[int, str]] = []
    remaining = iter(_without_oversized(values))
    while True:
        try:
            events.extend(map(decode, remaining))
            break
        except _DECODE_ERRORS as exc:
            failures.append((len(events) + len(failures), str(exc)))
        except TypeError:  # a tombstone (None), or a value over MAX_MESSAGE_BYTES
            failures.append((len(events) + len(failures), ""))
    failed = dict(failures)
    positions = [p for p in range(len(values)) if p not in failed]
    return events, positions, failures


def _without_oversized(values: Sequence[bytes | None]) -> Sequence[bytes | None]:
    """`values` with each one over MAX_MESSAGE_BYTES replaced by None (rare: a copy only then)."""
    if max(map(len, filter(None, values)), default=0) <= MAX_MESSAGE_BYTES:
        return values
    return [None if v is not None and len(v) > MAX_MESSAGE_BYTES else v for v in values]


def _to_frame(events: list[Any], positions: list[int], chunk: _Chunk) -> pl.DataFrame:
    """Transposes Structs into typed columns; the decoder checked the types, so none can clash."""
    astuple = msgspec.structs.astuple
    columns = list(zip(*[astuple(e) for e in events], strict=True)) or [()] * len(_EVENT_FIELDS)
    data: dict[str, Sequence[Any]] = dict(zip(_EVENT_FIELDS, columns, strict=True))
    has_objects = pl.Series(_HAS_OBJECTS, [0] * len(events), dtype=pl.Int32)
    for obj, index in _OBJECT_INDEX.items():
        entries, present = _object_columns(obj, columns[index])
        data.update(entries)
        if present is not None:
            has_objects += present
    take = _gatherer(positions, len(chunk.values))
    lineage = [
        take(pl.Series(OFFSET_COLUMN, chunk.offsets, dtype=pl.Int64)),
        take(pl.Series(KAFKA_TS_MS_COLUMN, chunk.timestamps_ms, dtype=pl.Int64)),
    ]
    fields = [
        pl.Series(name, data[name], dtype=dtype, strict=False)
        for name, dtype in list(PARSED_SCHEMA.items())[len(lineage) :]
    ]
    return pl.DataFrame([*lineage, *fields, has_objects])


def _object_columns(
    obj: str, structs: Sequence[Any]
) -> tuple[dict[str, Sequence[Any]], pl.Series | None]:
    """One nested object's entries as columns, and which rows had it (None: no row had it).

    A batch without the object (every v1 batch has no `consent`) costs one C-level count.
    """
    names = OBJECT_COLUMNS[obj]
    if structs.count(None) == len(structs):
        return {column: [None] * len(structs) for column in names.values()}, None
    astuple = msgspec.structs.astuple
    empty = (None,) * len(names)
    rows = [empty if s is None else astuple(s) for s in structs]
    entries = list(zip(*rows, strict=True)) or [()] * len(names)
    present = pl.Series([s is not None for s in structs], dtype=pl.Int32)
    return dict(zip(names.values(), entries, strict=True)), present


def _gatherer(positions: list[int], total: int) -> Callable[[pl.Series], pl.Series]:
    """Selects the decoded records from a full-chunk column (identity when all decoded)."""
    if len(positions) == total:
        return lambda series: series
    index = pl.Series(positions, dtype=pl.UInt32)
    return lambda series: series.gather(index)


def _check_key_counts(
    frame: pl.DataFrame, decoded: list[bytes]
) -> tuple[pl.DataFrame, list[Reject]]:
    """Re-checks, exactly, records whose raw key count may differ from the decoded one.

    `decoded` holds the raw value of each frame row, in row order.
    """
    if frame.height == 0:
        return frame.drop(_HAS_OBJECTS), []
    text = _as_text(decoded)
    present = pl.sum_horizontal(pl.col(_COUNTED_COLUMNS).is_not_null().cast(pl.Int32))
    expected = frame.select(present + pl.col(_HAS_OBJECTS) + len(DECODE_REQUIRED)).to_series()
    counted = text.str.count_matches(_KEY_LITERAL, literal=True)
    odd = (counted != expected) | text.str.contains(_SPACED_COLON)
    odd = odd | frame.select(_without_any_key(frame)).to_series()
    suspects = odd.fill_null(True).arg_true().to_list()
    frame = frame.drop(_HAS_OBJECTS)
    offsets = frame.get_column(OFFSET_COLUMN)
    rejects: list[Reject] = []
    dropped: list[int] = []
    for row in suspects:
        defect = diagnose(decoded[row]) or _contract_defect(decoded[row], missing=True)
        if defect is not None:
            rejects.append(defect.reject(offsets[row]))
            dropped.append(row)
    if dropped:
        frame = frame.filter(pl.int_range(pl.len()).is_in(dropped).not_())
    return frame, rejects


def _as_text(decoded: list[bytes]) -> pl.Series:
    """The decoded values as text; null for one that is not UTF-8, which makes it a suspect.

    msgspec skips unknown keys and values without checking their UTF-8, so such a record gets
    here; the classifier then names it invalid_utf8 (it once failed the whole batch).
    """
    try:
        return pl.Series(decoded, dtype=pl.Binary).cast(pl.String)
    except pl.exceptions.ComputeError:
        return pl.Series([_utf8_or_none(value) for value in decoded], dtype=pl.String)


def _utf8_or_none(value: bytes) -> str | None:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _diagnose_failure(chunk: _Chunk, pos: int, error: str) -> Reject:
    """Why the fast path refused a record: a parse defect first, else the decoder's type error."""
    offset = chunk.offsets[pos]
    value = chunk.values[pos]
    defect = diagnose(value)
    if defect is None:
        missing = _MISSING.match(error) is not None
        defect = _contract_defect(value, missing=missing) or type_defect(error)  # type: ignore[arg-type]
    return defect.reject(offset)


def version_message(version: object) -> str:
    """The message of an unsupported_schema_version reject, in the validate stage's own words.

    The rule is VERSION_RULE too, so a record gets the same reject whichever stage sees it.
    """
    return f"{VERSION_RULE} failed for schema_version={str(version)!r}"


def _contract_defect(value: bytes, *, missing: bool) -> Defect | None:
    """What the decoder cannot judge in clean JSON: the event's version, then its required keys.

    A version this code does not know comes first: its event may follow rules unknown here, so
    nothing else about it means anything yet. `missing`: the decoder found a required key absent,
    or a field an alias may carry came out null; then the first required field (contract order)
    without any key of its version names the missing_field reject.
    """
    obj = json.loads(value)
    version = obj.get("schema_version")
    if type(version) is int and 1 <= version <= INT64_MAX and not CONTRACT.knows(version):
        return Defect(UNSUPPORTED_VERSION, VERSION_RULE, "schema_version", version_message(version))
    if not missing:
        return None
    known = type(version) is int and CONTRACT.knows(version)
    for name, keys in CONTRACT.required_keys(version if known else 1):
        if not any(key in obj for key in keys):
            message = f"Object missing required field `{name}`"
            return Defect("missing_field", f"{name}_required", name, message)
    return None


# --- exact classifier (slow path: only records that failed or looked suspicious) ---------------

_MSGSPEC_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`")
_OUT_OF_RANGE = re.compile(r"^Expected `int` [<>]=")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_JSON_KINDS: dict[type, str] = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def diagnose(value: bytes | None) -> Defect | None:
    """Exact parse-stage check of one value (contract.PARSE_CATEGORIES); None when it is clean."""
    return decode_event(value)[1]


def decode_event(value: bytes | None) -> tuple[dict[str, Any] | None, Defect | None]:
    """One value through every parse-stage check, in order: its JSON object, or its first defect.

    Per record, in Python: the exact classifier's path here, and the bench's per-event baseline.
    """
    if value is None:
        return None, Defect("null_value", "value_not_null", "", "Kafka value is null (tombstone)")
    if len(value) > MAX_MESSAGE_BYTES:
        message = f"{len(value)} bytes > {MAX_MESSAGE_BYTES}"
        return None, Defect("too_large", "max_message_bytes", "", message)
    if value.startswith(UTF8_BOM):
        return None, Defect("invalid_utf8", "strict_utf8", "", "UTF-8 byte order mark")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, Defect("invalid_utf8", "strict_utf8", "", str(exc))
    try:
        obj = json.loads(
            text,
            object_pairs_hook=_pairs_hook,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except _DefectFound as found:
        return None, found.defect
    except RecursionError:
        return None, Defect("too_deep", "max_depth", "", f"nesting deeper than {MAX_DEPTH}")
    except json.JSONDecodeError as exc:
        return None, Defect("invalid_json", "json_syntax", "", str(exc))
    except ValueError as exc:  # an integer literal beyond Python's int-string digit limit
        return None, Defect("invalid_value", "int64_range", "", str(exc))
    defect = _walk_defect(obj, text)
    return (None, defect) if defect is not None else (obj, None)


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > MAX_KEYS:
        raise _DefectFound(
            Defect("too_large", "max_keys", "", f"object with {len(pairs)} keys > {MAX_KEYS}")
        )
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DefectFound(
                    Defect("duplicate_key", "unique_keys", key, f"key {key!r} repeated")
                )
            seen.add(key)
    return obj


def _reject_constant(name: str) -> float:
    raise _DefectFound(Defect("non_finite", "finite_numbers", "", f"{name} is not a JSON number"))


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _DefectFound(
            Defect("non_finite", "finite_numbers", "", f"{text[:40]} overflows to infinity")
        )
    return number


def _walk_defect(obj: Any, text: str) -> Defect | None:
    """Depth, lone surrogates and the top-level type, checked on the decoded tree.

    Each check runs only when the text could fail it (enough brackets, a surrogate escape).
    """
    brackets = text.count("{") + text.count("[")
    if brackets > MAX_DEPTH and _text_depth(text) > MAX_DEPTH:
        return Defect("too_deep", "max_depth", "", f"nesting deeper than {MAX_DEPTH}")
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            return Defect("invalid_unicode", "no_lone_surrogates", "", str(exc))
    if not isinstance(obj, dict):
        kind = _JSON_KINDS.get(type(obj), type(obj).__name__)
        return Defect("not_object", "json_object", "", f"JSON {kind}, not an object")
    return None


def _text_depth(text: str) -> int:
    """Container nesting depth of JSON text that parsed (a scalar is 0), read off its brackets.

    Equal to the decoded tree's depth: outside string literals, every `[` or `{` opens a level.
    Deletes strings and everything else but brackets, then takes the highest running sum, in C:
    measured 5 us for a 64-deep record, where walking the tree took 35 us.
    """
    brackets = _NOT_A_BRACKET.sub("", text)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


# String literals (escapes included) and runs of anything else but brackets.
_NOT_A_BRACKET = re.compile(r'"(?:[^"\\]++|\\.)*+"|[^\[\]{}"]++')
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def type_defect(message: str) -> Defect:
    """Validate-stage category of a decoder error on JSON that parsed cleanly (one per record)."""
    missing = _MISSING.match(message)
    if missing:
        name = missing.group(1)
        return Defect("missing_field", f"{name}_required", name, message)
    at = _MSGSPEC_PATH.search(message)
    field = at.group(1) if at else ""
    if field == "timestamp":
        return Defect("invalid_timestamp", "timestamp_type", field, message)
    if message.startswith("Number out of range"):
        return Defect("non_finite", "finite_numbers", field, message)
    if _OUT_OF_RANGE.match(message):
        return Defect("invalid_value", "int64_range", field, message)
    return Defect("wrong_type", f"{field or 'value'}_type", field, message)
