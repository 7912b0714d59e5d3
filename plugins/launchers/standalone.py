"""`make airflow`: `airflow standalone` on 127.0.0.1 with this project's DAGs, SQLite, no Docker.

    python -m launchers.standalone [--port 8080]

Prints the URL and the login before starting; Ctrl+C stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from launchers.run_local import PROJECT, airflow_env

USER = "admin"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("AIRFLOW_PORT", "8080")))
    args = parser.parse_args(argv)

    home = Path(os.environ.get("AIRFLOW_HOME") or PROJECT / ".airflow")
    home.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{args.port}"
    env = {
        **airflow_env(home),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(args.port),
        "AIRFLOW__API__BASE_URL": url,  # tasks report to this address, not localhost:8080
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",  # the default 32 starts 32 workers on a laptop
        # a busy laptop's API server (SQLite) can take far longer than the default 5 s to
        # acknowledge a task's start; the retry is then refused and the task fails unrun
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "120",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(args.port + 1000),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(args.port + 1001),
    }
    for key, value in env.items():
        os.environ.setdefault(key, value)
    # A known password for a UI that only listens on loopback; delete the file for a random one.
    passwords = home / "simple_auth_manager_passwords.json.generated"
    if not passwords.exists():
        passwords.write_text(json.dumps({USER: USER}))
    password = json.loads(passwords.read_text()).get(USER, "(see " + str(passwords) + ")")
    bin_dir = Path(sys.executable).parent
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"  # standalone spawns `airflow`
    print(f"Airflow UI: {url}  (login: {USER} / {password}; Ctrl+C stops it)", flush=True)
    os.execv(str(bin_dir / "airflow"), [str(bin_dir / "airflow"), "standalone"])


if __name__ == "__main__":
    main()
