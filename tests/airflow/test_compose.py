"""docker-compose.yaml and the Dockerfile, checked structurally (no Docker engine here).

Compose's variable substitution is replayed by `interpolate` below, so "compose refuses to start
without .env" and "the Fernet key comes from .env" are checked on the values compose would use.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from airflow_testing import REPO
from cryptography.fernet import Fernet
from launchers import compose_env

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


def service_env(service: dict) -> dict[str, str]:
    """A service's environment as compose builds it: its env_file(s), then `environment` over them."""
    env = {}
    for env_file in service.get("env_file", []):
        env.update(compose_env.read_env(REPO / env_file))
    env.update({k: str(v) for k, v in (service.get("environment") or {}).items()})
    return env


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
    assert services["airflow-apiserver"]["ports"] == ["127.0.0.1:${AIRFLOW_PORT:-8080}:8080"]
    for name in AIRFLOW_SERVICES:
        env = service_env(services[name])
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
    assert services["moto"]["ports"] == ["127.0.0.1:${MOTO_PORT:-5000}:5000"]
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


# --- safe by default: secrets from .env only, loopback ports, a login that works -------------

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME; $$ is a "$".
VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?)([-?])([^}]*))?\}|\$(\w+)")
SECRET_NAME = re.compile(r"PASSWORD(?!S_FILE)|SECRET|FERNET|_KEY$|TOKEN")  # a _FILE is a path
PASSWORDS_FILE = "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"


class Missing(Exception):
    """Compose's refusal: `${NAME:?message}` with NAME unset or empty."""


def interpolate(text: str, env: dict[str, str]) -> str:
    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, colon, op, arg = m.group(1) or m.group(5), m.group(2), m.group(3), m.group(4)
        value = env.get(name)
        unset = value is None or (colon == ":" and value == "")
        if op == "?" and unset:
            raise Missing(name)
        if op == "-" and unset:
            return arg
        return value or ""

    return VARIABLE.sub(one, text)


def strings(node, path=()):
    """Every string value in the compose file with where it sits."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from strings(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from strings(value, (*path, i))
    elif isinstance(node, str):
        yield path, node


def resolved(node, env: dict[str, str]):
    if isinstance(node, dict):
        return {key: resolved(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [resolved(value, env) for value in node]
    return interpolate(node, env) if isinstance(node, str) else node


def read_env(path: Path) -> dict[str, str]:
    pairs = [
        line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")
    ]
    return dict(pairs)


@pytest.fixture(scope="module")
def dot_env(tmp_path_factory) -> dict[str, str]:
    path = tmp_path_factory.mktemp("compose") / ".env"
    subprocess.run(
        [sys.executable, "-m", "launchers.compose_env", "--path", str(path)],
        env={**os.environ, "PYTHONPATH": str(REPO / "plugins")},
        check=True,
    )
    return read_env(path)


def test_no_secret_has_a_default_and_compose_refuses_without_env():
    required, refused = set(), set()
    for path, text in strings(COMPOSE):
        for m in VARIABLE.finditer(text):
            name, op, default = m.group(1) or m.group(5), m.group(3), m.group(4)
            if name and SECRET_NAME.search(name):
                assert op == "?", f"{'.'.join(map(str, path))}: ${{{name}}} must be ${{{name}:?...}}"
            if name and name.startswith("AIRFLOW_CONN_"):
                assert op == "?" or not default, f"{name} has a default"  # a connection may hold keys
            if op == "?":
                required.add(name)
        try:
            interpolate(text, {})
        except Missing as e:
            refused.add(e.args[0])
    # an env entry that names a secret is one required variable, never a literal
    for name, service in {"x-airflow-common": COMPOSE["x-airflow-common"], **COMPOSE["services"]}.items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), f"{name}: {key}={value!r}"
    conn = COMPOSE["x-airflow-common"]["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert "${POSTGRES_PASSWORD:?" in conn
    assert COMPOSE["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?"
    )
    secrets = {"AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY"}
    assert required == refused == secrets | {"POSTGRES_PASSWORD"}
    # make compose-env writes every one of them
    assert required <= set(compose_env.fresh_values())


def test_every_published_port_binds_loopback():
    published = {}
    for name, service in COMPOSE["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):  # long syntax
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert interpolate(port, {}).startswith("127.0.0.1:"), (name, port)
            published[name] = port
    assert "postgres" not in published
    assert set(published) == {"airflow-apiserver", "moto"}
    port = COMPOSE["services"]["airflow-apiserver"]["ports"][0]
    assert interpolate(port, {"AIRFLOW_PORT": "8090"}) == "127.0.0.1:8090:8080"


def test_fernet_key_and_secrets_come_from_env_file(dot_env):
    services = resolved(COMPOSE, dot_env)["services"]
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__FERNET_KEY"] == dot_env["AIRFLOW_FERNET_KEY"], name
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == dot_env["AIRFLOW_JWT_SECRET"], name
        assert env["AIRFLOW__API__SECRET_KEY"] == dot_env["AIRFLOW_API_SECRET_KEY"], name
        assert f":{dot_env['POSTGRES_PASSWORD']}@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    Fernet(services["airflow-scheduler"]["environment"]["AIRFLOW__CORE__FERNET_KEY"])
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == dot_env["POSTGRES_PASSWORD"]
    assert (
        services["airflow-init"]["environment"]["_AIRFLOW_ADMIN_PASSWORD"]
        == dot_env["AIRFLOW_ADMIN_PASSWORD"]
    )
    # the admin password reaches only the container that writes the passwords file
    others = [n for n, s in services.items() if n != "airflow-init"]
    assert not [n for n in others if dot_env["AIRFLOW_ADMIN_PASSWORD"] in json.dumps(services[n])]


def test_passwords_file_is_shared_by_init_and_apiserver_only():
    services = COMPOSE["services"]
    writer = services["airflow-init"]["environment"][PASSWORDS_FILE]
    assert services["airflow-apiserver"]["environment"][PASSWORDS_FILE] == writer
    assert "${" + PASSWORDS_FILE + "}" in interpolate(
        services["airflow-init"]["command"][1], {"AIRFLOW_UID": "1"}
    )
    folder = str(Path(writer).parent)
    holders = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if target == folder:
                holders[name] = source
    assert holders == {"airflow-init": "airflow-auth", "airflow-apiserver": "airflow-auth"}
    assert "airflow-auth" in COMPOSE["volumes"]  # a named volume, not a folder of the repo
    users = service_env(COMPOSE["x-airflow-common"])["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"]
    assert compose_env.ADMIN_USER + ":admin" == users.split(",")[0]


def test_documented_login_works(dot_env, tmp_path, monkeypatch, capsys):
    """Run the init container's script (chown and the entrypoint stubbed, /opt/airflow moved to
    tmp), then start the real simple auth manager as the api-server is configured and log in with
    the password from .env."""
    services = resolved(COMPOSE, dot_env)["services"]
    root = tmp_path / "opt" / "airflow"

    def moved(env: dict[str, str]) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        moved_env = {k: str(v).replace("/opt/airflow", str(root)) for k, v in env.items()}
        return {**clean, **moved_env, "AIRFLOW_HOME": str(tmp_path / "home")}

    script = services["airflow-init"]["command"][1].replace("/opt/airflow", str(root))
    init = subprocess.run(
        ["bash", "-c", 'chown() { :; }; exec() { echo "entrypoint: $*"; }\n' + script],
        env={
            **moved(services["airflow-init"]["environment"]),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        },
        capture_output=True,
        text=True,
    )
    assert init.returncode == 0, init.stderr
    assert init.stdout.strip() == "entrypoint: /entrypoint airflow version"
    written = Path(moved(services["airflow-apiserver"]["environment"])[PASSWORDS_FILE])
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert stat.S_IMODE(written.parent.stat().st_mode) == 0o700
    before = written.read_text()

    # The api-server's start and its login, in this process (Airflow is loaded here already), with
    # the auth settings compose gives the api-server.
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.base_auth_manager import BaseAuthManager
    from airflow.api_fastapi.auth.managers.simple.datamodels.login import LoginBody
    from airflow.api_fastapi.auth.managers.simple.services.login import SimpleAuthManagerLogin
    from fastapi import HTTPException

    api_env = moved(service_env(services["airflow-apiserver"]))
    for key in (
        "AIRFLOW__CORE__AUTH_MANAGER",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
        PASSWORDS_FILE,
        "AIRFLOW__API_AUTH__JWT_SECRET",
    ):
        monkeypatch.setenv(key, api_env[key])
    monkeypatch.delenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", raising=False)
    signer = BaseAuthManager._get_token_signer  # cached per class: keep our JWT secret out of it
    signer.cache_clear()
    try:
        init_auth_manager()  # adds (and prints) a password only for a user the file lacks
        user, password = compose_env.ADMIN_USER, dot_env["AIRFLOW_ADMIN_PASSWORD"]
        assert SimpleAuthManagerLogin.create_token(LoginBody(username=user, password=password))
        with pytest.raises(HTTPException) as wrong:
            SimpleAuthManagerLogin.create_token(LoginBody(username=user, password=password + "x"))
        assert wrong.value.status_code == 401
    finally:
        signer.cache_clear()
    assert "Password for user" not in capsys.readouterr().out  # it used ours, generated none
    assert written.read_text() == before


def make_compose_env(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(folder), "compose-env", f"PYTHON={sys.executable}"],
        capture_output=True,
        text=True,
        check=True,
    )


def test_make_compose_env_writes_once_and_keeps_it(tmp_path):
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    shutil.copytree(
        REPO / "plugins" / "launchers",
        tmp_path / "plugins" / "launchers",
        ignore=shutil.ignore_patterns("emr_box", "__pycache__"),
    )
    env_file = tmp_path / ".env"

    first = make_compose_env(tmp_path)
    content = env_file.read_bytes()
    values = read_env(env_file)
    assert f"wrote {env_file} (mode 0600)" in first.stdout
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert set(values) == set(compose_env.fresh_values())
    assert Fernet(values["AIRFLOW_FERNET_KEY"].encode())  # a key cryptography accepts
    assert len(set(values.values())) == len(values)
    secrets = [v for k, v in values.items() if k != "AIRFLOW_UID"]
    assert not [v for v in secrets if v in first.stdout + first.stderr]  # names the file, not the values
    assert "AIRFLOW_ADMIN_PASSWORD" in first.stdout

    second = make_compose_env(tmp_path)
    assert "kept as it is" in second.stdout
    assert env_file.read_bytes() == content

    # a .env the user wrote first (e.g. for the aws profile) is kept; only the missing keys are added
    env_file.write_text('AIRFLOW_CONN_AWS_DEFAULT={"conn_type":"aws"}\nAIRFLOW_FERNET_KEY=mine\n')
    third = make_compose_env(tmp_path)
    assert (
        "added AIRFLOW_ADMIN_PASSWORD" in third.stdout
        and "AIRFLOW_FERNET_KEY" not in third.stdout.split("added")[1]
    )
    kept = read_env(env_file)
    assert kept["AIRFLOW_FERNET_KEY"] == "mine" and kept["AIRFLOW_CONN_AWS_DEFAULT"] == '{"conn_type":"aws"}'
    assert set(kept) == set(values) | {"AIRFLOW_CONN_AWS_DEFAULT"}


def test_env_file_is_git_ignored():
    subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", ".env"], check=True)


def test_the_native_stack_reads_the_settings_compose_reads():
    """make stack and docker compose run Airflow from one file of settings (configs/airflow.env):
    every Airflow service of compose reads it and overrides none of it, and the native stack's
    processes get the same values."""
    from launchers import stack

    shared = stack.shared_settings()
    assert shared["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    for name in AIRFLOW_SERVICES:
        service = COMPOSE["services"][name]
        assert service["env_file"] == ["configs/airflow.env"], name
        assert not set(shared) & set(service["environment"]), name  # compose overrides none of it
        assert {k: service_env(service)[k] for k in shared} == shared, name
    secrets = compose_env.fresh_values()
    ports = {"api": 8080, "worker_logs": 8793, "trigger_logs": 8794, "scheduler_health": 8974}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    with pytest.MonkeyPatch.context() as patch:
        for key in set(os.environ) - set(clean):
            patch.delenv(key)
        native = stack.stack_env(
            Path("/tmp/home"), ports, "postgresql+psycopg2://x@127.0.0.1:1/airflow", secrets
        )
    assert {k: native[k] for k in shared} == shared
    # What compose takes from .env, the native stack takes from its own stack.env, made the same way.
    assert native["AIRFLOW__CORE__FERNET_KEY"] == secrets["AIRFLOW_FERNET_KEY"]
    assert native["AIRFLOW__API_AUTH__JWT_SECRET"] == secrets["AIRFLOW_JWT_SECRET"]
    assert native["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
