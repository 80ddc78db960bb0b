"""The Dagster code location (`-w workspace.yaml` or `-m pipeline_project.definitions`).

One `Definitions` per domain under defs/ (ingest, dlq, sessions, upkeep), merged with the resources
they take as parameters. Importing this module reads one environment variable,
PIPELINE_PARTITION_DAYS (Dagster fixes partitions at load; a malformed value is one logged line and
the default); every other setting is resolved when a run or tick starts (defs/resources.py), so a
malformed one cannot stop the location loading.
"""

from dagster import Definitions, in_process_executor

from pipeline_project.defs import dlq, ingest, sessions, upkeep
from pipeline_project.defs.resources import SETTINGS_KEY, PipelineSettings


def build_defs(settings: PipelineSettings | None = None) -> Definitions:
    """The code location with `settings` (default: every setting from the environment).

    Tests and embedders pass their own resource instead of patching the environment. Every job
    runs its steps in the run's own process, the asset jobs of the automation sensor included:
    a run executed by a Celery worker (docs/deploy.md) is a daemonic process, which may not start
    the step processes of Dagster's default multiprocess executor.
    """
    return Definitions.merge(
        ingest.defs,
        dlq.defs,
        sessions.defs,
        upkeep.defs,
        Definitions(
            resources={SETTINGS_KEY: settings or PipelineSettings()},
            executor=in_process_executor,
        ),
    )


defs = build_defs()
