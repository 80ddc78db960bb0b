"""A run launcher whose run processes start with the code already imported (dagster.yaml).

Dagster's DefaultRunLauncher asks the code server for each run, and the code server spawns a fresh
interpreter that imports Dagster and the pipeline again before the run can begin: 3.5–4.4 s per run
on a busy 2-core host, measured as RUN_STARTING → RUN_START in the soak, and seconds of CPU taken
from the runs already working. Ingest runs come every few seconds, so that start-up is on every
event's freshness path.

This launcher keeps one multiprocessing fork server per launching process (the daemon), started
once with the modules of `preload` imported, and forks each run from it: a run process exists in
milliseconds and starts its op once it has opened the instance. The run then executes exactly as
`dagster api execute_run` executes it (the run's own code origin, the instance from its ref, its
events and failures in the event log). A code location on another Python, or a module the fork
server did not preload, is launched by Dagster's DefaultRunLauncher instead.

Forking is safe here because the fork server has imported modules and done nothing else: no
threads (librdkafka's, polars' and delta-rs' pools start with their first client or query), no
open clients. New code needs a new fork server: restart the daemon after deploying code (`make
demo` and the Helm chart restart it with the code), as a code location reload does not reach it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from multiprocessing.process import BaseProcess
from typing import Any

from dagster import DagsterInstance, DagsterRun, Field
from dagster._config.config_schema import UserConfigSchema
from dagster._core.launcher.base import LaunchRunContext, RunLauncher
from dagster._core.launcher.default_run_launcher import DefaultRunLauncher
from dagster._serdes import ConfigurableClass, deserialize_value, serialize_value
from dagster._serdes.config_class import ConfigurableClassData

from pipeline_project.defs.tags import WORKER_TAG
from pipeline_project.defs.workers import local_pid

log = logging.getLogger(__name__)

# The code location's module, and its repository built once (defs/prewarm.py).
DEFAULT_PRELOAD = ("pipeline_project.definitions", "pipeline_project.defs.prewarm")


class PrewarmedRunLauncher(RunLauncher, ConfigurableClass):
    """Forks each run from a process that has imported `preload` (see the module docstring)."""

    def __init__(
        self, inst_data: ConfigurableClassData | None = None, preload: Sequence[str] = ()
    ) -> None:
        self._inst_data = inst_data
        self._preload = list(preload or DEFAULT_PRELOAD)
        self._context: Any = None
        self._processes: dict[str, BaseProcess] = {}
        self._fallback = DefaultRunLauncher()
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> UserConfigSchema:
        return {"preload": Field([str], is_required=False, default_value=list(DEFAULT_PRELOAD))}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> PrewarmedRunLauncher:
        return cls(inst_data=inst_data, preload=config_value.get("preload") or ())

    def register_instance(self, instance: DagsterInstance) -> None:
        super().register_instance(instance)
        self._fallback.register_instance(instance)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        if not self._forkable(run):
            self._fallback.launch_run(context)
            return
        self._forget_finished()
        process = self._fork_server().Process(
            target=execute_run,
            args=(run.run_id, serialize_value(self._instance.get_ref())),
            name=f"dagster-run-{run.run_id[:8]}",
        )
        process.start()
        # Not a child to wait for at exit: multiprocessing joins its children when the launching
        # process exits, which would hold `dagster job launch` (or a stopping daemon) until the run
        # ends. The run is the instance's to follow, as with Dagster's own launchers.
        multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]
        self._processes[run.run_id] = process

    def _forkable(self, run: DagsterRun) -> bool:
        """Whether the run's code is what the fork server imported, on this very Python."""
        origin = run.job_code_origin
        if origin is None or os.path.realpath(origin.executable_path) != os.path.realpath(
            sys.executable
        ):
            return False
        pointer = origin.repository_origin.code_pointer
        return getattr(pointer, "module", None) in self._preload

    def _fork_server(self) -> Any:
        """The fork server, started with `preload` imported on first use."""
        if self._context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(self._preload)
            self._context = context
        return self._context

    def _forget_finished(self) -> None:
        """Drops the handles of runs that ended (their exit status is read, nothing is left)."""
        for run_id, process in list(self._processes.items()):
            if not process.is_alive():
                process.close()
                del self._processes[run_id]

    def terminate(self, run_id: str) -> bool:
        """Interrupts the run's process, as the code server does: the run ends as canceled."""
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        pid = self._pid(run)
        if pid is None:
            return self._fallback.terminate(run_id)
        self._instance.report_run_canceling(run)
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return False
        return True

    def _pid(self, run: DagsterRun) -> int | None:
        """The run's process: the one this launcher forked, or the one its op tagged."""
        process = self._processes.get(run.run_id)
        if process is not None and process.is_alive():
            return process.pid
        return local_pid(run.tags.get(WORKER_TAG, ""))

    def dispose(self) -> None:
        self._fallback.dispose()


def execute_run(run_id: str, serialized_ref: str) -> None:
    """In the forked process: the run as `dagster api execute_run` runs it; exit 1 if it failed."""
    from dagster._cli.api import _execute_run_command_body
    from dagster._core.instance.ref import InstanceRef
    from dagster._utils.interrupts import capture_interrupts

    with (
        capture_interrupts(),
        DagsterInstance.from_ref(deserialize_value(serialized_ref, InstanceRef)) as instance,
    ):
        code = _execute_run_command_body(
            run_id, instance, lambda _event: None, set_exit_code_on_failure=True
        )
    sys.exit(code)
