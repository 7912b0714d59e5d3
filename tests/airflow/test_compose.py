"""docker-compose.yaml and the Dockerfile, checked structurally (no Docker engine here)."""

from __future__ import annotations

import re
import tomllib

import yaml
from airflow_testing import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
DOCKERFILE = (REPO / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
)


def pin(name: str) -> str:
    deps = PYPROJECT["project"]["dependencies"] + [
        d for extra in PYPROJECT["project"]["optional-dependencies"].values() for d in extra
    ]
    [found] = [d for d in deps if re.match(rf"{re.escape(name)}(\[.*\])?==", d)]
    return found.split("==", 1)[1]


def test_services_and_executor():
    services = COMPOSE["services"]
    assert {"postgres", *AIRFLOW_SERVICES} <= set(services)
    commands = {name: services[name].get("command") for name in AIRFLOW_SERVICES[1:]}
    assert commands == {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
    }
    assert "8080:8080" in services["airflow-apiserver"]["ports"]
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert services["airflow-init"]["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"


def test_volumes_and_health_checks():
    services = COMPOSE["services"]
    for name in AIRFLOW_SERVICES:
        mounts = {v.split(":")[0]: v.split(":")[1] for v in services[name]["volumes"]}
        for folder in ("dags", "plugins", "configs", "data"):
            assert mounts[f"./{folder}"] == f"/opt/airflow/{folder}", (name, folder)
            assert (REPO / folder).is_dir()
        if name != "airflow-init":
            assert services[name]["healthcheck"]["test"], name
            assert (
                services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
            )
    assert services["postgres"]["healthcheck"]["test"][1] == "pg_isready"


def test_optional_aws_profile_runs_moto():
    services = COMPOSE["services"]
    assert services["moto"]["profiles"] == ["aws"]
    assert services["moto"]["image"] == f"motoserver/moto:{pin('moto')}"
    assert "5000:5000" in services["moto"]["ports"]
    profiled = {name for name, s in services.items() if "profiles" in s}
    assert profiled == {"moto", "moto-setup"}  # everything else starts by default


def test_image_pins_agree_with_pyproject():
    version = re.search(r"ARG AIRFLOW_VERSION=(\S+)", DOCKERFILE).group(1)
    assert version == pin("apache-airflow")
    assert "FROM apache/airflow:${AIRFLOW_VERSION}-python3.11" in DOCKERFILE
    assert PYPROJECT["project"]["requires-python"].startswith(">=3.11")
    assert f'"torch=={pin("torch")}"' in DOCKERFILE
    assert "openjdk-17" in DOCKERFILE
    assert COMPOSE["x-airflow-common"]["image"].endswith(f":{version}")
