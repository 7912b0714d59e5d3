"""The stack's own PostgreSQL: a cluster under .airflow/stack/postgres on a loopback port.

Debian's server binaries (`apt-get install postgresql`), never the machine's own instance:
`initdb` makes a cluster that belongs to this project and `pg_ctl` starts and stops it. The
server refuses to run as root, so when we are root it runs as the `postgres` user (the one
Debian's package creates). Password auth (scram) on 127.0.0.1 only, like the compose file's
postgres service; the password is the stack's POSTGRES_PASSWORD (launchers/stack.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

USER = "airflow"  # the cluster's superuser and the owner of the `airflow` database
DATABASE = "airflow"
INSTALL_HINT = "apt-get install postgresql (make stack does it when run as root)"


class PostgresError(RuntimeError):
    """A one-line reason the stack's database cannot start; the launcher prints it and exits."""


def server_bin() -> Path:
    """The folder of the newest installed server's initdb and pg_ctl."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if versions:
        return versions[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PostgresError(f"PostgreSQL's server (initdb, pg_ctl) is not installed: {INSTALL_HINT}")


def server_version(bin_dir: Path) -> str:
    """The major version, e.g. '15', of the server in bin_dir."""
    out = subprocess.run([str(bin_dir / "pg_ctl"), "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[-1].split(".")[0]


class Postgres:
    """One cluster in `root` (data/, the socket, postgres.log), served on `port`."""

    def __init__(self, root: Path, password: str) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.password = password
        self.bin = server_bin()
        # The server will not run as root: as root we run it (and initdb) as `postgres`.
        self.run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def url(self, port: int) -> str:
        return f"postgresql+psycopg2://{USER}:{self.password}@127.0.0.1:{port}/{DATABASE}"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*self.run_as, *args], capture_output=True, text=True, timeout=timeout)

    def ensure_cluster(self) -> None:
        """Make the cluster once; refuse one made by another major version, naming what to delete."""
        version = server_version(self.bin)
        made_by = self.data / "PG_VERSION"
        if made_by.exists():
            old = made_by.read_text().strip()
            if old != version:
                raise PostgresError(
                    f"{self.data} was made by PostgreSQL {old} and this machine has {version}: "
                    f"delete {self.root} (the stack's database: its runs' history) and start again"
                )
            return
        self.root.mkdir(parents=True, exist_ok=True)
        if self.run_as:
            shutil.chown(self.root, "postgres")
            self.root.chmod(0o700)
            reach = self._run("test", "-w", str(self.root))
            if reach.returncode != 0:
                raise PostgresError(
                    f"the postgres user cannot reach {self.root} (a folder above it is closed to "
                    "other users): chmod o+x the folders above it, or run the stack as a non-root user"
                )
        password_file = self.root / "initdb-password"
        password_file.write_text(self.password + "\n")
        password_file.chmod(0o600)
        if self.run_as:
            shutil.chown(password_file, "postgres")
        try:
            made = self._run(
                str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "-A", "scram-sha-256",
                f"--pwfile={password_file}", "-E", "UTF8", "--no-instructions",
            )  # fmt: skip
        finally:
            password_file.unlink(missing_ok=True)
        if made.returncode != 0:
            raise PostgresError(f"initdb {self.data} failed: {_last_line(made.stderr)}")

    def start(self, port: int) -> int:
        """Start the server on 127.0.0.1:port, TCP only (no socket in /var/run); its pid."""
        options = f"-p {port} -k '' -c listen_addresses=127.0.0.1"
        started = self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log),
            "-w", "-t", "60", "start",
        )  # fmt: skip
        if started.returncode != 0:
            raise PostgresError(
                f"PostgreSQL did not start on port {port}; its log {self.log}: {self.log_tail()}"
            )
        self.create_database(port)
        return self.pid() or 0

    def create_database(self, port: int) -> None:
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=port, user=USER, password=self.password, dbname="postgres"
        )
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{DATABASE}" OWNER "{USER}"')
        finally:
            conn.close()

    def pid(self) -> int | None:
        """The running server's pid (postmaster.pid), or None."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """A fast shutdown (running queries are cancelled), waiting until it is down."""
        if self.pid() is None:
            return
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:])


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
