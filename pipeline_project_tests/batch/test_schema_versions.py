"""Contract versions through parse → validate → transform, in memory, and ids in any language.

v1 events (no `schema_version`, or 1) are read as ever; v2 adds `app_version` and `consent` and
lets `url` carry `page_url`; a version newer than the code knows is held in the DLQ as
`unsupported_schema_version` until the code learns it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline_project.batch.process import Identity, map_rows
from pipeline_project.batch.records import BatchResult
from pipeline_project.batch.transform import LAKE_SCHEMA, empty_lake_frame
from pipeline_project.events.contract import (
    CONTRACT,
    ERROR_STAGE,
    ID_FORBIDDEN_CATEGORIES,
    ID_FORBIDDEN_PATTERN,
    VERSIONED_COLUMNS,
    VERSIONS,
    Contract,
    ContractVersion,
    is_valid_id,
)
from pipeline_project_tests.batch.batch_support import (
    FIRST_OFFSET,
    INGESTED_AT,
    LATENESS_DAYS,
    NOW,
    SKEW_SECONDS,
    encode,
    good_event,
    raw_batch,
    run,
)
from pipeline_project_tests.support import PYTHON, REPO_ROOT

V2_FIELDS = {"app_version": "4.13.0", "consent": {"analytics": True, "marketing": False}}


def v2_event(i: int, **overrides: Any) -> dict[str, Any]:
    """A valid v2 event: `url` instead of `page_url`, with app_version and consent."""
    event = good_event(i, schema_version=2, **V2_FIELDS)
    event["url"] = event.pop("page_url")
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not ...}


def without(event: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in keys}


def by_offset(result: BatchResult) -> dict[int, dict[str, Any]]:
    return {row["kafka_offset"]: row for row in result.good.iter_rows(named=True)}


def reject_of(result: BatchResult) -> tuple[str, str, str]:
    [reject] = result.rejects
    return reject.category, reject.rule, reject.field


# --- one range of v1, v2 and v9 events ---------------------------------------------------------


def mixed_range() -> list[bytes | None]:
    """v1 without a version, v1, v2 with url, v2 with page_url, v2 bare, v9: in that order, x3."""
    values = []
    for n in range(3):
        i = 10 * n
        values += [
            encode(good_event(i, schema_version=None)),
            encode(good_event(i + 1)),
            encode(v2_event(i + 2)),
            encode(good_event(i + 3, schema_version=2, **V2_FIELDS)),
            encode(without(v2_event(i + 4), "app_version", "consent")),
            encode(v2_event(i + 5, schema_version=9, unknown_v9_key={"x": 1})),
        ]
    return values


def test_a_range_of_v1_v2_and_v9_events() -> None:
    raw = raw_batch(mixed_range())
    result = run(raw)
    rows = by_offset(result)
    assert result.good.schema == pl.Schema(LAKE_SCHEMA)
    assert len(rows) == 15
    assert sorted([*rows, *(r.offset for r in result.rejects)]) == raw.offsets
    for n in range(3):
        base = FIRST_OFFSET + 6 * n
        v1_bare, v1, v2_url, v2_page_url, v2_bare = (rows[base + k] for k in range(5))
        for row in (v1_bare, v1, v2_bare):
            assert row["app_version"] is row["consent_analytics"] is None
            assert row["consent_marketing"] is None
        assert v1_bare["schema_version"] is None and v1["schema_version"] == 1
        for row in (v2_url, v2_page_url):
            assert row["schema_version"] == 2
            assert (row["app_version"], row["consent_analytics"], row["consent_marketing"]) == (
                "4.13.0",
                True,
                False,
            )
        i = 10 * n
        assert v2_url["page_url"] == f"https://shop.example.com/p/item-{i + 2}?ref=home#reviews"
        assert (v2_url["page_path"], v2_url["page_query"]) == (f"/p/item-{i + 2}", "ref=home")
    assert [r.offset for r in result.rejects] == [FIRST_OFFSET + 6 * n + 5 for n in range(3)]
    for reject in result.rejects:
        assert (reject.category, reject.rule, reject.field) == (
            "unsupported_schema_version",
            "schema_version_known",
            "schema_version",
        )
        assert reject.stage == ERROR_STAGE[reject.category] == "validate"
        assert reject.message == "schema_version_known failed for schema_version='9'"


@pytest.mark.parametrize("native", [True, False])
def test_both_parse_paths_map_the_mixed_range_alike(native: bool) -> None:
    identity = Identity("run-test", INGESTED_AT, NOW, LATENESS_DAYS, SKEW_SECONDS)
    raw = raw_batch(mixed_range())
    python = map_rows(raw, identity, native=False)
    other = map_rows(raw, identity, native=native)
    assert other.rejects == python.rejects
    assert other.rows.equals(python.rows)


def test_v1_only_and_empty_batches_have_the_v2_columns_with_stable_types() -> None:
    """The table's schema must not depend on which versions a batch happens to hold."""
    v1_only = run(raw_batch([encode(good_event(i)) for i in range(5)]))
    assert v1_only.good.height == 5
    for frame in (v1_only.good, run(raw_batch([])).good, empty_lake_frame()):
        assert frame.schema == pl.Schema(LAKE_SCHEMA)
        assert frame.schema["app_version"] == pl.String
        assert frame.schema["consent_analytics"] == frame.schema["consent_marketing"] == pl.Boolean
    assert list(VERSIONED_COLUMNS) == ["app_version", "consent_analytics", "consent_marketing"]
    assert v1_only.good.select(list(VERSIONED_COLUMNS)).null_count().sum_horizontal().item() == 15


# --- url and page_url ----------------------------------------------------------------------------

URL = "https://shop.example.com/p/item-1?ref=home#reviews"


VALID_URL_FORMS = [
    (v2_event(1), URL),
    (v2_event(1, url=..., page_url=URL), URL),  # a v2 event may keep page_url
    (v2_event(1, page_url=URL), URL),  # both, equal
    (v2_event(1, url=None, page_url="/a"), "/a"),  # null counts as absent
    (v2_event(1, url="/b", page_url=None), "/b"),
    (good_event(1, url="/ignored"), URL),  # a v1 event's url means nothing
]


@pytest.mark.parametrize(("event", "page_url"), VALID_URL_FORMS)
def test_valid_url_forms(event: dict[str, Any], page_url: str) -> None:
    result = run(raw_batch([encode(event)]))
    assert result.rejects == []
    assert result.good.get_column("page_url").to_list() == [page_url]


INVALID_URL_FORMS = [
    (v2_event(1, page_url="/other"), ("invalid_value", "url_matches_page_url", "url")),
    (v2_event(1, page_url=URL + "x"), ("invalid_value", "url_matches_page_url", "url")),
    (v2_event(1, url=...), ("missing_field", "page_url_required", "page_url")),
    (v2_event(1, url=None), ("empty_field", "page_url_not_empty", "page_url")),
    (v2_event(1, url=" "), ("empty_field", "page_url_not_empty", "page_url")),
    (v2_event(1, url="shop/x"), ("invalid_format", "page_url_format", "page_url")),
    (v2_event(1, url=7), ("wrong_type", "url_type", "url")),
    # v1: url does not stand in for page_url
    (
        without(good_event(1, url=URL), "page_url"),
        ("missing_field", "page_url_required", "page_url"),
    ),
]


@pytest.mark.parametrize(("event", "expected"), INVALID_URL_FORMS)
def test_invalid_url_forms(event: dict[str, Any], expected: tuple[str, str, str]) -> None:
    result = run(raw_batch([encode(event)]))
    assert result.good.height == 0
    assert reject_of(result) == expected


def test_missing_page_url_is_named_before_later_missing_fields() -> None:
    """Contract order, as when page_url was required to the decoder itself."""
    event = without(good_event(1), "page_url", "user_agent")
    assert reject_of(run(raw_batch([encode(event)]))) == (
        "missing_field",
        "page_url_required",
        "page_url",
    )


# --- app_version and consent ---------------------------------------------------------------------


V2_FIELD_CASES = [
    ({"app_version": "a" * 64}, ("a" * 64, True, False)),
    ({"app_version": "  "}, (None, True, False)),  # blank optional text is absent
    ({"consent": {"analytics": True}}, ("4.13.0", True, None)),
    ({"consent": {}}, ("4.13.0", None, None)),
    ({"consent": None, "app_version": None}, (None, None, None)),
    ({"consent": {"analytics": False, "marketing": True, "new": "x"}}, ("4.13.0", False, True)),
]


@pytest.mark.parametrize(("overrides", "columns"), V2_FIELD_CASES)
def test_v2_fields_land(overrides: dict[str, Any], columns: tuple[Any, ...]) -> None:
    result = run(raw_batch([encode(v2_event(1, **overrides))]))
    assert result.rejects == []
    assert result.good.select(list(VERSIONED_COLUMNS)).row(0) == columns


BAD_V2_FIELDS = [
    ({"app_version": "a" * 65}, ("invalid_value", "app_version_max_length", "app_version")),
    ({"app_version": 4}, ("wrong_type", "app_version_type", "app_version")),
    ({"consent": True}, ("wrong_type", "consent_type", "consent")),
    (
        {"consent": {"analytics": "yes"}},
        ("wrong_type", "consent.analytics_type", "consent.analytics"),
    ),
    (
        {"consent": {"marketing": 1}},
        ("wrong_type", "consent.marketing_type", "consent.marketing"),
    ),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD_V2_FIELDS)
def test_invalid_v2_fields(overrides: dict[str, Any], expected: tuple[str, str, str]) -> None:
    result = run(raw_batch([encode(v2_event(1, **overrides))]))
    assert reject_of(result) == expected


def test_a_v1_event_ignores_later_keys() -> None:
    event = good_event(1, app_version="x" * 100, consent={"analytics": True})
    result = run(raw_batch([encode(event)]))
    assert result.rejects == []
    assert result.good.select(list(VERSIONED_COLUMNS)).row(0) == (None, None, None)


# --- versions the code does not know -------------------------------------------------------------


UNKNOWN_VERSIONS = [
    v2_event(1, schema_version=3),
    v2_event(1, schema_version=2**63 - 1),
    without(v2_event(1, schema_version=9), "url", "event_id"),  # missing fields of v1 and v2
    v2_event(1, schema_version=9, user_id=42, consent="all"),  # types of v1 and v2
    v2_event(1, schema_version=9, url="/a", page_url="/b", app_version="x" * 100),
]


@pytest.mark.parametrize("event", UNKNOWN_VERSIONS)
def test_an_unknown_version_is_judged_first_and_alone(event: dict[str, Any]) -> None:
    result = run(raw_batch([encode(event)]))
    category, rule, field = reject_of(result)
    assert (category, rule, field) == (
        "unsupported_schema_version",
        "schema_version_known",
        "schema_version",
    )


@pytest.mark.parametrize("version", [0, -3])
def test_a_version_below_1_is_an_invalid_value(version: int) -> None:
    result = run(raw_batch([encode(good_event(1, schema_version=version))]))
    assert reject_of(result) == ("invalid_value", "schema_version_range", "schema_version")


def test_a_taught_version_lands_and_is_forgotten_again() -> None:
    """A test can teach the code a version (as a release would), then reprocess its records."""
    values = [encode(v2_event(1, schema_version=9)), encode(v2_event(2, schema_version=9, url=...))]
    values[1] = encode(without(v2_event(2, schema_version=9), "url") | {"page_url": "/p"})
    assert {r.category for r in run(raw_batch(values)).rejects} == {"unsupported_schema_version"}
    with CONTRACT.taught(9) as version:
        assert version.number == 9 and CONTRACT.newest == 9
        assert CONTRACT.versions_with("url") == (2, 9)
        taught = run(raw_batch(values))
        assert taught.rejects == []
        assert taught.good.get_column("page_url").to_list() == [URL, "/p"]
        assert taught.good.get_column("consent_analytics").to_list() == [True, True]
    assert CONTRACT.newest == 2
    assert {r.category for r in run(raw_batch(values)).rejects} == {"unsupported_schema_version"}


def test_a_taught_version_cannot_bring_new_keys() -> None:
    with pytest.raises(ValueError, match="cannot add keys"):
        CONTRACT.teach(ContractVersion(3, fields={"locale": "str"}))
    with pytest.raises(ValueError, match="newer than 2"):
        CONTRACT.teach(ContractVersion(2))
    with pytest.raises(ValueError, match="not taught"):
        CONTRACT.forget(2)
    assert CONTRACT.numbers == (1, 2)


# --- ids in any language -------------------------------------------------------------------------

GOOD_IDS = ["josé", "user_😀", "a/b", "../../etc/passwd", "x=y", "%2F", ".hidden", "_tmp"]
GOOD_IDS += ["ユーザー", "пользователь", "مستخدم", "jose\u0301", "a b", "🇫🇷", "u" * 128]
BAD_IDS = {
    "zero-width space": "user\u200b1",
    "control character": "user\x071",
    "NUL": "user\x00",
    "right-to-left override": "user_\u202e1",
    "zero-width joiner": "👨\u200d👩",
    "private use": "user\ue000",
    "line separator": "a\u2028b",
    "paragraph separator": "a\u2029b",
    "unassigned (noncharacter)": "a\ufffe",
    "129 characters": "u" * 129,
}


def test_ids_in_any_language_land_unchanged() -> None:
    values = [
        encode(good_event(i, user_id=v, session_id=v, properties={"product_id": v, "order_id": v}))
        for i, v in enumerate(GOOD_IDS)
    ]
    result = run(raw_batch(values))
    assert result.rejects == []
    for column in ("user_id", "session_id", "product_id", "order_id"):
        assert result.good.get_column(column).to_list() == GOOD_IDS


@pytest.mark.parametrize("field", ["user_id", "session_id", "product_id", "order_id"])
@pytest.mark.parametrize("bad", list(BAD_IDS.values()), ids=list(BAD_IDS))
def test_ids_with_control_or_invisible_characters_are_refused(field: str, bad: str) -> None:
    if field in ("product_id", "order_id"):
        event = good_event(1, properties={field: bad})
        path = f"properties.{field}"
    else:
        event = good_event(1, **{field: bad})
        path = field
    result = run(raw_batch([encode(event)]))
    assert reject_of(result) == ("invalid_format", f"{field}_format", path)
    assert not is_valid_id(bad)


def test_the_validator_and_unicodedata_agree_on_every_code_point() -> None:
    """The polars pattern and `is_valid_id` define one rule (contract.ID_FORBIDDEN_CATEGORIES).

    They can only differ on characters Python's Unicode tables do not have yet (Cn there,
    assigned in the regex engine's newer tables).
    """
    points = [c for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    chars = pl.Series([chr(c) for c in points])
    forbidden = chars.str.contains(ID_FORBIDDEN_PATTERN).to_list()
    differ = {
        c: refused
        for c, refused in zip(points, forbidden, strict=True)
        if refused != (unicodedata.category(chr(c)) in ID_FORBIDDEN_CATEGORIES)
    }
    assert {unicodedata.category(chr(c)) for c in differ} <= {"Cn"}
    assert not any(differ.values()), "only newer assignments may differ, allowed by polars"
    assert len(differ) < 20_000


@pytest.mark.parametrize(
    ("version", "error"),
    [
        (ContractVersion(3, fields={"locale": "date"}), "kinds must be among"),
        (ContractVersion(3, objects={"geo": {"lat": "object"}}), "kinds must be among"),
        (ContractVersion(3, fields={"referrer": "str"}), "redefines ['referrer']"),
        (ContractVersion(3, aliases={"ref": "referrer"}), "an alias must carry a required field"),
        (ContractVersion(0), "the first version must be 1"),
    ],
)
def test_a_version_the_stages_cannot_read_is_refused(version: ContractVersion, error: str) -> None:
    versions = (version,) if version.number == 0 else (*VERSIONS, version)
    with pytest.raises(ValueError, match=re.escape(error)):
        Contract(versions)


def test_a_third_version_is_one_entry() -> None:
    """What VERSIONS derives for a version with a field, an object and nothing else."""
    v3 = ContractVersion(3, fields={"locale": "str"}, objects={"geo": {"lat": "number"}})
    contract = Contract((*VERSIONS, v3))
    assert contract.versions_with("locale") == (3,)
    assert contract.versions_with("consent") == (2, 3)
    assert contract.versions_with("user_id") == (1, 2, 3)
    assert contract.required_keys(3)[5] == ("page_url", ("page_url", "url"))
    assert contract.required_keys(1)[5] == ("page_url", ("page_url",))


_V3 = """    ContractVersion(
        3,
        fields={"locale": "str"},
        objects={"geo": {"lat": "number", "precise": "bool"}},
        max_chars={"locale": 35},
    ),
)"""
_V3_RUN = """
import json, sys
from datetime import UTC, datetime
from pipeline_project.batch.process import process_batch
from pipeline_project.batch.records import RawBatch
from pipeline_project.batch.transform import LAKE_SCHEMA
values = [json.dumps(e).encode() for e in json.loads(sys.argv[1])]
now = datetime(2025, 3, 1, 12, tzinfo=UTC)
raw = RawBatch("t", 0, list(range(len(values))), [0] * len(values), [None] * len(values), values)
result = process_batch(raw, run_id="r", ingested_at=now, now=now, max_lateness_days=7,
                       max_clock_skew_seconds=300, committed_ids=None)
columns = ["kafka_offset", "locale", "geo_lat", "geo_precise", "app_version"]
print(json.dumps({"columns": list(LAKE_SCHEMA), "rows": result.good.select(columns).rows(),
                  "rejects": [[r.offset, r.category, r.rule] for r in result.rejects]}))
"""


def test_a_third_version_needs_only_its_versions_entry(tmp_path: Path) -> None:
    """The README's claim, on a copy of the package whose VERSIONS gains a v3 and nothing else."""
    package = tmp_path / "pipeline_project"
    shutil.copytree(REPO_ROOT / "pipeline_project", package)
    contract_file = package / "events" / "contract.py"
    source = contract_file.read_text()
    end = source.index("\n)\n", source.index("VERSIONS: Final"))
    contract_file.write_text(source[:end] + "\n" + _V3 + source[end + 3 :])
    v3 = v2_event(1, schema_version=3, locale="de-CH", geo={"lat": 47.4, "precise": True})
    events = [v3, v2_event(2, locale="fr"), {**v3, "locale": "x" * 36}, good_event(4)]
    out = subprocess.run(
        [PYTHON, "-c", _V3_RUN, json.dumps(events)],
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        cwd=tmp_path,  # `-c` puts the working directory first on sys.path
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout)
    versioned = found["columns"][found["columns"].index("app_version") :][:6]
    assert versioned == [*VERSIONED_COLUMNS, "locale", "geo_lat", "geo_precise"]
    assert found["rows"] == [
        [0, "de-CH", 47.4, True, "4.13.0"],
        [1, None, None, None, "4.13.0"],  # v3's keys mean nothing in a v2 event
        [3, None, None, None, None],
    ]
    assert found["rejects"] == [[2, "invalid_value", "locale_max_length"]]
