"""Static checks of docker-compose.yml and the Dockerfile against the code (no Docker engine here): every
command, module, route, setting and path they name must exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
WORKERS = [name for name in SERVICES if name.startswith("worker")]


def command(service: str) -> list[str]:
    cmd = SERVICES[service]["command"]
    return cmd if isinstance(cmd, list) else shlex.split(cmd)


def option(argv: list[str], name: str) -> str:
    for i, arg in enumerate(argv):
        if arg == name:
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not in {argv}")


def test_the_stack_has_every_service_with_health_checks():
    assert {"postgres", "redis", "migrate", "api", "flower"} <= set(SERVICES) and WORKERS
    for name, service in SERVICES.items():
        if name != "migrate":  # one-shot: its health is its exit code
            assert "healthcheck" in service, name
            assert service.get("restart") == "unless-stopped", name
    assert SERVICES["migrate"]["restart"] == "no"
    for name in ["api", *WORKERS]:
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert SERVICES[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_environment_names_real_settings_and_consistent_credentials():
    fields = {f"DSKD_{name.upper()}" for name in Settings.model_fields}
    for name, service in SERVICES.items():
        for key in service.get("environment", {}):
            if key.startswith("DSKD_"):
                assert key in fields, f"{name}: {key} is not a Settings field"
    env = SERVICES["api"]["environment"]
    settings = Settings(
        **{k.removeprefix("DSKD_").lower(): v for k, v in env.items() if k.startswith("DSKD_")}
    )
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.broker_url.startswith("redis://redis:6379/")
    pg = SERVICES["postgres"]["environment"]
    assert f"://{pg['POSTGRES_USER']}:" in settings.database_url
    assert settings.database_url.endswith(f"@postgres:5432/{pg['POSTGRES_DB']}")
    for worker in WORKERS:  # the workers and the API must see the same database, broker and files
        worker_env = SERVICES[worker]["environment"]
        for key in ("DSKD_DATABASE_URL", "DSKD_BROKER_URL", "DSKD_DATA_DIR", "DSKD_MODELS_ROOT"):
            assert worker_env[key] == env[key], (worker, key)


def test_celery_targets_import_and_register_the_task():
    import importlib

    from celery import Celery

    for name in [*WORKERS, "flower"]:
        argv = command(name)
        assert argv[:2] == ["celery", "-A"]
        module = importlib.import_module(argv[2])
        assert isinstance(module.app, Celery)
    import worker.tasks  # noqa: F401  (what the worker's `include` loads)
    from api.queue import RUN_JOB_TASK
    from worker.celery_app import app

    assert RUN_JOB_TASK in app.tasks


def test_gpu_workers_run_one_job_at_a_time_on_their_reserved_gpus():
    for name in WORKERS:
        argv = command(name)
        assert option(argv, "--concurrency") == "1" and option(argv, "--prefetch-multiplier") == "1"
        devices = SERVICES[name]["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and "gpu" in devices[0]["capabilities"]
        owned = devices[0]["device_ids"]
        env = SERVICES[name]["environment"]
        assert len(env["CUDA_VISIBLE_DEVICES"].split(",")) == len(owned)
        if len(owned) > 1:  # a multi-GPU worker names the GPUs its multi-process jobs use (container indices)
            assert env["DSKD_WORKER_GPUS"] == env["CUDA_VISIBLE_DEVICES"]
        node = option(argv, "-n")
        probe = SERVICES[name]["healthcheck"]["test"][-1]
        assert node.replace("%h", "$$HOSTNAME") in probe  # the probe pings this worker by its node name


def test_uvicorn_factory_and_health_routes_exist(tmp_path):
    import importlib

    argv = command("api")
    assert argv[0] == "uvicorn" and "--factory" in argv
    module_name, _, attr = argv[1].partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    port = option(argv, "--port")
    assert f"{port}:{port}" in SERVICES["api"]["ports"]

    from api.main import create_app

    assert factory is create_app
    app = create_app(Settings(data_dir=tmp_path))
    routes = set(app.openapi()["paths"])
    url = SERVICES["api"]["healthcheck"]["test"][-1]
    path = re.sub(r"^https?://[^/]+", "", url)
    assert path in routes and f":{port}/" in url


def test_flower_healthcheck_is_a_flower_route():
    from flower.urls import handlers

    patterns = {h[0] if isinstance(h, tuple) else h.regex.pattern for h in handlers}
    url = SERVICES["flower"]["healthcheck"]["test"][-1]
    port = option(command("flower"), "--port")
    assert f":{port}/" in url
    path = re.sub(r"^https?://[^/]+", "", url)
    assert any(re.fullmatch(p.rstrip("$"), path) for p in patterns), path


def test_migrate_runs_the_repository_alembic_config():
    argv = command("migrate")
    assert argv[:2] == ["alembic", "-c"] and argv[-2:] == ["upgrade", "head"]
    ini = ROOT / argv[2]
    assert ini.is_file()
    location = re.search(r"^script_location\s*=\s*(.+)$", ini.read_text(), re.M).group(1).strip()
    migrations = Path(location.replace("%(here)s", str(ini.parent)))
    assert (migrations / "env.py").is_file() and list((migrations / "versions").glob("*.py"))


@pytest.mark.parametrize(
    "needed", ["alembic.ini", "migrations", "api", "worker", "dskd_core", "pyproject.toml"]
)
def test_dockerfile_copies_what_the_commands_use(needed):
    copied = [line.split()[1:-1] for line in DOCKERFILE.splitlines() if line.startswith("COPY ")]
    assert any(needed in sources for sources in copied), needed
    assert (ROOT / needed).exists()


def test_dockerfile_installs_the_tools_the_compose_file_calls():
    install = next(line for line in DOCKERFILE.splitlines() if re.search(r"pip install .*\.\[", line))
    extras = re.search(r"\.\[([\w,]+)\]", install).group(1).split(",")
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = " ".join(project["dependencies"])
    for extra in extras:
        requirements += " " + " ".join(project["optional-dependencies"][extra])
    for tool in ("celery", "uvicorn", "alembic", "flower", "psycopg", "redis"):
        assert tool in requirements, tool
    # Editable install: api/cli_support finds migrations/ next to the source (used by `dskd keys create`).
    assert "-e" in install.split()
    assert "curl" in DOCKERFILE  # the health checks call curl
    cmd = re.search(r"^CMD (.+)$", DOCKERFILE, re.M).group(1)
    import json

    assert json.loads(cmd) == command("api")
