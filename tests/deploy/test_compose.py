"""The local stack's compose file, as far as it can be checked without a Docker engine: it parses,
builds the repo's Dockerfile with the runbook's command, mounts files that exist where the services
look for them, and wires router, Redis, Prometheus and Grafana to each other."""

from __future__ import annotations

import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from app.config import Settings
from tests.deploy.promql import ROOT

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
ROUTER_COMMAND = "python -m uvicorn app.main:app --host 0.0.0.0 --port 8000 --workers 2"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"][name]
    return found


def bind_mounts(name: str) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (named volumes left out)."""
    mounts = {}
    for volume in service(name).get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (DEPLOY / source).resolve()
    return mounts


def host_path(name: str, container_path: str) -> Path | None:
    """Where a container path of a service comes from on the host, through its bind mounts."""
    path = PurePosixPath(container_path)
    for target, source in bind_mounts(name).items():
        if path == PurePosixPath(target) or PurePosixPath(target) in path.parents:
            return source / path.relative_to(target)
    return None


def test_compose_file_has_the_four_services() -> None:
    assert set(compose()["services"]) == {"router", "redis", "prometheus", "grafana"}


def test_router_is_built_from_the_repos_dockerfile_and_runs_two_uvicorn_workers() -> None:
    router = service("router")
    context = (DEPLOY / router["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / router["build"].get("dockerfile", "Dockerfile")).is_file()
    command = router["command"]
    assert (shlex.join(command) if isinstance(command, list) else command) == ROUTER_COMMAND


def test_router_uses_the_redis_service_and_a_multiprocess_metrics_folder() -> None:
    env = service("router")["environment"]
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert "redis" in service("router")["depends_on"]
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/tmp/ivy-metrics"


def test_router_environment_names_are_settings_the_service_reads() -> None:
    known = {name.upper() for name in Settings.model_fields} | {"PROMETHEUS_MULTIPROC_DIR"}
    assert set(service("router")["environment"]) <= known


def test_router_reads_the_eval_reports_the_repo_mounts() -> None:
    reports = host_path("router", service("router")["environment"]["IVY_EVAL_REPORTS_DIR"])
    assert reports == ROOT / "scripts" / "eval_reports" and reports.is_dir()


@pytest.mark.parametrize("name", ["router", "redis", "prometheus", "grafana"])
def test_every_bind_mount_exists_in_the_repo(name: str) -> None:
    for target, source in bind_mounts(name).items():
        assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"


def test_prometheus_runs_the_mounted_config_whose_rule_files_are_mounted_too() -> None:
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in service("prometheus")["command"])
    config_in_container = PurePosixPath(flags["config.file"])
    config = host_path("prometheus", str(config_in_container))
    assert config == DEPLOY / "prometheus" / "prometheus.yml"
    for rule_file in yaml.safe_load(config.read_text())["rule_files"]:
        in_container = config_in_container.parent / rule_file
        assert host_path("prometheus", str(in_container)) == DEPLOY / "prometheus" / rule_file


def test_prometheus_scrapes_the_router_services_metrics_port() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    router = jobs["ivy-router"]
    assert router.get("metrics_path", "/metrics") == "/metrics"
    port = re.search(r"--port (\d+)", ROUTER_COMMAND)
    assert port is not None
    assert router["static_configs"][0]["targets"] == [f"router:{port.group(1)}"]


def test_grafana_provisions_the_prometheus_service_and_the_dashboard() -> None:
    provisioning = host_path("grafana", "/etc/grafana/provisioning")
    assert provisioning == DEPLOY / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [(ds["type"], ds["url"], ds["uid"]) for ds in datasources] == [
        ("prometheus", "http://prometheus:9090", "prometheus")]
    providers = yaml.safe_load((provisioning / "dashboards" / "ivy.yml").read_text())["providers"]
    folder = providers[0]["options"]["path"]
    dashboards = [p for p in bind_mounts("grafana") if PurePosixPath(folder) in PurePosixPath(p).parents]
    assert [host_path("grafana", p) for p in dashboards] == [DEPLOY / "grafana" / "ivy-router.json"]
    home = service("grafana")["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home is None or host_path("grafana", home) == DEPLOY / "grafana" / "ivy-router.json"
