"""What a local lake's filesystem must offer the Delta commit, proved before anything is read.

delta-rs commits `_delta_log/N.json` on a local disk by writing `N.json#<n>` and hard-linking it
into place (linkat(2), traced with strace): the link fails if another writer's `N.json` exists,
which is the whole fence between writers. A filesystem without hard links (FAT/exFAT, some FUSE
and network mounts) fails every commit after the range was drained and processed, so the run
start probes it: one file, fsynced, linked, both names removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path

from pipeline_project.errors import LakeError

NO_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV})


def check_commit_support(root: Path) -> None:
    """LakeError (one line) when `root`'s filesystem cannot hard-link or fsync a file."""
    probe = root / f".commit-probe-{uuid.uuid4().hex}"
    linked = probe.with_name(probe.name + ".link")
    try:
        with probe.open("wb") as handle:
            handle.write(b"probe")
            handle.flush()
            os.fsync(handle.fileno())
        os.link(probe, linked)
    except OSError as exc:
        what = "hard links" if exc.errno in NO_LINKS else "what the commit needs"
        raise LakeError(
            f"lake {root}: the filesystem lacks {what} ({os.strerror(exc.errno or 0)}): the Delta "
            "commit creates its log entry with link(2); put the lake on a local filesystem such "
            "as ext4 or xfs, or on S3 (PIPELINE_LAKE_URI=s3://...); nothing was read"
        ) from None
    finally:
        for path in (linked, probe):
            with contextlib.suppress(OSError):
                path.unlink()
