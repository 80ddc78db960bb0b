"""The native decoder (native/, Rust) gives exactly what the Python parse path gives.

It only accepts plain event objects and defers every other record to the Python path, so for
any input the parsed frame (values, nulls, types, the sign of a zero) and the rejects must be
equal with and without it. Checked on hand-made edge cases, every poison pill of test_parse,
the generator's mix and random byte mutations of good records.
"""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from benchmarks.process_bench import make_batch
from pipeline_project.batch import parse
from pipeline_project.batch.parse import parse_batch, parse_path
from pipeline_project.batch.process import Identity, map_rows
from pipeline_project.batch.records import RawBatch
from pipeline_project.errors import SettingsError
from pipeline_project.health import check_parser
from pipeline_project.settings import Settings
from pipeline_project_tests.batch import test_schema_versions as schema
from pipeline_project_tests.batch.batch_support import (
    FIRST_OFFSET,
    INGESTED_AT,
    LATENESS_DAYS,
    NOW,
    SKEW_SECONDS,
    encode,
    good_event,
    good_values,
    raw_batch,
    run,
)
from pipeline_project_tests.batch.test_parse import GOOD, PARSE_CASES, TYPE_CASES, _type_case

CARGO = shutil.which("cargo") or (Path.home() / ".cargo/bin/cargo")


def test_the_native_decoder_is_built_where_cargo_is() -> None:
    """`make install` builds it whenever cargo exists, so a missing module here is a bug."""
    if not Path(CARGO).exists():
        pytest.skip("no cargo on this machine: the pure-Python path is the only one")
    assert parse_path().startswith("native"), parse_path()


needs_native = pytest.mark.skipif(parse._native is None, reason="native decoder not built")


def assert_same_parse(raw: RawBatch) -> None:
    """Both paths agree on every value (bit for bit for floats) and every reject."""
    python, native = parse_batch(raw, native=False), parse_batch(raw, native=True)
    assert native.rejects == python.rejects
    assert_frame_equal(native.frame, python.frame)
    for name, dtype in native.frame.schema.items():
        if dtype == pl.Float64:
            assert _signs(native.frame[name]) == _signs(python.frame[name]), name


def _signs(series: pl.Series) -> list[float | None]:
    return [None if x is None else math.copysign(1.0, x) for x in series.to_list()]


def _with(raw_json: bytes, old: bytes = b"19.99") -> bytes:
    assert old in GOOD
    return GOOD.replace(old, raw_json, 1)


EDGE_VALUES: list[bytes | None] = [
    # numbers a float column takes, or that only Python may judge
    _with(b"-0"),
    _with(b"-0.0"),
    _with(b"0"),
    _with(b"1E5"),
    _with(b"1e-7"),
    _with(b"5e-324"),
    _with(b"1e-400"),
    _with(b"1.7976931348623157e308"),
    _with(b"9007199254740993"),
    _with(b"-9007199254740992"),
    _with(b"123456789012345678901234567890.5"),
    _with(b"0.30000000000000004"),
    _with(b"18446744073709551616"),
    _with(b"2.5e"),
    _with(b"01"),
    _with(b"+1"),
    _with(b".5"),
    _with(b"null"),
    # integers
    _with(b'"quantity":9223372036854775807', b'"quantity":2'),
    _with(b'"quantity":-9223372036854775808', b'"quantity":2'),
    _with(b'"quantity":9223372036854775808', b'"quantity":2'),
    _with(b'"quantity":-0', b'"quantity":2'),
    _with(b'"quantity":2.0', b'"quantity":2'),
    _with(b'"quantity":2e0', b'"quantity":2'),
    _with(b'"quantity":null', b'"quantity":2'),
    # strings: escapes, lengths around the 12-byte inline limit, non-ASCII, NUL
    _with(b'"a\\"b\\\\c\\/d\\b\\f\\n\\r\\t"', b'"shoes"'),
    _with(b'"\\u00e9\\ud83d\\ude00 \\u0000"', b'"shoes"'),
    _with(b'"caf\xc3\xa9 \xe2\x98\x83 \xf0\x9f\x98\x80"', b'"shoes"'),
    _with(b'""', b'"shoes"'),
    _with(b'"123456789012"', b'"shoes"'),
    _with(b'"1234567890123"', b'"shoes"'),
    _with(b'"' + b"x" * 5000 + b'"', b'"shoes"'),
    _with(b'"\\ud800"', b'"shoes"'),
    _with(b'"\\udc00\\ud800"', b'"shoes"'),
    _with(b'"tab\there"', b'"shoes"'),
    # keys: escaped, unknown, repeated, in properties, whitespace everywhere
    GOOD.replace(b'"event_type"', b'"event\\u005ftype"', 1),
    GOOD[:-1] + b',"extra":{"deep":[1,2,{"x":null}]}}',
    GOOD[:-1] + b',"properties":null}',
    GOOD.replace(b'"quantity":2', b'"quantity":2,"unknown_prop":1', 1),
    GOOD.replace(b'"quantity":2', b'"quantity":2,"nested":{"a":1}', 1),
    b" \t\r\n" + GOOD.replace(b":", b" : ").replace(b",", b" ,\n ") + b"\n ",
    encode(good_event(1, properties=None)),
    encode(good_event(2, properties={})),
    encode(good_event(3, referrer=None, country=None, ip=None, schema_version=None)),
    encode(good_event(4, event_id=None, user_agent=None)),
    encode({k: v for k, v in good_event(5).items() if k not in {"referrer", "properties"}}),
    b"{}",
    b"\xef\xbb\xbf" + GOOD,
    GOOD + b"\x00",
    None,
]


@needs_native
def test_edge_values_parse_alike() -> None:
    values = [v for value in EDGE_VALUES for v in (value, *good_values(1))]
    assert_same_parse(raw_batch(values))


@needs_native
def test_every_poison_pill_and_type_case_parses_alike() -> None:
    values = [value for _, value, _ in PARSE_CASES]
    values += [_type_case(overrides) for _, overrides, _, _ in TYPE_CASES]
    assert_same_parse(raw_batch(values + good_values(50)))


@needs_native
@pytest.mark.parametrize("seed", [1, 2])
def test_the_generator_mix_parses_alike(seed: int) -> None:
    assert_same_parse(make_batch(20_000, 0.2, seed=seed))


def _version_and_id_values() -> list[bytes | None]:
    """Every v1/v2/v9 and id case of test_schema_versions, good and bad."""
    events = [event for event, _ in schema.VALID_URL_FORMS + schema.INVALID_URL_FORMS]
    events += [schema.v2_event(1, **o) for o, _ in schema.V2_FIELD_CASES + schema.BAD_V2_FIELDS]
    events += schema.UNKNOWN_VERSIONS
    events += [good_event(1, user_id=v, properties={"order_id": v}) for v in schema.GOOD_IDS]
    events += [good_event(1, session_id=v) for v in schema.BAD_IDS.values()]
    v2 = encode(schema.v2_event(1))
    consent = b'"consent":{"analytics":true,"marketing":false}'
    assert consent in v2
    odd_consents = [
        b'"consent":{"analytics":true,"analytics":false}',  # a duplicate key
        b'"consent":{"analytics":true,"x":{"y":1}}',
        b'"consent":{"analytics":null,"marketing":true}',
        b'"consent":[]',
        b'"consent":{"analytics":tru}',
        b'"consent" : { "marketing" : false }',
        b'"consent":{"marketing":0}',
        b'"consent":{}',
    ]
    raw = [v2.replace(consent, odd) for odd in odd_consents]
    return [encode(e) for e in events] + raw + schema.mixed_range()


@needs_native
def test_versions_and_unicode_ids_parse_alike() -> None:
    values = [v for value in _version_and_id_values() for v in (value, *good_values(1))]
    assert_same_parse(raw_batch(values))


@needs_native
def test_v2_events_stay_on_the_native_path() -> None:
    """The decoder reads url, app_version and (a build with `decode_objects`) consent; it defers
    rows whose page_url only the raw record can judge, whatever their version."""
    native_ok = [schema.v2_event(i, consent=...) for i in range(3)]
    native_ok.append(schema.without(schema.v2_event(3), "url", "consent") | {"page_url": "/p"})
    with_consent = [schema.v2_event(4), schema.v2_event(5, consent={"marketing": None})]
    deferred = [good_event(6, url="/only-url-in-v1", page_url=...)]
    deferred.append(schema.v2_event(7, schema_version=9, url=...))
    deferred.append(schema.v2_event(8, consent={"analytics": True, "analytics ": 1}))
    deferred.append(schema.v2_event(9, consent={"analytics": 1}))
    if parse._ALL_OBJECTS_NATIVE:
        native_ok += with_consent
    else:
        deferred = with_consent + deferred
    values = [encode({k: v for k, v in e.items() if v is not ...}) for e in native_ok + deferred]
    split = parse.native_split(raw_batch(values))
    assert split is not None
    assert split.frame.height == len(native_ok)
    assert split.deferred[0] == [FIRST_OFFSET + len(native_ok) + i for i in range(len(deferred))]


@needs_native
@pytest.mark.parametrize("mix", [{2: 1.0}, {1: 0.5, 2: 0.5}])
def test_a_v2_generator_mix_parses_and_maps_alike(
    mix: dict[int, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = make_batch(10_000, 0.2, seed=5, schema_mix=mix)
    assert_same_parse(raw)
    native = run(raw)
    monkeypatch.setattr(parse, "_native", None)
    python = run(raw)
    assert_frame_equal(native.good, python.good)
    assert native.rejects == python.rejects


@needs_native
def test_random_mutations_of_good_records_parse_alike() -> None:
    """Flipped, dropped and inserted bytes: whatever the native side accepts, Python must too."""
    rng = random.Random(11)
    alphabet = b'{}[]",:\\ 0123456789.eE+-nultrfasxu\xc3\xa9\xff\x00'
    values: list[bytes | None] = []
    for i in range(4_000):
        value = bytearray(encode(good_event(i)))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(value))
            action = rng.random()
            if action < 0.4:
                value[at] = rng.choice(alphabet)
            elif action < 0.7:
                del value[at]
            else:
                value.insert(at, rng.choice(alphabet))
        values.append(bytes(value))
    assert_same_parse(raw_batch(values))


def _number_text(rng: random.Random) -> bytes:
    """A JSON number of any form: long mantissas, ties, tiny and huge exponents, zeros."""
    sign = rng.choice(["", "", "-"])
    whole = rng.choice(["0", str(rng.randint(1, 9)), str(rng.randint(1, 10 ** rng.randint(1, 25)))])
    fraction = rng.choice(["", "." + "".join(rng.choices("0123456789", k=rng.randint(1, 30)))])
    exponent = rng.choice(["", "", f"{rng.choice('eE')}{rng.choice(['', '+', '-'])}"])
    if exponent:
        exponent += str(rng.choice([rng.randint(0, 30), rng.randint(280, 330)]))
    return (sign + whole + fraction + exponent).encode()


@needs_native
def test_any_number_text_parses_to_the_float_python_reads() -> None:
    """Every float the native side takes is the one Python's json reads, bit for bit and sign."""
    rng = random.Random(7)
    texts = [_number_text(rng) for _ in range(6_000)]
    texts += [repr(rng.uniform(-1e6, 1e6)).encode() for _ in range(1_000)]
    texts += [b"0.1", b"2.2250738585072011e-308", b"4.9406564584124654e-324", b"1e23", b"-0e0"]
    assert_same_parse(raw_batch([_with(text) for text in texts]))


@needs_native
def test_any_string_text_parses_to_the_text_python_reads() -> None:
    """Escapes, surrogate pairs and raw UTF-8 of every width, valid or not, in a string value."""
    rng = random.Random(13)
    pieces = [
        b"a",
        b"\\n",
        b'\\"',
        b"\\\\",
        b"\\/",
        b"\\u00e9",
        b"\\ud83d\\ude00",
        b"\\ud83d",
        b"\\udc00",
        b"\\u0000",
        b"\\x",
        b"\xc3\xa9",
        b"\xe2\x98\x83",
        b"\xf0\x9f\x98\x80",
        b"\xed\xa0\x80",
        b"\xc0\xaf",
        b"\xff",
        b"\t",
        b"\x7f",
        b" ",
        b"\\u12",
        b"\\U0041",
    ]
    texts = [b"".join(rng.choices(pieces, k=rng.randint(1, 40))) for _ in range(4_000)]
    assert_same_parse(raw_batch([_with(b'"' + text + b'"', b'"shoes"') for text in texts]))


@needs_native
def test_batches_of_only_good_only_bad_and_nothing() -> None:
    assert_same_parse(raw_batch(good_values(300)))
    assert_same_parse(raw_batch([None, b"[]", b"x"] * 50))
    assert_same_parse(raw_batch([]))


@needs_native
@pytest.mark.parametrize("parts", [1, 2, 7, 1000])
def test_any_split_into_parts_gives_the_same_frame(parts: int) -> None:
    raw = make_batch(3_000, 0.1, seed=3)
    _, whole = parse.native_decode(raw.values, 1)
    deferred, split = parse.native_decode(raw.values, parts)
    assert (len(split) > 1) == (parts > 1)
    assert_frame_equal(parse._frame_of_parts(split), parse._frame_of_parts(whole))
    assert deferred == sorted(deferred)


@needs_native
def test_a_whole_batch_maps_alike_without_the_native_decoder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """process_batch (native rows mapped on a worker while Python parses the rest) == Python."""
    raw = make_batch(20_000, 0.2, seed=4)
    native = run(raw)
    monkeypatch.setattr(parse, "_native", None)
    python = run(raw)
    assert_frame_equal(native.good, python.good)
    assert native.rejects == python.rejects
    assert native.filtered == python.filtered


def test_the_setting_switches_the_native_decoder_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """PIPELINE_NATIVE_PARSE=false: health says so, and a run never calls the decoder."""
    monkeypatch.setenv("PIPELINE_NATIVE_PARSE", "false")
    settings = Settings.from_env()
    assert settings.native_parse is False
    assert check_parser(settings).detail.startswith("python (the native decoder is switched off")

    class Refusing:
        def decode_columns(self, *args: object) -> None:
            raise AssertionError("the native decoder ran although switched off")

    monkeypatch.setattr(parse, "_native", Refusing())
    raw = raw_batch(good_values(20) + [b"[]"])
    identity = Identity("run-test", INGESTED_AT, NOW, LATENESS_DAYS, SKEW_SECONDS)
    mapped = map_rows(raw, identity, native=settings.native_parse)
    assert (mapped.rows.height, len(mapped.rejects)) == (20, 1)

    monkeypatch.setenv("PIPELINE_NATIVE_PARSE", "sometimes")
    with pytest.raises(SettingsError, match="PIPELINE_NATIVE_PARSE"):
        Settings.from_env()


def test_a_failing_native_decoder_falls_back_to_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a Rust panic (pyo3 raises it as a BaseException) never fails the batch."""

    class PanicException(BaseException):
        pass

    class Panicking:
        def decode_columns(self, *args: object) -> None:
            raise PanicException("index out of bounds")

    raw = make_batch(2_000, 0.1, seed=6)
    expected = parse_batch(raw, native=False)
    monkeypatch.setattr(parse, "_native", Panicking())
    got = parse_batch(raw)
    assert_frame_equal(got.frame, expected.frame)
    assert got.rejects == expected.rejects
