# One image for the docker-compose stack's user-code, webserver, daemon and producer services
# (Dagster's examples/deploy_docker builds two; one keeps the package and Dagster versions in step).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/pipeline_project
COPY pyproject.toml README.md ./
COPY pipeline_project ./pipeline_project
# The package with its `docker` extra (dagster-postgres for the instance's storage).
RUN pip install ".[docker]"

# The Dagster instance and workspace, as in deploy_docker: $DAGSTER_HOME holds both.
ENV DAGSTER_HOME=/opt/dagster/dagster_home
RUN mkdir -p "$DAGSTER_HOME" /opt/dagster/compute_logs /data
COPY docker/dagster.yaml docker/workspace.yaml /opt/dagster/dagster_home/
WORKDIR /opt/dagster/dagster_home

EXPOSE 3000 4000
# The code location's gRPC server; docker-compose.yml gives each service its own command.
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "4000", "-m", "pipeline_project.definitions", "--location-name", "pipeline_project"]
