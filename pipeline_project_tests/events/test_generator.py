"""The event generator: determinism, realism of good events, and one defect per bad event.

A small strict reference classifier below follows the contract's category order; every bad
record must be rejected by it with exactly the category its verdict claims, and every other record
must pass.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from pipeline_project.events import contract
from pipeline_project.events.generator import (
    BAD_CATEGORIES,
    BOT,
    DUPLICATE,
    TEST_USER,
    EventGenerator,
    Record,
    parse_schema_mix,
)

NOW = 1_764_115_199.5  # 2025-11-25T23:59:59.5Z: a half second before UTC midnight
MAX_LATENESS_S = 7 * 86_400
MAX_SKEW_S = 300
TIMESTAMP_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.(\d{3}|\d{6})(Z|[+-]\d{2}:\d{2})$"
)


class Reject(Exception):
    """A record the reference classifier rejects, with its category."""

    def __init__(self, category: str) -> None:
        super().__init__(category)
        self.category = category


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > contract.MAX_KEYS:
        raise Reject("too_large")
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise Reject("duplicate_key")
    return dict(pairs)


def _non_finite(token: str) -> float:
    raise Reject("non_finite")


def _float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise Reject("non_finite")
    return value


def _depth(text: str) -> int:
    """Deepest bracket nesting outside strings."""
    depth = deepest = 0
    in_str = escape = False
    for ch in text:
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def parse(value: bytes | None) -> dict[str, Any]:
    """The parse stage: bytes to a JSON object, or Reject with a parse category."""
    if value is None:
        raise Reject("null_value")
    if len(value) > contract.MAX_MESSAGE_BYTES:
        raise Reject("too_large")
    if value.startswith(b"\xef\xbb\xbf"):
        raise Reject("invalid_utf8")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise Reject("invalid_utf8") from None
    # Depth before parsing: Python's parser recurses into 1000 levels before any hook sees them.
    if _depth(text) > contract.MAX_DEPTH:
        raise Reject("too_deep")
    try:
        obj = json.loads(
            text, object_pairs_hook=_pairs, parse_constant=_non_finite, parse_float=_float
        )
    except json.JSONDecodeError:
        raise Reject("invalid_json") from None
    for s in _strings(obj):
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise Reject("invalid_unicode") from None
    if not isinstance(obj, dict):
        raise Reject("not_object")
    return obj


def _check_type(value: Any, kind: str) -> None:
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "object": isinstance(value, dict),
    }[kind]
    if not ok:
        raise Reject("wrong_type")


def _check_bounds(name: str, value: Any) -> None:
    low, high = contract.NUMERIC_BOUNDS.get(name, (-math.inf, math.inf))
    if not low <= value <= high:
        raise Reject("invalid_value")


def _fullmatch(pattern: str, value: str) -> None:
    if not re.fullmatch(pattern.removeprefix("^").removesuffix("$"), value):
        raise Reject("invalid_format")


def _check_id(value: str) -> None:
    if not contract.is_valid_id(value):
        raise Reject("invalid_format")


def _version(event: dict[str, Any]) -> int:
    """The event's contract version; a version this code does not know is rejected first."""
    version = event.get("schema_version")
    if version is None:
        return contract.SCHEMA_VERSION
    _check_type(version, "int")  # the decoder's type check comes before anything else
    if version >= 1 and not contract.CONTRACT.knows(version):
        raise Reject("unsupported_schema_version")
    return version


def _versioned(event: dict[str, Any], version: int) -> dict[str, Any]:
    """Keys of later versions type-checked, then read as the version says (url folded in)."""
    for name, kind in contract.VERSIONED_FIELDS.items():
        if event.get(name) is not None:
            _check_type(event[name], kind)
    for obj, entries in contract.NESTED_OBJECTS.items():
        if obj != "properties" and event.get(obj) is not None:
            _check_type(event[obj], "object")
            for name, kind in entries.items():
                if event[obj].get(name) is not None:
                    _check_type(event[obj][name], kind)
    if version < 2:
        return event
    url, page_url = event.get("url"), event.get("page_url")
    if url is not None and page_url is not None and url != page_url:
        raise Reject("invalid_value")
    app_version = event.get("app_version")
    if app_version is not None and len(app_version) > contract.TEXT_LIMITS["app_version"]:
        raise Reject("invalid_value")
    if "url" in event and (page_url is None):
        return {**event, "page_url": url}
    return event


def validate(event: dict[str, Any], now: float) -> None:
    """The validate stage, strict: Reject with a validate category, or return for a valid event."""
    event = _versioned(event, _version(event))
    for name in contract.REQUIRED_FIELDS:
        if name not in event:
            raise Reject("missing_field")
    for name in contract.REQUIRED_FIELDS:
        value = event[name]
        if value is None or (isinstance(value, str) and not value.strip()):
            raise Reject("empty_field")
    for name in contract.REQUIRED_FIELDS:
        if name != "timestamp":
            _check_type(event[name], "str")
    for name, kind in contract.OPTIONAL_FIELDS.items():
        if event.get(name) is not None:
            _check_type(event[name], kind)
    props = event.get("properties") or {}
    for name, kind in contract.PROPERTY_TYPES.items():
        if props.get(name) is not None:
            _check_type(props[name], kind)
    _fullmatch(contract.UUID_PATTERN, event["event_id"])
    _check_id(event["user_id"])
    _check_id(event["session_id"])
    _fullmatch(contract.URL_PATTERN, event["page_url"])
    if event.get("country") is not None:
        _fullmatch(contract.COUNTRY_PATTERN, event["country"])
    if event["event_type"] not in contract.EVENT_TYPES:
        raise Reject("invalid_value")
    if props.get("currency") is not None and props["currency"] not in contract.CURRENCIES:
        raise Reject("invalid_value")
    for name, value in props.items():
        if value is not None and name in contract.NUMERIC_BOUNDS:
            _check_bounds(name, value)
    if event.get("schema_version") is not None and event["schema_version"] < 1:
        raise Reject("invalid_value")
    _check_timestamp(event["timestamp"], now)


def _check_timestamp(value: Any, now: float) -> None:
    if not isinstance(value, str):
        raise Reject("invalid_timestamp")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise Reject("invalid_timestamp") from None
    if parsed.tzinfo is None or "T" not in value:
        raise Reject("invalid_timestamp")
    if not now - MAX_LATENESS_S <= parsed.timestamp() <= now + MAX_SKEW_S:
        raise Reject("timestamp_out_of_range")


def classify(value: bytes | None, now: float = NOW) -> str | None:
    """The error category a strict pipeline assigns, or None for a valid event."""
    try:
        validate(parse(value), now)
    except Reject as reject:
        return reject.category
    return None


def expected_filter(event: dict[str, Any]) -> str:
    """Verdict of a valid event under the filter rules (bot before test user)."""
    if contract.BOT_UA_RE.search(event["user_agent"]):
        return BOT
    if event["user_id"].startswith(contract.TEST_USER_PREFIX):
        return TEST_USER
    return contract.GOOD


@pytest.fixture(scope="module")
def mixed() -> list[Record]:
    """A mixed stream, reused by the tests that only read it."""
    gen = EventGenerator(42, bad_ratio=0.1, duplicate_ratio=0.05, late_ratio=0.2)
    return gen.batch(6_000, NOW)


def test_same_seed_and_clock_give_identical_records() -> None:
    def make(seed: int) -> list[Record]:
        gen = EventGenerator(seed, bad_ratio=0.2, duplicate_ratio=0.1, late_ratio=0.3)
        return gen.batch(3_000, NOW)

    first, again, other = make(7), make(7), make(8)
    assert first == again
    assert [r.value for r in first] != [r.value for r in other]


def test_streams_of_one_seed_share_the_pools_but_never_an_event() -> None:
    """`produce --processes N` gives process i stream i: stream 0 is the seed's own stream, the
    others are reproducible, share the seed's users, and repeat no event id of another stream."""
    flags = {"bad_ratio": 0.1, "duplicate_ratio": 0.05}
    own = EventGenerator(9, **flags).batch(3_000, NOW)
    first = EventGenerator(9, stream=0, **flags).batch(3_000, NOW)
    shared = EventGenerator(9, **flags).pools
    second = EventGenerator(9, stream=1, pools=shared, **flags).batch(3_000, NOW)
    assert first == own
    assert second == EventGenerator(9, stream=1, **flags).batch(3_000, NOW)
    ids = [{r.event_id for r in batch if r.event_id is not None} for batch in (first, second)]
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    users = {u.key for u in shared.users}
    assert {r.key for r in second} <= users
    assert len({r.key for r in first} & {r.key for r in second}) > 100
    with pytest.raises(ValueError, match="stream -1"):
        EventGenerator(9, stream=-1)


def test_clock_changes_only_timestamps() -> None:
    early = EventGenerator(7, late_ratio=0.3, duplicate_ratio=0.05).batch(2_000, NOW)
    later = EventGenerator(7, late_ratio=0.3, duplicate_ratio=0.05).batch(2_000, NOW + 86_400 * 3.3)
    for a, b in zip(early, later, strict=True):
        assert (a.key, a.verdict, a.event_id) == (b.key, b.verdict, b.event_id)
        ea, eb = orjson.loads(a.value or b""), orjson.loads(b.value or b"")
        assert ea.pop("timestamp") != eb.pop("timestamp")
        assert ea == eb


def test_injected_clock_is_used() -> None:
    ticks = iter([NOW, NOW + 1.0])
    gen = EventGenerator(3, clock=lambda: next(ticks))
    same = EventGenerator(3)
    assert gen.batch(50) == same.batch(50, NOW)
    assert gen.batch(50) == same.batch(50, NOW + 1.0)


def test_fast_path_bytes_equal_orjson_of_the_event() -> None:
    """Good records are built by string formatting; they must be exactly what orjson would emit."""
    fast, slow = EventGenerator(5, late_ratio=0.3), EventGenerator(5, late_ratio=0.3)
    for _ in range(5_000):
        record = fast.next_record(NOW)
        slow.rng.random()  # next_record's bad/duplicate draw
        _, event = slow.event_dict(NOW)
        assert record.value == orjson.dumps(event)


def test_every_bad_category_is_produced_and_detected() -> None:
    records = EventGenerator(1, bad_ratio=1.0).batch(3_000, NOW)
    seen = Counter(r.verdict for r in records)
    assert set(seen) == {contract.bad_verdict(c) for c in BAD_CATEGORIES}
    assert "transform_error" not in BAD_CATEGORIES
    for r in records:
        category = r.verdict.removeprefix("bad:")
        assert classify(r.value) == category, (r.verdict, r.value[:300] if r.value else None)


def test_bad_events_carry_exactly_one_defect() -> None:
    """Validate-stage defects: repairing the one field named by the defect makes the event valid."""
    gen = EventGenerator(2, bad_ratio=1.0)
    reference = EventGenerator(2)
    for _ in range(2_000):
        reference.rng.random()  # next_record's bad/duplicate draw
        _, original = reference.event_dict(NOW)
        r = gen.next_record(NOW)
        # The defect drew more random numbers: put the reference back in step.
        reference.rng.setstate(gen.rng.getstate())
        category = r.verdict.removeprefix("bad:")
        if category in contract.PARSE_CATEGORIES:
            continue
        event = orjson.loads(r.value or b"")
        differing = {k for k in original.keys() | event.keys() if _differ(original, event, k)}
        assert len(differing) == 1, (category, differing)
        (name,) = differing
        if name == "properties" and isinstance(event.get(name), dict):
            a, b = original.get(name) or {}, event[name]
            changed = {k for k in a.keys() | b.keys() if _differ(a, b, k)}
            # Product fields are added to events that had none; only one of them is wrong.
            bad = [k for k in changed if classify(_with(original, name, {**a, k: b.get(k)}))]
            assert len(bad) == 1, (category, changed)


def _differ(a: dict[str, Any], b: dict[str, Any], key: str) -> bool:
    """Whether a key differs, telling `True` from `1` and absent from null."""
    return (key in a, orjson.dumps(a.get(key))) != (key in b, orjson.dumps(b.get(key)))


def _with(event: dict[str, Any], key: str, value: Any) -> bytes:
    return orjson.dumps({**event, key: value})


def test_bad_event_variants_cover_the_matrix() -> None:
    """The poison shapes P1-P13 (docs/ARCHITECTURE.md) are all among the bad records."""
    values = [r.value for r in EventGenerator(9, bad_ratio=1.0).batch(6_000, NOW)]
    blobs = [v for v in values if v is not None]
    assert any(v is None for v in values)  # tombstone
    assert b"" in blobs
    needles = [
        b"\xef\xbb\xbf",
        b"\xe9",
        b"NaN",
        b"Infinity",
        b"1e400",
        rb"\ud800",
        rb"user\u0000456",
        rb"user\n456",
        "\u202e".encode(),
        "\u200d".encode(),
        "\u200b".encode(),
        b"9999-12-31",
        b"2001-09-09",
        b"[[[[[[[[[[",
    ]
    for needle in needles:
        assert any(needle in v for v in blobs), needle
    assert any(len(v) == contract.MAX_MESSAGE_BYTES + 1 for v in blobs)
    assert any(len(v) > 64 * 1024 + 4096 for v in blobs)
    assert max(len(v) for v in blobs) <= 70 * 1024


def test_good_events_follow_the_contract(mixed: list[Record]) -> None:
    goods = [r for r in mixed if not r.verdict.startswith("bad:") and r.verdict != DUPLICATE]
    assert len(goods) > 4_000
    for r in goods:
        assert classify(r.value) is None, r.value
        event = orjson.loads(r.value or b"")
        assert r.verdict == expected_filter(event)
        assert r.key == event["user_id"].encode()
        assert r.event_id == event["event_id"]
        assert TIMESTAMP_RE.match(event["timestamp"]), event["timestamp"]
        assert re.fullmatch(r"[0-9a-f-]{14}4[0-9a-f]{3}-[89ab][0-9a-f-]{16}", event["event_id"])


def test_verdict_mix_and_funnel_are_realistic(mixed: list[Record]) -> None:
    verdicts = Counter(r.verdict for r in mixed)
    assert verdicts[contract.GOOD] > 0.6 * len(mixed)
    assert 0 < verdicts[BOT] < 0.15 * len(mixed)
    assert 0 < verdicts[TEST_USER] < 0.05 * len(mixed)
    assert abs(verdicts[DUPLICATE] / len(mixed) - 0.05) < 0.015
    bad = sum(v for k, v in verdicts.items() if k.startswith("bad:"))
    assert abs(bad / len(mixed) - 0.1) < 0.02
    types = Counter(
        orjson.loads(r.value or b"")["event_type"] for r in mixed if r.verdict == contract.GOOD
    )
    assert set(types) >= {"page_view", "click", "search", "add_to_cart", "begin_checkout"}
    assert types["page_view"] > types["add_to_cart"] > types["begin_checkout"] > types["purchase"]
    assert set(types) <= set(contract.EVENT_TYPES)


def test_duplicates_repeat_earlier_good_records(mixed: list[Record]) -> None:
    seen: dict[bytes | None, Record] = {}
    for r in mixed:
        if r.verdict == DUPLICATE:
            original = seen[r.value]
            assert original.verdict == contract.GOOD
            assert (original.key, original.event_id) == (r.key, r.event_id)
        else:
            seen.setdefault(r.value, r)


def test_users_keep_their_attributes_across_events(mixed: list[Record]) -> None:
    by_user: dict[str, set[tuple[str, str, str]]] = {}
    for r in mixed:
        if r.verdict in (contract.GOOD, BOT, TEST_USER):
            e = orjson.loads(r.value or b"")
            by_user.setdefault(e["user_id"], set()).add((e["user_agent"], e["country"], e["ip"]))
    assert len(by_user) > 500
    assert all(len(attrs) == 1 for attrs in by_user.values())


def test_late_events_are_old_and_some_cross_midnight() -> None:
    records = EventGenerator(4, late_ratio=1.0).batch(2_000, NOW)
    ages = []
    for r in records:
        assert classify(r.value) is None
        ts = datetime.fromisoformat(orjson.loads(r.value or b"")["timestamp"])
        ages.append(NOW - ts.timestamp())
    assert min(ages) >= 60
    assert max(ages) < 2 * 86_400
    assert any(a > 3_600 for a in ages)
    today = datetime.fromtimestamp(NOW, UTC).date()
    days = Counter(datetime.fromtimestamp(NOW - a, UTC).date() < today for a in ages)
    assert days[True] > 0


def test_on_time_events_are_close_to_now() -> None:
    for r in EventGenerator(4).batch(2_000, NOW):
        ts = datetime.fromisoformat(orjson.loads(r.value or b"")["timestamp"]).timestamp()
        assert -1 <= NOW - ts <= 3


def test_ratios_are_validated() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        EventGenerator(1, bad_ratio=1.5)
    with pytest.raises(ValueError, match="at most 1"):
        EventGenerator(1, bad_ratio=0.6, duplicate_ratio=0.6)


# --- contract versions --------------------------------------------------------------------------


def test_a_v1_mix_writes_the_same_bytes_as_no_mix() -> None:
    """The version draws have an RNG of their own: a mix never changes the v1 stream."""
    plain = EventGenerator(7, bad_ratio=0.2, duplicate_ratio=0.1).batch(2_000, NOW)
    v1 = EventGenerator(7, bad_ratio=0.2, duplicate_ratio=0.1, schema_mix={1: 1.0})
    assert v1.batch(2_000, NOW) == plain


def test_v2_events_carry_url_app_version_and_consent() -> None:
    records = EventGenerator(3, schema_mix={2: 1.0}).batch(3_000, NOW)
    events = [orjson.loads(r.value or b"") for r in records if r.verdict != DUPLICATE]
    assert all(e["schema_version"] == 2 and "url" in e and "page_url" not in e for e in events)
    with_app = [e for e in events if "app_version" in e]
    with_consent = [e for e in events if "consent" in e]
    assert 0.5 * len(events) < len(with_app) < len(events)
    assert 0.5 * len(events) < len(with_consent) < len(events)
    assert {type(v) for e in with_consent for v in e["consent"].values()} == {bool}
    by_user = {(e["user_id"], e.get("app_version"), orjson.dumps(e.get("consent"))) for e in events}
    assert len(by_user) == len({e["user_id"] for e in events}), "a user keeps one client"
    for r in records:
        assert classify(r.value) is None, r.value


def test_a_mix_draws_versions_in_its_shares() -> None:
    records = EventGenerator(4, schema_mix={1: 0.3, 2: 0.7}).batch(5_000, NOW)
    versions = Counter(orjson.loads(r.value or b"")["schema_version"] for r in records)
    assert set(versions) == {1, 2}
    assert abs(versions[2] / len(records) - 0.7) < 0.03


def test_v2_fast_path_bytes_equal_orjson_of_the_event() -> None:
    mix = {1: 0.5, 2: 0.5}
    fast, slow = EventGenerator(5, schema_mix=mix), EventGenerator(5, schema_mix=mix)
    for _ in range(3_000):
        record = fast.next_record(NOW)
        slow.rng.random()  # next_record's bad/duplicate draw
        _, event = slow.event_dict(NOW)
        assert record.value == orjson.dumps(event)


def test_bad_v2_events_are_detected_with_their_category() -> None:
    records = EventGenerator(6, bad_ratio=1.0, schema_mix={2: 1.0}).batch(4_000, NOW)
    assert {r.verdict for r in records} == {contract.bad_verdict(c) for c in BAD_CATEGORIES}
    for r in records:
        assert classify(r.value) == r.verdict.removeprefix("bad:"), (r.verdict, r.value)
    blobs = b"\n".join(r.value for r in records if r.value)
    assert b'"consent":{"analytics":"yes"' in blobs  # a v2-only defect
    assert b'"app_version":"9.9.' in blobs


def test_unsupported_versions_are_newer_than_the_contract() -> None:
    records = EventGenerator(8, bad_ratio=1.0).batch(3_000, NOW)
    future = [r for r in records if r.verdict == "bad:unsupported_schema_version"]
    assert future
    versions = {orjson.loads(r.value or b"")["schema_version"] for r in future}
    assert min(versions) > contract.CONTRACT.newest
    assert all(r.event_id is not None for r in future), "the event id survives the defect"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("1:0.5,3:0.5", "schema version 3 cannot be produced"),
        ("1:0.5,2:0.6", "must add up to 1, not 1.1"),
        ("1:0.5,2", "'2' is not VERSION:SHARE"),
        ("1:x", "'1:x' is not VERSION:SHARE"),
        ("1:0.5,1:0.5", "one VERSION:SHARE per version"),
        ("1:1.5,2:-0.5", "must be between 0 and 1"),
        ("", "is not VERSION:SHARE"),
    ],
)
def test_a_bad_mix_is_one_clear_error(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)) as raised:
        parse_schema_mix(text)
    assert "\n" not in str(raised.value)


def test_good_mixes_parse() -> None:
    assert parse_schema_mix("1:0.5,2:0.5") == {1: 0.5, 2: 0.5}
    assert parse_schema_mix(" 2:1 ") == {2: 1.0}
    assert parse_schema_mix("1:0.25, 2:0.75") == {1: 0.25, 2: 0.75}
    with pytest.raises(ValueError, match="cannot be produced"):
        EventGenerator(1, schema_mix={9: 1.0})
