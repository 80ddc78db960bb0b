"""docker-compose.yml, the Dockerfile and docker/*.yaml stay valid without a Docker engine.

Parses the files and checks what `docker compose up` would trip on: services, pinned images, ports,
volumes, dependencies, every command parsed by the real CLI it names (Dagster's click commands,
`pipeline-project`'s argparse), paths that the Dockerfile really copies, the Dagster instance
config validated by Dagster, and the code location that the workspace names importing here.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath

import click
import pytest
import yaml

from pipeline_project.kafka.broker import kafka_version
from pipeline_project.kafka.topics import topic_specs
from pipeline_project.settings import EnvSettings, Settings, env_name
from pipeline_project_tests.support import PYTHON, REPO_ROOT

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
DAGSTER_SERVICES = ("user-code", "webserver", "daemon")
APP_IMAGE = SERVICES["user-code"]["image"]


def interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` with no VAR set, and `$$` for a literal dollar."""
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    return value.replace("$$", "$")


def command_of(name: str) -> list[str]:
    cmd = SERVICES[name]["command"]
    words = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    return [interpolate(str(w)) for w in words]


def dockerfile_copies() -> dict[str, Path]:
    """Container path → repository path for every file the Dockerfile copies."""
    copies: dict[str, Path] = {}
    workdir = PurePosixPath("/")
    for line in DOCKERFILE.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "WORKDIR":
            workdir = workdir / parts[1]
        if parts[0] == "COPY":
            *sources, dest = parts[1:]
            for source in sources:
                target = workdir / dest if not dest.startswith("/") else PurePosixPath(dest)
                if dest.endswith("/") or len(sources) > 1 or dest in (".", "./"):
                    target = target / PurePosixPath(source).name
                copies[str(target)] = REPO_ROOT / source
    return copies


def dagster_clis() -> dict[str, click.Command]:
    from dagster._cli import cli as dagster_cli
    from dagster._daemon.cli import cli as daemon_cli
    from dagster_webserver.cli import cli as webserver_cli

    return {
        "dagster": dagster_cli,
        "dagster-webserver": webserver_cli,
        "dagster-daemon": daemon_cli,
    }


def parse_click(command: click.Command, argv: list[str]) -> dict:
    """Resolves sub-commands and parses options exactly as the CLI would, without running it."""
    args, path = list(argv), []
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        name = args.pop(0)
        sub = command.get_command(click.Context(command), name)
        assert sub is not None, f"no such command: {' '.join([*path, name])}"
        command, path = sub, [*path, name]
    return command.make_context(" ".join(path) or "cli", args).params


def with_repo_paths(argv: list[str]) -> list[str]:
    """Container paths the Dockerfile copies, replaced by their sources: click checks they exist."""
    copies = dockerfile_copies()
    return [str(copies.get(arg, arg)) for arg in argv]


# ------------------------------------------------------------------------------ services


def test_the_full_stack_is_there() -> None:
    assert {
        "kafka",
        "kafka-init",
        "postgres",
        "user-code",
        "webserver",
        "daemon",
        "producer",
    } <= set(SERVICES)


def test_images_are_pinned() -> None:
    assert SERVICES["kafka"]["image"] == f"apache/kafka:{kafka_version()}"
    assert SERVICES["kafka-init"]["image"] == SERVICES["kafka"]["image"]
    assert re.fullmatch(r"postgres:\d+(\.\d+)?(-\w+)?", SERVICES["postgres"]["image"])
    # One image is built from the Dockerfile; the other app services reuse it.
    built = [name for name, svc in SERVICES.items() if "build" in svc]
    assert built == ["user-code"]
    assert SERVICES["user-code"]["build"] in (".", {"context": "."})
    for name in ("webserver", "daemon", "producer"):
        assert SERVICES[name]["image"] == APP_IMAGE
    for name, svc in SERVICES.items():
        assert ":" in svc["image"] and not svc["image"].endswith(":latest"), name


def test_ports() -> None:
    assert "9092:9092" in SERVICES["kafka"]["ports"]
    assert [interpolate(p) for p in SERVICES["webserver"]["ports"]] == ["3000:3000"]
    assert "-p" in command_of("webserver")
    assert command_of("webserver")[command_of("webserver").index("-p") + 1] == "3000"


def test_volumes_are_declared_and_mounted_where_they_are_used() -> None:
    declared = set(COMPOSE["volumes"])
    for name, svc in SERVICES.items():
        for mount in svc.get("volumes", []):
            source = mount.split(":", 1)[0]
            assert source in declared, f"{name} mounts undeclared volume {source}"
    data_dir = SERVICES["user-code"]["environment"]["PIPELINE_DATA_DIR"]
    assert f"lake:{data_dir}" in SERVICES["user-code"]["volumes"]
    assert "kafka-data:/var/lib/kafka/data" in SERVICES["kafka"]["volumes"]
    assert any(v.startswith("dagster-postgres:") for v in SERVICES["postgres"]["volumes"])
    # Runs write their logs in user-code; the webserver shows them.
    logs = {v for v in SERVICES["user-code"]["volumes"] if v.startswith("compute-logs:")}
    assert logs and logs <= set(SERVICES["webserver"]["volumes"])


def test_dependencies_name_real_services_and_conditions() -> None:
    for name, svc in SERVICES.items():
        deps = svc.get("depends_on", {})
        for dep, spec in deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps):
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                assert "healthcheck" in SERVICES[dep], f"{dep} has no healthcheck"
            if condition == "service_completed_successfully":
                assert SERVICES[dep].get("restart", "no") == "no"


def test_services_share_kafka_and_postgres_settings() -> None:
    for name in (*DAGSTER_SERVICES, "producer"):
        env = SERVICES[name]["environment"]
        assert env["PIPELINE_KAFKA_BOOTSTRAP"] == "kafka:19092", name
    listeners = SERVICES["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert "PLAINTEXT://kafka:19092" in listeners
    pg = SERVICES["postgres"]["environment"]
    for name in DAGSTER_SERVICES:
        env = SERVICES[name]["environment"]
        assert env["DAGSTER_POSTGRES_HOST"] == "postgres"
        assert env["DAGSTER_POSTGRES_USER"] == pg["POSTGRES_USER"]
        assert env["DAGSTER_POSTGRES_PASSWORD"] == pg["POSTGRES_PASSWORD"]
        assert env["DAGSTER_POSTGRES_DB"] == pg["POSTGRES_DB"]


def test_pipeline_settings_in_compose_exist() -> None:
    """Every PIPELINE_* name the stack sets is one the package reads (no silent typo)."""
    source = "\n".join(p.read_text() for p in (REPO_ROOT / "pipeline_project").rglob("*.py"))
    declared = {env_name(field) for field in EnvSettings.model_fields}  # named by pydantic-settings
    for name, svc in SERVICES.items():
        for var in svc.get("environment", {}):
            if var.startswith("PIPELINE_"):
                read = var in declared or f'"{var}"' in source
                assert read, f"{name} sets {var}, which nothing reads"


def test_kafka_init_creates_the_topics_the_pipeline_would() -> None:
    script = "\n".join(SERVICES["kafka-init"]["command"])
    created = {}
    for line in script.splitlines():
        if "--create" not in line:
            continue
        words = shlex.split(line)
        topic = words[words.index("--topic") + 1]
        configs = dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--config")
        created[topic] = (int(words[words.index("--partitions") + 1]), configs)
    expected = {spec.name: (spec.partitions, spec.configs()) for spec in topic_specs(Settings())}
    assert created == expected


# ------------------------------------------------------------------------------ commands


@pytest.mark.parametrize("service", [*DAGSTER_SERVICES])
def test_dagster_commands_parse_and_name_real_paths(service: str) -> None:
    argv = command_of(service)
    clis = dagster_clis()
    assert argv[0] in clis, f"{service} runs {argv[0]}"
    assert (Path(PYTHON).parent / argv[0]).exists(), f"{argv[0]} is not installed"
    params = parse_click(clis[argv[0]], with_repo_paths(argv[1:]))
    if service == "user-code":
        assert params["module_name"] == "pipeline_project.definitions"
        assert params["port"] == 4000
    else:
        (workspace,) = params["workspace"]
        assert Path(workspace) == REPO_ROOT / "docker" / "workspace.yaml"


def test_healthchecks_parse() -> None:
    argv = [interpolate(w) for w in SERVICES["user-code"]["healthcheck"]["test"][1:]]
    params = parse_click(dagster_clis()["dagster"], argv[1:])
    assert params["port"] == 4000


def test_producer_command_is_a_valid_pipeline_project_call() -> None:
    from pipeline_project.cli import build_parser

    argv = command_of("producer")
    assert argv[0] == "pipeline-project"
    assert PYPROJECT["project"]["scripts"]["pipeline-project"] == "pipeline_project.cli:main"
    args = build_parser().parse_args(argv[1:])
    assert args.rate == 200 and args.count is None and args.duration is None


def test_the_workspace_names_the_code_location_that_loads() -> None:
    from dagster import Definitions

    workspace = yaml.safe_load((REPO_ROOT / "docker" / "workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    grpc = entry["grpc_server"]
    user_code = parse_click(dagster_clis()["dagster"], command_of("user-code")[1:])
    assert grpc["host"] == "user-code" and grpc["port"] == user_code["port"]
    assert grpc["location_name"] == user_code["location_name"]
    assert grpc["location_name"] == PYPROJECT["tool"]["dagster"]["code_location_name"]

    module = __import__(user_code["module_name"], fromlist=["defs"])
    assert isinstance(module.defs, Definitions)
    assert module.defs.resolve_job_def("ingest_events") is not None


# ------------------------------------------------------------------------------ image and instance


def test_dockerfile_builds_the_package_with_the_docker_extra() -> None:
    assert DOCKERFILE.splitlines()[0].startswith("#")
    (base,) = re.findall(r"^FROM\s+(\S+)", DOCKERFILE, flags=re.M)
    assert base == "python:3.11-slim"
    assert re.search(r'pip install\s+"\.\[docker\]"', DOCKERFILE)
    for target, source in dockerfile_copies().items():
        assert source.exists(), f"Dockerfile copies missing {source} to {target}"
    copied = dockerfile_copies()
    assert copied["/opt/pipeline_project/pyproject.toml"] == REPO_ROOT / "pyproject.toml"
    # DAGSTER_HOME holds the instance and workspace the services name.
    home = re.search(r"^ENV DAGSTER_HOME=(\S+)", DOCKERFILE, flags=re.M).group(1)
    assert copied[f"{home}/dagster.yaml"] == REPO_ROOT / "docker" / "dagster.yaml"
    assert copied[f"{home}/workspace.yaml"] == REPO_ROOT / "docker" / "workspace.yaml"
    # The build context leaves the local state out.
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".local", "data", ".git"} <= set(ignored)


def test_dagster_postgres_is_an_optional_extra() -> None:
    project = PYPROJECT["project"]
    assert not any(dep.startswith("dagster-postgres") for dep in project["dependencies"])
    extra = project["optional-dependencies"]["docker"]
    assert any(dep.startswith("dagster-postgres") for dep in extra)


def test_docker_instance_config_is_valid_for_dagster() -> None:
    from dagster._core.instance.config import dagster_instance_config

    config, _ = dagster_instance_config(str(REPO_ROOT / "docker"))
    pg = config["storage"]["postgres"]["postgres_db"]
    # SQLAlchemy 2.1 maps postgresql:// to psycopg 3, which dagster-postgres does not install.
    assert pg["scheme"] == "postgresql+psycopg2"
    env_names = {v["env"] for v in pg.values() if isinstance(v, dict)}
    for service in DAGSTER_SERVICES:
        assert env_names <= set(SERVICES[service]["environment"]), service
    # Same run queue as `make demo`: one run per topic-partition.
    host = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    assert config["run_queue"] == host["run_queue"]
    base_dir = config["compute_logs"]["config"]["base_dir"]
    assert any(v.endswith(f":{base_dir}") for v in SERVICES["user-code"]["volumes"])
