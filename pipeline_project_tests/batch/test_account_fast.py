"""ledger.account/offsets_digest: the vectorised fast path agrees with the per-offset original.

The reference functions below are the pre-polars implementations, kept verbatim: the fast path
must return the same (records, sha256) and raise the same error with the same message.
"""

from __future__ import annotations

import enum
import hashlib
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline_project.batch import lake, ledger
from pipeline_project.batch.lake import StagedFile
from pipeline_project.batch.ranges import Range
from pipeline_project.errors import AccountingError, LakePathError
from pipeline_project_tests.batch.ledger_support import TOPIC, dlq_entries, events_frame, split

RNG = Range(TOPIC, 0, 100, 160)


def reference_digest(offsets: Iterable[Any]) -> str:
    text = ",".join(str(o) for o in sorted(offsets))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def reference_union(groups: Mapping[str, Sequence[Any]], rng: Range) -> set[Any]:
    seen: dict[Any, str] = {}
    for where, offsets in groups.items():
        for offset in offsets:
            if not rng.start <= offset < rng.end:
                raise AccountingError(f"{where} offset {offset} outside {rng.range_id}")
            if offset in seen:
                raise AccountingError(f"offset {offset} counted twice ({seen[offset]} and {where})")
            seen[offset] = where
    return set(seen)


def reference_account(
    rng: Range,
    files: Sequence[StagedFile],
    dlq: Sequence[ledger.DlqEntry],
    filtered: Mapping[str, Iterable[Any]],
    consumed_offsets: Iterable[Any],
    read: Callable[[StagedFile], list[Any]],
) -> tuple[int, str]:
    consumed = list(consumed_offsets)
    consumed_set = reference_union({"consumed": consumed}, rng)
    groups: dict[str, Sequence[Any]] = {"dlq": [d.source_offset for d in dlq]}
    for item in files:
        if item.table == lake.TABLE_EVENTS or item.min_offset is not None:
            groups[f"file {item.path}"] = read(item)
    for reason, offsets in filtered.items():
        if not ledger._REASON_RE.fullmatch(reason):
            raise AccountingError(f"bad filter reason {reason!r}")
        groups[f"filtered:{reason}"] = list(offsets)
    accounted = reference_union(groups, rng)
    if accounted != consumed_set:
        lost = sorted(consumed_set - accounted)[:10]
        extra = sorted(accounted - consumed_set)[:10]
        raise AccountingError(f"{rng.range_id}: unaccounted offsets {lost}, never consumed {extra}")
    return len(consumed), reference_digest(consumed)


AccountArgs = tuple[
    Range, Sequence[StagedFile], Sequence[ledger.DlqEntry], Mapping[str, Iterable[Any]], list[Any]
]


def outcome(call: Callable[[], tuple[int, str]]) -> tuple[Any, ...]:
    """The result, or the exception's type and message, for comparing two implementations."""
    try:
        return ("ok", call())
    except Exception as exc:  # noqa: BLE001 - any difference in behaviour is the finding
        return (type(exc), str(exc))


def assert_same_outcome(
    args: AccountArgs, read: Callable[[StagedFile], list[Any]]
) -> tuple[Any, ...]:
    """Both implementations return the same, or raise the same error with the same message."""
    expected = outcome(lambda: reference_account(*args, read=read))
    assert outcome(lambda: ledger.account(*args)) == expected
    return expected


class Level(enum.IntEnum):
    HIGH = 9


# --------------------------------------------------------------------------------------- digest


def _random_lists() -> list[list[int]]:
    rnd = random.Random(20240311)
    lists = []
    for size in (2, 3, 17, 1000, 50_000):
        top = rnd.choice([10, 10**6, 2**40, 2**63 - 1])
        lists.append([rnd.randint(0, top) for _ in range(size)])  # duplicates included
        lists.append([rnd.randint(-(2**62), 2**62) for _ in range(size)])
    return lists


@pytest.mark.parametrize(
    "offsets",
    [
        [],
        [0],
        [7],
        [2**63 - 1],
        [-(2**63)],
        [0, 2**63 - 1, 9, 10, 99, 100, 1],
        list(range(200_000)),
        *_random_lists(),
    ],
)
def test_digest_equals_reference(offsets: list[int]) -> None:
    assert ledger.offsets_digest(offsets) == reference_digest(offsets)
    assert ledger.offsets_digest(reversed(offsets)) == reference_digest(offsets)


@pytest.mark.parametrize(
    "offsets",
    [
        range(5, 50),
        (3, 1, 2),
        {4, 2, 9},
        {4: "dlq", 1: "file"},  # reconcile passes its dict of seen offsets
        [True, 2, 0],  # str(True) is "True": must not become "1"
        [1, 2.0],
        [2**63, 5],
        [2**70, -(2**70)],
        [Level.HIGH, 3],
    ],
)
def test_digest_of_other_iterables_and_odd_values_equals_reference(offsets: Iterable[Any]) -> None:
    assert ledger.offsets_digest(offsets) == reference_digest(offsets)


def test_digest_refuses_what_the_reference_refuses() -> None:
    bad_inputs: list[list[Any]] = [[1, None], [1, "2"]]
    for bad in bad_inputs:
        with pytest.raises(TypeError):
            reference_digest(bad)
        with pytest.raises(TypeError):
            ledger.offsets_digest(bad)


# -------------------------------------------------------------------------------------- account


def _fake_file(
    index: int, table: str = lake.TABLE_EVENTS, min_offset: int | None = 0
) -> StagedFile:
    return StagedFile(
        table=table,
        day=date(2024, 3, 9),
        path=f"{table}/f{index}.parquet",
        rows=0,
        sha256="0" * 64,
        size=0,
        min_offset=min_offset,
        max_offset=None,
        staging_path=Path(f"/nonexistent/f{index}.parquet"),
    )


def _scenario(rnd: random.Random) -> dict[str, Any]:
    """A correct split of a range with gaps, then one random way of breaking (or not) it."""
    consumed = [o for o in range(RNG.start, RNG.end) if rnd.random() < 0.9]
    rnd.shuffle(consumed)
    cuts = sorted(rnd.sample(range(len(consumed) + 1), 4))
    pieces = [consumed[a:b] for a, b in zip([0, *cuts], [*cuts, len(consumed)], strict=True)]
    files: dict[str, Any] = {"f0": sorted(pieces[0]), "f1": sorted(pieces[1])}
    dlq = pieces[2]
    filtered: dict[str, list[Any]] = {"duplicate": pieces[3], "late": pieces[4]}
    pick = lambda group: rnd.choice(group) if group else RNG.start  # noqa: E731
    match rnd.randrange(16):
        case 0:
            consumed.remove(pick(consumed)) if consumed else None
        case 1:
            filtered["late"].append(pick(dlq))
        case 2:
            files["f1"] = [*files["f1"], pick(files["f0"])]
        case 3:
            dlq.append(RNG.end)
            consumed.append(RNG.end)
        case 4:
            filtered["duplicate"].insert(0, RNG.start - 1)
        case 5:
            consumed.append(pick(consumed))
        case 6:
            consumed.append(RNG.start - 1)
        case 7:
            filtered["Bad Reason"] = []
        case 8:
            half = len(files["f0"]) // 2  # a file column read back in two chunks
            chunks = [
                pl.Series(part, dtype=pl.Int64) for part in (files["f0"][:half], files["f0"][half:])
            ]
            files["f0"] = pl.concat(chunks, rechunk=False)
        case 9:
            filtered["late"] = [float(o) for o in filtered["late"]]
        case 10:
            files["f0"] = pl.Series(files["f0"], dtype=pl.UInt64)
        case 11:
            files["f1"] = pl.Series([*files["f1"], None], dtype=pl.Int64)
        case 12:
            files["f0"] = pl.Series(files["f0"], dtype=pl.Int32)
        case 13:
            dlq = dlq[1:]
        case 14:
            consumed = [*consumed, 2**64]
        case _:
            pass
    return {"files": files, "dlq": dlq, "filtered": filtered, "consumed": consumed}


def _series(values: Any) -> pl.Series:
    return values if isinstance(values, pl.Series) else pl.Series(values, dtype=pl.Int64)


@pytest.mark.parametrize("seed", range(300))
def test_account_equals_reference(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    case = _scenario(random.Random(seed))
    files = [_fake_file(0), _fake_file(1), _fake_file(2, "side", None)]  # the last is skipped
    on_disk = {f"{lake.TABLE_EVENTS}/{k}.parquet": _series(v) for k, v in case["files"].items()}
    on_disk["side/f2.parquet"] = pl.Series([RNG.end + 5])  # never read: not an events file
    monkeypatch.setattr(ledger, "_file_offsets", lambda item: on_disk[item.path])
    dlq = [ledger.DlqEntry(o, "invalid_json", 0, i) for i, o in enumerate(case["dlq"])]
    args: AccountArgs = (RNG, files, dlq, case["filtered"], case["consumed"])
    assert_same_outcome(args, lambda item: on_disk[item.path].to_list())


def test_account_of_an_empty_range_equals_reference() -> None:
    assert assert_same_outcome((RNG, [], [], {}, []), lambda item: [])[0] == "ok"


@pytest.mark.parametrize("consumed", [[True, 0, 2], [1, 0, 2], [False, 1, 2], [1, 0.0, 2]])
def test_account_digests_odd_consumed_values_as_before(consumed: list[Any]) -> None:
    """A bool among consumed offsets counts as its int, but the digest keeps str(True)."""
    rng = Range(TOPIC, 0, 0, 3)
    result = assert_same_outcome((rng, [], [], {"late": [0, 1, 2]}, consumed), lambda item: [])
    assert result[0] == "ok"


def test_account_on_staged_files_equals_reference(tmp_path: Path) -> None:
    rng = Range(TOPIC, 0, 1000, 3000)
    parts = split(rng)
    staged = lake.stage_days(tmp_path / "staging", rng, events_frame(rng, parts.good))
    dlq = dlq_entries(parts.dlq)
    lost = [o for o in parts.consumed if o != 1004]
    assert (
        assert_same_outcome((rng, staged, dlq, parts.filtered, parts.consumed), _read_lake)[0]
        == "ok"
    )
    failed = assert_same_outcome((rng, staged, dlq, parts.filtered, lost), _read_lake)
    assert failed[0] is AccountingError and "never consumed [1004]" in failed[1]


def test_correct_accounting_never_takes_the_per_offset_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = Range(TOPIC, 0, 0, 5000)
    parts = split(rng)
    staged = lake.stage_days(tmp_path / "staging", rng, events_frame(rng, parts.good))
    monkeypatch.setattr(ledger, "_disjoint_union", None)  # calling it would raise TypeError
    records, digest = ledger.account(
        rng, staged, dlq_entries(parts.dlq), parts.filtered, parts.consumed
    )
    assert (records, digest) == (5000, reference_digest(range(5000)))


def _read_lake(item: StagedFile) -> list[int]:
    return lake.read_range_offsets(item.staging_path)


# ------------------------------------------------------------------------------------ file reads


@pytest.mark.parametrize(
    "columns",
    [
        {"kafka_offset": [5, 3, 4]},
        {"kafka_offset": [5, 3], "dlq_offset": pa.array([None, None], pa.int64())},
        {"kafka_offset": [1, 1], "dlq_offset": [8, 9]},
        {"dlq_offset": [8, 9]},
        {"kafka_offset": pa.array([1, None], pa.int64())},
        {"event_id": ["a", "b"]},
        {"kafka_offset": pa.array([], pa.int64())},
    ],
)
def test_file_offsets_read_what_lake_reads(tmp_path: Path, columns: dict[str, Any]) -> None:
    path = tmp_path / "part.parquet"
    pq.write_table(pa.table(columns), path)
    item = StagedFile(**{**_fake_file(0).__dict__, "staging_path": path})
    assert ledger._file_offsets(item).to_list() == lake.read_range_offsets(path)


def test_file_offsets_refuse_mixed_files_like_lake(tmp_path: Path) -> None:
    path = tmp_path / "part.parquet"
    pq.write_table(pa.table({"kafka_offset": [1, 2], "dlq_offset": [7, None]}), path)
    item = StagedFile(**{**_fake_file(0).__dict__, "staging_path": path})
    with pytest.raises(LakePathError, match="mixed"):
        lake.read_range_offsets(path)
    with pytest.raises(LakePathError, match="mixed"):
        ledger._file_offsets(item)


@pytest.mark.parametrize("odd", [object(), 2 + 0j, 1.5, 2.0, "2", None])
@pytest.mark.parametrize("where", ["filtered", "consumed"])
def test_account_with_non_int_values_behaves_as_before(odd: Any, where: str) -> None:
    """Values polars refuses (even with a ValueError) take the per-offset path, errors and all."""
    rng = Range(TOPIC, 0, 0, 3)
    filtered = [0, 1, odd] if where == "filtered" else [0, 1, 2]
    consumed = [0, 1, odd] if where == "consumed" else [0, 1, 2]
    assert_same_outcome((rng, [], [], {"late": filtered}, consumed), lambda item: [])
