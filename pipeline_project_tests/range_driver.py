"""Runs the core protocol on one range in a child process, so tests can SIGKILL it at a fault point.

Usage: python -m pipeline_project_tests.range_driver PARTITION START END RUN_ID NOW_ISO
Settings come from PIPELINE_* variables; PIPELINE_FAULT_POINT arms a kill point.
"""

from __future__ import annotations

import sys
from datetime import datetime

from pipeline_project.batch.ranges import Range
from pipeline_project.batch.run import ingest
from pipeline_project.errors import PipelineError
from pipeline_project.settings import Settings


def main(argv: list[str]) -> int:
    partition, start, end, run_id, now_iso = argv
    settings = Settings.from_env()
    moment = datetime.fromisoformat(now_iso)
    rng = Range(settings.raw_topic, int(partition), int(start), int(end))
    try:
        result = ingest(settings, [rng], run_id=run_id, now=lambda: moment)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
