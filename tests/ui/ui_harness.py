"""A real `airflow standalone` and a real headless Chromium for the browser test.

Airflow runs in its own process group with its own AIRFLOW_HOME (SQLite) on a free loopback
port, serving this repository's dags/ and plugins/; stop() sends SIGTERM to the whole group
(SIGINT hangs: LocalExecutor workers ignore it). Chromium is Debian's (`chromium` +
`chromium-driver`), never a browser downloaded at run time (SE_OFFLINE=true).
"""

from __future__ import annotations

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

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHROMIUM = Path("/usr/lib/chromium/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# This machine's closed network refuses Chromium's background connections: turn them off.
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def browser_available() -> bool:
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


def start_chromium(user_data_dir: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not try to download anything
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


class AirflowStandalone:
    """`airflow standalone` on 127.0.0.1:<port>, plus a small REST client with a JWT."""

    def __init__(self, home: Path, extra_env: dict[str, str]) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "standalone.log"
        self.process: subprocess.Popen | None = None
        self.extra_env = extra_env
        self._token: str | None = None

    def env(self) -> dict[str, str]:
        # Start from this process's env minus its AIRFLOW__* (the test session's own DB and home).
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(
            {
                "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # standalone spawns `airflow ...`
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                # Without it, task processes report to localhost:8080.
                "AIRFLOW__API__BASE_URL": self.url,
                # Off their defaults (8793/8794), which another Airflow may hold.
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
                # A task reports its start to the API server and gives up after 5 s by default;
                # on a loaded 2-core machine (SQLite, the other test worker busy) the answer can
                # take half a minute, and the retry is then refused: the task fails unrun.
                "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "120",
                "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'plugins'}",
                **self.extra_env,
            }
        )
        return env

    def start(self, timeout_s: float = 120) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [str(BIN / "airflow"), "standalone"],
                env=self.env(),
                cwd=self.home,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() reaches every child
            )
        self.wait_for(lambda: self._healthy(), timeout_s, "the API server's health endpoint")

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"airflow standalone exited early ({self.process.returncode}):\n{self.log_tail()}"
            )
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as response:
                health = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return health.get("metadatabase", {}).get("status") == "healthy"

    def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL to whatever is left after 30 s."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _group_alive(self.process.pid):
            self.process.poll()  # reap the leader so the group can empty
            time.sleep(0.5)
        if _group_alive(self.process.pid):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def password(self) -> str:
        generated = self.home / "simple_auth_manager_passwords.json.generated"
        return json.loads(generated.read_text())["admin"]

    def wait_for(self, condition, timeout_s: float, what: str, interval_s: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(interval_s)
        raise TimeoutError(f"waited {timeout_s:.0f} s for {what}\n--- airflow log ---\n{self.log_tail()}")

    # --- REST ----------------------------------------------------------------------------------

    def token(self) -> str:
        if self._token is None:
            status, body = self._request(
                "POST", "/auth/token", {"username": "admin", "password": self.password()}, auth=False
            )
            if status not in (200, 201):
                raise RuntimeError(f"POST /auth/token answered {status}: {body}")
            self._token = body["access_token"]
        return self._token

    def api(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        """(status, parsed JSON body) of a REST call; HTTP errors are returned, not raised."""
        return self._request(method, path, payload, auth=True)

    def _request(self, method: str, path: str, payload: Any, auth: bool) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        # A busy machine can stall the single API worker, and SQLite can refuse a write while a
        # task holds the database (Airflow answers 500 "Database error", having rolled the request
        # back): retry both. Every call we make is either read-only or refused by validation,
        # so a retry changes nothing.
        for attempt in range(1, 4):
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    status, raw = response.status, response.read()
                break
            except urllib.error.HTTPError as exc:
                status, raw = exc.code, exc.read()
                if status == 500 and b"Database error" in raw and attempt < 3:
                    time.sleep(2 * attempt)
                    continue
                break
            except (TimeoutError, urllib.error.URLError) as exc:
                if attempt == 3:
                    raise RuntimeError(f"{method} {path}: no answer after 3 tries ({exc})") from None
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")
