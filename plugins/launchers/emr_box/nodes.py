"""The box's "nodes": a real Spark standalone cluster (one master, N one-core workers) on 127.0.0.1.

Each worker is its own node: its own work dir, TMPDIR and HOME, and nothing of the driver's
disk. The environment of every Spark process is built from scratch (`node_env`), as a YARN
container's is: no AWS_REGION, no AWS_DEFAULT_REGION, only what a node of the cluster would
have (the instance profile's credentials and the S3 endpoint, here the emulator's).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from launchers.emr_box.errors import BoxError

log = logging.getLogger(__name__)

# What a node's processes inherit from the box's own environment; everything else (AWS_REGION,
# the developer's AWS profile, PYTHONPATH, ...) stays out.
_INHERITED = ("PATH", "LANG", "LC_ALL", "JAVA_HOME", "TZ")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_env(node_dir: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """A node's process environment: its own HOME and TMPDIR, loopback networking, `extra`."""
    home, tmp = node_dir / "home", node_dir / "tmp"
    home.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    env = {key: os.environ[key] for key in _INHERITED if key in os.environ}
    env.update(
        {
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOCAL_DIRS": str(tmp),
            # The nodes' only network is loopback: gloo must use it.
            "GLOO_SOCKET_IFNAME": "lo",
            "PYSPARK_PYTHON": sys.executable,
            **extra,
        }
    )
    bin_dir = str(Path(sys.executable).parent)  # spark-submit and spark-class live beside python
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    return env


def spark_class() -> Path:
    """pyspark's spark-class (the pip wheel ships the launcher scripts and the jars)."""
    import pyspark

    path = Path(pyspark.__file__).parent / "bin" / "spark-class"
    if not path.exists():
        raise BoxError(f"spark-class not found at {path}: reinstall pyspark")
    return path


def require_java() -> None:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise BoxError(
            "java not found: the Spark nodes need Java 17 (apt-get install openjdk-17-jre-headless)"
        )


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class SparkStandalone:
    """`spark-class ...Master` and `workers` × `...Worker --cores 1`, each in its own session."""

    def __init__(
        self,
        base_dir: Path,
        node_extra_env: Mapping[str, str],
        workers: int = 2,
        worker_memory: str = "2g",
        master_port: int | None = None,
    ) -> None:
        self.base_dir = base_dir
        self.node_extra_env = dict(node_extra_env)
        self.workers = workers
        self.worker_memory = worker_memory
        self.master_port = master_port or free_port()
        self.master_ui_port = free_port()
        self._processes: list[subprocess.Popen] = []

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.master_port}"

    def __enter__(self) -> SparkStandalone:
        require_java()
        if not _port_free(self.master_port):
            raise BoxError(f"port {self.master_port} is taken: the Spark master cannot listen on it")
        launcher = str(spark_class())
        try:
            self._start(
                "master",
                [launcher, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                 "--port", str(self.master_port), "--webui-port", str(self.master_ui_port)],
            )  # fmt: skip
            self._wait(lambda status: True, "the Spark master")
            for index in range(self.workers):
                name = f"worker-{index + 1}"
                work = self.base_dir / name / "work"
                work.mkdir(parents=True, exist_ok=True)
                self._start(
                    name,
                    [launcher, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                     "--cores", "1", "--memory", self.worker_memory, "--work-dir", str(work),
                     "--webui-port", str(free_port()), self.master_url],
                )  # fmt: skip
            self._wait(lambda status: status.get("aliveworkers", 0) >= self.workers, "the Spark workers")
        except BaseException:
            self.stop()
            raise
        log.info("spark standalone %s with %d one-core workers", self.master_url, self.workers)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self, name: str, command: list[str]) -> None:
        node_dir = self.base_dir / name
        node_dir.mkdir(parents=True, exist_ok=True)
        env = node_env(node_dir, self.node_extra_env)
        env["SPARK_WORKER_DIR"] = str(node_dir / "work")
        env["SPARK_LOG_DIR"] = str(node_dir / "logs")
        log_file = open(node_dir / "process.log", "ab")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            command, env=env, cwd=node_dir, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        log_file.close()
        self._processes.append(process)

    def status(self) -> dict:
        url = f"http://127.0.0.1:{self.master_ui_port}/json/"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)

    def _wait(self, ready, what: str, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for process in self._processes:
                if process.poll() is not None:
                    raise BoxError(
                        f"{what} exited with code {process.returncode} while starting "
                        f"(logs: {self.base_dir}/*/process.log)"
                    )
            try:
                if ready(self.status()):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise BoxError(f"{what} did not come up within {timeout_s:.0f} s (logs under {self.base_dir})")

    def stop(self) -> None:
        for process in reversed(self._processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self._processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._processes.clear()

    def kill_executor(self) -> int | None:
        """Kill one of this box's running executor JVMs (a lost node); its pid, or None."""
        for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
            except OSError:
                continue
            if b"CoarseGrainedExecutorBackend" in cmdline and cwd.is_relative_to(self.base_dir):
                os.kill(pid, signal.SIGKILL)
                return pid
        return None
