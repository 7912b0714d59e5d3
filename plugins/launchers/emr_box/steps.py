"""The box's step executor: runs each EMR step that the DAG added, for real, in order.

moto accepts `add_job_flow_steps` but never runs a step. The runner watches the emulated EMR
backend (the moto server runs in this process), and for each cluster takes the first step
that is PENDING (or RUNNING but not started: moto marks a cluster's first step RUNNING):

    RUNNING   spark-submit with the step's exact Args (`command-runner.jar` semantics), except
              `--master` (the box's standalone master) and `--deploy-mode` (client: standalone
              cannot run Python apps in cluster mode). As YARN does for a cluster-mode driver,
              the driver's environment gets the `spark.yarn.appMasterEnv.*` settings.
    COMPLETED exit status 0
    FAILED    otherwise, with FailureDetails (Reason: the exit status, Message: the last error
              line, LogFile: the step's stderr, uploaded to the cluster's LogUri as EMR does);
              later steps follow ActionOnFailure (CANCEL_AND_WAIT / CONTINUE / TERMINATE_CLUSTER).

A cluster that is terminated while a step runs kills the step's process group, as EMR does.
"""

from __future__ import annotations

import gzip
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launchers.emr_box.nodes import node_env

log = logging.getLogger(__name__)

# The options the box may rewrite; a test asserts every other argument is what the DAG sent.
REWRITTEN = ("--master", "--deploy-mode")
_APP_MASTER_ENV = "spark.yarn.appMasterEnv."
_ACTIVE_CLUSTER = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")


def rewrite_args(args: list[str], master: str) -> list[str]:
    """The step's Args with `--master` and `--deploy-mode` set for the box, nothing else changed."""
    if not args or Path(args[0]).name != "spark-submit":
        raise ValueError(f"the box runs spark-submit steps only, got {args[:1]}")
    kept: list[str] = []
    index = 1
    while index < len(args):
        if args[index] in REWRITTEN:
            index += 2
            continue
        kept.append(args[index])
        index += 1
    return [args[0], "--master", master, "--deploy-mode", "client", *kept]


def spark_defaults_of(configurations: list[Any]) -> dict[str, str]:
    """The `spark-defaults` properties of a cluster request's Configurations."""
    properties: dict[str, str] = {}
    for item in configurations or []:
        item = {str(k).lower(): v for k, v in dict(item).items()}
        if item.get("classification") == "spark-defaults":
            properties.update({str(k): str(v) for k, v in (item.get("properties") or {}).items()})
    return properties


def last_error_line(output: str) -> str:
    """Our steps print one `error: <step>: ...` line; otherwise the last line that says Error.

    `output` is the driver's stdout and stderr: spark-submit's PythonRunner merges the Python
    driver's stderr into its stdout."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error: "):
            return line
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line[:500]
    return lines[-1][:500] if lines else "(no output)"


@dataclass
class StepRun:
    """What the box did with one EMR step (the tests read these)."""

    cluster_id: str
    step_id: str
    name: str
    sent_args: list[str]
    run_args: list[str]
    state: str = "RUNNING"
    exit_code: int | None = None
    seconds: float = 0.0
    log_dir: Path | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)


class StepRunner:
    """A thread that executes the EMR steps of the clusters tagged `box_tag` in the moto backend
    (any region). Only those: moto's backend is shared by every moto server in this process, and
    a test's own harness may be moving the steps of other clusters."""

    def __init__(
        self,
        box_tag: tuple[str, str],
        master_url: str,
        box_dir: Path,
        cluster_spark_defaults: Callable[[dict[str, str]], dict[str, str]],
        driver_env: Mapping[str, str],
        upload_log: Callable[[str, bytes], None],
    ) -> None:
        self.box_tag = box_tag
        self.master_url = master_url
        self.box_dir = box_dir
        self.cluster_spark_defaults = cluster_spark_defaults
        self.driver_env = dict(driver_env)
        self.upload_log = upload_log
        self.runs: list[StepRun] = []
        self._running: dict[str, StepRun] = {}  # cluster id -> its running step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="emr-box-steps", daemon=True)

    def __enter__(self) -> StepRunner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for run in self._running.values():
            self._kill(run)

    def _clusters(self) -> list:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.emr.models import emr_backends

        key, value = self.box_tag
        regions = list(emr_backends[DEFAULT_ACCOUNT_ID].values())
        clusters = [cluster for backend in regions for cluster in list(backend.clusters.values())]
        return [cluster for cluster in clusters if cluster._tags.get(key) == value]

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                for cluster in self._clusters():
                    self._tick(cluster)
            except Exception:  # the runner must outlive one bad tick, or every sensor hangs
                log.exception("emr box: step runner tick failed")
            time.sleep(0.2)

    def _tick(self, cluster) -> None:
        run = self._running.get(cluster.id)
        if cluster.state not in _ACTIVE_CLUSTER:
            if run is not None:  # terminating a cluster ends its steps
                self._kill(run)
                self._finish(cluster, run, exit_code=-signal.SIGKILL, output="cluster terminated")
            return
        if run is not None:
            if run.process is not None and run.process.poll() is not None:
                output = "\n".join(
                    (run.log_dir / name).read_text(errors="replace") for name in ("stderr", "stdout")
                )
                self._finish(cluster, run, exit_code=run.process.returncode, output=output)
            return
        step = next((s for s in cluster.steps if s.state in ("PENDING", "RUNNING")), None)
        if step is None:
            if cluster.state == "RUNNING":
                cluster.state = "WAITING"
            return
        self._start(cluster, step)

    def _start(self, cluster, step) -> None:
        from moto.core.utils import utcnow

        sent = [str(a) for a in step.args]
        run = StepRun(cluster.id, step.id, step.name, sent, rewrite_args(sent, self.master_url))
        run.log_dir = self.box_dir / "steps" / cluster.id / step.id
        run.log_dir.mkdir(parents=True, exist_ok=True)
        defaults = self.cluster_spark_defaults(spark_defaults_of(cluster.configurations))
        conf_dir = run.log_dir / "conf"
        conf_dir.mkdir(exist_ok=True)
        (conf_dir / "spark-defaults.conf").write_text(
            "".join(f"{k} {v}\n" for k, v in sorted(defaults.items()))
        )
        env = node_env(self.box_dir / "master", self.driver_env)
        env["SPARK_CONF_DIR"] = str(conf_dir)
        env.update(
            {k[len(_APP_MASTER_ENV) :]: v for k, v in defaults.items() if k.startswith(_APP_MASTER_ENV)}
        )
        step.state = "RUNNING"
        step.start()
        cluster.state = "RUNNING"
        with open(run.log_dir / "stdout", "wb") as stdout, open(run.log_dir / "stderr", "wb") as stderr:
            run.process = subprocess.Popen(
                run.run_args, env=env, cwd=run.log_dir, stdout=stdout, stderr=stderr, start_new_session=True
            )
        run.seconds = time.monotonic()
        self._running[cluster.id] = run
        self.runs.append(run)
        log.info("emr box: %s %s started: %s", cluster.id, step.name, " ".join(run.run_args))
        step.ready_date_time = utcnow()

    def _kill(self, run: StepRun) -> None:
        if run.process is not None and run.process.poll() is None:
            os.killpg(run.process.pid, signal.SIGKILL)
            run.process.wait()

    def _finish(self, cluster, run: StepRun, exit_code: int, output: str) -> None:
        from moto.core.utils import utcnow

        del self._running[cluster.id]
        run.exit_code = exit_code
        run.seconds = time.monotonic() - run.seconds
        step = next(s for s in cluster.steps if s.id == run.step_id)
        step.end_date_time = utcnow()
        log_file = self._upload_logs(cluster, run)
        if exit_code == 0:
            step.state = run.state = "COMPLETED"
        elif cluster.state not in _ACTIVE_CLUSTER:
            step.state = run.state = "CANCELLED"
        else:
            step.state = run.state = "FAILED"
            step.failure_details = {
                "Reason": f"{run.name} exited with code {exit_code}",
                "Message": last_error_line(output),
                "LogFile": log_file,
            }
            self._after_failure(cluster, step.action_on_failure)
        log.info("emr box: %s %s %s in %.1f s", cluster.id, run.name, run.state, run.seconds)

    def _after_failure(self, cluster, action: str) -> None:
        if action == "CONTINUE":
            return
        for later in cluster.steps:
            if later.state == "PENDING":
                later.state = "CANCELLED"
        if action == "TERMINATE_CLUSTER":
            cluster.terminate()

    def _upload_logs(self, cluster, run: StepRun) -> str:
        """Step logs to <LogUri>/<cluster>/steps/<step>/std{out,err}.gz, where EMR puts them."""
        base = f"{str(cluster.log_uri or '').rstrip('/')}/{cluster.id}/steps/{run.step_id}"
        for name in ("stdout", "stderr"):
            data = gzip.compress((run.log_dir / name).read_bytes())
            if cluster.log_uri:
                try:
                    self.upload_log(f"{base}/{name}.gz", data)
                except Exception:  # a log that cannot be uploaded must not hide the step's state
                    log.exception("emr box: could not upload %s", name)
        return f"{base}/stderr.gz" if cluster.log_uri else str(run.log_dir / "stderr")
