"""One ingest run in a child process, so fault tests can SIGKILL, SIGSTOP or starve it.

Usage: python -m pipeline_project_tests.faults.driver [PARTITION START END ...]
No ranges: every partition from its committed end to the high watermark (the job's default).
Settings come from PIPELINE_* variables; PIPELINE_FAULT_POINT / PIPELINE_FAULT_ACTION arm a fault.

Prints one JSON line on stdout. Exit 0 on success, 1 on a PipelineError (a failure the pipeline
raised on purpose), 2 on any other exception (traceback on stderr): tests tell the two apart.
"""

from __future__ import annotations

import json
import sys
import traceback

from pipeline_project.batch.ranges import Range
from pipeline_project.batch.run import ingest
from pipeline_project.errors import PipelineError
from pipeline_project.settings import Settings


def parse_ranges(topic: str, args: list[str]) -> list[Range] | None:
    """Triples PARTITION START END → ranges; no arguments → None (plan everything)."""
    if not args:
        return None
    if len(args) % 3:
        raise SystemExit("ranges are given as PARTITION START END triples")
    nums = [int(a) for a in args]
    return [
        Range(topic, p, s, e) for p, s, e in zip(nums[::3], nums[1::3], nums[2::3], strict=True)
    ]


def main(argv: list[str]) -> int:
    settings = Settings.from_env()
    ranges = parse_ranges(settings.raw_topic, argv)
    try:
        result = ingest(settings, ranges)
    except PipelineError as exc:
        print(json.dumps({"ok": False, "error": type(exc).__name__, "message": str(exc)}))
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - reported as a crash (exit 2), not a clean failure
        traceback.print_exc()
        print(json.dumps({"ok": False, "error": type(exc).__name__, "message": str(exc)}))
        return 2
    summary = {
        "ok": True,
        "committed": [o.range.range_id for o in result.committed],
        "already": [o.range.range_id for o in result.outcomes if o.status != "committed"],
        "records": result.records,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
