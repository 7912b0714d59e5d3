"""Constants and the EMR harness shared by the Airflow tests (conftest.py puts this folder on sys.path)."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import yaml
from launchers.emr_box.box import corpus_slice, mark_wheelhouse_staged  # noqa: F401 (shared with the box)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCRATCH = Path(os.environ.get("TMPDIR") or tempfile.gettempdir()) / "airflow-tests"
SCRATCH.mkdir(parents=True, exist_ok=True)
LOCAL_ROOT = SCRATCH / "local-root"
BUCKET = "llm-test-bucket"
PREFIX = "llm"
CORPUS_KEY = "data/small.txt"
REGION = "us-east-1"  # emr.region: where the DAG's clusters and the harness live
# The Airflow connection names another region: a call that took the connection's region instead
# of emr.region would look for the cluster where it is not.
CONNECTION_REGION = "ap-southeast-2"


# One small model for every DAG test: the local DAG and the replayed EMR steps must agree.
TINY = {
    "spark": {"master": "local[2]", "driver_memory": "1g", "target_partition_size": 5000},
    "model": {
        "kind": "gpt",
        "window_size": 16,
        "embedding_size": 32,
        "hidden_size": 64,
        "num_layers": 1,
        "num_heads": 2,
    },
    "training": {
        "strategy": "single",
        "batch_size": 16,
        "num_epochs": 1,
        "max_steps": 60,
        "learning_rate": 0.003,
        "warmup_steps": 5,
        "eval_interval": 20,
        "eval_batches": 4,
        "checkpoint_interval": 30,
        "log_interval": 10,
        "histogram_interval": 30,
        "sample_tokens": 20,
    },
    "data": {"vocab_size": 300, "window_stride": 4},
}
FAST_AIRFLOW = {
    # One retry: a failed step or a sensor timeout must still fail at once, without it.
    "retries": 1,
    "retry_delay_s": 1,
    "max_retry_delay_s": 2,
    "cluster_waiter_delay_s": 1,
    "cluster_waiter_max_attempts": 30,
    "step_poke_interval_s": 1,
    "step_timeout_s": 120,
    "step_log_wait_s": 5,
    "schedule": None,
}


def emr_test_config(**airflow) -> dict:
    """configs/emr.yaml made small for the tests: TINY's model, the test bucket, FAST_AIRFLOW's
    waits, then `airflow` over them."""
    emr = yaml.safe_load((REPO / "configs" / "emr.yaml").read_text())
    for section, values in TINY.items():
        emr[section].update(values)
    emr["training"]["ddp_local_mode"] = True
    emr["data"]["corpus_path"] = f"s3://{BUCKET}/{CORPUS_KEY}"
    emr["emr"].update({"bucket": BUCKET, "prefix": PREFIX, "region": REGION})
    emr["airflow"].update({**FAST_AIRFLOW, **airflow})
    return emr


METRICS_FIXTURE = {
    "model_kind": "gpt",
    "strategy": "single",
    "num_workers": 1,
    "steps": 60,
    "train_loss": 3.1,
    "val_loss": 3.4,
    "first_val_loss": 5.6,
    "val_accuracy": 0.21,
    "val_bits_per_char": 2.9,
    "tokens_per_s": 12000.0,
    "wall_s": 42.0,
    "evaluation": {"corpus_sha256": "fixture", "split_by": "document", "valid_split": 0.1,
                   "val_chars_scored": 4321, "loss": "cross_entropy", "embeddings_sha256": None},
}  # fmt: skip


def fresh_dag(dag_id: str):
    """The DAG parsed anew: dag.test() runs tasks in this process, and a run's conf stays in the
    task objects' params, so reusing a DAG object would leak one test's Params into the next."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags")).get_dag(dag_id)


def step_log_error(step: str) -> str:
    """The `error: ` line a failed step's logs hold in the harness (not in FailureDetails)."""
    return f"error: {step}: the line from the step's own log in S3"


def step_base_name(name: str) -> str:
    return name.split(" [", 1)[0]


def option(args: list[str], flag: str) -> str | None:
    """The value after `flag` in a step's arguments."""
    for name, value in zip(args, args[1:], strict=False):
        if name == flag:
            return value
    return None


class EmrHarness:
    """Walks moto's EMR backend and moves steps on: PENDING → RUNNING → COMPLETED, or FAILED
    for `fail_step` (then the later steps CANCELLED, as ActionOnFailure=CANCEL_AND_WAIT does).

    On completion of a step it writes a stand-in for that step's metrics into S3, so that
    collection has something to read. `hold_step` stays RUNNING until `release()` (forever if
    never released: a step that hangs). A failed step's logs go to the cluster's LogUri as
    EMR puts them (`<LogUri>/<cluster>/steps/<step>/stderr.gz`, stdout.gz) unless `step_logs` is
    false (EMR has not uploaded them yet). `watched` counts, per step, the DescribeStep answers
    that said RUNNING (`watches_recorded` below); with `until_watched` N, a step ends only once it
    was seen running N times (2: by the sensor's first poke and by its trigger's first poll).
    """

    def __init__(
        self,
        s3_client,
        fail_step: str | None = None,
        step_seconds: float = 0.3,
        hold_step: str | None = None,
        until_watched: int = 0,
        step_logs: bool = True,
    ) -> None:
        self.s3 = s3_client
        self.fail_step = fail_step
        self.step_seconds = step_seconds
        self.hold_step = hold_step
        self.until_watched = until_watched
        self.step_logs = step_logs
        self.completed: list[str] = []
        self.watched: Counter[str] = Counter()
        self._released = threading.Event()
        self._started: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="emr-harness", daemon=True)

    def __enter__(self) -> EmrHarness:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def release(self) -> None:
        self._released.set()

    def wait_watched(self, step: str, timeout: float) -> None:
        """Until the step is RUNNING and its sensor has asked EMR about it."""
        deadline = time.monotonic() + timeout
        while step not in self.watched:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nobody asked about step {step} while it ran, within {timeout} s")
            time.sleep(0.05)

    def _backend(self):
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.emr.models import emr_backends

        return emr_backends[DEFAULT_ACCOUNT_ID][REGION]

    def _loop(self) -> None:
        while not self._stop.is_set():
            for cluster in list(self._backend().clusters.values()):
                if cluster.state in ("RUNNING", "WAITING"):
                    self._advance(cluster)
            time.sleep(0.05)

    def _advance(self, cluster) -> None:
        from moto.core.utils import utcnow

        active = next((s for s in cluster.steps if s.state in ("PENDING", "RUNNING")), None)
        if active is None:
            cluster.state = "WAITING"
            return
        started = self._started.setdefault(active.id, time.monotonic())
        name = step_base_name(active.name)
        if active.state == "PENDING":
            active.state = "RUNNING"
            active.start()
            return
        if time.monotonic() - started < self.step_seconds:
            return
        if name == self.hold_step and not self._released.is_set():
            return
        if self.watched[name] < self.until_watched:
            return
        active.end_date_time = utcnow()
        if name == self.fail_step:
            active.failure_details = {
                "Reason": f"{name} exited with code 2",
                "Message": f"error: {name}: simulated failure of the {name} step",
                "LogFile": f"s3://{BUCKET}/{PREFIX}/emr-logs/{cluster.id}/steps/{active.id}/stderr.gz",
            }
            active.state = "FAILED"
            if self.step_logs:
                self._write_step_logs(cluster, active.id, name)
            for later in cluster.steps:
                if later.state == "PENDING":
                    later.state = "CANCELLED"
            cluster.state = "WAITING"
            return
        self._write_outputs(name, list(active.args))
        active.state = "COMPLETED"
        self.completed.append(name)

    def _write_step_logs(self, cluster, step_id: str, name: str) -> None:
        """What a failed cluster-mode step leaves in the LogUri: spark-submit's YARN report in
        the step's stderr, and the driver's output, with our one `error: ` line, in the YARN
        application master's container logs."""
        bucket, _, prefix = cluster.log_uri[len("s3://") :].rstrip("/").partition("/")
        app = "application_1764403200000_0001"
        stderr = (
            f"26/11/29 08:00:00 INFO Client: Application report for {app} (state: FINISHED)\n"
            f'Exception in thread "main" org.apache.spark.SparkException: Application {app} '
            "finished with failed status\n"
        )
        driver = f"{name}: reading the corpus\n{step_log_error(name)}\n"
        logs = {
            f"steps/{step_id}/stderr.gz": stderr,
            f"steps/{step_id}/stdout.gz": "",
            f"containers/{app}/container_1764403200000_0001_01_000001/stdout.gz": driver,
            f"containers/{app}/container_1764403200000_0001_01_000001/stderr.gz": "INFO SparkContext\n",
        }
        for path, text in logs.items():
            key = f"{prefix}/{cluster.id}/{path}"
            self.s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(text.encode()))

    def _write_outputs(self, step: str, args: list[str]) -> None:
        # Where the step writes comes from its config, the one record the step reads (as on EMR).
        config_uri = option(args, "--config")
        if config_uri is None:
            return
        config_bucket, _, config_key = config_uri[len("s3://") :].partition("/")
        config = yaml.safe_load(self.s3.get_object(Bucket=config_bucket, Key=config_key)["Body"].read())
        root, run_id = config["run"]["root"], config["run"]["id"]
        bucket, _, prefix = root[len("s3://") :].partition("/")
        run = f"{prefix}/runs/{run_id}"
        if step == "preprocess":
            stats = {"documents": 1, "tokens": 9000, "vocab_size": 300, "chars_per_token": 4.1}
            self.s3.put_object(Bucket=bucket, Key=f"{run}/preprocess/stats.json", Body=json.dumps(stats))
        elif step == "window":
            dist = {"window_size": 16, "train": {"windows": 2000}, "val": {"windows": 200}}
            self.s3.put_object(
                Bucket=bucket, Key=f"{run}/window/data_distribution.json", Body=json.dumps(dist)
            )
        elif step == "train":
            summary = {**METRICS_FIXTURE, "run_id": run_id}
            self.s3.put_object(Bucket=bucket, Key=f"{run}/metrics/summary.json", Body=json.dumps(summary))


@contextlib.contextmanager
def watches_recorded(harnesses: list[EmrHarness]) -> Iterator[None]:
    """Count in each harness's `watched` the DescribeStep answers (moto, this process) that say
    RUNNING: who asked is the step's sensor or its trigger."""
    from moto.emr.models import ElasticMapReduceBackend

    plain = ElasticMapReduceBackend.describe_step

    def describe_step(self, cluster_id: str, step_id: str):
        step = plain(self, cluster_id, step_id)
        if step is not None and step.state == "RUNNING":
            for each in harnesses:
                each.watched[step_base_name(step.name)] += 1
        return step

    ElasticMapReduceBackend.describe_step = describe_step
    try:
        yield
    finally:
        ElasticMapReduceBackend.describe_step = plain
