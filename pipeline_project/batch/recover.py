"""Start-of-run recovery of one topic-partition (docs/ARCHITECTURE.md, "Run protocol", step 2).

An unfinished range is rolled forward (a "prepared" intent whose files are all intact: publish what
is missing, write the manifest) or back (staging removed, the intent reset to "started" so a re-run
keeps its identity). Orphan staging is deleted; torn ledger files, strays and corrupt files under
the lake root are quarantined, never deleted, and reported. Files of *other* partitions are left
alone: their runs may be publishing right now under their own locks.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline_project.batch import lake, ledger
from pipeline_project.batch.lake import StagedFile
from pipeline_project.batch.ranges import parse_range_id
from pipeline_project.errors import ContiguityError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Quarantined:
    """One file or directory moved out of the way, and why."""

    path: str
    dest: str
    reason: str


@dataclass
class RecoveryReport:
    """What recovery found and did for one partition; `ok` is False if committed data is damaged."""

    topic: str
    partition: int
    rolled_forward: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    already_committed: list[str] = field(default_factory=list)
    stale_intents: list[str] = field(default_factory=list)
    staging_removed: list[str] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    ledger_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True unless a committed (manifest-listed) file is missing or damaged."""
        return not self.missing and not self.corrupt

    @property
    def clean(self) -> bool:
        """True when there was nothing to do at all (the common case after a clean run)."""
        return all(
            not value for key, value in asdict(self).items() if key not in ("topic", "partition")
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "clean": self.clean}

    def summary(self) -> str:
        """One line for logs and Dagster metadata."""
        parts = [
            f"{key}={len(value)}"
            for key, value in asdict(self).items()
            if isinstance(value, list) and value
        ]
        return f"recovery {self.topic}[{self.partition}]: " + (", ".join(parts) or "clean")


def recover(
    lake_dir: Path,
    state_dir: Path,
    topic: str,
    partition: int,
    *,
    deep: bool = False,
    now: datetime | None = None,
) -> RecoveryReport:
    """Brings one partition's ledger, staging and lake files to a committed state; needs the lock.

    `deep=True` also re-hashes every committed file of the partition (O(lake)); by default committed
    files are checked for presence and size, and reconcile does the full sha256 check.
    """
    ledger.assert_locked(state_dir, topic, partition)
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    run = _Recovery(Path(lake_dir), Path(state_dir), RecoveryReport(topic, partition), moment)
    run.clean_manifests()
    run.resolve_intents()
    run.remove_orphan_staging()
    manifests = run.heads()
    run.sweep_lake(manifests)
    run.verify_committed(manifests, deep)
    report = run.report
    log.log(logging.INFO if report.clean else logging.WARNING, report.summary())
    return report


def _sha_matches(path: Path, sha256: str) -> bool:
    try:
        return path.is_file() and not path.is_symlink() and lake.sha256_file(path) == sha256
    except OSError:
        return False


def _is_table_name(name: str) -> bool:
    try:
        lake.validate_table(name)
    except lake.LakePathError:
        return False
    return True


@dataclass
class _Recovery:
    """One recovery pass over one partition; every step records what it did in `report`."""

    lake_dir: Path
    state_dir: Path
    report: RecoveryReport
    moment: datetime
    scanned: list[ledger.ManifestHead] | None = None  # clean_manifests' heads, if it changed none

    @property
    def topic(self) -> str:
        return self.report.topic

    @property
    def partition(self) -> int:
        return self.report.partition

    def quarantine(
        self, path: Path, reason: str, root: Path | None = None, area: str = "lake"
    ) -> None:
        """Moves `path` (under `root`, the lake by default) aside and records it."""
        base = self.lake_dir if root is None else root
        dest = lake.quarantine(path, base, self.state_dir, reason, area=area, now=self.moment)
        self.report.quarantined.append(Quarantined(str(path), str(dest), reason))

    # ---------------------------------------------------------------------------------- ledger

    def heads(self) -> list[ledger.ManifestHead]:
        """The partition's manifest heads after the ledger steps, scanned once when possible.

        The first scan's heads are reused unless it found torn manifests or temp files, or a
        roll-forward has written a manifest since: each scan stats every manifest.
        """
        if self.scanned is not None and not self.report.rolled_forward:
            return self.scanned
        return ledger.load_heads(self.state_dir, self.topic, self.partition)

    def clean_manifests(self) -> None:
        """Temp files of an interrupted manifest write go; torn manifests are quarantined."""
        scan = ledger.scan_heads(self.state_dir, self.topic, self.partition)
        self.scanned = None if scan.temp_files or scan.problems else scan.heads
        for tmp in scan.temp_files:
            tmp.unlink(missing_ok=True)
        root = self.state_dir / ledger.MANIFESTS_DIR
        for problem in scan.problems:
            self.report.ledger_problems.append(str(problem))
            self.quarantine(problem.path, f"unusable manifest: {problem.reason}", root, "manifests")

    def resolve_intents(self) -> None:
        """Each intent of the partition ends committed, rolled forward, rolled back or dropped."""
        directory = ledger.intent_dir(self.state_dir, self.topic, self.partition)
        if directory.is_dir():
            for tmp in directory.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        intents, problems = ledger.list_intents(self.state_dir, self.topic, self.partition)
        root = self.state_dir / ledger.INTENTS_DIR
        for problem in problems:
            self.report.ledger_problems.append(str(problem))
            self.quarantine(problem.path, f"unusable intent: {problem.reason}", root, "intents")
        for intent in intents:
            self.resolve_intent(intent)

    def resolve_intent(self, intent: ledger.Intent) -> None:
        rng, state = intent.range, self.state_dir
        if ledger.read_manifest(state, rng) is not None:
            ledger.finish_range(state, rng)  # crashed after the commit point: only cleanup left
            self.report.already_committed.append(rng.range_id)
            return
        try:
            ledger.check_contiguity(state, rng)
        except ContiguityError as exc:
            log.warning("dropping stale intent %s: %s", rng.range_id, exc)
            ledger.finish_range(state, rng)
            self.report.stale_intents.append(rng.range_id)
            return
        if intent.state == ledger.PREPARED and all(self.recoverable(f) for f in intent.files):
            self.roll_forward(intent)
            return
        if lake.remove_staging(state, rng):
            self.report.staging_removed.append(rng.range_id)
        if intent.state == ledger.PREPARED:
            ledger.reset_intent(state, intent)
        self.report.rolled_back.append(rng.range_id)

    def recoverable(self, staged: StagedFile) -> bool:
        """A prepared file can be rolled forward if its staged or its published copy is intact."""
        if _sha_matches(staged.staging_path, staged.sha256):
            return True
        return _sha_matches(lake.resolve(self.lake_dir, staged.path), staged.sha256)

    def roll_forward(self, intent: ledger.Intent) -> None:
        """Publishes what the crash left unpublished and writes the manifest (C3, C4, C5, C8)."""
        for staged in intent.files:
            target = lake.resolve(self.lake_dir, staged.path)
            if _sha_matches(target, staged.sha256):
                lake.fsync_dir(target.parent)
                continue
            if target.exists() or target.is_symlink():
                self.quarantine(target, "unlisted file with other content in a roll-forward's way")
            lake.publish(staged, self.lake_dir)
        ledger.commit_manifest(self.state_dir, self.lake_dir, intent, self.moment)
        ledger.finish_range(self.state_dir, intent.range)
        self.report.rolled_forward.append(intent.range.range_id)

    def remove_orphan_staging(self) -> None:
        """Staging of this partition without a live intent goes; unparseable names too."""
        root = self.state_dir / lake.STAGING_DIR_NAME
        if not root.is_dir():
            return
        for entry in sorted(root.iterdir()):
            rng = parse_range_id(entry.name)
            if rng is not None and (rng.topic, rng.partition) != (self.topic, self.partition):
                continue
            if rng is not None and ledger.read_intent(self.state_dir, rng) is not None:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            lake.fsync_dir(root)
            self.report.staging_removed.append(entry.name)

    # ------------------------------------------------------------------------------------ lake

    def sweep_lake(self, manifests: list[ledger.ManifestHead]) -> None:
        """Quarantines junk anywhere under the root and unlisted files named after this partition.

        Other valid table directories are left to their owners.
        """
        if not self.lake_dir.is_dir():
            return
        listed = {f.path for m in manifests for f in m.files}
        scope = {lake.TABLE_EVENTS} | {f.table for m in manifests for f in m.files}
        for entry in sorted(self.lake_dir.iterdir()):
            if entry.is_dir() and not entry.is_symlink() and _is_table_name(entry.name):
                if entry.name in scope:
                    self.sweep_table(entry, listed)
                continue
            self.quarantine(entry, "not a lake table directory")

    def sweep_table(self, table_dir: Path, listed: set[str]) -> None:
        """One table's day dirs and files, from directory entries (no stat per file)."""
        for day_dir in sorted(os.scandir(table_dir), key=lambda e: e.name):
            rel_day = f"{table_dir.name}/{day_dir.name}"
            if not day_dir.is_dir(follow_symlinks=False) or not lake.parse_day_dir(day_dir.name):
                self.quarantine(Path(day_dir.path), f"not a partition directory: {rel_day}")
                continue
            for item in sorted(os.scandir(day_dir.path), key=lambda e: e.name):
                reason = self.stray_reason(f"{rel_day}/{item.name}", item, listed)
                if reason:
                    self.quarantine(Path(item.path), reason)

    def stray_reason(self, rel: str, item: os.DirEntry[str], listed: set[str]) -> str:
        """Why `item` must leave the lake ("" when it stays: committed, or another partition's)."""
        if not item.is_file(follow_symlinks=False):
            return "not a regular file"
        name = lake.parse_relative_path(rel)
        if name is None:
            return "not a lake file name (temp, hidden or foreign file)"
        if (name.topic, name.partition) != (self.topic, self.partition) or rel in listed:
            return ""
        return "no manifest lists this file"

    def verify_committed(self, manifests: list[ledger.ManifestHead], deep: bool) -> None:
        """Committed files must be present and intact: damaged ones quarantined, all reported.

        One lstat per file under the lake root's real path: the sweep before this has moved
        every symlinked table or day directory and every non-regular file aside, so no listed
        path can lead outside the root (P11).
        """
        root = os.path.realpath(self.lake_dir)
        for manifest in manifests:
            for item in manifest.files:
                target = os.path.join(root, item.path)
                try:
                    info = os.lstat(target)
                except (FileNotFoundError, NotADirectoryError):
                    self.report.missing.append(item.path)
                    continue
                intact = stat.S_ISREG(info.st_mode) and info.st_size == item.size
                if intact and deep:
                    intact = lake.sha256_file(Path(target)) == item.sha256
                if not intact:
                    self.report.corrupt.append(item.path)
                    reason = f"differs from manifest {manifest.range.range_id}"
                    self.quarantine(Path(target), reason)
