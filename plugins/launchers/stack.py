"""`make stack`: docker-compose.yaml's Airflow as native processes, no Docker.

    python -m launchers.stack [--port 8080] [--home .airflow/stack]     # until Ctrl-C
    python -m launchers.stack --check                                   # make stack-check

PostgreSQL (launchers/postgres.py), then `airflow db migrate` (compose's airflow-init), then
Airflow's api-server, scheduler, dag-processor and triggerer, each its own process, with
LocalExecutor: the services of docker-compose.yaml, configured from the same file
(configs/airflow.env) and the same kind of secrets (.airflow/stack/stack.env, written once by
launchers/compose_env.py as compose's .env is). Your own AIRFLOW__* variables override the
shared settings; where things are (database, ports, folders) is the stack's.

Ctrl-C (or SIGTERM) stops every process, then the database; whatever a task left running is
found by the marker every process of the stack carries and killed. A second start while one
runs is refused with the first's pids. --check starts the stack, unpauses llm_decoder_local,
posts one corpus Asset event through the REST API, waits for the run it starts, stops the
stack and prints one JSON line.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from launchers import compose_env
from launchers.airflow_api import AirflowApi, wait_for
from launchers.postgres import Postgres, PostgresError

PROJECT = Path(__file__).resolve().parents[2]
SHARED_SETTINGS = PROJECT / "configs" / "airflow.env"
SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
# Every process the stack starts, and everything they start, inherits this variable.
MARKER = "LLM_DECODER_STACK"
USER = compose_env.ADMIN_USER
CHECK_DAG = "llm_decoder_local"
CORPUS_ASSET = "llm_decoder_local_corpus"  # dags/llm_decoder_local.py's Asset


class StackError(RuntimeError):
    """A one-line reason the stack cannot start or went down; printed, exit code 1."""


def shared_settings() -> dict[str, str]:
    """configs/airflow.env: what docker-compose.yaml's Airflow services read too (env_file)."""
    return compose_env.read_env(SHARED_SETTINGS)


def port_from(preferred: int, taken: set[int] = frozenset()) -> int:
    """`preferred` if free on 127.0.0.1, else the next free one above it."""
    for port in range(preferred, preferred + 200):
        if port in taken:
            continue
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise StackError(f"no free port on 127.0.0.1 from {preferred} to {preferred + 199}")


def stack_env(home: Path, ports: dict[str, int], db_url: str, secrets: dict[str, str]) -> dict[str, str]:
    """The Airflow processes' environment: shared settings, then placement and secrets."""
    inherited = {k: v for k, v in os.environ.items() if k != "AIRFLOW_HOME"}
    env = {**shared_settings(), **inherited}  # the user's own AIRFLOW__* win over the shared file
    url = f"http://127.0.0.1:{ports['api']}"
    bin_dir = Path(sys.executable).parent
    env.update(
        {
            MARKER: str(home),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
            "AIRFLOW__CORE__FERNET_KEY": secrets["AIRFLOW_FERNET_KEY"],
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets["AIRFLOW_JWT_SECRET"],
            "AIRFLOW__API__SECRET_KEY": secrets["AIRFLOW_API_SECRET_KEY"],
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(ports["api"]),
            "AIRFLOW__API__BASE_URL": url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(ports["worker_logs"]),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(ports["trigger_logs"]),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(ports["scheduler_health"]),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join([str(PROJECT), str(PROJECT / "plugins")]),
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_LOCAL_IP": "127.0.0.1",
        }
    )
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def marked_processes(home: Path) -> list[int]:
    """Pids of every process that carries this stack's marker (but this one)."""
    wanted = f"{MARKER}={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if wanted in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


class Stack:
    """The database and the four Airflow services under `home`; start() then stop()."""

    def __init__(self, home: Path, port: int) -> None:
        self.home = home.resolve()
        self.preferred_port = port
        self.logs = self.home / "logs"
        self.state_file = self.home / "stack.json"
        self.processes: dict[str, subprocess.Popen] = {}
        self.postgres: Postgres | None = None
        self.ports: dict[str, int] = {}
        self._lock: Any = None

    # --- start --------------------------------------------------------------------------------

    def start(self, ready_timeout_s: float = 300) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        secrets_file = self.home / "stack.env"
        compose_env.write_env(secrets_file)  # once; later starts keep the same secrets
        secrets = compose_env.read_env(secrets_file)
        self._write_passwords(secrets["AIRFLOW_ADMIN_PASSWORD"])

        self.postgres = Postgres(self.home / "postgres", secrets["POSTGRES_PASSWORD"])
        self.postgres.ensure_cluster()
        self.ports = {"postgres": port_from(15432)}
        self.ports["api"] = port_from(self.preferred_port, set(self.ports.values()))
        for name, preferred in (("worker_logs", 8793), ("trigger_logs", 8794), ("scheduler_health", 8974)):
            self.ports[name] = port_from(preferred, set(self.ports.values()))
        self.postgres.start(self.ports["postgres"])
        self.env = stack_env(self.home, self.ports, self.postgres.url(self.ports["postgres"]), secrets)

        self.logs.mkdir(parents=True, exist_ok=True)
        self._migrate()
        for service in SERVICES:
            self._spawn(service)
        self._write_state()
        wait_for(self._healthy, ready_timeout_s, "the API server to report every service healthy", 1.0)

    def _take_lock(self) -> None:
        """One stack per home: a second start names the first's pids and gives up."""
        self._lock = open(self.home / "stack.lock", "w")  # noqa: SIM115 (held until stop)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise StackError(f"the stack in {self.home} is already running ({self._describe_running()}): "
                             "stop it with Ctrl-C in its terminal first") from None  # fmt: skip

    def _describe_running(self) -> str:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return "still starting"
        pids = ", ".join(f"{name} {pid}" for name, pid in state["pids"].items())
        return f"launcher pid {state['launcher']}; {pids}; {state['url']}"

    def _write_passwords(self, password: str) -> None:
        # What compose's airflow-init writes for the simple auth manager: {user: password}, 0600.
        path = self.home / "passwords.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({USER: password}, f)

    def _migrate(self) -> None:
        log = self.logs / "db-migrate.log"
        with open(log, "wb") as out:
            done = subprocess.run(
                [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
                env=self.env, cwd=PROJECT, stdout=out, stderr=subprocess.STDOUT, timeout=900,
            )  # fmt: skip
        if done.returncode != 0:
            raise StackError(
                f"airflow db migrate failed (log {log}): {_tail(log)}; if {self.home} was made by "
                f"another Airflow version that cannot be migrated, delete {self.home} and start again"
            )

    def _spawn(self, service: str) -> None:
        with open(self.logs / f"{service}.log", "ab") as out:
            self.processes[service] = subprocess.Popen(
                [str(Path(sys.executable).parent / "airflow"), service],
                env=self.env, cwd=PROJECT, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: Ctrl-C reaches us, we stop it in order
            )  # fmt: skip

    def _write_state(self) -> None:
        state = {
            "launcher": os.getpid(),
            "pids": {name: p.pid for name, p in self.processes.items()} | {"postgres": self.postgres.pid()},
            "url": self.url,
            "ports": self.ports,
        }
        self.state_file.write_text(json.dumps(state, indent=2))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    def dead_service(self) -> str | None:
        """The first service that exited, with its exit code and log tail, or None."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                return (
                    f"{name} exited ({process.returncode}); its log {self.logs / (name + '.log')}: "
                    + _tail(self.logs / f"{name}.log")
                )
        return None

    def _healthy(self) -> bool:
        dead = self.dead_service()
        if dead:
            raise StackError(dead)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as response:
                health = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return False
        parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
        return all((health.get(part) or {}).get("status") == "healthy" for part in parts)

    def api(self) -> AirflowApi:
        password = json.loads((self.home / "passwords.json").read_text())[USER]
        return AirflowApi(self.url, USER, password)

    # --- stop ---------------------------------------------------------------------------------

    def stop(self, grace_s: float = 30) -> list[int]:
        """Every service, then whatever carries the marker, then the database; the pids that
        had to be killed after the grace period."""
        for process in self.processes.values():
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_group_alive(p.pid) for p in self.processes.values()):
            for process in self.processes.values():
                process.poll()  # reap the leader so its group can empty
            time.sleep(0.3)
        killed = []
        for process in self.processes.values():
            if _group_alive(process.pid):
                _signal_group(process.pid, signal.SIGKILL)
                killed.append(process.pid)
            process.wait(timeout=10) if process.poll() is None else None
        for pid in marked_processes(self.home):  # e.g. a task's spark-submit in its own session
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        if self.postgres is not None:
            self.postgres.stop()
        self.state_file.unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        return killed


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


# --- make stack-check ---------------------------------------------------------------------------


def check(stack: Stack, timeout_s: float) -> dict[str, Any]:
    """One corpus update through the REST API; the state of the run it starts."""
    began = time.monotonic()
    api = stack.api()
    wait_for(lambda: api.call("GET", f"/api/v2/dags/{CHECK_DAG}")[0] == 200, 300, f"{CHECK_DAG} to be parsed")
    api.unpause(CHECK_DAG)
    asset_id = wait_for(lambda: api.asset_id(CORPUS_ASSET), 120, f"the asset {CORPUS_ASSET}")
    earlier = {r["dag_run_id"] for r in api.dag_runs(CHECK_DAG)}  # runs of an earlier stack
    api.post_asset_event(asset_id, {"source": "make stack-check"})

    def finished() -> dict | None:
        runs = [r for r in api.dag_runs(CHECK_DAG) if r["dag_run_id"] not in earlier]
        return next(
            (r for r in runs if r["run_type"] == "asset_triggered" and r["state"] in ("success", "failed")),
            None,
        )

    run = wait_for(finished, timeout_s, f"the asset-triggered run of {CHECK_DAG} to end", 5.0)
    return {
        "db": stack.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].split("+")[0].split(":")[0],
        "executor": stack.env["AIRFLOW__CORE__EXECUTOR"],
        "triggered_by": "asset",
        "run_id": run["dag_run_id"],
        "run_state": run["state"],
        "wall_s": round(time.monotonic() - began, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=PROJECT / ".airflow" / "stack")
    parser.add_argument("--port", type=int, default=int(os.environ.get("AIRFLOW_PORT", "8080")))
    parser.add_argument("--check", action="store_true", help="one Asset event, wait for its run, stop")
    parser.add_argument("--check-timeout", type=float, default=1800, help="seconds the check's run may take")
    args = parser.parse_args(argv)

    # Ctrl-C stops the stack even when started from a background job (which inherits SIGINT
    # ignored), and SIGTERM (a service manager, a test) stops it the same way.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    stack = Stack(args.home, args.port)
    result: dict[str, Any] | None = None
    code = 0
    try:
        stack.start()
        if stack.ports["api"] != args.port:
            print(f"port {args.port} is taken: the UI is on {stack.ports['api']}", flush=True)
        print(
            f"Airflow UI: {stack.url} (user {USER}, password: AIRFLOW_ADMIN_PASSWORD in "
            f"{stack.home / 'stack.env'}); PostgreSQL on 127.0.0.1:{stack.ports['postgres']}; "
            f"logs in {stack.logs}. Ctrl-C stops it.",
            flush=True,
        )
        if args.check:
            result = check(stack, args.check_timeout)
            code = 0 if result["run_state"] == "success" else 1
        else:
            while True:
                dead = stack.dead_service()
                if dead:
                    raise StackError(dead)
                time.sleep(1)
    except KeyboardInterrupt:
        print("stopping the stack...", flush=True)
    except (StackError, PostgresError, TimeoutError, RuntimeError) as e:
        print(f"stack: {e}", file=sys.stderr, flush=True)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
        if stack._lock is not None:
            killed = stack.stop()
            print(
                f"stopped{f' (killed {len(killed)} that did not stop in time)' if killed else ''}", flush=True
            )
    if result is not None:
        print(json.dumps({k: v for k, v in result.items() if k != "run_id"}), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
