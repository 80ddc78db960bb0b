"""Imported by PrewarmedRunLauncher's fork server: the code location's repository, built once.

Dagster builds the repository (asset graph, jobs, resources) from `defs` the first time a run asks
for it, ~0.6 s here, and keeps it on the Definitions object. Built in the fork server, every run
forked from it starts with it.
"""

from pipeline_project.definitions import defs

defs.get_repository_def()
