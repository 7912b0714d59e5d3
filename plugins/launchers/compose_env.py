"""`make compose-env`: write the git-ignored .env that docker-compose.yaml needs, with fresh secrets.

    python -m launchers.compose_env [--path .env]

Runs once: an existing file is never overwritten (keys it lacks are appended), so the admin
password, the Fernet key that encrypts stored connections and the database password stay stable.
Tells where the password is and never prints a secret. Standard library only: a docker-compose
user needs no virtualenv for it.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
ADMIN_USER = "admin"  # docker-compose.yaml: AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin


def fernet_key() -> str:
    # What cryptography's Fernet.generate_key() returns: 32 random bytes, url-safe base64.
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def fresh_values() -> dict[str, str]:
    """Every variable docker-compose.yaml requires (`${VAR:?...}`), with new random secrets."""
    return {
        "AIRFLOW_ADMIN_PASSWORD": secrets.token_urlsafe(18),
        "AIRFLOW_FERNET_KEY": fernet_key(),
        "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(48),
        "AIRFLOW_API_SECRET_KEY": secrets.token_urlsafe(48),
        # url-safe: it goes inside the SQLAlchemy URL as is
        "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
        # files the containers write under ./logs and ./output belong to you (Linux); never root
        "AIRFLOW_UID": str(getattr(os, "getuid", lambda: 0)() or 50000),
    }


def read_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file, as compose reads the simple ones."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.removeprefix("export ").strip()] = value.strip()
    return values


def render(values: dict[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in values.items())


def write_env(path: Path) -> str:
    """Create `path` (mode 0600) or append only the keys it lacks; return what was done, in words."""
    values = fresh_values()
    try:
        # O_EXCL: never replace a file, even one created a moment ago by a second run.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        missing = {k: v for k, v in values.items() if k not in read_env(path)}
        if not missing:
            return f"{path} exists and has every key docker-compose.yaml needs: kept as it is"
        with path.open("a") as f:
            f.write("\n# added by make compose-env\n" + render(missing))
        return f"{path} exists: kept, and added {', '.join(missing)}"
    with os.fdopen(fd, "w") as f:
        f.write("# docker-compose.yaml's secrets, made by make compose-env. Keep it private; not in git.\n")
        f.write(render(values))
    return f"wrote {path} (mode 0600)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=PROJECT / ".env", help="default: .env at the repo root")
    args = parser.parse_args(argv)
    try:
        done = write_env(args.path)
    except OSError as e:
        print(f"compose-env: cannot write {args.path}: {e.strerror}", file=sys.stderr)
        return 1
    print(done)
    port = os.environ.get("AIRFLOW_PORT") or read_env(args.path).get("AIRFLOW_PORT", "8080")
    print(
        f"docker compose up -d, then http://127.0.0.1:{port} as {ADMIN_USER!r}; "
        f"the password is AIRFLOW_ADMIN_PASSWORD in {args.path}"
    )
    if args.path.stat().st_mode & 0o077:
        print(f"warning: {args.path} is readable by others: chmod 600 {args.path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
